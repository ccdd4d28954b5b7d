// A committed blob file opened for one response: the disk tier's fast path. Sent with two
// reused buffers (read the next chunk while the previous one is written to the socket), so a
// warm blob costs no garbage and at most 2 MiB per client, whatever its size.
import type { FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';

const CHUNK = 1024 * 1024;

export class OpenFile {
  private released = false;

  constructor(
    private readonly fh: FileHandle,
    /** First byte to send. */
    readonly start: number,
    /** Last byte to send (inclusive). */
    readonly end: number,
    private readonly onRelease: () => void,
  ) {}

  /** Close the file (exactly once). */
  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    this.onRelease();
    await this.fh.close().catch(() => undefined);
  }

  /** Stream form, for callers without a Node ServerResponse (tests through app.request()). */
  toReadable(): Readable {
    const s = createReadStream('', { fd: this.fh, start: this.start, end: this.end, autoClose: true });
    this.released = true; // the stream owns the handle now
    s.on('close', () => this.onRelease());
    return s;
  }

  /**
   * Write the bytes to `out` and end it. Rejects (and leaves `out` to the caller to destroy)
   * when the client goes away or the file cannot be read; always releases the file.
   */
  async sendTo(out: ServerResponse, onBytes: (n: number) => void): Promise<void> {
    const bufs = [Buffer.allocUnsafeSlow(CHUNK), Buffer.allocUnsafeSlow(CHUNK)];
    const writing: Array<Promise<void> | undefined> = [undefined, undefined];
    let closed: Error | undefined;
    const onClose = () => (closed ??= new Error('client closed the connection'));
    out.once('close', onClose);
    try {
      let pos = this.start;
      for (let i = 0; pos <= this.end; i ^= 1) {
        await writing[i]; // this buffer's previous write has reached the socket
        if (closed) throw closed;
        const buf = bufs[i]!;
        const n = Math.min(CHUNK, this.end - pos + 1);
        const { bytesRead } = await this.fh.read(buf, 0, n, pos);
        if (bytesRead <= 0) throw new Error('blob file shorter than its size');
        if (closed) throw closed;
        pos += bytesRead;
        onBytes(bytesRead);
        const chunk = bytesRead === buf.length ? buf : buf.subarray(0, bytesRead);
        writing[i] = new Promise<void>((resolve, reject) => out.write(chunk, (err) => (err ? reject(err) : resolve())));
        // Rejections are awaited on the next turn of this buffer, or below.
        writing[i]!.catch(() => undefined);
      }
      await Promise.all(writing);
      if (closed) throw closed;
      await new Promise<void>((resolve) => out.end(resolve));
    } finally {
      out.off('close', onClose);
      await this.release();
    }
  }
}
