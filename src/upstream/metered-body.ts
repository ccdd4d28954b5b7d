// The response body handed to callers: the upstream stream, counted as it is read.
//
// Chunks pass through by reference (no copies, no per-chunk allocations) and the byte
// count reaches the metric in batches, so a multi-GiB blob streams at socket speed.
//
// The contract of a body (every GET body RegistryClient returns is one of these):
// - it ends cleanly only when every byte the upstream framed arrived; a truncated, reset,
//   malformed, idle (bodyTimeout) or too slow (minRate) body is destroyed with an
//   UpstreamError instead, never ended;
// - that error is kept in `body.errored` and reported to whoever consumes the stream
//   (pipeline(), finished(), for await, an 'error' listener attached in time); it is never an
//   unhandled 'error' event, so a body nobody listens to yet cannot kill the process. A consumer
//   that attaches to an already destroyed body must look at `destroyed`/`errored` (pipeline,
//   finished and for await do);
// - destroying it aborts the upstream request (the connection is not reused).
import { Readable } from 'node:stream';

const FLUSH_BYTES = 4 * 1024 * 1024;

/** The body stayed below `minRate` while its consumer was asking for more. */
export class SlowBodyError extends Error {
  readonly code = 'OCIRELAY_SLOW_BODY';
  constructor(
    readonly bytesPerSec: number,
    readonly minBytesPerSec: number,
    readonly windowMs: number,
  ) {
    super(`body slower than ${minBytesPerSec} B/s over ${windowMs} ms (${Math.round(bytesPerSec)} B/s)`);
    this.name = 'SlowBodyError';
  }
}

export interface MinRate {
  bytesPerSec: number;
  windowMs: number;
}

export class MeteredBody extends Readable {
  readonly #src: Readable;
  readonly #report: (bytes: number) => void;
  readonly #mapError: (err: Error) => Error;
  #pending = 0;
  // minRate: time the consumer spent waiting for bytes (a consumer holding the body back is
  // not the upstream's fault), and the bytes that arrived in it.
  readonly #minRate: MinRate | undefined;
  #timer: NodeJS.Timeout | undefined;
  #wanting = false;
  #wantSince = 0;
  #wantMs = 0;
  #windowBytes = 0;

  constructor(src: Readable, report: (bytes: number) => void, mapError: (err: Error) => Error, minRate?: MinRate) {
    super({ highWaterMark: 64 * 1024 });
    this.#src = src;
    this.#report = report;
    this.#mapError = mapError;
    this.#minRate = minRate !== undefined && minRate.bytesPerSec > 0 && minRate.windowMs > 0 ? minRate : undefined;
    // The error stays on `errored` for consumers that come later (see the contract above).
    this.on('error', () => undefined);
    src.pause();
    src.on('data', (chunk: Buffer) => {
      this.#pending += chunk.length;
      this.#windowBytes += chunk.length;
      if (this.#pending >= FLUSH_BYTES) this.#flush();
      if (!this.push(chunk)) this.#holdBack();
    });
    src.once('end', () => {
      this.#stopTimer();
      this.#flush();
      this.push(null);
    });
    src.once('error', (err: Error) => this.destroy(mapError(err)));
    src.once('close', () => {
      if (!src.readableEnded && !this.destroyed) this.destroy(mapError(new Error('upstream body closed before its end')));
    });
    // A source that failed before it was wrapped has emitted its 'error' and 'close' already.
    if (src.destroyed && !src.readableEnded) {
      const err = src.errored ?? new Error('upstream body closed before its end');
      process.nextTick(() => this.destroy(mapError(err)));
    }
  }

  override _read(): void {
    if (!this.#wanting) {
      this.#wanting = true;
      this.#wantSince = performance.now();
      this.#startTimer();
    }
    this.#src.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#stopTimer();
    this.#flush();
    // Destroying the source aborts the upstream request (its connection is not reused).
    if (!this.#src.destroyed) this.#src.destroy();
    cb(err);
  }

  #holdBack(): void {
    this.#src.pause();
    if (this.#wanting) {
      this.#wantMs += performance.now() - this.#wantSince;
      this.#wanting = false;
    }
  }

  #startTimer(): void {
    const rate = this.#minRate;
    if (rate === undefined || this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.#checkRate(rate), Math.max(100, Math.floor(rate.windowMs / 4)));
    this.#timer.unref();
  }

  #stopTimer(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #checkRate(rate: MinRate): void {
    const now = performance.now();
    if (this.#wanting) {
      this.#wantMs += now - this.#wantSince;
      this.#wantSince = now;
    }
    if (this.#wantMs < rate.windowMs) return;
    const bytesPerSec = (this.#windowBytes * 1000) / this.#wantMs;
    this.#wantMs = 0;
    this.#windowBytes = 0;
    if (bytesPerSec < rate.bytesPerSec) this.destroy(this.#mapError(new SlowBodyError(bytesPerSec, rate.bytesPerSec, rate.windowMs)));
  }

  #flush(): void {
    if (this.#pending === 0) return;
    const n = this.#pending;
    this.#pending = 0;
    this.#report(n);
  }
}

/** The body of a HEAD response: empty, already ended. */
export function emptyBody(): Readable {
  const r = new Readable({ read() {} });
  r.push(null);
  return r;
}
