// The replication metrics (issue 10 item 5), registered on the process's Metrics registry (one
// set per registry): kept beside the replicator so the shared metrics.ts stays small.
import { Counter, Gauge } from 'prom-client';
import type { Metrics } from '../metrics.ts';

export class ReplicationMetrics {
  readonly pending: Gauge<'peer'>;
  readonly lag: Gauge<'peer'>;
  readonly bytes: Counter<'peer'>;
  readonly failures: Counter<'peer' | 'reason'>;
  readonly readiness: Gauge<'peer'>;
  /** Set by the Replicator: each peer's pending jobs and lag, read at every scrape (never stale). */
  outboxes: () => Array<{ peer: string; pending: number; lagSeconds: number }> = () => [];
  /** Set by the Replicator: each peer's DR readiness by image count, read at every scrape. */
  readinessOf: () => Array<{ peer: string; images: number }> = () => [];

  private constructor(m: Metrics) {
    const registers = [m.registry];
    const self = this;
    this.pending = new Gauge({
      name: 'ocirelay_replication_pending_jobs',
      help: "Jobs in a peer's replication outbox",
      labelNames: ['peer'],
      registers,
      collect() {
        for (const o of self.outboxes()) this.set({ peer: o.peer }, o.pending);
      },
    });
    this.lag = new Gauge({
      name: 'ocirelay_replication_lag_seconds',
      help: "Age of the oldest job in a peer's replication outbox (0 when it is empty)",
      labelNames: ['peer'],
      registers,
      collect() {
        for (const o of self.outboxes()) this.set({ peer: o.peer }, o.lagSeconds);
      },
    });
    this.bytes = new Counter({ name: 'ocirelay_replication_bytes_total', help: 'Blob bytes uploaded to a peer by replication', labelNames: ['peer'], registers });
    this.failures = new Counter({
      name: 'ocirelay_replication_failures_total',
      help: 'Replication failures by peer and reason (unreachable, http_5xx, auth, rejected, local: an attempt failed and is retried; evicted, outbox_full: a job was dropped; outbox_write: a job could not be queued)',
      labelNames: ['peer', 'reason'],
      registers,
    });
    this.readiness = new Gauge({
      name: 'ocirelay_dr_readiness_ratio',
      help: "Share of this region's cached images confirmed present at a peer (0..1)",
      labelNames: ['peer'],
      registers,
      collect() {
        for (const r of self.readinessOf()) this.set({ peer: r.peer }, r.images);
      },
    });
  }

  private static readonly sets = new WeakMap<Metrics, ReplicationMetrics>();

  /** The set registered on `m` (made on first use: a registry takes each name once). */
  static of(m: Metrics): ReplicationMetrics {
    let r = ReplicationMetrics.sets.get(m);
    if (!r) ReplicationMetrics.sets.set(m, (r = new ReplicationMetrics(m)));
    return r;
  }
}
