import { createReadStream, readdirSync, statSync } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from '../logger.ts';
import type { ByteRange } from '../oci/range.ts';
import type { BlobStore } from './blob-store.ts';
import type { CacheLayout } from './layout.ts';
import { OpenFile } from './open-file.ts';
import { digestFromHex, type Digest } from '../oci/digest.ts';

/** How often at most a read refreshes a blob's mtime (its persisted recency). */
const TOUCH_PERSIST_MS = 10 * 60_000;

/**
 * The disk tier: owns blobs/ and tmp/ under the data dir, the in-memory map of what is
 * committed there (digest -> size), the recency order (least recently used first; persisted
 * as file mtimes, so it survives a restart) and the count of open readers per digest.
 */
export class DiskBlobStore implements BlobStore {
  private readonly sizes = new Map<Digest, number>();
  /** digest -> last access (ms). Map order is recency order: oldest first. */
  private readonly recency = new Map<Digest, { at: number; persisted: number }>();
  private readonly readers = new Map<Digest, number>();
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
    this.recency.clear();
    this.totalBytes = 0;
    const found: Array<{ digest: Digest; size: number; mtime: number }> = [];
    // Synchronous on purpose: this runs once, before the server listens, and 100k stat calls
    // in a tight loop take a third of the time the same calls take through the thread pool.
    for (const shard of readdirSync(this.layout.blobsDir)) {
      if (!/^[a-f0-9]{2}$/.test(shard)) continue;
      const dir = path.join(this.layout.blobsDir, shard);
      for (const name of readdirSync(dir)) {
        const digest = digestFromHex(name);
        if (digest === undefined || !name.startsWith(shard)) continue;
        const st = statSync(path.join(dir, name), { throwIfNoEntry: false });
        if (st?.isFile()) found.push({ digest, size: st.size, mtime: st.mtimeMs });
      }
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) {
      this.sizes.set(f.digest, f.size);
      this.recency.set(f.digest, { at: f.mtime, persisted: f.mtime });
      this.totalBytes += f.size;
    }
    if (removedTemps > 0) this.logger.info({ removedTemps }, 'removed leftovers of interrupted fills');
    return { blobs: this.sizes.size, bytes: this.totalBytes, removedTemps };
  }

  get bytes(): number {
    return this.totalBytes;
  }

  get count(): number {
    return this.sizes.size;
  }

  /** Record a read: moves the digest to the most-recent end; persists it now and then. */
  touch(digest: Digest, now = Date.now()): void {
    const r = this.recency.get(digest);
    if (!r) return;
    this.recency.delete(digest);
    this.recency.set(digest, { at: now, persisted: r.persisted });
    if (now - r.persisted > TOUCH_PERSIST_MS) {
      r.persisted = now;
      const t = new Date(now);
      void fs.utimes(this.layout.blobPath(digest), t, t).catch(() => undefined);
    }
  }

  /** Persist every access not yet written as an mtime (graceful shutdown). */
  async flushRecency(): Promise<number> {
    let n = 0;
    for (const [digest, r] of this.recency) {
      if (r.at <= r.persisted) continue;
      const t = new Date(r.at);
      await fs.utimes(this.layout.blobPath(digest), t, t).catch(() => undefined);
      r.persisted = r.at;
      n++;
    }
    return n;
  }

  lastAccess(digest: Digest): number | undefined {
    return this.recency.get(digest)?.at;
  }

  /** Digests from least to most recently used. */
  lruOrder(): IterableIterator<Digest> {
    return this.recency.keys();
  }

  /** Whether a reader has the digest open right now. */
  isOpen(digest: Digest): boolean {
    return (this.readers.get(digest) ?? 0) > 0;
  }

  has(digest: Digest): boolean {
    return this.sizes.has(digest);
  }

  sizeOf(digest: Digest): number | undefined {
    return this.sizes.get(digest);
  }

  async stat(digest: Digest): Promise<number | undefined> {
    return this.sizes.get(digest);
  }

  pathOf(digest: Digest): string {
    return this.layout.blobPath(digest);
  }

  async open(digest: Digest, range?: ByteRange): Promise<Readable | undefined> {
    if (!this.sizes.has(digest)) return undefined;
    const file = this.layout.blobPath(digest);
    try {
      // Open first so a concurrent delete shows up here as a miss, not as a stream error later.
      const fh = await fs.open(file, 'r');
      this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
      this.touch(digest);
      // The stream owns the FileHandle and closes it (closing the raw fd ourselves as well
      // would close a number the kernel may already have given to another open file).
      return createReadStream('', {
        fd: fh,
        start: range?.start,
        end: range?.end,
        highWaterMark: 1024 * 1024,
        autoClose: true,
      }).on('close', () => {
        const n = (this.readers.get(digest) ?? 1) - 1;
        if (n <= 0) this.readers.delete(digest);
        else this.readers.set(digest, n);
      });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw e;
    }
  }

  /** The committed file for one response (see OpenFile); undefined on a miss. */
  async openFile(digest: Digest, range?: ByteRange): Promise<OpenFile | undefined> {
    const size = this.sizes.get(digest);
    if (size === undefined) return undefined;
    let fh;
    try {
      fh = await fs.open(this.layout.blobPath(digest), 'r');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw e;
    }
    this.readers.set(digest, (this.readers.get(digest) ?? 0) + 1);
    this.touch(digest);
    return new OpenFile(fh, range?.start ?? 0, range?.end ?? size - 1, () => {
      const n = (this.readers.get(digest) ?? 1) - 1;
      if (n <= 0) this.readers.delete(digest);
      else this.readers.set(digest, n);
    });
  }

  async read(digest: Digest): Promise<Buffer | undefined> {
    if (!this.sizes.has(digest)) return undefined;
    try {
      const b = await fs.readFile(this.layout.blobPath(digest));
      this.touch(digest);
      return b;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        this.forget(digest);
        return undefined;
      }
      throw e;
    }
  }

  async put(digest: Digest, data: Buffer): Promise<void> {
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
  tempPathFor(digest: Digest): string {
    return this.layout.tempPath(digest);
  }

  /** Rename a verified, fsync'd temp file into place. */
  async commitTemp(tmp: string, digest: Digest, size: number): Promise<void> {
    const final = this.layout.blobPath(digest);
    await fs.mkdir(path.dirname(final), { recursive: true });
    await fs.rename(tmp, final);
    if (!this.sizes.has(digest)) {
      this.sizes.set(digest, size);
      this.totalBytes += size;
    }
    const now = Date.now();
    this.recency.delete(digest);
    this.recency.set(digest, { at: now, persisted: now });
  }

  async delete(digest: Digest): Promise<void> {
    await fs.rm(this.layout.blobPath(digest), { force: true });
    this.forget(digest);
  }

  private forget(digest: Digest): void {
    const s = this.sizes.get(digest);
    if (s !== undefined) {
      this.sizes.delete(digest);
      this.totalBytes -= s;
    }
    this.recency.delete(digest);
  }
}
