// The region's shared metadata in the bucket (issue 11 item 2): tag records, repository links,
// pins and frozen tags (keys: metadata-keys.ts; records and the compare-and-swap rule:
// metadata-records.ts). So an instance answers a tag another instance resolved, and applies
// the links any instance of the region learned from the upstream (the authorization rule of
// docs/architecture.md) region-wide.
//
// Writes come from cache events and new local links; they are queued (metadata-queue.ts),
// never awaited by a client, and retried while S3 is down. Reads (isLinked, tag: the S3 read
// source's RegionIndex) are cached briefly in memory, and a failing bucket answers "not known"
// at once for a few seconds (the chain then asks the upstream): they never throw.
import { LRUCache } from 'lru-cache';
import type { CacheListener, ContentCommitted, FreezeChanged, PinChanged, TagResolved } from '../cache-events.ts';
import type { Logger } from '../logger.ts';
import type { Digest } from '../oci/digest.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';
import { blobKey, frozenKey, linkKey, linksOfDigestPrefix, pinKey, tagKey } from './metadata-keys.ts';
import { MetadataQueue } from './metadata-queue.ts';
import { casNewer, changeIsNewer, parseFrozenJson, parsePinJson, parseTagJson, tagIsNewer, type FrozenJson, type PinJson, type TagJson } from './metadata-records.ts';
import { syncPinsAndFreezes, type SyncResult } from './pin-sync.ts';
import type { RegionIndex, RegionTag } from './region-index.ts';
import type { RegionMetrics } from './region-metrics.ts';

export interface SharedMetadataOptions {
  bucket: S3Bucket;
  logger: Logger;
  metrics: RegionMetrics;
  /** The local index: pins and frozen tags of the region are synced into it (eviction and tag resolution read them there). */
  index?: CacheIndex;
  /** A link the bucket confirmed is cached this long (links are only ever added, but for purges); default 1 h. */
  linkTtlMs?: number;
  /** A tag record (or its absence) is cached this long; default 5 s. */
  tagTtlMs?: number;
  /** An absent link is cached this long; default 2 s. */
  negativeTtlMs?: number;
  /** After a failed read, reads answer "not known" without asking S3 for this long; default 5 s. */
  readPauseMs?: number;
  /** Pins and frozen tags are synced from the bucket this often; default 30 s. */
  syncIntervalMs?: number;
  queueLimit?: number;
  minBackoffMs?: number;
  /**
   * A tag record older than this (the registry's tagTTL) is not an answer: the caller goes on
   * to the cluster owner or the upstream, which confirms or moves the tag (a record never
   * refreshed would otherwise pin the tag region-wide). Default: any age.
   */
  tagMaxAgeMs?: (registry: string) => number;
  /** While the registry's upstream is in an outage (circuit open), older tag records are answered (served stale). */
  upstreamDown?: (registry: string) => boolean;
  /** A tag confirmation is written at most this often per tag; default 30 s. */
  confirmEveryMs?: number;
  /** A digest the region's tiers are about to serve (a positive link answer): the access log's input. */
  onRegionRead?: (digest: Digest) => void;
}

/** What an admin purge removed from the local cache (CacheAdmin.purge), to remove from the bucket too. */
export interface PurgedFromCache {
  registry: string;
  repository: string;
  /** Tags whose records go. */
  tags: string[];
  /** Tags unfrozen by the purge. */
  unfrozenTags: string[];
  /** Pin references removed by the purge (force). */
  unpinnedRefs: string[];
  /** Digests unlinked from the repository; their content objects go when no other repository links them. */
  digests: Digest[];
}

export interface BucketPurgeResult {
  removedObjects: number;
  freedBytes: number;
  /** S3 was unavailable: the rest is queued and retried. */
  queued: boolean;
}

export class SharedMetadata implements RegionIndex, CacheListener {
  private readonly bucket: S3Bucket;
  private readonly logger: Logger;
  private readonly metrics: RegionMetrics;
  private readonly links: LRUCache<string, boolean>;
  private readonly tags: LRUCache<string, TagJson | 'none'>;
  /** When this instance last wrote a confirmation of each tag. */
  private readonly confirmed = new LRUCache<string, number>({ max: 10_000 });
  /** Records queued for writing, by key: a newer one replaces a queued older one, never the reverse. */
  private readonly pendingRecords = new Map<string, unknown>();
  private readonly queue: MetadataQueue;
  private readsDownUntil = 0;
  private lastReadWarning = 0;
  private syncTimer: NodeJS.Timeout | undefined;
  private syncing: Promise<SyncResult | undefined> | undefined;
  private readonly o: SharedMetadataOptions;

