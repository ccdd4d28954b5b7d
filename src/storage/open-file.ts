// A committed blob file opened for one response: the disk tier's fast path (see body-source.ts:
// a warm blob costs no garbage and at most 512 KiB per client, whatever its size).
import type { FileHandle } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import type { ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import { sendChunks, type BodySource } from './body-source.ts';


export class OpenFile implements BodySource {
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

  async sendTo(out: ServerResponse, onBytes: (n: number) => void): Promise<void> {
    let pos = this.start;
    try {
      await sendChunks(out, onBytes, async (buf) => {
        if (pos > this.end) return 0;
        const { bytesRead } = await this.fh.read(buf, 0, Math.min(buf.length, this.end - pos + 1), pos);
        if (bytesRead <= 0) throw new Error('blob file shorter than its size');
        pos += bytesRead;
        return bytesRead;
      }, this.end - this.start + 1);
    } finally {
      await this.release();
    }
  }
}
