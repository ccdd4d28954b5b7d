// Remembers the upstream's "not found" answers for a short while (registries.<name>.negativeTTL),
// so repeated requests for an unknown tag, manifest, blob or repository are answered 404 from
// memory instead of each costing an upstream request (anonymous clients could otherwise
// amplify traffic to Docker Hub with random names). Bounded by entry count (LRU) and by TTL.
import { LRUCache } from 'lru-cache';
import { RegistryError, type OciErrorCode } from '../errors.ts';
import type { Metrics } from '../metrics.ts';

/** What was not found: a manifest (by tag or digest), a blob, or the whole repository. */
export type NegativeKind = 'manifest' | 'blob' | 'repository';

type NotFoundCode = Extract<OciErrorCode, 'MANIFEST_UNKNOWN' | 'BLOB_UNKNOWN' | 'NAME_UNKNOWN'>;

interface Entry {
  code: NotFoundCode;
  message: string;
  expiresAt: number;
}

export interface NegativeCacheOptions {
  /** The registry's negativeTTL in ms; 0 disables remembering for that registry. */
  ttlMs: (registry: string) => number;
  /** Most entries held at once (least recently used go first). */
  maxEntries?: number;
  metrics?: Metrics;
  now?: () => number;
}

const NOT_FOUND_CODES: ReadonlySet<string> = new Set<NotFoundCode>(['MANIFEST_UNKNOWN', 'BLOB_UNKNOWN', 'NAME_UNKNOWN']);

function isNotFound(e: RegistryError): e is RegistryError & { code: NotFoundCode } {
  return e.status === 404 && NOT_FOUND_CODES.has(e.code);
}

export class NegativeCache {
  private readonly entries: LRUCache<string, Entry>;
  private readonly now: () => number;

  constructor(private readonly o: NegativeCacheOptions) {
    this.entries = new LRUCache<string, Entry>({ max: o.maxEntries ?? 10_000 });
    this.now = o.now ?? Date.now;
  }

  // The separator cannot occur in registry names, repository names, tags or digests.
  private static key(registry: string, repository: string, kind: NegativeKind, reference: string): string {
    return `${registry}\n${repository}\n${kind}\n${reference}`;
  }

  private live(key: string): Entry | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (e.expiresAt > this.now()) return e;
    this.entries.delete(key);
    return undefined;
  }

  /**
   * Throws the remembered 404 when the repository, or this manifest/blob in it, was recently
   * not found upstream; returns when the upstream should be asked.
   */
  check(registry: string, repository: string, kind: Exclude<NegativeKind, 'repository'>, reference: string): void {
    const e = this.live(NegativeCache.key(registry, repository, 'repository', '')) ?? this.live(NegativeCache.key(registry, repository, kind, reference));
    if (e === undefined) return;
    this.o.metrics?.negativeCacheHits.inc({ registry, kind });
    throw new RegistryError(e.code, e.message);
  }

  /**
   * Records an upstream failure when it is a 404: NAME_UNKNOWN for the whole repository, other
   * not-found codes for this one reference. Other errors (auth, outages) are never remembered.
   */
  remember(registry: string, repository: string, kind: Exclude<NegativeKind, 'repository'>, reference: string, err: unknown): void {
    if (!(err instanceof RegistryError) || !isNotFound(err)) return;
    const ttl = this.o.ttlMs(registry);
    if (ttl <= 0) return;
    const key = err.code === 'NAME_UNKNOWN' ? NegativeCache.key(registry, repository, 'repository', '') : NegativeCache.key(registry, repository, kind, reference);
    this.entries.set(key, { code: err.code, message: err.message, expiresAt: this.now() + ttl });
  }

  /** The upstream found it: drop what was remembered about it and about its repository. */
  forget(registry: string, repository: string, kind: Exclude<NegativeKind, 'repository'>, reference: string): void {
    this.entries.delete(NegativeCache.key(registry, repository, kind, reference));
    this.entries.delete(NegativeCache.key(registry, repository, 'repository', ''));
  }

  get size(): number {
    return this.entries.size;
  }
}