  constructor(o: SharedMetadataOptions) {
    this.o = o;
    this.bucket = o.bucket;
    this.logger = o.logger;
    this.metrics = o.metrics;
    this.links = new LRUCache({ max: 100_000, ttl: o.linkTtlMs ?? 3_600_000 });
    this.tags = new LRUCache({ max: 10_000, ttl: o.tagTtlMs ?? 5_000 });
    this.queue = new MetadataQueue({
      limit: o.queueLimit ?? 10_000,
      ...(o.minBackoffMs !== undefined ? { minBackoffMs: o.minBackoffMs } : {}),
      onFailure: (reason) => this.metrics.metadataWriteFailures.inc({ reason }),
      onPending: (n) => this.metrics.metadataPending.set(n),
      logger: o.logger,
    });
  }

  // ---- RegionIndex (reads) -----------------------------------------------------------

  async isLinked(registry: string, repository: string, digest: Digest): Promise<boolean> {
    const key = keyOrUndefined(() => linkKey(registry, repository, digest));
    if (key === undefined) return false;
    const cached = this.links.get(key);
    if (cached !== undefined) {
      this.metrics.metadataReads.inc({ kind: 'link', result: 'cached' });
      if (cached) this.o.onRegionRead?.(digest);
      return cached;
    }
    if (Date.now() < this.readsDownUntil) {
      this.metrics.metadataReads.inc({ kind: 'link', result: 'unavailable' });
      return false;
    }
    try {
      const linked = (await this.bucket.head(key)) !== undefined;
      this.links.set(key, linked, linked ? {} : { ttl: this.o.negativeTtlMs ?? 2_000 });
      this.metrics.metadataReads.inc({ kind: 'link', result: linked ? 'hit' : 'miss' });
      if (linked) this.o.onRegionRead?.(digest);
      return linked;
    } catch (e) {
      this.readFailed(e, 'link');
      return false;
    }
  }

  async tag(registry: string, repository: string, tag: string): Promise<RegionTag | undefined> {
    const key = keyOrUndefined(() => tagKey(registry, repository, tag));
    if (key === undefined) return undefined;
    const cached = this.tags.get(key);
    if (cached !== undefined) {
      this.metrics.metadataReads.inc({ kind: 'tag', result: 'cached' });
      return cached === 'none' ? undefined : this.usableTag(registry, cached);
    }
    if (Date.now() < this.readsDownUntil) {
      this.metrics.metadataReads.inc({ kind: 'tag', result: 'unavailable' });
      return undefined;
    }
    try {
      const got = await this.bucket.getJson(key);
      const rec = got ? parseTagJson(got.value) : undefined;
      this.tags.set(key, rec ?? 'none');
      this.metrics.metadataReads.inc({ kind: 'tag', result: rec ? 'hit' : 'miss' });
      return rec ? this.usableTag(registry, rec) : undefined;
    } catch (e) {
      this.readFailed(e, 'tag');
      return undefined;
    }
  }

  /** The record if it is an answer now: resolved within the registry's tagTTL, or the upstream is down. */
  private usableTag(registry: string, rec: TagJson): RegionTag | undefined {
    const maxAge = this.o.tagMaxAgeMs?.(registry);
    if (maxAge !== undefined && Date.now() - rec.resolvedAt >= maxAge && this.o.upstreamDown?.(registry) !== true) {
      this.metrics.metadataReads.inc({ kind: 'tag', result: 'stale' });
      return undefined;
    }
    return { ...rec };
  }

  private readFailed(e: unknown, kind: 'link' | 'tag'): void {
    this.metrics.metadataReads.inc({ kind, result: 'unavailable' });
    this.readsDownUntil = Date.now() + (this.o.readPauseMs ?? 5_000);
    if (Date.now() - this.lastReadWarning > 10_000) {
      this.lastReadWarning = Date.now();
      if (e instanceof S3Unavailable) this.logger.warn({ err: e.message, reason: e.reason }, 'S3 unavailable: shared metadata answers "not known"');
      else this.logger.error({ err: e }, 'shared metadata read failed: answering "not known"');
    }
  }

  // ---- CacheListener (writes) --------------------------------------------------------

