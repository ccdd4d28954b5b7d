// The content keys of the bucket, relative to storage.s3.prefix (S3Bucket prepends it):
//
//   blobs/sha256/<64 hex>     layers, configs AND manifests, content-addressed like the local
//                             disk (no shard directory: S3 has no directories to keep small).
//                             Created only by the write-behind, only if absent (IfNoneMatch: '*'),
//                             from a locally committed file, i.e. bytes whose digest and size
//                             were verified before they were committed
//   probes/<instance>-<rand>  the start-up check's object (conditional writes honoured?),
//                             deleted right after
//
// The shared metadata's keys (tags, links, pins, leases) are src/s3/metadata-keys.ts's.
import { randomBytes } from 'node:crypto';
import { digestHex, type Digest } from '../oci/digest.ts';

export const BLOBS_PREFIX = 'blobs/sha256/';
export const PROBES_PREFIX = 'probes/';

/** Where a blob or a manifest lives in the bucket. */
export function blobKey(digest: Digest): string {
  return `${BLOBS_PREFIX}${digestHex(digest)}`;
}

/** A key no other instance uses: the start-up probe's. */
export function probeKey(): string {
  return `${PROBES_PREFIX}${process.pid}-${randomBytes(8).toString('hex')}`;
}

/** A key that never exists: the health probe HEADs it (an answer, 404 included, means S3 is up). */
export const HEALTH_KEY = `${PROBES_PREFIX}health`;
