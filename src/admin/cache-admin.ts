// What operators can do to the cache: list, stats, pin/unpin, freeze/unfreeze, purge, history.
// Owns no state of its own: it works on CacheIndex, DiskBlobStore, MemoryCache and Evictor.
import { RegistryError } from '../errors.ts';
import type { Metrics } from '../metrics.ts';
import type { CacheIndex, HistoryRecord } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import type { DiskHealth } from '../storage/disk-health.ts';
import type { Evictor } from '../storage/evictor.ts';
import type { MemoryCache } from '../storage/memory-cache.ts';
import type { ImageRef, RepoRef } from './image-ref.ts';
import type { ImagePuller } from './image-puller.ts';
import type { Digest } from '../oci/digest.ts';
import type { CacheEvents } from '../cache-events.ts';
import type { BucketPurgeResult, PurgedFromCache } from '../s3/shared-metadata.ts';

export interface CachedImage {
  registry: string;
  repository: string;
  tags: string[];
  digest: Digest;
  mediaType: string;
  size: number;
  cachedBlobs: number;
  missingBlobs: number;
  lastAccess: string | null;
  pinned: boolean;
  frozenTags: string[];
}

export interface CacheAdminDeps {
  index: CacheIndex;
  disk: DiskBlobStore;
  memory: MemoryCache;
  evictor: Evictor;
  health: DiskHealth;
  puller: ImagePuller;
  metrics: Metrics;
  maxBytes: number;
  memoryBytes: number;
  /** Pins and freezes are announced here (replication sends them to ocirelay peers). */
  events?: CacheEvents;
  /** The region's bucket (storage.s3): a purge removes its records and unneeded content there too. */
  region?: { purged(p: PurgedFromCache, stillNeeded: (d: Digest) => boolean): Promise<BucketPurgeResult> };
}

const iso = (ms: number | undefined) => (ms === undefined ? null : new Date(ms).toISOString());

export class CacheAdmin {
  constructor(private readonly d: CacheAdminDeps) {}

  /** All digests of the image rooted at `digest` (itself, child manifests, blobs) that we know of. */
  private closure(digest: Digest): Digest[] {
    const out = new Set<Digest>([digest]);
    const stack = [digest];
    while (stack.length > 0) {
      const m = this.d.index.manifestMeta(stack.pop()!);
      for (const r of m?.refs ?? []) {
        if (out.has(r)) continue;
        out.add(r);
        if (this.d.index.isManifest(r)) stack.push(r);
      }
    }
    return [...out];
  }

  /** The digest a reference points to in the cache (frozen tag first), if known. */
  private resolve(ref: ImageRef): Digest | undefined {
    if (ref.digest) return ref.digest;
    const tag = ref.tag!;
    return this.d.index.frozen(ref.registry, ref.repository, tag)?.digest ?? this.d.index.tag(ref.registry, ref.repository, tag)?.digest;
  }

