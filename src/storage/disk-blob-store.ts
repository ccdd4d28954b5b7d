import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '../logger.ts';
import type { ByteRange } from '../oci/range.ts';
import type { BlobStore } from './blob-store.ts';
import type { CacheLayout } from './layout.ts';

/**
 * The disk tier: owns blobs/ and tmp/ under the data dir and the in-memory map of what is
 * committed there (digest -> size), rebuilt from the directory at start-up.
 */
export class DiskBlobStore implements BlobStore {
  private readonly sizes = new Map<string, number>();
  private totalBytes = 0;

  constructor(
    private readonly layout: CacheLayout,
    private readonly logger: Logger,
  ) {}

  /** Create directories, delete leftovers of interrupted fills, index committed blobs. */
  async init(): Promise<{ blobs: number; bytes: number; removedTemps: number }> {
    await fs.mkdir(this.layout.blobsDir, { recursive: true });
    await fs.mkdir(this.layout.indexDir, { recursive: true });
    let removedTemps = 0;
    await fs.mkdir(this.layout.tmpDir, { recursive: true });
    for (const f of await fs.readdir(this.layout.tmpDir)) {
      await fs.rm(path.join(this.layout.tmpDir, f), { force: true, recursive: true });
      removedTemps++;
    }
    this.sizes.clear();
    this.totalBytes = 0;
    const shards = await fs.readdir(this.layout.blobsDir);
    await Promise.all(
      shards.map(async (shard) => {
        if (!/^[a-f0-9]{2}$/.test(shard)) return;
        const dir = path.join(this.layout.blobsDir, shard);
        for (const ent of await fs.readdir(dir, { withFileTypes: true })) {
          if (!ent.isFile() || !/^[a-f0-9]{64}$/.test(ent.name) || !ent.name.startsWith(shard)) continue;
          const st = await fs.stat(path.join(dir, ent.name));
          this.sizes.set(`sha256:${ent.name}`, st.size);
          this.totalBytes += st.size;
        }
      }),
    );
    if (removedTemps > 0) this.logger.info({ removedTemps }, 'removed leftovers of interrupted fills');
    return { blobs: this.sizes.size, bytes: this.totalBytes, removedTemps };
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get count(): number {
    return this.sizes.size;
  }

  has(digest: string): boolean {
    return this.sizes.has(digest);
  }

  sizeOf(digest: string): number | undefined {
    return this.sizes.get(digest);
  }

  async stat(digest: string): Promise<number | undefined> {
    return this.sizes.get(digest);
  }

  pathOf(digest: string): string {
    return this.layout.blobPath(digest);
  }

  async open(digest: string, range?: ByteRange): Promise<Readable | undefined> {
    if (!this.sizes.has(digest)) return undefined;
    const file = this.layout.blobPath(digest);
    try {
      // Open first so a concurrent delete shows up here as a miss, not as a stream error later.
      const fh = await fs.open(file, 'r');
      return createReadStream('', {
        fd: fh.fd,
        start: range?.start,
        end: range?.end,
        highWaterMark: 256 * 1024,
        autoClose: true,
      }).on('close', () => void fh.close().catch(() => undefined));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw e;
    }
  }

  async read(digest: string): Promise<Buffer | undefined> {
    if (!this.sizes.has(digest)) return undefined;
    try {
      return await fs.readFile(this.layout.blobPath(digest));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw e;
    }
  }

  async put(digest: string, data: Buffer): Promise<void> {
    if (this.sizes.has(digest)) return;
    const tmp = this.layout.tempPath(digest);
    const fh = await fs.open(tmp, 'w');
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await this.commitTemp(tmp, digest, data.length);
  }

  /** A fresh temp file for a fill. The caller verifies, then calls commitTemp or discards it. */
  tempPathFor(digest: string): string {
    return this.layout.tempPath(digest);
  }

  /** Rename a verified, fsync'd temp file into place. */
  async commitTemp(tmp: string, digest: string, size: number): Promise<void> {
    const final = this.layout.blobPath(digest);
    await fs.mkdir(path.dirname(final), { recursive: true });
    await fs.rename(tmp, final);
    if (!this.sizes.has(digest)) {
      this.sizes.set(digest, size);
      this.totalBytes += size;
    }
  }

  async delete(digest: string): Promise<void> {
    await fs.rm(this.layout.blobPath(digest), { force: true });
    this.forget(digest);
  }

  private forget(digest: string): void {
    const s = this.sizes.get(digest);
    if (s !== undefined) {
      this.sizes.delete(digest);
      this.totalBytes -= s;
    }
  }
}
