// One download of one blob from an upstream into a temp file, shared by every client that
// wants it. Bytes are hashed and written as they arrive; clients read the growing file through
// FillReader at their own pace (a slow client never slows the fill; the fill never waits for
// a client). The file is committed only after its digest and size match; on any failure every
// reader is destroyed with an error, so no client response ever ends cleanly on bad bytes.
// Readers hold back the last byte of their range until the fill is committed, so even a
// client that has received everything else cannot see a complete body before verification.
import { createHash } from 'node:crypto';
import fs, { type FileHandle } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { Readable } from 'node:stream';
import { sendChunks, type BodySource } from '../storage/body-source.ts';
import type { ByteRange } from '../oci/range.ts';
import type { RegistryError } from '../errors.ts';
import type { Digest } from '../oci/digest.ts';

export type FillFailure = 'digest_mismatch' | 'size_mismatch' | 'truncated' | 'upstream_error' | 'disk_error' | 'no_room' | 'aborted';

/** Thrown by a commit hook when the cache budget has no room: the blob is served, not cached. */
export class NoRoomError extends Error {
  constructor() {
    super('no room under the cache budget');
    this.name = 'NoRoomError';
  }
}

export class FillError extends Error {
  constructor(
    readonly reason: FillFailure,
    message: string,
  ) {
    super(message);
    this.name = 'FillError';
  }
}

export interface FillSource {
  /** Bytes of the blob from the upstream, in order. */
  body: Readable;
  /**
   * The size the blob must have: a descriptor's when the caller had one (prefetch, pin), else
   * the upstream's Content-Length, when it sent one. The first byte beyond it aborts the fill.
   */
  size: number | undefined;
  /** Where `size` came from (absent: the Content-Length). */
  sizeFrom?: 'descriptor' | 'content-length';
  /** The upstream's Content-Length when `size` is a descriptor's: a different one fails the fill before any byte is read. */
  contentLength?: number;
}

export interface FillHooks {
  /** Open the upstream body; throw a RegistryError (mapped from the upstream's answer) when there is none. */
  openUpstream(signal: AbortSignal): Promise<FillSource>;
  /** Move the verified, fsync'd temp file into place (and index it). */
  commit(tempPath: string, size: number, smallCopy: Buffer | undefined): Promise<void>;
  onFinished(fill: BlobFill, outcome: 'committed' | FillFailure): void;
  /** A cache write failed (ENOSPC, EROFS...): the disk is in trouble. */
  onDiskError(e: unknown): void;
  /** Throws (ENOSPC) when `size` bytes cannot fit on disk right now. */
  reserve(size: number): Promise<void>;
  /** Keep an in-memory copy of blobs up to this size (for the memory tier). */
  smallCopyMax: number;
  /** Cap on a fill of no known size (no descriptor, no Content-Length): the first byte beyond it aborts the fill. */
  maxUnknownSize: number;
  /** Shared bound on the written batches fills keep in memory; without it, MEMORY_WINDOW per fill. */
  windowBudget?: WindowBudget;
}

type State = 'starting' | 'running' | 'committed' | 'failed';

const WRITE_BATCH = 1024 * 1024;
const WRITES_IN_FLIGHT = 4;
/**
 * Written batches kept in memory behind the write front, so that readers close behind the
 * fill (the usual case: the first client, and a herd) send them straight from memory, with
 * no read back from the file. Readers further behind read the file. Per fill, and bounded over
 * all fills by a WindowBudget.
 */
const MEMORY_WINDOW = 4 * 1024 * 1024;

/** Bytes all fills together may keep behind their write fronts (shared by the fills of a process). */
export class WindowBudget {
  used = 0;
  constructor(readonly limit: number) {}
  get over(): boolean {
    return this.used > this.limit;
  }
}

/** One written batch: the upstream's chunks as they came (no copy), `len` bytes from `start`. */
interface Block {
  start: number;
  chunks: Buffer[];
  len: number;
}