  contentCommitted(e: ContentCommitted): void {
    // Content read from the region's tiers was authorised through the region already.
    if (e.via === 'region') {
      this.o.onRegionRead?.(e.digest);
      return;
    }
    this.linked(e.registry, e.repository, e.digest);
  }

  /** A repository was linked to a digest locally (a commit, or an upstream HEAD confirmation: CacheIndex.onLinked). */
  linked(registry: string, repository: string, digest: Digest): void {
    const key = keyOrUndefined(() => linkKey(registry, repository, digest));
    if (key === undefined || this.links.get(key) === true) return;
    // This instance is in the region: the region knows the link from now on.
    this.links.set(key, true);
    this.queue.enqueue(key, async () => {
      // Creation only: a link is never changed, so a 412 (another instance wrote it) is fine.
      await this.bucket.putIfAbsent(key, () => Buffer.alloc(0), 0);
    });
  }

  /**
   * A tag's digest confirmed again (CacheIndex.onTagConfirmed: an upstream revalidation, or a
   * newer resolution received): the region's record gets the later resolution time, so other
   * instances see it fresh. At most once per `confirmEveryMs` per tag from this instance.
   */
  tagConfirmed(registry: string, repository: string, tag: string, rec: { digest: Digest; mediaType: string; checkedAt: number }): void {
    const key = keyOrUndefined(() => tagKey(registry, repository, tag));
    if (key === undefined) return;
    const last = this.confirmed.get(key);
    if (last !== undefined && rec.checkedAt - last < (this.o.confirmEveryMs ?? 30_000)) return;
    // A confirmation taken from the region's own record is no news to the bucket.
    const cached = this.tags.get(key);
    if (cached !== undefined && cached !== 'none' && cached.digest === rec.digest && cached.resolvedAt >= rec.checkedAt) return;
    this.confirmed.set(key, rec.checkedAt);
    this.enqueueRecord(key, { digest: rec.digest, mediaType: rec.mediaType, resolvedAt: rec.checkedAt }, parseTagJson, tagIsNewer);
  }

  tagResolved(e: TagResolved): void {
    if (e.via === 'region') return;
    const key = keyOrUndefined(() => tagKey(e.registry, e.repository, e.tag));
    if (key === undefined) return;
    const rec: TagJson = { digest: e.digest, mediaType: e.mediaType, resolvedAt: e.resolvedAt };
    const cached = this.tags.get(key);
    if (cached === undefined || cached === 'none' || tagIsNewer(rec, cached)) this.tags.set(key, rec);
    this.enqueueRecord(key, rec, parseTagJson, tagIsNewer);
  }

  pinChanged(e: PinChanged): void {
    const local = this.o.index?.allPins().find((p) => p.ref === e.ref);
    this.writePin({ ref: e.ref, registry: e.registry, repository: e.repository, digests: e.digests, pinned: e.pinned, at: e.pinned && local ? local.createdAt : Date.now() });
  }

  freezeChanged(e: FreezeChanged): void {
    this.writeFrozen({ registry: e.registry, repository: e.repository, tag: e.tag, digest: e.digest ?? null, at: e.at });
  }

  writePin(rec: PinJson): void {
    const key = keyOrUndefined(() => pinKey(rec.ref));
    if (key !== undefined) this.enqueueRecord(key, rec, parsePinJson, changeIsNewer);
  }

  writeFrozen(rec: FrozenJson): void {
    const key = keyOrUndefined(() => frozenKey(rec.registry, rec.repository, rec.tag));
    if (key !== undefined) this.enqueueRecord(key, rec, parseFrozenJson, changeIsNewer);
  }

  /** Whether a write of this key is still queued (the sync leaves such records alone). */
  hasPendingWrite(key: string): boolean {
    return this.pendingRecords.has(key);
  }

  private enqueueRecord<T>(key: string, rec: T, parse: (v: unknown) => T | undefined, isNewer: (a: T, b: T) => boolean): void {
    const queued = this.pendingRecords.get(key) as T | undefined;
    if (queued !== undefined && !isNewer(rec, queued)) return;
    this.pendingRecords.set(key, rec);
    const queuedOk = this.queue.enqueue(key, async () => {
      const latest = this.pendingRecords.get(key) as T | undefined;
      if (latest === undefined) return;
      await casNewer(this.bucket, key, latest, parse, isNewer);
      if (this.pendingRecords.get(key) === latest) this.pendingRecords.delete(key);
      // The bucket may hold a newer record than ours: read it again next time.
      this.tags.delete(key);
    });
    if (!queuedOk) this.pendingRecords.delete(key);
  }

