import type { Readable } from 'node:stream';
import type { ByteRange } from '../oci/range.ts';

/**
 * A content-addressed store of verified bytes. The disk tier implements it now; an S3 tier
 * and peer regions plug in behind the same interface (see docs/architecture.md).
 * A miss is a value (undefined), never an exception.
 */
export interface BlobStore {
  /** Size in bytes if the digest is held, else undefined. */
  stat(digest: string): Promise<number | undefined>;
  /** A stream of the whole blob or one range of it; undefined on a miss. */
  open(digest: string, range?: ByteRange): Promise<Readable | undefined>;
  /** The whole blob in memory (manifests and small blobs only). */
  read(digest: string): Promise<Buffer | undefined>;
  /** Store bytes whose digest the caller has verified. */
  put(digest: string, data: Buffer): Promise<void>;
  delete(digest: string): Promise<void>;
}
