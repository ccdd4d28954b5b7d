// Pass-through of an upstream blob body to one client, without caching (used while the disk
// cache is unwritable). Hashes as it goes and holds back the last chunk until the digest and
// size are checked, so a bad body can never complete on the wire.
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { FillError } from './blob-fill.ts';
import type { Digest } from '../oci/digest.ts';

export function verifiedStream(
  body: Readable,
  digest: Digest,
  size: number | undefined,
  onDone: (outcome: 'ok' | FillError) => void,
  /** Cap on a body without Content-Length (cache.maxBlobBytes). */
  maxUnknownSize = Infinity,
): Readable {
  async function* verify(): AsyncGenerator<Buffer> {
    const hash = createHash('sha256');
    let pending: Buffer | undefined;
    let n = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        n += chunk.length;
        if (size !== undefined && n > size) throw new FillError('size_mismatch', `upstream sent more than the expected ${size} bytes`);
        if (size === undefined && n > maxUnknownSize) throw new FillError('size_mismatch', `upstream body without Content-Length exceeds ${maxUnknownSize} bytes`);
        hash.update(chunk);
        if (pending) yield pending;
        pending = chunk;
      }
    } catch (e) {
      const err = e instanceof FillError ? e : new FillError('truncated', `upstream body failed after ${n} bytes`);
      onDone(err);
      throw err;
    }
    if (size !== undefined && n !== size) {
      const err = new FillError('truncated', `upstream body ended after ${n} of ${size} bytes`);
      onDone(err);
      throw err;
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== digest) {
      const err = new FillError('digest_mismatch', `upstream content has digest ${actual}, expected ${digest}`);
      onDone(err);
      throw err;
    }
    onDone('ok');
    if (pending) yield pending;
  }
  const out = Readable.from(verify(), { objectMode: false });
  out.on('close', () => body.destroy());
  return out;
}
