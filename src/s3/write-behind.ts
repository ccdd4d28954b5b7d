// The S3 write-behind (issue 11 item 1): content committed to the local disk goes to the
// region's bucket afterwards, never on a client's time. The CacheListener only enqueues (it
// returns at once); workers read the committed file (opened through DiskBlobStore, so it counts
// as an open reader and eviction leaves it alone while it uploads; a file evicted before its
// turn is skipped) and create `blobs/sha256/<hex>` only if absent (IfNoneMatch '*': a 412
// means another instance wrote the same bytes first, counted as `exists`). Big blobs go up as
// multipart uploads (S3Bucket, lib-storage, aborted on failure); uploads a killed process left
// behind are aborted at start-up once older than storage.s3.staleUploadAge.
//
// The queue is bounded by jobs and by bytes: when full, a write is dropped (counted, logged),
// never waited for. Pending writes are also kept in a journal on disk (write-behind-journal.ts),
// so the ones a kill -9 left pending are done after the restart. While S3 is down (S3Health) the jobs stay queued and
// the workers wait; a failed write is retried with backoff, so the queue catches up when the
// bucket returns. Content read from the region (via 'region': the bucket itself, or the member
// that wrote it) is not written again.
import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import type { CacheListener, ContentCommitted } from '../cache-events.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { Digest } from '../oci/digest.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import { blobKey } from './bucket-layout.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';
import type { S3Health } from './s3-health.ts';
import type { PendingWrite, WriteBehindJournal } from './write-behind-journal.ts';

export interface WriteBehindOptions {
  bucket: S3Bucket;
  disk: DiskBlobStore;
  health: S3Health;
  metrics: Metrics;
  logger: Logger;
  /** Uploads at once (default 4). */
  concurrency?: number;
  /** Bytes queued or uploading; more is dropped (default 64 GiB). */
  maxPendingBytes?: number;
  /** Jobs queued or uploading; more is dropped (default 100,000). */
  maxPendingJobs?: number;
  /** Multipart uploads older than this are aborted at start-up (a killed process's debris). */
  staleUploadAgeMs: number;
  /** Pending writes on disk (redone after a crash); absent: in memory only. */
  journal?: WriteBehindJournal;
  now?: () => number;
}

interface Job {
  digest: Digest;
  size: number;
  contentType: string;
  /** Failures that were not outages (a request S3 refused): after MAX_ATTEMPTS the write is given up. */
  attempts: number;
  /** Failures in a row, outages included: the backoff. */
  failures: number;
  notBefore: number;
}

const MAX_ATTEMPTS = 5;
const BACKOFF_MIN_MS = 1_000;
const BACKOFF_MAX_MS = 60_000;
const LOG_EVERY_MS = 10_000;

export class WriteBehind implements CacheListener {
  readonly #o: WriteBehindOptions;
  /** Waiting jobs in arrival order. */
  readonly #queue = new Map<Digest, Job>();
  readonly #active = new Set<Digest>();
  #pendingBytes = 0;
  #closed = false;
  #kick: (() => void) | undefined;
  #kicked: Promise<void>;
  #workers: Array<Promise<void>> = [];
  #lastDropLog = 0;
  readonly #now: () => number;

