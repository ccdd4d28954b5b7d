import type { Readable } from 'node:stream';
import type { ByteRange } from '../oci/range.ts';
import type { Digest } from '../oci/digest.ts';

/**
 * A content-addressed store of verified bytes. The disk tier implements it now; an S3 tier
 * and peer regions plug in behind the same interface (see docs/architecture.md).
 * A miss is a value (undefined), never an exception.
 */
export interface BlobStore {
  /** Size in bytes if the digest is held, else undefined. */
  stat(digest: Digest): Promise<number | undefined>;
  /** A stream of the whole blob or one range of it; undefined on a miss. */
  open(digest: Digest, range?: ByteRange): Promise<Readable | undefined>;
  /** The whole blob in memory (manifests and small blobs only). */
  read(digest: Digest): Promise<Buffer | undefined>;
  /** Store bytes whose digest the caller has verified. */
  put(digest: Digest, data: Buffer): Promise<void>;
  delete(digest: Digest): Promise<void>;
}
