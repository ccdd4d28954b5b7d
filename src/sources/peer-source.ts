// A failover peer as a ContentSource. An ocirelay region is read in its path-prefix form
// (/v2/<registry>/<repository>/...) with its Bearer token; any other OCI registry under
// /v2/<prefix>/<registry>/<repository>/... through a RegistryClient (Basic or token flow with
// the peer's username/password, redirects, timeouts, minRate, breaker; the peer's own host is
// trusted, it is the operator's). Each peer keeps its health: when it last failed (it is then
// skipped for a while) and how fast it answers (the chain asks the faster peer first).
import type { PeerConfig } from '../config-replication.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { MinRate } from '../upstream/metered-body.ts';
import { RegistryClient } from '../upstream/registry-client.ts';
import { PeerHttp } from './peer-http.ts';
import { RegistrySource, type Transport } from './registry-source.ts';

/** How long a peer that failed is left alone. */
export const PEER_COOLDOWN_MS = 30_000;

export class PeerHealth {
  private failedAt: number | undefined;
  /** Exponentially weighted time to an answer, ms; undefined until measured. */
  latencyMs: number | undefined;

  constructor(private readonly cooldownMs = PEER_COOLDOWN_MS) {}

  usable(now: number): boolean {
    return this.failedAt === undefined || now - this.failedAt >= this.cooldownMs;
  }

  answered(ms: number): void {
    this.failedAt = undefined;
    this.latencyMs = this.latencyMs === undefined ? ms : this.latencyMs * 0.7 + ms * 0.3;
  }

  failed(now: number): void {
    this.failedAt = now;
  }
}

export interface PeerSourceOptions {
  metrics: Metrics;
  logger: Logger;
  userAgent?: string;
  minRate?: MinRate;
  timeouts: { connectMs: number; headersMs: number; idleMs: number };
  retries?: number;
  cooldownMs?: number;
}

export class PeerSource extends RegistrySource {
  readonly health: PeerHealth;
  readonly peer: PeerConfig;

  constructor(peer: PeerConfig, o: PeerSourceOptions) {
    const prefix = peer.kind === 'registry' && peer.prefix !== '' ? `${peer.prefix}/` : '';
    super({
      name: peer.name,
      via: 'failover',
      label: `peer ${peer.name}`,
      transport: transportFor(peer, o),
      pathOf: (registry, repository) => `${prefix}${registry}/${repository}`,
    });
    this.peer = peer;
    this.health = new PeerHealth(o.cooldownMs);
  }

  close(): Promise<void> {
    return this.transport.close();
  }
}

function transportFor(peer: PeerConfig, o: PeerSourceOptions): Transport {
  if (peer.kind === 'ocirelay') {
    return new PeerHttp(peer, {
      ...o.timeouts,
      ...(o.minRate !== undefined ? { minRate: o.minRate } : {}),
      ...(o.userAgent !== undefined ? { userAgent: o.userAgent } : {}),
    });
  }
  return new RegistryClient(
    {
      name: `peer:${peer.name}`,
      url: peer.url,
      trustedHosts: [new URL(peer.url).host],
      ...(peer.username !== undefined ? { username: peer.username } : {}),
      ...(peer.password !== undefined ? { password: peer.password } : {}),
    },
    {
      metrics: o.metrics,
      logger: o.logger,
      timeouts: o.timeouts,
      // Another peer (or the upstream) is there to answer instead: fail fast.
      retry: { attempts: o.retries ?? 0 },
      ...(o.minRate !== undefined ? { minRate: o.minRate } : {}),
      ...(o.userAgent !== undefined ? { userAgent: o.userAgent } : {}),
    },
  );
}
