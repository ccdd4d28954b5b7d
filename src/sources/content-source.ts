// Where bytes come from when the local tiers (memory, disk: storage/blob-store.ts) miss: the
// upstream registry, a failover peer (another ocirelay region or any OCI registry), later the
// S3 tier. Each is a ContentSource; SourceChain (source-chain.ts) orders them per request. What
// a source hands back is raw and unverified: the one fill machinery (BlobFill for blobs,
// ManifestService for manifests) verifies, coalesces and commits whatever source delivered it.
import type { ContentVia } from '../cache-events.ts';
import type { RegistryError } from '../errors.ts';
import type { Digest } from '../oci/digest.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';

export interface BlobRef {
  registry: string;
  repository: string;
  digest: Digest;
}

export interface ManifestRef {
  registry: string;
  repository: string;
  /** A tag or a digest. */
  reference: string;
}

export interface BlobHead {
  /** The source's Content-Length, when it sent one. */
  size: number | undefined;
}

/** A manifest's bytes as a source sent them (at most MAX_MANIFEST_BYTES), not yet checked. */
export interface RawManifest {
  body: Buffer;
  contentType: string | undefined;
  /** The source's Docker-Content-Digest header. */
  claimedDigest: string | undefined;
  /** When the source says the tag was resolved (a peer's Ocirelay-Resolved-At), ms since epoch. */
  resolvedAt?: number;
}

/** A HEAD of a manifest: its status is for the caller to judge (a tag's revalidation reads it). */
export interface ManifestHead {
  status: number;
  digest: string | undefined;
  /** When the source says the tag was resolved (a cluster member's Ocirelay-Resolved-At), ms since epoch. */
  resolvedAt?: number;
  /** The OCI error for a non-200 status (reads and discards what is left of the answer). */
  error(): Promise<RegistryError>;
}

/**
 * One place content can be read from. Every method throws a RegistryError when the source
 * has no usable answer (a 404 as BLOB_UNKNOWN / MANIFEST_UNKNOWN / NAME_UNKNOWN; outages as
 * UNAVAILABLE or TOOMANYREQUESTS, marked by markOutage so the chain knows to try elsewhere).
 */
export interface ContentSource {
  /** 'upstream' or the peer's name (metrics, logs). */
  readonly name: string;
  /** What content committed from this source is announced as (CacheEvents). */
  readonly via: ContentVia;
  /** The whole blob's body; `expectedSize` (a descriptor's size) becomes the fill's size. */
  openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number): Promise<FillSource>;
  headBlob(ref: BlobRef): Promise<BlobHead>;
  getManifest(ref: ManifestRef, accept: readonly string[]): Promise<RawManifest>;
  headManifest(ref: ManifestRef, accept: readonly string[]): Promise<ManifestHead>;
}

const outages = new WeakSet<RegistryError>();

/** Marks an error as the source being down or overloaded (not "it does not exist" or "no"). */
export function markOutage(e: RegistryError): RegistryError {
  outages.add(e);
  return e;
}

/** Whether a source's error is an outage: the chain then asks the next source. */
export function isSourceOutage(e: unknown): boolean {
  return typeof e === 'object' && e !== null && outages.has(e as RegistryError);
}
