// The JSON records of the shared metadata (keys: metadata-keys.ts), their validation when read
// back (a record is data from the bucket: anything malformed is treated as absent), and the one
// compare-and-swap rule they are written with: read the record and its ETag; if the stored one
// is at least as new, stop; else replace exactly that version (If-Match), or create it only if
// still absent (If-None-Match); a 412 means another instance wrote in between: read again.
import { isValidName, isValidTag } from '../oci/reference.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import type { S3Bucket } from './bucket.ts';
import { isValidRegistry } from './metadata-keys.ts';

export interface TagJson {
  digest: Digest;
  mediaType: string;
  resolvedAt: number;
}

export interface FrozenJson {
  registry: string;
  repository: string;
  tag: string;
  /** null: unfrozen at `at` (a tombstone, so an older freeze elsewhere is not uploaded again). */
  digest: Digest | null;
  at: number;
}

export interface PinJson {
  ref: string;
  registry: string;
  repository: string;
  digests: Digest[];
  /** false: unpinned at `at` (a tombstone). */
  pinned: boolean;
  at: number;
}

const MAX_PIN_DIGESTS = 100_000;

const obj = (v: unknown): Record<string, unknown> | undefined => (typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
const time = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v) && v >= 0;
const mediaTypeOk = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= 255 && /^[\x21-\x7e]+$/.test(v);

export function parseTagJson(v: unknown): TagJson | undefined {
  const o = obj(v);
  if (!o || typeof o.digest !== 'string' || !mediaTypeOk(o.mediaType) || !time(o.resolvedAt)) return undefined;
  const digest = parseDigest(o.digest);
  return digest ? { digest, mediaType: o.mediaType, resolvedAt: o.resolvedAt } : undefined;
}

export function parseFrozenJson(v: unknown): FrozenJson | undefined {
  const o = obj(v);
  if (!o || typeof o.registry !== 'string' || typeof o.repository !== 'string' || typeof o.tag !== 'string' || !time(o.at)) return undefined;
  if (!isValidRegistry(o.registry) || !isValidName(o.repository) || !isValidTag(o.tag)) return undefined;
  let digest: Digest | null = null;
  if (o.digest !== null) {
    if (typeof o.digest !== 'string') return undefined;
    const d = parseDigest(o.digest);
    if (!d) return undefined;
    digest = d;
  }
  return { registry: o.registry, repository: o.repository, tag: o.tag, digest, at: o.at };
}

export function parsePinJson(v: unknown): PinJson | undefined {
  const o = obj(v);
  if (!o || typeof o.ref !== 'string' || typeof o.registry !== 'string' || typeof o.repository !== 'string' || typeof o.pinned !== 'boolean' || !time(o.at)) return undefined;
  if (!isValidRegistry(o.registry) || !isValidName(o.repository) || !Array.isArray(o.digests) || o.digests.length > MAX_PIN_DIGESTS) return undefined;
  const digests: Digest[] = [];
  for (const x of o.digests) {
    const d = typeof x === 'string' ? parseDigest(x) : undefined;
    if (!d) return undefined;
    digests.push(d);
  }
  return { ref: o.ref, registry: o.registry, repository: o.repository, digests, pinned: o.pinned, at: o.at };
}

/** A tag resolution replaces a stored one only when newer; on equal times the larger digest wins (every writer ends with the same). */
export function tagIsNewer(next: TagJson, stored: TagJson): boolean {
  return next.resolvedAt > stored.resolvedAt || (next.resolvedAt === stored.resolvedAt && next.digest > stored.digest);
}

/** Pins and freezes: the later change wins (on equal times, the stored one stays). */
export function changeIsNewer(next: { at: number }, stored: { at: number }): boolean {
  return next.at > stored.at;
}

const CAS_ATTEMPTS = 10;

export type CasResult = 'written' | 'stale';

/**
 * Writes `value` under `key` unless the stored record is at least as new (`isNewer(value,
 * stored)` false): 'stale'. A stored record that does not parse is replaced. Throws
 * S3Unavailable when the bucket fails, and an Error when other writers kept winning.
 */
export async function casNewer<T>(bucket: S3Bucket, key: string, value: T, parse: (v: unknown) => T | undefined, isNewer: (next: T, stored: T) => boolean): Promise<CasResult> {
  for (let attempt = 0; attempt < CAS_ATTEMPTS; attempt++) {
    const cur = await bucket.getJson(key);
    if (cur) {
      const stored = parse(cur.value);
      if (stored !== undefined && !isNewer(value, stored)) return 'stale';
    }
    const r = await bucket.putJson(key, value, cur ? { ifMatch: cur.etag } : { ifNoneMatch: true });
    if (r !== 'conflict') return 'written';
  }
  throw new Error(`compare-and-swap of ${key}: still conflicting after ${CAS_ATTEMPTS} attempts`);
}
