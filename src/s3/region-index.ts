// What the region's shared metadata (tag records and repository links kept in the bucket,
// src/s3/shared-metadata.ts) tells the S3 read source: whether a repository may read a digest
// (the authorization rule of docs/architecture.md, applied region-wide) and what a tag
// resolved to on any instance of the region. The S3 source depends on this interface only.
import type { Digest } from '../oci/digest.ts';

export interface RegionTag {
  digest: Digest;
  mediaType: string;
  /** When the upstream resolved it (ms since epoch): the newer resolution wins. */
  resolvedAt: number;
}

export interface RegionIndex {
  /** Whether the upstream confirmed, on some instance of the region, that this repository may read the digest. */
  isLinked(registry: string, repository: string, digest: Digest): Promise<boolean>;
  /** The region's record of a tag, or undefined. */
  tag(registry: string, repository: string, tag: string): Promise<RegionTag | undefined>;
}
