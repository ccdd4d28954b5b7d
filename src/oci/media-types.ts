export const MT = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerSchema1Signed: 'application/vnd.docker.distribution.manifest.v1+prettyjws',
  dockerSchema1: 'application/vnd.docker.distribution.manifest.v1+json',
} as const;

/** What we ask upstreams for when the client's Accept says nothing narrower. */
export const DEFAULT_MANIFEST_ACCEPT = [MT.ociIndex, MT.ociManifest, MT.dockerManifestList, MT.dockerManifest];

export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/**
 * Parse (possibly repeated, comma-joined) Accept headers into a list of media types,
 * dropping parameters such as q=. An empty list means "anything".
 */
export function parseAccept(values: string | string[] | undefined | null): string[] {
  if (values == null) return [];
  const all = Array.isArray(values) ? values.join(',') : values;
  const out: string[] = [];
  for (const part of all.split(',')) {
    const mt = part.split(';')[0]?.trim().toLowerCase();
    if (mt) out.push(mt);
  }
  return out;
}

export function accepts(accept: string[], mediaType: string): boolean {
  if (accept.length === 0) return true;
  const mt = mediaType.toLowerCase();
  for (const a of accept) {
    if (a === '*/*' || a === mt) return true;
    if (a.endsWith('/*') && mt.startsWith(a.slice(0, -1))) return true;
  }
  return false;
}

const INDEX_TYPES: readonly string[] = [MT.ociIndex, MT.dockerManifestList];

/**
 * The Accept header sent upstream: the client's own types plus both image manifest types
 * (OCI and Docker schema2) always, and both index types when the client takes either. Without
 * schema2 a Distribution registry converts a schema2 image to signed schema1 on the fly (not
 * what any cache should store or a modern client wants); with no index type it still picks the
 * default platform's manifest for a client that cannot read lists.
 */
export function upstreamAccept(accept: string[]): string {
  // Registries do not read */* as "OCI is fine": a client that accepts anything gets our full list.
  if (accept.length === 0 || accept.includes('*/*')) return [...new Set([...DEFAULT_MANIFEST_ACCEPT, ...accept, '*/*'])].join(', ');
  const lists = accept.some((a) => INDEX_TYPES.includes(a)) ? INDEX_TYPES : [];
  return [...new Set([...accept, ...lists, MT.ociManifest, MT.dockerManifest])].join(', ');
}

interface Descriptor {
  digest?: unknown;
  mediaType?: unknown;
}
interface ManifestShape {
  mediaType?: unknown;
  config?: Descriptor;
  layers?: Descriptor[];
  manifests?: Descriptor[];
  blobs?: Descriptor[];
  subject?: Descriptor;
  fsLayers?: Array<{ blobSum?: unknown }>;
}

export interface ParsedManifest {
  mediaType: string | undefined;
  /** Digests of blobs this manifest references (config, layers, blobs, subject). */
  blobs: string[];
  /** Digests of child manifests (for an index). */
  manifests: string[];
}

/** Extract the references of a manifest or index. Throws on bodies that are not JSON objects. */
export function parseManifest(body: Buffer): ParsedManifest {
  const json: unknown = JSON.parse(body.toString('utf8'));
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error('manifest is not a JSON object');
  const m = json as ManifestShape;
  const blobs: string[] = [];
  const manifests: string[] = [];
  const pushDigest = (list: string[], d: Descriptor | undefined) => {
    if (d && typeof d.digest === 'string') list.push(d.digest);
  };
  pushDigest(blobs, m.config);
  for (const l of Array.isArray(m.layers) ? m.layers : []) pushDigest(blobs, l);
  for (const l of Array.isArray(m.blobs) ? m.blobs : []) pushDigest(blobs, l);
  for (const l of Array.isArray(m.fsLayers) ? m.fsLayers : []) if (typeof l.blobSum === 'string') blobs.push(l.blobSum);
  for (const l of Array.isArray(m.manifests) ? m.manifests : []) pushDigest(manifests, l);
  if (m.subject) pushDigest(manifests, m.subject);
  return { mediaType: typeof m.mediaType === 'string' ? m.mediaType : undefined, blobs, manifests };
}

/** The media type to serve a manifest with when the upstream's Content-Type is unusable. */
export function guessManifestMediaType(body: Buffer): string {
  try {
    const p = parseManifest(body);
    if (p.mediaType) return p.mediaType;
    const json = JSON.parse(body.toString('utf8')) as { manifests?: unknown; layers?: unknown };
    if (Array.isArray(json.manifests)) return MT.ociIndex;
  } catch {
    // fall through to the most common type
  }
  return MT.ociManifest;
}