  constructor(o: WriteBehindOptions) {
    this.#o = o;
    this.#now = o.now ?? Date.now;
    this.#kicked = new Promise((r) => (this.#kick = r));
    o.metrics.s3PendingBytes.set(0);
    // Jobs waiting on an outage's backoff go as soon as the bucket is back.
    o.health.onUp(() => {
      for (const j of this.#queue.values()) j.notBefore = 0;
      this.#wake();
    });
  }

  /** Bytes queued or uploading. */
  get pendingBytes(): number {
    return this.#pendingBytes;
  }

  get pendingJobs(): number {
    return this.#queue.size + this.#active.size;
  }

  /** Enqueue only: never awaited work on the commit's path. */
  contentCommitted(e: ContentCommitted): void {
    if (e.via === 'region' || this.#closed) return;
    if (this.#queue.has(e.digest) || this.#active.has(e.digest)) return;
    if (!this.#o.health.writesAllowed) {
      this.#drop('refused', e, 'S3 write-behind refused: the store ignores conditional writes and a cluster is configured');
      return;
    }
    const maxJobs = this.#o.maxPendingJobs ?? 100_000;
    const maxBytes = this.#o.maxPendingBytes ?? 64 * 2 ** 30;
    if (this.pendingJobs >= maxJobs || this.#pendingBytes + e.size > maxBytes) {
      this.#drop('queue_full', e, 'S3 write-behind queue full: write dropped (the content stays on the local disk)');
      return;
    }
    const contentType = e.kind === 'manifest' && e.mediaType !== undefined ? e.mediaType : 'application/octet-stream';
    this.#enqueue({ digest: e.digest, size: e.size, contentType });
  }

  /** The writes the journal had pending at start-up (a crash, or S3 down at the last shutdown). */
  restore(pending: readonly PendingWrite[]): number {
    let n = 0;
    for (const w of pending) {
      if (this.#queue.has(w.digest) || this.#active.has(w.digest)) continue;
      const fits = this.pendingJobs < (this.#o.maxPendingJobs ?? 100_000) && this.#pendingBytes + w.size <= (this.#o.maxPendingBytes ?? 64 * 2 ** 30);
      if (!this.#o.disk.has(w.digest) || !fits) {
        // Evicted meanwhile, or no room in the queue: nothing to redo.
        this.#o.journal?.done(w.digest);
        continue;
      }
      this.#enqueue(w);
      n++;
    }
    if (n > 0) this.#o.logger.info({ writes: n }, 'S3 write-behind: redoing the writes pending at the last stop');
    return n;
  }

  #enqueue(w: PendingWrite): void {
    this.#queue.set(w.digest, { digest: w.digest, size: w.size, contentType: w.contentType, attempts: 0, failures: 0, notBefore: 0 });
    this.#o.journal?.add(w);
    this.#addPending(w.size);
    this.#wake();
  }

  /** Starts the workers and, in the background, the clean-up of stale multipart uploads. */
  start(): void {
    const n = this.#o.concurrency ?? 4;
    for (let i = 0; i < n; i++) this.#workers.push(this.#work());
    void this.abortStaleUploads();
  }

  /** Aborts the multipart uploads a killed process left (older than staleUploadAge). */
  async abortStaleUploads(): Promise<number> {
    try {
      const n = await this.#o.bucket.abortStaleUploads(new Date(this.#now() - this.#o.staleUploadAgeMs));
      if (n > 0) this.#o.logger.info({ aborted: n }, 'aborted stale S3 multipart uploads');
      return n;
    } catch (e) {
      this.#o.health.failed(e);
      this.#o.logger.warn({ err: (e as Error).message }, 'could not clean up stale S3 multipart uploads');
      return 0;
    }
  }

  /** Stops taking jobs; uploads in flight are left to finish or fail (bounded by S3Bucket's timeouts). */
  async close(graceMs = 5_000): Promise<void> {
    this.#closed = true;
    this.#wake();
    if (this.pendingJobs > 0) this.#o.logger.info({ jobs: this.pendingJobs, bytes: this.#pendingBytes }, 'S3 write-behind stopping with writes pending (the journal keeps them for the next start)');
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.#workers), new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
    await this.#o.journal?.close();
  }

  async #work(): Promise<void> {
    while (!this.#closed) {
      if (!this.#o.health.up) {
        await Promise.race([this.#o.health.whenUp(), this.#kicked]);
        continue;
      }
      const job = this.#next();
      if (job === undefined) {
        await this.#sleep(this.#waitMs());
        continue;
      }
      await this.#write(job);
    }
  }

  #next(): Job | undefined {
    const now = this.#now();
    for (const j of this.#queue.values()) {
      if (j.notBefore <= now) {
        this.#queue.delete(j.digest);
        this.#active.add(j.digest);
        return j;
      }
    }
    return undefined;
  }

  #waitMs(): number {
    let soonest = BACKOFF_MAX_MS;
    const now = this.#now();
    for (const j of this.#queue.values()) soonest = Math.min(soonest, Math.max(10, j.notBefore - now));
    return soonest;
  }

  async #write(job: Job): Promise<void> {
    const { bucket, disk, metrics, logger, health } = this.#o;
    let stream: Readable | undefined;
    try {
      // Counted as an open reader of the file until it closes: eviction skips it meanwhile.
      stream = await disk.open(job.digest);
    } catch (e) {
      this.#done(job);
      metrics.s3WriteFailures.inc({ reason: 'read_error' });
      logger.warn({ digest: job.digest, err: (e as Error).message }, 'S3 write-behind: cannot read the committed file; write dropped');
      return;
    }
    if (stream === undefined) {
      // Evicted (or purged) before its turn: nothing to write.
      this.#done(job);
      metrics.s3WriteFailures.inc({ reason: 'gone' });
      return;
    }
    let first: Readable | undefined = stream;
    const path = disk.pathOf(job.digest);
    try {
      const result = await bucket.putIfAbsent(
        blobKey(job.digest),
        () => {
          // A retried request (409) reads the file again.
          const s = first ?? createReadStream(path);
          first = undefined;
          return s;
        },
        job.size,
        job.contentType,
      );
      metrics.s3Writes.inc({ result });
      this.#done(job);
      logger.debug({ digest: job.digest, size: job.size, result }, 'S3 write-behind');
    } catch (e) {
      if (!(e instanceof S3Unavailable)) {
        // The local file failed (a read error): not S3's fault, and not worth retrying.
        this.#done(job);
        metrics.s3WriteFailures.inc({ reason: 'read_error' });
        logger.warn({ digest: job.digest, err: (e as Error).message }, 'S3 write-behind: reading the committed file failed; write dropped');
        return;
      }
      metrics.s3WriteFailures.inc({ reason: e.reason });
      const outage = health.failed(e);
      job.failures++;
      if (!outage) job.attempts++;
      if (job.attempts >= MAX_ATTEMPTS) {
        this.#done(job);
        metrics.s3WriteFailures.inc({ reason: 'gave_up' });
        logger.error({ digest: job.digest, err: e.message }, 'S3 write-behind: S3 refused the write repeatedly; given up');
        return;
      }
      const backoff = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** (job.failures - 1)) * (0.5 + Math.random() / 2);
      job.notBefore = this.#now() + backoff;
      this.#active.delete(job.digest);
      this.#queue.set(job.digest, job);
      if (!outage) logger.warn({ digest: job.digest, err: e.message, retryInMs: Math.round(backoff) }, 'S3 write-behind failed; retrying');
    } finally {
      stream.destroy();
    }
  }

  #done(job: Job): void {
    this.#active.delete(job.digest);
    this.#addPending(-job.size);
    this.#o.journal?.done(job.digest);
  }

  #addPending(n: number): void {
    this.#pendingBytes += n;
    this.#o.metrics.s3PendingBytes.set(this.#pendingBytes);
  }

  #drop(reason: string, e: ContentCommitted, msg: string): void {
    this.#o.metrics.s3WriteFailures.inc({ reason });
    const now = this.#now();
    if (now - this.#lastDropLog < LOG_EVERY_MS) return;
    this.#lastDropLog = now;
    this.#o.logger.warn({ digest: e.digest, size: e.size, pendingJobs: this.pendingJobs, pendingBytes: this.#pendingBytes }, msg);
  }

  #wake(): void {
    const k = this.#kick;
    this.#kicked = new Promise((r) => (this.#kick = r));
    k?.();
  }

  async #sleep(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.#kicked, new Promise<void>((r) => (timer = setTimeout(r, ms)))]);
    clearTimeout(timer);
  }
}
