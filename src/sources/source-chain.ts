// The read path's chain of remote sources for one request: the registry's upstream and the
// failover peers. With failover.mode on-upstream-failure the upstream is asked first and the
// peers only when it is down (unreachable, timed out, 5xx, 429, circuit open: an outage-marked
// error); a 404 or a refusal from the upstream is its answer. With peers-first the peers come
// first and the upstream last. Peers are asked in order of health: one that failed recently is
// skipped for a while, the faster one first. When no source answers, the upstream's error is
// what the client sees (and what the negative cache may remember). A request that is itself a
// peer's failover read (`peers: false`) never goes on to this region's peers: regions that are
// each other's failover peers would otherwise ask each other in a loop.
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { RegistryError } from '../errors.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';
import type { RegistryClient } from '../upstream/registry-client.ts';
import { isSourceOutage, type BlobHead, type BlobRef, type ContentSource, type ManifestHead, type ManifestRef, type RawManifest } from './content-source.ts';
import type { PeerSource } from './peer-source.ts';
import { RegistrySource } from './registry-source.ts';

export type FailoverMode = 'on-upstream-failure' | 'peers-first';

export interface SourceChainOptions {
  /** The upstream source of each configured registry. */
  upstreams: ReadonlyMap<string, ContentSource>;
  /** Peers with `failover: true`, in config order. */
  peers?: readonly PeerSource[];
  /**
   * This region's shared tiers, asked in order before the upstream and the peers (the S3
   * tier, the cluster member that owns the digest or tag). They are caches, not answers: a
   * miss or a failure of one goes on to the next, and only the upstream's answer is final.
   * Each decides itself whether it may answer for the repository (authorization).
   */
  region?: readonly ContentSource[];
  mode?: FailoverMode;
  metrics: Metrics;
  logger: Logger;
  now?: () => number;
}

/** Which sources a request may use besides the upstream. */
export interface ChainScope {
  /** False for a peer region's failover read: this region's peers are not asked (no loops between regions). */
  peers?: boolean;
  /**
   * False for a cluster member's read (it carried the cluster token): the region sources are
   * not asked, so two members that disagree about who owns a digest never ask each other in
   * a loop; the member asked is the one that fetches.
   */
  region?: boolean;
}

/** The sources a request may use: no peers for a peer's failover read, no region tiers for a cluster member's read. */
export function scopeOf(req: { forPeer?: boolean; forMember?: boolean }): ChainScope {
  return { peers: req.forPeer !== true, region: req.forMember !== true };
}

/** What a source delivered, and which source it was (its `via` goes into the CacheEvents). */
export interface Delivered<T> {
  value: T;
  from: ContentSource;
}

/** The upstream source of a registry: its RegistryClient, repositories as they are named. */
export function upstreamSource(client: RegistryClient): RegistrySource {
  return new RegistrySource({ name: 'upstream', via: 'upstream', label: client.name, transport: client, pathOf: (_registry, repository) => repository });
}

export class SourceChain {
  private readonly peers: readonly PeerSource[];
  private readonly mode: FailoverMode;
  private readonly now: () => number;

  constructor(private readonly o: SourceChainOptions) {
    this.peers = o.peers ?? [];
    this.mode = o.mode ?? 'on-upstream-failure';
    this.now = o.now ?? Date.now;
  }

  /** Upstreams only (no peers): what a service builds from bare RegistryClients. */
  static ofClients(clients: ReadonlyMap<string, RegistryClient>, metrics: Metrics, logger: Logger): SourceChain {
    return new SourceChain({ upstreams: new Map([...clients].map(([k, c]) => [k, upstreamSource(c)])), metrics, logger });
  }

  upstream(registry: string): ContentSource {
    const u = this.o.upstreams.get(registry);
    if (!u) throw new RegistryError('NAME_UNKNOWN', `registry ${registry} is not configured`);
    return u;
  }

  openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number, scope: ChainScope = {}): Promise<Delivered<FillSource>> {
    return this.run(ref.registry, `blob ${ref.digest}`, (s) => s.openBlob(ref, signal, expectedSize), scope);
  }

  headBlob(ref: BlobRef, scope: ChainScope = {}): Promise<Delivered<BlobHead>> {
    return this.run(ref.registry, `blob ${ref.digest}`, (s) => s.headBlob(ref), scope);
  }

  /** `check` verifies what a source sent (digest, parse): a peer failing it is passed over like a broken peer. */
  getManifest<T>(ref: ManifestRef, accept: readonly string[], check: (raw: RawManifest, from: ContentSource) => T, scope: ChainScope = {}): Promise<Delivered<T>> {
    return this.run(ref.registry, `manifest ${ref.reference}`, async (s) => check(await s.getManifest(ref, accept), s), scope);
  }

  /** A HEAD that must answer 200 (any other status is thrown as its OCI error). */
  confirmManifest(ref: ManifestRef, accept: readonly string[], scope: ChainScope = {}): Promise<Delivered<ManifestHead>> {
    return this.run(
      ref.registry,
      `manifest ${ref.reference}`,
      async (s) => {
        const head = await s.headManifest(ref, accept);
        if (head.status !== 200) throw await head.error();
        return head;
      },
      scope,
    );
  }

  /**
   * A tag's revalidation: a region source's 200 (the tag's owner in the cluster, which answers
   * from its cache within its tagTTL) if one gives it, else the upstream's HEAD whatever its
   * status (the caller judges it). Failover peers are never asked: only the upstream, or a
   * member that asked it, can confirm a tag.
   */
  async revalidateTag(ref: ManifestRef, accept: readonly string[], scope: ChainScope = {}): Promise<Delivered<ManifestHead>> {
    const up = this.upstream(ref.registry);
    if (scope.region !== false) {
      for (const r of this.o.region ?? []) {
        try {
          const head = await r.headManifest(ref, accept);
          if (head.status === 200) return { value: head, from: r };
        } catch (e) {
          this.regionFailed(ref.registry, `tag ${ref.reference}`, r, e);
        }
      }
    }
    return { value: await up.headManifest(ref, accept), from: up };
  }

  /** Content a source delivered failed verification later (a blob's digest): a peer is then left alone for a while. */
  deliveredBad(from: ContentSource, reason: string): void {
    const peer = this.peers.find((p) => p === from);
    if (!peer) return;
    peer.health.failed(this.now());
    this.o.metrics.failoverReads.inc({ peer: peer.name, result: reason });
    this.o.logger.warn({ peer: peer.name, reason }, 'failover peer delivered bad content; skipping it for a while');
  }

  async close(): Promise<void> {
    for (const p of this.peers) await p.close();
  }

  /** A region source's miss (404) goes on silently; anything else is logged, and goes on too. */
  private regionFailed(registry: string, what: string, r: ContentSource, e: unknown): void {
    if (!(e instanceof RegistryError && e.status === 404)) this.o.logger.warn({ registry, what, source: r.name, err: (e as Error).message }, 'region source failed; going on to the next source');
  }

  private async run<T>(registry: string, what: string, op: (s: ContentSource) => Promise<T>, scope: ChainScope): Promise<Delivered<T>> {
    const up = this.upstream(registry);
    if (scope.region !== false) {
      for (const r of this.o.region ?? []) {
        try {
          return { value: await op(r), from: r };
        } catch (e) {
          this.regionFailed(registry, what, r, e);
        }
      }
    }
    if (this.peers.length === 0 || scope.peers === false) return { value: await op(up), from: up };
    if (this.mode === 'peers-first') {
      const got = await this.tryPeers(registry, what, op);
      return got ?? { value: await op(up), from: up };
    }
    try {
      return { value: await op(up), from: up };
    } catch (e) {
      if (!isSourceOutage(e)) throw e;
      this.o.logger.warn({ registry, what, err: (e as Error).message }, 'upstream unavailable: reading from failover peers');
      const got = await this.tryPeers(registry, what, op);
      if (got) return got;
      throw e;
    }
  }

  /** The first peer's answer, in order of health; undefined when none had it. */
  private async tryPeers<T>(registry: string, what: string, op: (s: ContentSource) => Promise<T>): Promise<Delivered<T> | undefined> {
    const now = this.now();
    const usable = this.peers.filter((p) => {
      if (p.health.usable(now)) return true;
      this.o.metrics.failoverReads.inc({ peer: p.name, result: 'skipped' });
      return false;
    });
    // Stable: equally fast (or unmeasured) peers keep their config order.
    usable.sort((a, b) => (a.health.latencyMs ?? 0) - (b.health.latencyMs ?? 0));
    for (const p of usable) {
      const t0 = performance.now();
      try {
        const value = await op(p);
        p.health.answered(performance.now() - t0);
        this.o.metrics.failoverReads.inc({ peer: p.name, result: 'ok' });
        this.o.logger.info({ registry, what, peer: p.name, ms: Math.round(performance.now() - t0) }, 'read from failover peer');
        return { value, from: p };
      } catch (e) {
        if (e instanceof RegistryError && e.status === 404) {
          // The peer answered: it does not have it.
          p.health.answered(performance.now() - t0);
          this.o.metrics.failoverReads.inc({ peer: p.name, result: 'not_found' });
          continue;
        }
        p.health.failed(this.now());
        this.o.metrics.failoverReads.inc({ peer: p.name, result: 'error' });
        this.o.logger.warn({ registry, what, peer: p.name, err: (e as Error).message }, 'failover peer failed; skipping it for a while');
      }
    }
    return undefined;
  }
}
