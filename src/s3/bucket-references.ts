// What the bucket alone says is still referenced, for the budget keeper: the closure of every
// tag record, frozen tag and pin in the bucket, following manifests (image indexes to their
// manifests, manifests to their config and layers) read from the bucket itself. Manifests are
// content-addressed, so a parsed one is remembered for good (bounded); records are re-read only
// when their listing (size, time) changed. Bounded work per scan: manifests over 4 MiB are not
// read (the limit ocirelay stores), at most `maxParses` reads per scan.
import { Readable } from 'node:stream';
import { parseDigest, type Digest } from '../oci/digest.ts';
import type { S3Bucket } from './bucket.ts';
import { FROZEN_PREFIX, PINS_PREFIX, REPOS_PREFIX, blobKey, parseFrozenKey, parseTagKey, refOfPinKey } from './metadata-keys.ts';
import { parseFrozenJson, parsePinJson, parseTagJson } from './metadata-records.ts';

const MAX_MANIFEST_BYTES = 4 * 2 ** 20;
const MAX_REMEMBERED = 50_000;

export interface References {
  /** Reachable from a tag, a frozen tag or a pin. */
  referenced: Set<Digest>;
  /** Named by a pin in the bucket. */
  pinned: Set<Digest>;
}

export class BucketReferences {
  private readonly manifestRefs = new Map<Digest, Digest[]>();
  private readonly records = new Map<string, { stamp: string; digests: Digest[]; pinned: boolean }>();

  constructor(
    private readonly bucket: S3Bucket,
    private readonly maxParses = 10_000,
  ) {}

  async scan(objects: Map<Digest, { size: number }>): Promise<References> {
    const roots = new Set<Digest>();
    const pinned = new Set<Digest>();
    const live = new Set<string>();
    const visit = async (prefix: string, read: (key: string) => Promise<{ digests: Digest[]; pinned: boolean }>) => {
      for await (const o of this.bucket.list(prefix)) {
        const stamp = `${o.size}:${o.lastModified.getTime()}`;
        let rec = this.records.get(o.key);
        if (!rec || rec.stamp !== stamp) {
          rec = { stamp, ...(await read(o.key)) };
          this.records.set(o.key, rec);
        }
        live.add(o.key);
        for (const d of rec.digests) {
          roots.add(d);
          if (rec.pinned) pinned.add(d);
        }
      }
    };
    const none = { digests: [] as Digest[], pinned: false };
    await visit(REPOS_PREFIX, async (key) => {
      if (!parseTagKey(key)) return none;
      const t = parseTagJson((await this.bucket.getJson(key))?.value);
      return t ? { digests: [t.digest], pinned: false } : none;
    });
    await visit(FROZEN_PREFIX, async (key) => {
      if (!parseFrozenKey(key)) return none;
      const f = parseFrozenJson((await this.bucket.getJson(key))?.value);
      return f?.digest ? { digests: [f.digest], pinned: false } : none;
    });
    await visit(PINS_PREFIX, async (key) => {
      if (refOfPinKey(key) === undefined) return none;
      const p = parsePinJson((await this.bucket.getJson(key))?.value);
      return p?.pinned ? { digests: p.digests, pinned: true } : none;
    });
    for (const k of this.records.keys()) if (!live.has(k)) this.records.delete(k);

    const referenced = new Set<Digest>();
    const stack = [...roots];
    let parses = 0;
    while (stack.length > 0) {
      const d = stack.pop()!;
      if (referenced.has(d)) continue;
      referenced.add(d);
      const obj = objects.get(d);
      if (!obj || obj.size > MAX_MANIFEST_BYTES) continue;
      let refs = this.manifestRefs.get(d);
      if (refs === undefined) {
        if (parses >= this.maxParses) continue;
        parses++;
        refs = await this.readRefs(d);
        if (this.manifestRefs.size >= MAX_REMEMBERED) this.manifestRefs.clear();
        this.manifestRefs.set(d, refs);
      }
      for (const r of refs) if (!referenced.has(r)) stack.push(r);
    }
    return { referenced, pinned };
  }

  /** The digests a manifest in the bucket refers to; [] for anything that is not a manifest. */
  private async readRefs(d: Digest): Promise<Digest[]> {
    const got = await this.bucket.get(blobKey(d));
    if (!got) return [];
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of got.body as Readable as AsyncIterable<Buffer>) {
      n += c.length;
      if (n > MAX_MANIFEST_BYTES) {
        got.body.destroy();
        return [];
      }
      chunks.push(c);
    }
    return manifestRefs(Buffer.concat(chunks));
  }
}

/** config, layers, blobs (artifacts) and manifests (indexes) of a manifest's JSON. */
export function manifestRefs(body: Buffer): Digest[] {
  let m: unknown;
  try {
    m = JSON.parse(body.toString('utf8'));
  } catch {
    return [];
  }
  if (typeof m !== 'object' || m === null) return [];
  const o = m as Record<string, unknown>;
  const out: Digest[] = [];
  const add = (desc: unknown) => {
    const s = (desc as { digest?: unknown } | null)?.digest;
    const d = typeof s === 'string' ? parseDigest(s) : undefined;
    if (d) out.push(d);
  };
  add(o.config);
  for (const k of ['layers', 'manifests', 'blobs']) if (Array.isArray(o[k])) for (const x of o[k] as unknown[]) add(x);
  return out;
}
