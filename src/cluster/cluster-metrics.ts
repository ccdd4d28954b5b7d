// The cluster ring's metrics (issue 11 item 4), registered on the process's Metrics registry:
// kept beside the cluster code so the shared metrics.ts stays small.
import { Counter, Gauge } from 'prom-client';
import type { Metrics } from '../metrics.ts';

export class ClusterMetrics {
  readonly members: Gauge<'state'>;
  readonly ownerReads: Counter<'kind' | 'result'>;
  readonly ownerFailures: Counter<'reason'>;
  readonly memberRequests: Counter<'result'>;

  constructor(m: Metrics) {
    const registers = [m.registry];
    this.members = new Gauge({
      name: 'ocirelay_cluster_members',
      help: 'Cluster members by state (live: answered its last health check, this instance included; down)',
      labelNames: ['state'],
      registers,
    });
    this.ownerReads = new Counter({
      name: 'ocirelay_cluster_owner_reads_total',
      help: 'Reads from the cluster member owning a digest or tag, by kind (blob, blob_head, manifest, manifest_head) and result (ok, not_found, failed)',
      labelNames: ['kind', 'result'],
      registers,
    });
    this.ownerFailures = new Counter({
      name: 'ocirelay_cluster_owner_failures_total',
      help: 'Reads from the owning cluster member that failed, by reason (unreachable, timeout, mid_body, http_5xx): the content was then fetched directly',
      labelNames: ['reason'],
      registers,
    });
    this.memberRequests = new Counter({
      name: 'ocirelay_cluster_member_requests_total',
      help: 'Requests carrying Ocirelay-Cluster-Token, by result (accepted: served as a member read; refused: a wrong token, served as a client request)',
      labelNames: ['result'],
      registers,
    });
  }
}
