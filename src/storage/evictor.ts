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

  private evictable(digest: string): boolean {
    return !this.index.isPinned(digest) && !this.disk.isOpen(digest);
  }

  /** Evict until usage is at most `target` bytes. Returns bytes freed. */
  async evict(target: number): Promise<number> {
    let freed = 0;
    const passes: Array<[EvictionReason, (d: string) => boolean]> = [
      ['unreferenced', (d) => !this.index.isReferenced(d)],
      ['lru', () => true],
    ];
    for (const [reason, wanted] of passes) {
      if (this.usage() <= target) break;
      // Snapshot the order: deleting while iterating the live map would skip entries.
      for (const digest of [...this.disk.lruOrder()]) {
        if (this.usage() <= target) break;
        if (!this.disk.has(digest) || !this.evictable(digest) || !wanted(digest)) continue;
        freed += await this.remove(digest, reason);
      }
    }
    if (freed > 0) {
      this.logger.info({ freedBytes: freed, diskBytes: this.disk.bytes, budget: this.opts.maxBytes }, 'evicted from disk cache');
    } else if (this.usage() > target) {
      this.logger.warn({ diskBytes: this.disk.bytes, budget: this.opts.maxBytes }, 'over budget but nothing evictable (pinned or in use)');
    }
    return freed;
  }

  /** Delete one digest from disk and memory, and forget it as a manifest. */
  async remove(digest: string, reason: EvictionReason | 'purge'): Promise<number> {
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
