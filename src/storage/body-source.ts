// A response body that can write itself to a Node ServerResponse without per-chunk garbage:
// two reused buffers, the next chunk read while the previous one is written. Used by committed
// files (OpenFile) and by readers of in-flight fills (BlobFill.createSender).
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

export interface BodySource {
  /** Write every byte to `out` and end it; rejects if the client leaves or the source fails. Releases the source. */
  sendTo(out: ServerResponse, onBytes: (n: number) => void): Promise<void>;
  /** The same bytes as a stream (for consumers without a ServerResponse). Hands over ownership. */
  toReadable(): Readable;
  /** Give the source up without sending it (e.g. a HEAD). */
  release(): Promise<void>;
}

export function isBodySource(b: unknown): b is BodySource {
  return typeof b === 'object' && b !== null && typeof (b as BodySource).sendTo === 'function';
}

// 256 KiB: big enough for full-speed writes, small enough that 32 clients hold 16 MiB.
const CHUNK = 256 * 1024;

/**
 * The shared send loop. `next(buf)` fills `buf` from its start and returns the byte count,
 * or 0 at the end of the body; it may wait (e.g. for a fill to write more). It may instead
 * return buffers of its own to send as they are (the in-memory chunks of a fill: no copy, no
 * read), written together in one corked batch; they must never be modified afterwards.
 */
export async function sendChunks(
  out: ServerResponse,
  onBytes: (n: number) => void,
  next: (buf: Buffer) => Promise<number | Buffer[]>,
  /** Bytes the body has, when known: a small body gets buffers of its size, not 2 x 256 KiB. */
  size?: number,
): Promise<void> {
  const chunk = Math.max(1, Math.min(CHUNK, size ?? CHUNK));
  // The second buffer is only made once the first is still being written.
  const bufs: Array<Buffer | undefined> = [Buffer.allocUnsafeSlow(chunk), undefined];
  const writing: Array<Promise<void> | undefined> = [undefined, undefined];
  let closed: Error | undefined;
  const onClose = () => (closed ??= new Error('client closed the connection'));
  out.once('close', onClose);
  try {
    for (let i = 0; ; i ^= 1) {
      await writing[i]; // this buffer's previous write has reached the socket
      if (closed) throw closed;
      const buf = (bufs[i] ??= Buffer.allocUnsafeSlow(chunk));
      const got = await next(buf);
      if (closed) throw closed;
      let w: Promise<void>;
      if (typeof got === 'number') {
        if (got === 0) break;
        onBytes(got);
        const chunk = got === buf.length ? buf : buf.subarray(0, got);
        w = new Promise<void>((resolve, reject) => out.write(chunk, (err) => (err ? reject(err) : resolve())));
      } else {
        if (got.length === 0) throw new Error('body source returned no buffers');
        let n = 0;
        for (const c of got) n += c.length;
        onBytes(n);
        // Corked: the chunks leave in one writev; the last callback means all of them went.
        out.cork();
        for (let k = 0; k < got.length - 1; k++) out.write(got[k]!);
        w = new Promise<void>((resolve, reject) => out.write(got[got.length - 1]!, (err) => (err ? reject(err) : resolve())));
        out.uncork();
      }
      w.catch(() => undefined); // awaited on this buffer's next turn, or below
      writing[i] = w;
    }
    await Promise.all(writing);
    if (closed) throw closed;
    await new Promise<void>((resolve) => out.end(resolve));
  } finally {
    out.off('close', onClose);
  }
}