  // ---- pins and frozen tags of the region into the local index -----------------------

  /** Sync now, then every syncIntervalMs (not awaited: S3 down at start only delays it). */
  start(): void {
    if (!this.o.index || this.syncTimer) return;
    void this.sync();
    this.syncTimer = setInterval(() => void this.sync(), this.o.syncIntervalMs ?? 30_000);
    this.syncTimer.unref();
  }

  /** One sync of pins and frozen tags between the bucket and the local index (one at a time). */
  sync(): Promise<SyncResult | undefined> {
    const index = this.o.index;
    if (!index) return Promise.resolve(undefined);
    this.syncing ??= syncPinsAndFreezes({ bucket: this.bucket, index, logger: this.logger, pending: (k) => this.hasPendingWrite(k), upload: { pin: (r) => this.writePin(r), frozen: (r) => this.writeFrozen(r) } })
      .catch((err: unknown) => {
        if (err instanceof S3Unavailable) this.logger.warn({ err: err.message }, 'S3 unavailable: pins and frozen tags not synced this time');
        else this.logger.error({ err }, 'syncing pins and frozen tags from the bucket failed');
        return undefined;
      })
      .finally(() => (this.syncing = undefined));
    return this.syncing;
  }

  // ---- purge -------------------------------------------------------------------------

  /**
   * Removes what an admin purge removed locally from the bucket too: the tag records, the
   * links, tombstones for unfrozen tags and removed pins, and the content objects no other
   * repository's link still needs. When S3 fails midway the whole (idempotent) removal is
   * queued and retried.
   */
  async purged(p: PurgedFromCache, stillNeeded: (d: Digest) => boolean = () => false): Promise<BucketPurgeResult> {
    const result: BucketPurgeResult = { removedObjects: 0, freedBytes: 0, queued: false };
    const run = async () => {
      const now = Date.now();
      for (const tag of p.tags) {
        const key = tagKey(p.registry, p.repository, tag);
        await this.bucket.delete(key);
        this.tags.delete(key);
      }
      for (const tag of p.unfrozenTags) await casNewer(this.bucket, frozenKey(p.registry, p.repository, tag), { registry: p.registry, repository: p.repository, tag, digest: null, at: now }, parseFrozenJson, changeIsNewer);
      for (const ref of p.unpinnedRefs) await casNewer(this.bucket, pinKey(ref), { ref, registry: p.registry, repository: p.repository, digests: [], pinned: false, at: now }, parsePinJson, changeIsNewer);
      for (const d of p.digests) {
        const key = linkKey(p.registry, p.repository, d);
        await this.bucket.delete(key);
        this.links.delete(key);
        if (stillNeeded(d)) continue;
        let linkedElsewhere = false;
        for await (const _ of this.bucket.list(linksOfDigestPrefix(d))) {
          linkedElsewhere = true;
          break;
        }
        if (linkedElsewhere) continue;
        const head = await this.bucket.head(blobKey(d));
        if (!head) continue;
        await this.bucket.delete(blobKey(d));
        result.removedObjects++;
        result.freedBytes += head.size;
        this.metrics.bucketEvictions.inc({ reason: 'purge' });
        this.metrics.bucketEvictedBytes.inc({ reason: 'purge' }, head.size);
      }
    };
    try {
      await run();
    } catch (e) {
      if (!(e instanceof S3Unavailable)) throw e;
      this.logger.warn({ err: e.message, registry: p.registry, repository: p.repository }, 'S3 unavailable during a purge: the bucket side is queued and retried');
      result.queued = true;
      this.queue.enqueue(`purge:${p.registry}/${p.repository}:${Date.now()}:${Math.random()}`, run);
    }
    return result;
  }

  // ---- lifecycle ---------------------------------------------------------------------

  /** Queued or running writes. */
  get pendingWrites(): number {
    return this.queue.size;
  }

  /** Waits (bounded) for queued writes: shutdown and tests. */
  flush(timeoutMs = 5_000): Promise<boolean> {
    return this.queue.drain(timeoutMs);
  }

  async close(timeoutMs = 5_000): Promise<void> {
    if (this.syncTimer) clearInterval(this.syncTimer);
    this.syncTimer = undefined;
    await this.flush(timeoutMs);
    this.queue.close();
  }
}

/** A key, or undefined when a name is not valid (then nothing is read or written). */
function keyOrUndefined(make: () => string): string | undefined {
  try {
    return make();
  } catch {
    return undefined;
  }
}
