// The shared metadata's writes, off the request path: a bounded queue of writes keyed by the
// object they write (a newer write to the same key replaces a queued one: the last state is
// what the bucket should get), run a few at a time. While S3 is unavailable the queue pauses
// (backoff from 1 s doubling to 30 s) and keeps the writes; a write that fails otherwise (a
// bug, a record that cannot be written) is dropped. Every failed attempt is counted.
import type { Logger } from '../logger.ts';
import { S3Unavailable } from './bucket.ts';

export interface MetadataQueueOptions {
  /** At most this many keys queued; further writes are dropped (counted as queue_full). */
  limit?: number;
  concurrency?: number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  onFailure: (reason: string) => void;
  onPending?: (n: number) => void;
  logger: Logger;
}

type Op = () => Promise<void>;

export class MetadataQueue {
  private readonly pending = new Map<string, Op>();
  private readonly running = new Set<string>();
  private pausedUntil = 0;
  private backoffMs: number;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  private idle: Array<() => void> = [];
  private readonly limit: number;
  private readonly concurrency: number;
  private readonly minBackoffMs: number;
  private readonly maxBackoffMs: number;

  constructor(private readonly o: MetadataQueueOptions) {
    this.limit = o.limit ?? 10_000;
    this.concurrency = o.concurrency ?? 4;
    this.minBackoffMs = o.minBackoffMs ?? 1_000;
    this.maxBackoffMs = o.maxBackoffMs ?? 30_000;
    this.backoffMs = this.minBackoffMs;
  }

  /** Queue a write; false when the queue is full (the write is dropped and counted). */
  enqueue(key: string, op: Op): boolean {
    if (this.closed) return false;
    if (!this.pending.has(key) && this.pending.size >= this.limit) {
      this.o.onFailure('queue_full');
      return false;
    }
    this.pending.set(key, op);
    this.changed();
    this.pump();
    return true;
  }

  get size(): number {
    return this.pending.size + this.running.size;
  }

  /** Resolves true once nothing is queued or running, false after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<boolean> {
    if (this.size === 0) return true;
    return new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        this.idle = this.idle.filter((f) => f !== done);
        resolve(false);
      }, timeoutMs);
      const done = () => {
        clearTimeout(t);
        resolve(true);
      };
      this.idle.push(done);
    });
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private changed(): void {
    this.o.onPending?.(this.size);
    if (this.size === 0) {
      const waiters = this.idle;
      this.idle = [];
      for (const w of waiters) w();
    }
  }

  private pump(): void {
    if (this.closed) return;
    const wait = this.pausedUntil - Date.now();
    if (wait > 0) {
      this.timer ??= setTimeout(() => {
        this.timer = undefined;
        this.pump();
      }, wait);
      this.timer.unref();
      return;
    }
    for (const [key, op] of this.pending) {
      if (this.running.size >= this.concurrency) break;
      if (this.running.has(key)) continue; // one write per key at a time, in order
      this.pending.delete(key);
      this.running.add(key);
      void this.run(key, op);
    }
  }

  private async run(key: string, op: Op): Promise<void> {
    try {
      await op();
      this.backoffMs = this.minBackoffMs;
    } catch (err) {
      if (err instanceof S3Unavailable) {
        this.o.onFailure(err.reason);
        // Kept for later unless a newer write to the key was queued meanwhile.
        if (!this.pending.has(key) && !this.closed) this.pending.set(key, op);
        if (this.pausedUntil <= Date.now()) {
          this.o.logger.warn({ err: err.message, retryInMs: this.backoffMs, queued: this.pending.size }, 'S3 unavailable: shared metadata writes wait');
          this.pausedUntil = Date.now() + this.backoffMs;
          this.backoffMs = Math.min(this.backoffMs * 2, this.maxBackoffMs);
        }
      } else {
        this.o.onFailure('error');
        this.o.logger.error({ err, key }, 'shared metadata write failed; dropped');
      }
    } finally {
      this.running.delete(key);
      this.changed();
      this.pump();
    }
  }
}
