// The read path's chain of remote sources for one request: the registry's upstream (failover
// peers come next). When no source answers, the upstream's error is what the client sees (and
// what the negative cache may remember).
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { RegistryError } from '../errors.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';
import type { RegistryClient } from '../upstream/registry-client.ts';
import { type BlobHead, type BlobRef, type ContentSource, type ManifestHead, type ManifestRef, type RawManifest } from './content-source.ts';
import { RegistrySource } from './registry-source.ts';

export interface SourceChainOptions {
  /** The upstream source of each configured registry. */
  upstreams: ReadonlyMap<string, ContentSource>;
  metrics: Metrics;
  logger: Logger;
  now?: () => number;
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
  constructor(private readonly o: SourceChainOptions) {}

  /** Upstreams only (no peers): what a service builds from bare RegistryClients. */
  static ofClients(clients: ReadonlyMap<string, RegistryClient>, metrics: Metrics, logger: Logger): SourceChain {
    return new SourceChain({ upstreams: new Map([...clients].map(([k, c]) => [k, upstreamSource(c)])), metrics, logger });
  }

  upstream(registry: string): ContentSource {
    const u = this.o.upstreams.get(registry);
    if (!u) throw new RegistryError('NAME_UNKNOWN', `registry ${registry} is not configured`);
    return u;
  }

  openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number): Promise<Delivered<FillSource>> {
    return this.run(ref.registry, `blob ${ref.digest}`, (s) => s.openBlob(ref, signal, expectedSize));
  }

  headBlob(ref: BlobRef): Promise<Delivered<BlobHead>> {
    return this.run(ref.registry, `blob ${ref.digest}`, (s) => s.headBlob(ref));
  }

  /** `check` verifies what a source sent (digest, parse): a peer failing it is passed over like a broken peer. */
  getManifest<T>(ref: ManifestRef, accept: readonly string[], check: (raw: RawManifest, from: ContentSource) => T): Promise<Delivered<T>> {
    return this.run(ref.registry, `manifest ${ref.reference}`, async (s) => check(await s.getManifest(ref, accept), s));
  }

  /** A HEAD that must answer 200 (any other status is thrown as its OCI error). */
  confirmManifest(ref: ManifestRef, accept: readonly string[]): Promise<Delivered<ManifestHead>> {
    return this.run(ref.registry, `manifest ${ref.reference}`, async (s) => {
      const head = await s.headManifest(ref, accept);
      if (head.status !== 200) throw await head.error();
      return head;
    });
  }

  private async run<T>(registry: string, _what: string, op: (s: ContentSource) => Promise<T>): Promise<Delivered<T>> {
    const up = this.upstream(registry);
    return { value: await op(up), from: up };
  }
}