export class BlobFill {
  readonly digest: Digest;
  /** The registry/repository whose upstream request this fill is. */
  readonly origin: string;
  readonly tempPath: string;
  state: State = 'starting';
  /**
   * Every byte is written and its digest and size match. Readers may deliver the last byte
   * from here on; the fsync and rename that commit the file to the cache come after (a
   * failure there only means it is not cached: what the clients received was verified).
   */
  verified = false;
  written = 0;
  size: number | undefined;
  error: Error | undefined;
  readonly ready: Promise<void>;
  /** Resolves when the fill has finished: committed to the cache, or failed. */
  readonly settled: Promise<'committed' | FillFailure>;
  private settle!: (outcome: 'committed' | FillFailure) => void;

  private fh: FileHandle | undefined;
  private readers = 0;
  /** Batches handed to writes, oldest first: [blocks[0].start, queued) is in memory. */
  private blocks: Block[] = [];
  private blockBytes = 0;
  private tick!: Promise<void>;
  private wake!: () => void;
  private readonly abort = new AbortController();
  private resolveReady!: () => void;
  private rejectReady!: (e: Error) => void;

  constructor(digest: Digest, origin: string, tempPath: string, private readonly hooks: FillHooks) {
    this.digest = digest;
    this.origin = origin;
    this.tempPath = tempPath;
    this.ready = new Promise<void>((res, rej) => {
      this.resolveReady = res;
      this.rejectReady = rej;
    });
    // A fill nobody awaits any more must not raise an unhandled rejection.
    this.ready.catch(() => undefined);
    this.settled = new Promise((r) => (this.settle = r));
    this.newTick();
  }

  private newTick(): void {
    this.tick = new Promise<void>((r) => (this.wake = r));
  }

  private notify(): void {
    const w = this.wake;
    this.newTick();
    w();
  }

  /** Resolves at the next change: more bytes written, committed or failed. */
  changed(): Promise<void> {
    return this.tick;
  }

  get finished(): boolean {
    return this.state === 'committed' || this.state === 'failed';
  }

  /** Cancel the fill (shutdown). Readers are aborted, nothing is committed. */
  cancel(): void {
    this.abort.abort(new FillError('aborted', 'fill cancelled'));
  }