  listImages(filter: { registry?: string; repository?: string }): CachedImage[] {
    const { index, disk } = this.d;
    const out: CachedImage[] = [];
    for (const { registry, repository } of index.repositories()) {
      if (filter.registry && filter.registry !== registry) continue;
      if (filter.repository && filter.repository !== repository) continue;
      const roots = new Map<Digest, { tags: Set<string>; frozen: Set<string> }>();
      const root = (d: Digest) => {
        let r = roots.get(d);
        if (!r) roots.set(d, (r = { tags: new Set(), frozen: new Set() }));
        return r;
      };
      for (const [tag, rec] of index.tagRecordsOf(registry, repository)) {
        if (!index.frozen(registry, repository, tag)) root(rec.digest).tags.add(tag);
      }
      for (const [tag, f] of index.frozenTagsOf(registry, repository)) {
        root(f.digest).tags.add(tag);
        root(f.digest).frozen.add(tag);
      }
      for (const p of index.pinsOf(registry, repository)) if (p.digests[0]) root(p.digests[0]);
      // Cached manifests of this repository that nothing above covers (pulled by digest).
      const linkedManifests = index.linksOf(registry, repository).filter((d) => index.isManifest(d) && disk.has(d));
      const children = new Set<Digest>();
      for (const d of linkedManifests) for (const r of index.manifestMeta(d)?.refs ?? []) children.add(r);
      for (const d of linkedManifests) if (!children.has(d)) root(d);

      for (const [digest, info] of roots) {
        // A tag whose manifest was evicted is remembered, but the image is not cached.
        if (!disk.has(digest)) continue;
        const meta = index.manifestMeta(digest);
        const all = this.closure(digest);
        let size = 0;
        let cached = 0;
        let last: number | undefined;
        for (const x of all) {
          const s = disk.sizeOf(x);
          if (s === undefined) continue;
          size += s;
          cached++;
          const la = disk.lastAccess(x);
          if (la !== undefined && (last === undefined || la > last)) last = la;
        }
        out.push({
          registry,
          repository,
          tags: [...info.tags].sort(),
          digest,
          mediaType: meta?.mediaType ?? index.tag(registry, repository, [...info.tags][0] ?? '')?.mediaType ?? 'unknown',
          size,
          cachedBlobs: cached,
          missingBlobs: all.length - cached,
          lastAccess: iso(last),
          pinned: all.some((x) => index.isPinned(x)),
          frozenTags: [...info.frozen].sort(),
        });
      }
    }
    return out;
  }

  async stats(): Promise<Record<string, unknown>> {
    const m = this.d.metrics;
    const results: Record<string, number> = { hit: 0, miss: 0, coalesced: 0, stale: 0 };
    for (const v of (await m.cacheResults.get()).values) {
      const r = String(v.labels.result);
      if (r in results && (v.labels.kind === 'blob' || v.labels.kind === 'manifest')) results[r] = (results[r] ?? 0) + v.value;
    }
    const served: Record<string, number> = { cache: 0, upstream: 0 };
    for (const v of (await m.bytesServed.get()).values) {
      const src = String(v.labels.source);
      if (src === 'memory' || src === 'disk') served.cache = (served.cache ?? 0) + v.value;
      else served.upstream = (served.upstream ?? 0) + v.value;
    }
    const upstreamBytes = (await m.upstreamBytes.get()).values.reduce((a, v) => a + v.value, 0);
    const evictions: Record<string, number> = { unreferenced: 0, lru: 0 };
    for (const v of (await m.evictions.get()).values) evictions[String(v.labels.reason)] = v.value;
    const rateLimits: Record<string, { remaining?: number; limit?: number }> = {};
    for (const v of (await m.upstreamRateLimitRemaining.get()).values) (rateLimits[String(v.labels.registry)] ??= {}).remaining = v.value;
    for (const v of (await m.upstreamRateLimitLimit.get()).values) (rateLimits[String(v.labels.registry)] ??= {}).limit = v.value;
    const total = Object.values(results).reduce((a, b) => a + b, 0);
    const fromCache = (results.hit ?? 0) + (results.coalesced ?? 0) + (results.stale ?? 0);
    let pinnedBytes = 0;
    const pinned = new Set(this.d.index.allPins().flatMap((p) => p.digests));
    for (const d of pinned) pinnedBytes += this.d.disk.sizeOf(d) ?? 0;
    return {
      requests: results,
      hitRatio: total === 0 ? 0 : Math.round((fromCache / total) * 1000) / 1000,
      bytesServed: served,
      upstreamBytes,
      egressSavedBytes: served.cache,
      disk: { bytes: this.d.disk.bytes, maxBytes: this.d.maxBytes, entries: this.d.disk.count, pinnedBytes, writable: this.d.health.writable },
      memory: { bytes: this.d.memory.bytes, maxBytes: this.d.memoryBytes, entries: this.d.memory.count },
      evictions,
      rateLimits,
    };
  }

