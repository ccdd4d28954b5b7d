import type { ByteRange } from '../oci/range.ts';
import type { Digest } from '../oci/digest.ts';
import type { OpenFile } from './open-file.ts';

/**
 * The local, content-addressed tier of verified bytes, as the pull-through services use it:
 * BlobService and ManifestService read and commit through this interface only (DiskBlobStore
 * implements it; an S3 tier is the next). Remote places bytes come from (upstream, peers) are
 * ContentSources (src/sources/), whose bytes reach a store only through a verified fill.
 * A miss is a value (undefined), never an exception.
 */
export interface BlobStore {
  /** Committed bytes and objects, for the cache gauges. */
  readonly bytes: number;
  readonly count: number;
  has(digest: Digest): boolean;
  /** Size in bytes if the digest is held, else undefined (no I/O). */
  sizeOf(digest: Digest): number | undefined;
  /** Marks a read (recency for eviction). */
  touch(digest: Digest): void;
  /** The whole blob or one range of it, counted as an open reader until closed; undefined on a miss. */
  openFile(digest: Digest, range?: ByteRange): Promise<OpenFile | undefined>;
  /** The whole blob in memory (manifests and small blobs only). */
  read(digest: Digest): Promise<Buffer | undefined>;
  /** Store bytes whose digest the caller has verified (manifests). */
  put(digest: Digest, data: Buffer): Promise<void>;
  /** Where a fill of this digest writes before it is verified. */
  tempPathFor(digest: Digest): string;
  /** Move a verified, fsync'd temp file into place. */
  commitTemp(tmp: string, digest: Digest, size: number): Promise<void>;
  delete(digest: Digest): Promise<void>;
}
