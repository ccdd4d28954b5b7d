// What the cache index holds per tag, manifest, history entry, pin and frozen tag (cache-index.ts).
import type { Digest } from '../oci/digest.ts';

export interface TagRecord {
  digest: Digest;
  mediaType: string;
  /** When the upstream last confirmed this digest for the tag (ms since epoch). */
  checkedAt: number;
}

export interface ManifestMeta {
  mediaType: string;
  size: number;
  /** Digests this manifest references: blobs, and child manifests for an index. */
  refs: Digest[];
}

export interface HistoryRecord {
  time: number;
  registry: string;
  repository: string;
  tag: string;
  oldDigest: Digest | null;
  newDigest: Digest;
  /** What moved the tag: the upstream, an admin's freeze or unfreeze, or a replication peer's push (its newer resolution). */
  source: 'upstream' | 'freeze' | 'unfreeze' | 'replication';
}

export interface PinRecord {
  /** The image reference as given (normalised), e.g. docker.io/library/alpine:3.19. */
  ref: string;
  registry: string;
  repository: string;
  digests: Digest[];
  createdAt: number;
}

export interface FreezeRecord {
  digest: Digest;
  at: number;
}
