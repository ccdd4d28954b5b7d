// Keeps the disk cache within cache.maxBytes: when committed bytes plus bytes of fills in
// flight pass the high watermark, evict down to the low watermark. Never evicts pinned
// content, a blob that a reader has open, or anything still being filled (fills live in tmp/
// until committed). Content no cached manifest or tag refers to goes first, then the least
// recently used.
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { CacheIndex } from './cache-index.ts';
import type { DiskBlobStore } from './disk-blob-store.ts';
import type { MemoryCache } from './memory-cache.ts';
import type { Digest } from '../oci/digest.ts';

export interface EvictorOptions {
  maxBytes: number;
  highWatermark: number;
  lowWatermark: number;
  /** Bytes of fills in flight (they will land on disk). */
  inFlightBytes: () => number;
}

export type EvictionReason = 'unreferenced' | 'lru';

export class Evictor {
  private running: Promise<void> | undefined;
  private again = false;
  private admissions: Promise<void> = Promise.resolve();

  constructor(
    private readonly disk: DiskBlobStore,
    private readonly index: CacheIndex,
    private readonly memory: MemoryCache,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly opts: EvictorOptions,
  ) {
    metrics.cacheBudgetBytes.set(opts.maxBytes);
  }

  private usage(): number {
    return this.disk.bytes + this.opts.inFlightBytes();
  }

  /** Start an eviction pass if over the high watermark (one at a time; coalesced). */
  check(): Promise<void> {
    if (this.usage() <= this.opts.maxBytes * this.opts.highWatermark) return Promise.resolve();
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      try {
        do {
          this.again = false;
          await this.evict(this.opts.maxBytes * this.opts.lowWatermark);
        } while (this.again && this.usage() > this.opts.maxBytes * this.opts.highWatermark);
      } catch (err) {
        this.logger.error({ err }, 'eviction failed');
      } finally {
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /**
   * Run `commit` (which adds `size` bytes to the disk) only once there is room for it under the
   * budget, evicting first if needed. Admissions are serialised, so the committed bytes never
   * pass maxBytes. Returns false (and does not commit) when nothing more can be evicted.
   */
  async admit(size: number, commit: () => Promise<void>): Promise<boolean> {
    const prev = this.admissions;
    let done!: () => void;
    this.admissions = new Promise<void>((r) => (done = r));
    await prev;
    try {
      const max = this.opts.maxBytes;
      if (this.disk.bytes + size > max * this.opts.highWatermark) {
        await this.running;
        await this.evict(Math.max(0, max * this.opts.lowWatermark - size), false);
      }
      if (this.disk.bytes + size > max) {
        this.logger.warn({ size, diskBytes: this.disk.bytes, budget: max }, 'no room under the budget (pinned or in use): not caching this blob');
        return false;
      }
      await commit();
      return true;
    } finally {
      done();
    }
  }

  private evictable(digest: Digest): boolean {
    return !this.index.isPinned(digest) && !this.disk.isOpen(digest);
  }

  /** Evict until usage (committed bytes, plus fills in flight unless told not to) is at most `target`. Returns bytes freed. */
  async evict(target: number, countInFlight = true): Promise<number> {
    const usage = () => (countInFlight ? this.usage() : this.disk.bytes);
    let freed = 0;
    const passes: Array<[EvictionReason, (d: Digest) => boolean]> = [
      ['unreferenced', (d) => !this.index.isReferenced(d)],
      ['lru', () => true],
    ];
    for (const [reason, wanted] of passes) {
      if (usage() <= target) break;
      // Snapshot the order: deleting while iterating the live map would skip entries.
      for (const digest of [...this.disk.lruOrder()]) {
        if (usage() <= target) break;
        if (!this.disk.has(digest) || !this.evictable(digest) || !wanted(digest)) continue;
        freed += await this.remove(digest, reason);
      }
    }
    if (freed > 0) {
      this.logger.info({ freedBytes: freed, diskBytes: this.disk.bytes, budget: this.opts.maxBytes }, 'evicted from disk cache');
    } else if (usage() > target) {
      this.logger.warn({ diskBytes: this.disk.bytes, budget: this.opts.maxBytes }, 'over budget but nothing evictable (pinned or in use)');
    }
    return freed;
  }

  /** Delete one digest from disk and memory, and forget it as a manifest. */
  async remove(digest: Digest, reason: EvictionReason | 'purge'): Promise<number> {
    const size = this.disk.sizeOf(digest) ?? 0;
    await this.disk.delete(digest);
    this.memory.delete(digest);
    this.index.forgetManifest(digest);
    if (reason !== 'purge') {
      this.metrics.evictions.inc({ reason });
      this.metrics.evictedBytes.inc({ reason }, size);
    }
    this.metrics.cacheBytes.set({ tier: 'disk' }, this.disk.bytes);
    this.metrics.cacheEntries.set({ tier: 'disk' }, this.disk.count);
    return size;
  }
}
