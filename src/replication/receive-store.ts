// Stores what replication peers push, exactly as a verified fill or manifest fetch would: the
// bytes are checked against their digest first, blobs are committed through the Evictor (budget
// accounting) by rename of an fsync'd temp file, manifests through DiskBlobStore.put with their
// references recorded, and everything is linked to the repository it was pushed to so it is
// served there. Tags keep the newer resolution. Listeners hear of it with via 'push', so the
// replication outbox does not send it onward (full mesh, no loops). Received pins and freezes
// are applied to the index and announced to no one, for the same reason.
import fs from 'node:fs/promises';
import type { CacheEvents } from '../cache-events.ts';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { digestOf, isDigest, type Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, MT, guessManifestMediaType, parseManifest } from '../oci/media-types.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import { isDiskError, type DiskHealth } from '../storage/disk-health.ts';
import type { Evictor } from '../storage/evictor.ts';
import type { MemoryCache } from '../storage/memory-cache.ts';
import type { FinishedUpload } from './upload-sessions.ts';

export interface ReceiveStoreDeps {
  disk: DiskBlobStore;
  memory: MemoryCache;
  index: CacheIndex;
  evictor: Evictor;
  health: DiskHealth;
  events: CacheEvents;
  metrics: Metrics;
  logger: Logger;
  now?: () => number;
}

export interface Repo {
  registry: string;
  repository: string;
}

export type StoreResult = 'stored' | 'exists' | 'skipped_older';

export interface ManifestPush extends Repo {
  peer: string;
  /** A tag or a digest (validated by the route). */
  reference: string;
  body: Buffer;
  contentType: string | undefined;
  /** Tag pushes: when the tag was resolved (ms since epoch); absent: now. */
  resolvedAt: number | undefined;
}

const MANIFEST_TYPES: ReadonlySet<string> = new Set(Object.values(MT));

export class ReceiveStore {
  private readonly now: () => number;

  constructor(private readonly d: ReceiveStoreDeps) {
    this.now = d.now ?? Date.now;
  }

  /** Held on disk and linked to this repository: what a peer's HEAD asks. */
  blobHere(r: Repo, digest: Digest): number | undefined {
    const size = this.d.disk.sizeOf(digest);
    return size !== undefined && this.d.index.isLinked(r.registry, r.repository, digest) ? size : undefined;
  }

  /** Cross-repository mount: only content held here and linked to `from` in the same registry. */
  mount(r: Repo, from: string, digest: Digest): boolean {
    if (!this.d.disk.has(digest) || !this.d.index.isLinked(r.registry, from, digest)) return false;
    this.d.index.link(r.registry, r.repository, digest);
    return true;
  }

  /** Commit a finished upload if it hashes to `expected`; the temp file is gone either way. */
  async commitBlob(peer: string, r: Repo, up: FinishedUpload, expected: Digest): Promise<StoreResult> {
    const { disk, index } = this.d;
    const drop = () => fs.rm(up.tmpPath, { force: true }).catch(() => undefined);
    if (up.digest !== expected) {
      await drop();
      this.d.metrics.digestMismatches.inc({ kind: 'blob' });
      this.d.logger.warn({ peer, ...r, expected, actual: up.digest, size: up.size }, 'pushed blob does not match its digest; not stored');
      throw new RegistryError('DIGEST_INVALID', `uploaded content hashes to ${up.digest}, not ${expected}`);
    }
    if (disk.has(expected)) {
      await drop();
      index.link(r.registry, r.repository, expected);
      return 'exists';
    }
    if (!this.d.health.writable) {
      await drop();
      throw unavailable();
    }
    let admitted: boolean;
    try {
      admitted = await this.d.evictor.admit(up.size, () => disk.commitTemp(up.tmpPath, expected, up.size));
    } catch (e) {
      await drop();
      if (isDiskError(e)) this.d.health.failed(e, 'storing a pushed blob');
      throw unavailable();
    }
    if (!admitted) {
      await drop();
      throw new RegistryError('UNAVAILABLE', 'no room under the cache budget (pinned or in use)', { headers: { 'Retry-After': '60' } });
    }
    index.link(r.registry, r.repository, expected);
    this.d.metrics.cacheBytes.set({ tier: 'disk' }, disk.bytes);
    this.d.metrics.cacheEntries.set({ tier: 'disk' }, disk.count);
    setImmediate(() => void this.d.evictor.check());
    await this.announce(() => this.d.events.contentCommitted({ kind: 'blob', ...r, digest: expected, size: up.size, via: 'push' }));
    return 'stored';
  }