  async pin(ref: ImageRef, platforms: string[] | undefined, freeze: boolean): Promise<Record<string, unknown>> {
    const pulled = await this.d.puller.pull(ref.registry, ref.repository, ref.digest ?? ref.tag!, platforms);
    const id = platforms && platforms.length > 0 ? `${ref.canonical}#${[...platforms].sort().join(',')}` : ref.canonical;
    await this.d.index.pin({ ref: id, registry: ref.registry, repository: ref.repository, digests: pulled.digests, createdAt: Date.now() });
    await this.d.events?.pinChanged({ registry: ref.registry, repository: ref.repository, ref: id, digests: pulled.digests, pinned: true });
    let frozen: { tag: string; digest: Digest } | null = null;
    if (freeze) {
      if (!ref.tag) throw new RegistryError('TAG_INVALID', 'freeze needs a tag reference');
      await this.d.index.freeze(ref.registry, ref.repository, ref.tag, pulled.digest);
      await this.d.events?.freezeChanged({ registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: pulled.digest, at: Date.now() });
      frozen = { tag: ref.tag, digest: pulled.digest };
    }
    return { pinned: { image: ref.canonical, digest: pulled.digest, digests: pulled.digests, bytes: pulled.bytes }, frozen };
  }

  async unpin(ref: ImageRef, unfreeze: boolean): Promise<{ unpinned: number; unfrozen: boolean }> {
    let unpinned = 0;
    for (const p of this.d.index.pinsOf(ref.registry, ref.repository)) {
      if (!(p.ref === ref.canonical || p.ref.startsWith(`${ref.canonical}#`))) continue;
      if (!(await this.d.index.unpin(p.ref))) continue;
      unpinned++;
      await this.d.events?.pinChanged({ registry: ref.registry, repository: ref.repository, ref: p.ref, digests: p.digests, pinned: false });
    }
    const unfrozen = unfreeze && ref.tag ? await this.d.index.unfreeze(ref.registry, ref.repository, ref.tag) : false;
    if (unfrozen) await this.d.events?.freezeChanged({ registry: ref.registry, repository: ref.repository, tag: ref.tag!, digest: undefined, at: Date.now() });
    if (unpinned === 0 && !unfrozen) throw new RegistryError('NOT_FOUND', `${ref.canonical} is not pinned`);
    void this.d.evictor.check();
    return { unpinned, unfrozen };
  }

  async freeze(ref: ImageRef, digest: Digest | undefined): Promise<Record<string, unknown>> {
    if (!ref.tag) throw new RegistryError('TAG_INVALID', 'freeze needs a tag reference (registry/repository:tag)');
    // Resolve the current digest (or make sure the chosen one is cached) by pulling it.
    const pulled = await this.d.puller.pull(ref.registry, ref.repository, digest ?? ref.tag, undefined);
    await this.d.index.freeze(ref.registry, ref.repository, ref.tag, pulled.digest);
    await this.d.events?.freezeChanged({ registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: pulled.digest, at: Date.now() });
    return { frozen: { registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: pulled.digest } };
  }

  async unfreeze(ref: ImageRef): Promise<{ unfrozen: boolean }> {
    if (!ref.tag) throw new RegistryError('TAG_INVALID', 'unfreeze needs a tag reference');
    if (!(await this.d.index.unfreeze(ref.registry, ref.repository, ref.tag))) throw new RegistryError('NOT_FOUND', `${ref.canonical} is not frozen`);
    await this.d.events?.freezeChanged({ registry: ref.registry, repository: ref.repository, tag: ref.tag, digest: undefined, at: Date.now() });
    return { unfrozen: true };
  }

