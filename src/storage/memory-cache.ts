import { LRUCache } from 'lru-cache';
import type { Digest } from '../oci/digest.ts';

/** The memory tier: manifests and small blobs, bounded in bytes (cache.memoryBytes). */
export class MemoryCache {
  private readonly lru: LRUCache<string, Buffer>;
  /** Objects larger than this are not kept in memory. */
  readonly maxObjectBytes: number;

  constructor(maxBytes: number, maxObjectBytes = Math.min(1024 * 1024, Math.floor(maxBytes / 16))) {
    this.maxObjectBytes = maxObjectBytes;
    this.lru = new LRUCache<string, Buffer>({
      maxSize: Math.max(1, maxBytes),
      sizeCalculation: (b) => Math.max(1, b.length),
    });
  }

  get(digest: Digest): Buffer | undefined {
    return this.lru.get(digest);
  }

  set(digest: Digest, data: Buffer): void {
    if (data.length <= this.maxObjectBytes) this.lru.set(digest, data);
  }

  delete(digest: Digest): void {
    this.lru.delete(digest);
  }

  get bytes(): number {
    return this.lru.calculatedSize;
  }

  get count(): number {
    return this.lru.size;
  }
}