  async run(): Promise<void> {
    let src: FillSource;
    try {
      src = await this.hooks.openUpstream(this.abort.signal);
    } catch (e) {
      this.state = 'failed';
      this.error = e as Error;
      this.rejectReady(e as RegistryError);
      this.notify();
      this.hooks.onFinished(this, 'upstream_error');
      this.settle('upstream_error');
      return;
    }
    this.size = src.size;
    try {
      if (src.size !== undefined) await this.hooks.reserve(src.size);
      this.fh = await fs.open(this.tempPath, 'w+');
    } catch (e) {
      src.body.destroy();
      this.hooks.onDiskError(e);
      this.state = 'failed';
      this.error = new FillError('disk_error', `cannot create temp file: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      this.rejectReady(this.error);
      this.notify();
      this.hooks.onFinished(this, 'disk_error');
      this.settle('disk_error');
      return;
    }
    this.state = 'running';
    this.resolveReady();
    const outcome = await this.copy(src);
    if (outcome === 'committed') {
      this.state = 'committed';
    } else {
      // Remove the temp file before readers learn of the failure: once a client sees its
      // transfer aborted, no trace of the bad bytes is left.
      await fs.rm(this.tempPath, { force: true }).catch(() => undefined);
      this.state = 'failed';
      this.dropWindow();
    }
    this.notify();
    this.maybeClose();
    this.hooks.onFinished(this, outcome);
    this.settle(outcome);
  }

  private async copy(src: FillSource): Promise<'committed' | FillFailure> {
    const fh = this.fh!;
    const hash = createHash('sha256');
    const keep = src.size !== undefined && src.size <= this.hooks.smallCopyMax ? ([] as Buffer[]) : undefined;
    const onAbort = () => src.body.destroy(this.abort.signal.reason as Error);
    this.abort.signal.addEventListener('abort', onAbort, { once: true });
    const sizeName = src.sizeFrom === 'descriptor' ? "the descriptor's size" : 'its Content-Length';
    try {
      if (src.sizeFrom === 'descriptor' && src.contentLength !== undefined && src.contentLength !== src.size) {
        throw new FillError('size_mismatch', `upstream Content-Length ${src.contentLength} differs from the descriptor's size ${src.size}`);
      }
      try {
        // Chunks are hashed as they arrive and written in batches: a batch is written when it
        // reaches 1 MiB, or at the end of the event-loop turn in which its chunks arrived (a
        // setImmediate), so a slow upstream's bytes still reach readers at once while a fast one
        // (many chunks per turn) gets big writes. Up to WRITES_IN_FLIGHT batches are written at
        // once (positional writes to disjoint ranges); `written` only advances over a
        // contiguous prefix of completed writes, so readers never see a hole.
        let batch: Buffer[] = [];
        let batchBytes = 0;
        let received = 0;
        let queued = 0; // bytes handed to writes so far
        let turnFlush: NodeJS.Immediate | undefined;
        const inFlight: Array<{ end: number; done: boolean; p: Promise<void> }> = [];
        const writeAll = async (bufs: Buffer[], pos: number, len: number) => {
          let pending = bufs;
          let at = pos;
          let left = len;
          while (left > 0) {
            const { bytesWritten } = await fh.writev(pending, at);
            at += bytesWritten;
            left -= bytesWritten;
            if (left > 0) pending = [Buffer.concat(pending).subarray(bytesWritten)];
          }
        };
        const advance = () => {
          let moved = false;
          while (inFlight.length > 0 && inFlight[0]!.done) {
            this.written = inFlight.shift()!.end;
            moved = true;
          }
          if (moved) {
            this.trimWindow();
            this.notify();
          }
        };
        const startWrite = () => {
          const w = { end: queued + batchBytes, done: false, p: Promise.resolve() };
          // One writev per batch; the same chunks are what readers close behind send.
          this.blocks.push({ start: queued, chunks: batch, len: batchBytes });
          this.blockBytes += batchBytes;
          if (this.hooks.windowBudget) this.hooks.windowBudget.used += batchBytes;
          w.p = writeAll(batch, queued, batchBytes).then(() => {
            w.done = true;
            advance();
          });
          // Observed below (await / allSettled); this keeps a failure from counting as unhandled.
          w.p.catch(() => undefined);
          queued += batchBytes;
          batch = [];
          batchBytes = 0;
          inFlight.push(w);
        };
        const flush = async () => {
          while (inFlight.length >= WRITES_IN_FLIGHT) await inFlight[0]!.p;
          if (batchBytes > 0) startWrite();
        };
        const onTurnEnd = () => {
          turnFlush = undefined;
          if (batchBytes > 0 && inFlight.length < WRITES_IN_FLIGHT) startWrite();
        };
        try {
          try {
            for await (const chunk of src.body as AsyncIterable<Buffer>) {
              received += chunk.length;
              if (src.size !== undefined && received > src.size) {
                throw new FillError('size_mismatch', `upstream sent more than ${sizeName} ${src.size}`);
              }
              if (src.size === undefined && received > this.hooks.maxUnknownSize) {
                throw new FillError('size_mismatch', `upstream body without Content-Length exceeds cache.maxBlobBytes (${this.hooks.maxUnknownSize})`);
              }
              hash.update(chunk);
              keep?.push(chunk);
              batch.push(chunk);
              batchBytes += chunk.length;
              if (batchBytes >= WRITE_BATCH) await flush();
              else turnFlush ??= setImmediate(onTurnEnd);
            }
          } finally {
            if (turnFlush) clearImmediate(turnFlush);
            turnFlush = undefined;
          }
          if (batchBytes > 0) await flush();
        } finally {
          // Every write settles before the fill decides anything (a failed one rejects here).
          const results = await Promise.allSettled(inFlight.map((w) => w.p));
          const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
          if (failed) throw failed.reason;
        }
      } catch (e) {
        if (e instanceof FillError) throw e;
        if (this.abort.signal.aborted) throw new FillError('aborted', 'fill cancelled');
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'ENOSPC' || code === 'EIO' || code === 'EDQUOT' || code === 'EROFS') {
          this.hooks.onDiskError(e);
          throw new FillError('disk_error', `disk write failed: ${code}`);
        }
        throw new FillError('truncated', `upstream body failed after ${this.written} bytes: ${(e as Error).message}`);
      }
      if (src.size !== undefined && this.written !== src.size) {
        throw new FillError('truncated', `upstream body ended after ${this.written} of ${src.size} bytes (${sizeName})`);
      }
      const actual = `sha256:${hash.digest('hex')}`;
      if (actual !== this.digest) throw new FillError('digest_mismatch', `upstream content has digest ${actual}, expected ${this.digest}`);
      this.size = this.written;
      this.verified = true;
      this.notify();
      try {
        await fh.sync();
        await this.hooks.commit(this.tempPath, this.written, keep ? Buffer.concat(keep) : undefined);
      } catch (e) {
        if (e instanceof NoRoomError) throw new FillError('no_room', e.message);
        this.hooks.onDiskError(e);
        throw new FillError('disk_error', `commit failed: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      this.size = this.written;
      return 'committed';
    } catch (e) {
      this.error = e as Error;
      src.body.destroy();
      return e instanceof FillError ? e.reason : 'truncated';
    } finally {
      this.abort.signal.removeEventListener('abort', onAbort);
    }
  }

  /** A stream of the blob (or one range of it) from the growing file. Call after `ready`. */
  createReader(range?: ByteRange): Readable {
    this.readers++;
    return new FillReader(this, range);
  }

  /** A body source for one response, sent without per-chunk garbage (see body-source.ts). */
  createSender(range?: ByteRange): BodySource {
    this.readers++;
    return new FillSender(this, range);
  }

  /**
   * What a reader at `pos` that wants bytes up to `endExcl` (undefined: to the end) may do now.
   * Until the digest is verified, the final byte of a response is never available.
   */
  span(pos: number, endExcl: number | undefined): { kind: 'read'; limit: number } | { kind: 'wait' } | { kind: 'end' } | { kind: 'error'; error: Error } {
    if (!this.verified && this.state === 'failed') return { kind: 'error', error: this.error ?? new Error('fill failed') };
    const end = endExcl ?? (this.verified ? this.written : this.size ?? Infinity);
    const limit = this.verified ? end : Math.min(this.written, end - 1);
    if (this.verified && pos >= end) return { kind: 'end' };
    return pos < limit ? { kind: 'read', limit } : { kind: 'wait' };
  }

  /** Positional read from the temp file (still valid after the rename: we hold the fd). */
  async readAt(buf: Buffer, pos: number, len = buf.length): Promise<number> {
    const { bytesRead } = await this.fh!.read(buf, 0, len, pos);
    if (bytesRead <= 0) throw new Error('short read from fill temp file');
    return bytesRead;
  }

  releaseReader(): void {
    this.readers--;
    this.maybeClose();
  }

  /**
   * Drop blocks that are on disk and more than MEMORY_WINDOW behind the write front, or, while
   * all fills together keep more than their budget, every block that is on disk.
   */
  private trimWindow(): void {
    const budget = this.hooks.windowBudget;
    while (this.blocks.length > 0) {
      const b = this.blocks[0]!;
      if (b.start + b.len > this.written) break; // still being written
      const overBudget = budget?.over ?? false;
      if (!overBudget && (this.blocks.length === 1 || this.blockBytes - b.len < MEMORY_WINDOW)) break;
      this.blocks.shift();
      this.blockBytes -= b.len;
      if (budget) budget.used -= b.len;
    }
  }

  private dropWindow(): void {
    if (this.hooks.windowBudget) this.hooks.windowBudget.used -= this.blockBytes;
    this.blocks = [];
    this.blockBytes = 0;
  }

  /**
   * The bytes from `pos` up to at most `limit` (exclusive) if they are still in memory: views
   * of the chunks of one block (never modified), in order. Undefined when the reader is behind
   * the window.
   */
  memoryAt(pos: number, limit: number): Buffer[] | undefined {
    const blocks = this.blocks;
    if (blocks.length === 0 || pos < blocks[0]!.start) return undefined;
    for (let i = blocks.length - 1; i >= 0; i--) {
      const b = blocks[i]!;
      if (pos < b.start) continue;
      if (pos >= b.start + b.len) return undefined;
      const end = Math.min(b.start + b.len, limit);
      const out: Buffer[] = [];
      let at = b.start;
      for (const c of b.chunks) {
        const cEnd = at + c.length;
        if (cEnd > pos && at < end) out.push(c.subarray(Math.max(0, pos - at), Math.min(c.length, end - at)));
        at = cEnd;
        if (at >= end) break;
      }
      return out.length > 0 ? out : undefined;
    }
    return undefined;
  }

  private maybeClose(): void {
    if (this.finished && this.readers === 0) this.dropWindow();
    if (this.finished && this.readers === 0 && this.fh) {
      const fh = this.fh;
      this.fh = undefined;
      void fh.close().catch(() => undefined);
    }
  }
}

const READ_CHUNK = 256 * 1024;

class FillReader extends Readable {
  private pos: number;
  private readonly endExcl: number | undefined;
  private pumping = false;
  private released = false;

  constructor(
    private readonly fill: BlobFill,
    range: ByteRange | undefined,
  ) {
    super({ highWaterMark: READ_CHUNK });
    this.pos = range?.start ?? 0;
    this.endExcl = range ? range.end + 1 : undefined;
  }

  override _read(): void {
    if (!this.pumping) void this.pump();
  }

  private async pump(): Promise<void> {
    this.pumping = true;
    try {
      for (;;) {
        if (this.destroyed) return;
        const s = this.fill.span(this.pos, this.endExcl);
        if (s.kind === 'error') {
          this.destroy(s.error);
          return;
        }
        if (s.kind === 'end') {
          this.push(null);
          return;
        }
        if (s.kind === 'wait') {
          await this.fill.changed();
          continue;
        }
        const mem = this.fill.memoryAt(this.pos, s.limit);
        if (mem) {
          let more = true;
          for (const c of mem) {
            this.pos += c.length;
            more = this.push(c);
          }
          if (!more) return;
          continue;
        }
        const n = Math.min(READ_CHUNK, s.limit - this.pos);
        const buf = Buffer.allocUnsafe(n);
        const got = await this.fill.readAt(buf, this.pos);
        if (this.destroyed) return;
        this.pos += got;
        if (!this.push(got === n ? buf : buf.subarray(0, got))) return;
      }
    } catch (e) {
      this.destroy(e as Error);
    } finally {
      this.pumping = false;
    }
  }

  override _destroy(err: Error | null, cb: (error?: Error | null) => void): void {
    if (!this.released) {
      this.released = true;
      this.fill.releaseReader();
    }
    cb(err);
  }
}

/** One response's view of a fill, sent with reused buffers (the fast path on Node servers). */
class FillSender implements BodySource {
  private pos: number;
  private readonly endExcl: number | undefined;
  private released = false;

  constructor(
    private readonly fill: BlobFill,
    private readonly range: ByteRange | undefined,
  ) {
    this.pos = range?.start ?? 0;
    this.endExcl = range ? range.end + 1 : undefined;
  }

  async sendTo(out: ServerResponse, onBytes: (n: number) => void): Promise<void> {
    try {
      await sendChunks(out, onBytes, async (buf) => {
        for (;;) {
          const s = this.fill.span(this.pos, this.endExcl);
          if (s.kind === 'error') throw s.error;
          if (s.kind === 'end') return 0;
          if (s.kind === 'wait') {
            await this.fill.changed();
            continue;
          }
          const mem = this.fill.memoryAt(this.pos, s.limit);
          if (mem) {
            for (const c of mem) this.pos += c.length;
            return mem;
          }
          const got = await this.fill.readAt(buf, this.pos, Math.min(buf.length, s.limit - this.pos));
          this.pos += got;
          return got;
        }
      }, (this.endExcl ?? this.fill.size ?? Infinity) - this.pos);
    } finally {
      await this.release();
    }
  }

  toReadable(): Readable {
    const r = this.fill.createReader(this.range);
    void this.release();
    return r;
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.fill.releaseReader();
  }
}
