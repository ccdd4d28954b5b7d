// The response body handed to callers: the upstream stream, counted as it is read.
//
// Chunks pass through by reference (no copies, no per-chunk allocations) and the byte
// count reaches the metric in batches, so a multi-GiB blob streams at socket speed.
// Errors of the source are mapped (e.g. an idle body to an UpstreamError 'timeout') and
// always surface as a stream error: a truncated body never ends cleanly.
import { Readable } from 'node:stream';

const FLUSH_BYTES = 4 * 1024 * 1024;

export class MeteredBody extends Readable {
  readonly #src: Readable;
  readonly #report: (bytes: number) => void;
  #pending = 0;

  constructor(src: Readable, report: (bytes: number) => void, mapError: (err: Error) => Error) {
    super({ highWaterMark: 64 * 1024 });
    this.#src = src;
    this.#report = report;
    src.pause();
    src.on('data', (chunk: Buffer) => {
      this.#pending += chunk.length;
      if (this.#pending >= FLUSH_BYTES) this.#flush();
      if (!this.push(chunk)) src.pause();
    });
    src.once('end', () => {
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
    this.#src.resume();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    this.#flush();
    // Destroying the source aborts the upstream request (its connection is not reused).
    if (!this.#src.destroyed) this.#src.destroy();
    cb(err);
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