  /** Remove an image (or, with `repo`, a whole repository) and content nothing else references. */
  async purge(
    target: { image?: ImageRef; repo?: RepoRef },
    force: boolean,
  ): Promise<{ removedManifests: number; removedBlobs: number; freedBytes: number; bucket?: BucketPurgeResult }> {
    const { index } = this.d;
    const registry = (target.image ?? target.repo)!.registry;
    const repository = (target.image ?? target.repo)!.repository;
    // What goes, for the region's bucket.
    const gone: PurgedFromCache = { registry, repository, tags: [], unfrozenTags: [], unpinnedRefs: [], digests: [] };
    let digests: Digest[];
    if (target.image) {
      const root = this.resolve(target.image);
      if (!root) throw new RegistryError('MANIFEST_UNKNOWN', `${target.image.canonical} is not cached`);
      digests = this.closure(root);
      if (!force && digests.some((x) => index.isPinned(x))) {
        throw new RegistryError('DENIED', `${target.image.canonical} is pinned: unpin it first, or purge with force`);
      }
      for (const [tag, rec] of index.tagRecordsOf(registry, repository)) {
        if ((target.image.tag && tag === target.image.tag) || (!target.image.tag && rec.digest === root)) {
          await index.untag(registry, repository, tag);
          gone.tags.push(tag);
        }
      }
      if (target.image.tag && index.frozen(registry, repository, target.image.tag)) {
        await index.unfreeze(registry, repository, target.image.tag);
        gone.unfrozenTags.push(target.image.tag);
      }
    } else {
      digests = index.linksOf(registry, repository);
      if (digests.length === 0 && index.tagsOf(registry, repository).length === 0) throw new RegistryError('NAME_UNKNOWN', `${target.repo!.canonical} is not cached`);
      // Without force, pinned images of the repository stay, tags included.
      const pinnedRoot = (d: Digest) => !force && this.closure(d).some((x) => index.isPinned(x));
      for (const [tag, rec] of index.tagRecordsOf(registry, repository)) {
        if (pinnedRoot(rec.digest)) continue;
        await index.untag(registry, repository, tag);
        gone.tags.push(tag);
      }
      for (const [tag, f] of index.frozenTagsOf(registry, repository)) {
        if (pinnedRoot(f.digest)) continue;
        await index.unfreeze(registry, repository, tag);
        gone.unfrozenTags.push(tag);
      }
    }
    if (force) {
      for (const p of index.pinsOf(registry, repository)) {
        if (target.image && !p.digests.includes(digests[0]!)) continue;
        await index.unpin(p.ref);
        gone.unpinnedRefs.push(p.ref);
      }
    }
    // Content that other images of the same repository still use stays.
    const keep = new Set<Digest>();
    if (target.image) {
      for (const [, rec] of index.tagRecordsOf(registry, repository)) for (const x of this.closure(rec.digest)) keep.add(x);
      for (const [, f] of index.frozenTagsOf(registry, repository)) for (const x of this.closure(f.digest)) keep.add(x);
    }
    let removedManifests = 0;
    let removedBlobs = 0;
    let freedBytes = 0;
    for (const d of digests) {
      if (index.isPinned(d) || keep.has(d)) continue;
      await index.unlink(registry, repository, d);
      gone.digests.push(d);
      if (index.linkedElsewhere(d, registry, repository)) continue;
      if (!this.d.disk.has(d)) {
        index.forgetManifest(d);
        continue;
      }
      if (this.d.disk.isOpen(d)) continue; // being read right now: eviction will get it later
      const wasManifest = index.isManifest(d);
      freedBytes += await this.d.evictor.remove(d, 'purge');
      if (wasManifest) removedManifests++;
      else removedBlobs++;
    }
    if (target.repo && (force || index.pinsOf(registry, repository).length === 0)) await index.unlink(registry, repository);
    // Content another repository links here, or a pin keeps, stays in the bucket too.
    const bucket = await this.d.region?.purged(gone, (d) => index.isPinned(d) || index.linkedElsewhere(d, registry, repository));
    return { removedManifests, removedBlobs, freedBytes, ...(bucket ? { bucket } : {}) };
  }

  history(target: { image?: ImageRef; repo?: RepoRef }): Array<Omit<HistoryRecord, 'time'> & { time: string }> {
    const t = (target.image ?? target.repo)!;
    const tag = target.image?.tag;
    if (target.image && !tag) throw new RegistryError('TAG_INVALID', 'history is kept per tag: give registry/repository:tag');
    return this.d.index.historyOf(t.registry, t.repository, tag).map((h) => ({ ...h, time: new Date(h.time).toISOString() }));
  }
}