  async putManifest(p: ManifestPush): Promise<{ digest: Digest; mediaType: string; result: StoreResult; tag?: StoreResult }> {
    const { disk, index } = this.d;
    const r: Repo = { registry: p.registry, repository: p.repository };
    if (p.body.length > MAX_MANIFEST_BYTES) throw new RegistryError('SIZE_INVALID', `manifest exceeds ${MAX_MANIFEST_BYTES} bytes`, { status: 413 });
    const digest = digestOf(p.body);
    if (isDigest(p.reference) && p.reference !== digest) {
      this.d.metrics.digestMismatches.inc({ kind: 'manifest' });
      throw new RegistryError('DIGEST_INVALID', `manifest hashes to ${digest}, not ${p.reference}`);
    }
    let parsed;
    try {
      parsed = parseManifest(p.body);
    } catch {
      throw new RegistryError('MANIFEST_INVALID', 'manifest is not a JSON object');
    }
    const refs = [...parsed.blobs, ...parsed.manifests];
    if (refs.some((x) => !isDigest(x))) throw new RegistryError('MANIFEST_INVALID', 'manifest references a digest that is not sha256:<64 hex>');
    const childRefs = refs.filter(isDigest);
    const ct = p.contentType?.split(';')[0]?.trim().toLowerCase();
    const mediaType =
      parsed.mediaType !== undefined && MANIFEST_TYPES.has(parsed.mediaType)
        ? parsed.mediaType
        : ct !== undefined && MANIFEST_TYPES.has(ct)
          ? ct
          : guessManifestMediaType(p.body);

    let result: StoreResult = 'exists';
    if (!disk.has(digest)) {
      if (!this.d.health.writable) throw unavailable();
      // The journal record before the file (see CacheIndex.recordManifest).
      await index.recordManifest(digest, mediaType, p.body.length, childRefs);
      try {
        await disk.put(digest, p.body);
      } catch (e) {
        this.d.health.failed(e, 'storing a pushed manifest');
        throw unavailable();
      }
      result = 'stored';
      void this.d.evictor.check();
    }
    await index.recordManifest(digest, mediaType, p.body.length, childRefs);
    index.link(r.registry, r.repository, digest);
    this.d.memory.set(digest, p.body);
    if (result === 'stored') {
      await this.announce(() => this.d.events.contentCommitted({ kind: 'manifest', ...r, digest, size: p.body.length, mediaType, via: 'push' }));
    }
    if (isDigest(p.reference)) return { digest, mediaType, result };

    // A resolution from the future (a peer's clock ahead) would keep the tag fresh too long and
    // win every race: it counts as resolved now.
    const resolvedAt = Math.min(p.resolvedAt ?? this.now(), this.now());
    const prev = index.tag(r.registry, r.repository, p.reference);
    const applied = index.setTagIfNewer(r.registry, r.repository, p.reference, { digest, mediaType, checkedAt: resolvedAt });
    if (!applied) {
      this.d.logger.info(
        { peer: p.peer, ...r, tag: p.reference, pushed: digest, pushedAt: new Date(resolvedAt).toISOString(), kept: prev?.digest, keptAt: prev ? new Date(prev.checkedAt).toISOString() : undefined },
        'pushed tag resolution is not newer than ours: kept ours',
      );
      return { digest, mediaType, result, tag: 'skipped_older' };
    }
    if (prev?.digest === digest) return { digest, mediaType, result, tag: 'exists' };
    this.d.logger.info({ peer: p.peer, ...r, tag: p.reference, from: prev?.digest, to: digest }, 'tag moved by a replication push');
    await this.announce(() => this.d.events.tagResolved({ ...r, tag: p.reference, digest, mediaType, resolvedAt, via: 'push' }));
    return { digest, mediaType, result, tag: 'stored' };
  }

  /** A frozen tag from a peer; the later freeze wins. */
  async freeze(r: Repo, tag: string, digest: Digest, at: number): Promise<StoreResult> {
    const cur = this.d.index.frozen(r.registry, r.repository, tag);
    if (cur && cur.at > at) return 'skipped_older';
    if (cur && cur.at === at && cur.digest === digest) return 'exists';
    // Served under this repository from now on, whatever the upstream says.
    this.d.index.link(r.registry, r.repository, digest);
    await this.d.index.freeze(r.registry, r.repository, tag, digest, at);
    return 'stored';
  }

  /** `at`: when the peer unfroze it; a freeze made here later stays. */
  async unfreeze(r: Repo, tag: string, at: number | undefined): Promise<StoreResult> {
    const cur = this.d.index.frozen(r.registry, r.repository, tag);
    if (!cur) return 'exists';
    if (at !== undefined && cur.at > at) return 'skipped_older';
    await this.d.index.unfreeze(r.registry, r.repository, tag);
    return 'stored';
  }

  async pin(r: Repo, ref: string, digests: Digest[], createdAt: number): Promise<StoreResult> {
    const cur = this.d.index.allPins().find((p) => p.ref === ref);
    if (cur && (cur.registry !== r.registry || cur.repository !== r.repository)) throw new RegistryError('DENIED', `pin ${ref} belongs to another repository`);
    if (cur && cur.createdAt > createdAt) return 'skipped_older';
    if (cur && cur.createdAt === createdAt && cur.digests.length === digests.length && cur.digests.every((x, i) => x === digests[i])) return 'exists';
    for (const x of digests) this.d.index.link(r.registry, r.repository, x);
    await this.d.index.pin({ ref, registry: r.registry, repository: r.repository, digests, createdAt });
    return 'stored';
  }

  async unpin(r: Repo, ref: string): Promise<StoreResult> {
    const cur = this.d.index.pinsOf(r.registry, r.repository).find((p) => p.ref === ref);
    if (!cur) return 'exists';
    await this.d.index.unpin(ref);
    void this.d.evictor.check();
    return 'stored';
  }

  /** Tell the listeners; a failing listener is logged, what was stored stays stored. */
  private async announce(emit: () => Promise<void>): Promise<void> {
    try {
      await emit();
    } catch (err) {
      this.d.logger.error({ err }, 'a cache listener failed on received content');
    }
  }
}

function unavailable(): RegistryError {
  return new RegistryError('UNAVAILABLE', 'the disk cache is not writable right now', { headers: { 'Retry-After': '30' } });
}
