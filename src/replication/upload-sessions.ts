// Blob uploads pushed to this instance by replication peers: each one is a temp file in the
// cache's tmp/ (never the whole blob in memory) hashed as bytes arrive, so the digest is known
// the moment the last byte is written. Bounded: at most `maxSessions` at once, at most
// `maxBytes` each (cache.maxBlobBytes), and a session idle for `idleMs` is dropped with its temp
// file (a peer that died mid-upload leaves nothing behind; tmp/ is emptied at start-up anyway).
import { createHash, randomUUID, type Hash } from 'node:crypto';
import fs, { type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { RegistryError } from '../errors.ts';
import { digestOfHash, type Digest } from '../oci/digest.ts';
import { isDiskError, type DiskHealth } from '../storage/disk-health.ts';

export interface UploadSession {
  readonly id: string;
  readonly registry: string;
  readonly repository: string;
  readonly tmpPath: string;
  /** Bytes written so far (the next PATCH must start here). */
  size: number;
  lastActive: number;
  /** A request is writing to it right now (uploads are strictly sequential). */
  busy: boolean;
  fh: FileHandle;
  hash: Hash;
}

export interface UploadSessionsOptions {
  tmpDir: string;
  maxSessions: number;
  maxBytes: number;
  idleMs: number;
  /** The cache disk: refuses uploads while unwritable, checks room before a chunk of known length, learns of write failures. */
  health?: Pick<DiskHealth, 'writable' | 'failed' | 'ensureRoom'>;
  now?: () => number;
}

/** A finished upload: fsync'd and closed, ready for commitTemp (or to be deleted). */
export interface FinishedUpload {
  tmpPath: string;
  size: number;
  digest: Digest;
}

const ID_RE = /^[a-f0-9-]{36}$/;

export class UploadSessions {
  private readonly sessions = new Map<string, UploadSession>();
  private readonly timer: NodeJS.Timeout;
  private readonly now: () => number;

  constructor(private readonly o: UploadSessionsOptions) {
    this.now = o.now ?? Date.now;
    // Sweep a few times per idle period; never keeps the process alive.
    this.timer = setInterval(() => void this.sweep(), Math.max(1000, Math.floor(o.idleMs / 4)));
    this.timer.unref();
  }

  get count(): number {
    return this.sessions.size;
  }

  async start(registry: string, repository: string): Promise<UploadSession> {
    if (this.sessions.size >= this.o.maxSessions) await this.sweep();
    if (this.sessions.size >= this.o.maxSessions) {
      throw new RegistryError('TOOMANYREQUESTS', `too many uploads in progress (${this.o.maxSessions})`, { headers: { 'Retry-After': '5' } });
    }
    if (this.o.health && !this.o.health.writable) throw unavailable();
    const id = randomUUID();
    const tmpPath = path.join(this.o.tmpDir, `upload-${id}.${process.pid}.part`);
    let fh: FileHandle;
    try {
      fh = await fs.open(tmpPath, 'wx');
    } catch (e) {
      throw this.diskTrouble(e, 'starting a pushed upload');
    }
    const s: UploadSession = { id, registry, repository, tmpPath, size: 0, lastActive: this.now(), busy: false, fh, hash: createHash('sha256') };
    this.sessions.set(id, s);
    return s;
  }

  /** The session for a request's URL; it must belong to the same repository. */
  get(id: string, registry: string, repository: string): UploadSession {
    const s = ID_RE.test(id) ? this.sessions.get(id) : undefined;
    if (!s || s.registry !== registry || s.repository !== repository) throw new RegistryError('BLOB_UPLOAD_UNKNOWN', 'upload unknown (finished, cancelled or expired)');
    return s;
  }

  /**
   * Append a request body. `start` is the Content-Range start when the client sent one: it must
   * be where the upload stands. `length` (Content-Length) lets the disk refuse early.
   */
  async append(s: UploadSession, body: Readable, start: number | undefined, length: number | undefined): Promise<void> {
    if (s.busy) throw new RegistryError('RANGE_INVALID', 'another request is writing to this upload', { headers: rangeHeaders(s) });
    if (start !== undefined && start !== s.size) {
      throw new RegistryError('RANGE_INVALID', `upload is at byte ${s.size}, not ${start}`, { headers: rangeHeaders(s) });
    }
    if (length !== undefined && s.size + length > this.o.maxBytes) {
      await this.abort(s);
      throw tooLarge(this.o.maxBytes);
    }
    s.busy = true;
    try {
      if (length !== undefined && length > 0) await this.o.health?.ensureRoom(length);
      for await (const chunk of body as AsyncIterable<Buffer>) {
        if (s.size + chunk.length > this.o.maxBytes) {
          body.destroy();
          await this.abort(s);
          throw tooLarge(this.o.maxBytes);
        }
        s.hash.update(chunk);
        let off = 0;
        while (off < chunk.length) off += (await s.fh.write(chunk, off, chunk.length - off, s.size + off)).bytesWritten;
        s.size += chunk.length;
        s.lastActive = this.now();
      }
    } catch (e) {
      // A body cut short or a failed write leaves the file in an unknown state: the whole
      // upload goes (the sender starts again), never a half-written blob.
      await this.abort(s);
      if (e instanceof RegistryError || isDiskError(e)) throw this.diskTrouble(e, 'writing a pushed upload');
      // The sender went away mid-body (reset, premature close): an answer, not an internal error.
      throw new RegistryError('SIZE_INVALID', `upload interrupted after ${s.size} bytes: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    } finally {
      s.busy = false;
      s.lastActive = this.now();
    }
  }

  /** Close the session: the file is fsync'd and closed, its digest computed; the caller commits or deletes it. */
  async finish(s: UploadSession): Promise<FinishedUpload> {
    if (s.busy) throw new RegistryError('RANGE_INVALID', 'another request is writing to this upload', { headers: rangeHeaders(s) });
    this.sessions.delete(s.id);
    try {
      await s.fh.sync();
    } catch (e) {
      await fs.rm(s.tmpPath, { force: true }).catch(() => undefined);
      throw this.diskTrouble(e, 'syncing a pushed upload');
    } finally {
      await s.fh.close().catch(() => undefined);
    }
    return { tmpPath: s.tmpPath, size: s.size, digest: digestOfHash(s.hash) };
  }

  /** Drop the session and its temp file. */
  async abort(s: UploadSession): Promise<void> {
    this.sessions.delete(s.id);
    await s.fh.close().catch(() => undefined);
    await fs.rm(s.tmpPath, { force: true }).catch(() => undefined);
  }

  private diskTrouble(e: unknown, what: string): unknown {
    if (!isDiskError(e)) return e;
    // As a fill: no room (ensureRoom's ENOSPC included) marks the disk unwritable until a probe succeeds.
    this.o.health?.failed(e, what);
    return unavailable();
  }

  /** Drop sessions idle for longer than idleMs. */
  async sweep(): Promise<number> {
    const cutoff = this.now() - this.o.idleMs;
    const stale = [...this.sessions.values()].filter((s) => !s.busy && s.lastActive < cutoff);
    for (const s of stale) await this.abort(s);
    return stale.length;
  }

  /** Shutdown: stop sweeping and remove every temp file. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    for (const s of [...this.sessions.values()]) await this.abort(s);
  }
}

/** A failed write to the cache disk answers 503 (the sender retries later) and tells DiskHealth; anything else is passed on. */
function unavailable(): RegistryError {
  return new RegistryError('UNAVAILABLE', 'the disk cache is not writable right now', { headers: { 'Retry-After': '30' } });
}

export function rangeHeaders(s: UploadSession): Record<string, string> {
  // As Distribution: "0-<last byte>", and "0-0" for an empty upload.
  return { Range: `0-${Math.max(0, s.size - 1)}`, 'Docker-Upload-UUID': s.id };
}

function tooLarge(max: number): RegistryError {
  return new RegistryError('SIZE_INVALID', `blob exceeds cache.maxBlobBytes (${max} bytes)`, { status: 413 });
}
