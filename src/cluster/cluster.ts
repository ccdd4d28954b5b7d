// The cluster ring of one region (issue 11 item 4), as main.ts wires it: the members and
// their health (members.ts), the owner of each digest and tag as a region source of the
// SourceChain (owner-source.ts), and the check of the token members send each other
// (member-auth.ts). Only built when `cluster:` is configured.
import type { ClusterConfig } from '../config-cluster.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { MinRate } from '../upstream/metered-body.ts';
import { ClusterMetrics } from './cluster-metrics.ts';
import { memberAuth } from './member-auth.ts';
import { ClusterMembers } from './members.ts';
import { OwnerSource } from './owner-source.ts';

export interface ClusterOptions {
  metrics: Metrics;
  logger: Logger;
  timeouts: { connectMs: number; headersMs: number; idleMs: number };
  minRate?: MinRate;
  userAgent?: string;
}

export class Cluster {
  readonly members: ClusterMembers;
  readonly source: OwnerSource;
  /** Whether a request's Ocirelay-Cluster-Token header is the cluster's token. */
  readonly isMember: (header: string | undefined) => boolean;

  constructor(config: ClusterConfig, o: ClusterOptions) {
    const metrics = new ClusterMetrics(o.metrics);
    this.members = new ClusterMembers({ config, logger: o.logger, metrics });
    this.source = new OwnerSource({
      members: this.members,
      token: config.token,
      metrics,
      logger: o.logger,
      // A member is next door: one that does not connect within 2 s is treated as gone (the
      // blob is then fetched directly) rather than holding the pull for the upstream's timeout.
      timeouts: { ...o.timeouts, connectMs: Math.min(o.timeouts.connectMs, 2000) },
      ...(o.minRate !== undefined ? { minRate: o.minRate } : {}),
      ...(o.userAgent !== undefined ? { userAgent: o.userAgent } : {}),
    });
    this.isMember = memberAuth(config.token, metrics);
  }

  /** Resolves the members (DNS) and runs a first health check; members that answer are live from then on. */
  start(): Promise<void> {
    return this.members.start();
  }

  async close(): Promise<void> {
    this.members.close();
    await this.source.close();
  }
}
