// Pins and frozen tags of the region, reconciled between the bucket and the local CacheIndex
// (run at start-up and every ~30 s by SharedMetadata). The local index is where eviction
// (isPinned) and tag resolution (frozen) look, so a pin or freeze made on any instance is
// honoured on every instance within one sync. The later change wins, by its time `at`: a
// bucket record newer than the local one is applied locally (pin, re-pin, unpin; freeze,
// unfreeze: tombstones carry the time of an unpin/unfreeze), a local one newer than the
// bucket's, or missing from it, is uploaded. Keys with a write still queued are left alone
// (the queue carries the newer state). Applying locally announces nothing (no events): the
// instance that made the change announced it.
import type { Logger } from '../logger.ts';
import type { Digest } from '../oci/digest.ts';
import type { CacheIndex, PinRecord } from '../storage/cache-index.ts';
import type { S3Bucket } from './bucket.ts';
import { FROZEN_PREFIX, PINS_PREFIX, frozenKey, parseFrozenKey, pinKey, refOfPinKey } from './metadata-keys.ts';
import { parseFrozenJson, parsePinJson, type FrozenJson, type PinJson } from './metadata-records.ts';

/** Records read per sync at most (pins and frozen tags are operator actions: few). */
const MAX_RECORDS = 10_000;

export interface SyncResult {
  pinned: number;
  unpinned: number;
  frozen: number;
  unfrozen: number;
  uploaded: number;
}

export interface SyncDeps {
  bucket: S3Bucket;
  index: CacheIndex;
  logger: Logger;
  pending: (key: string) => boolean;
  upload: { pin(rec: PinJson): void; frozen(rec: FrozenJson): void };
}

const sameDigests = (a: Digest[], b: Digest[]) => a.length === b.length && a.every((d, i) => d === b[i]);

export async function syncPinsAndFreezes(d: SyncDeps): Promise<SyncResult> {
  const r: SyncResult = { pinned: 0, unpinned: 0, frozen: 0, unfrozen: 0, uploaded: 0 };
  await syncPins(d, r);
  await syncFreezes(d, r);
  if (r.pinned + r.unpinned + r.frozen + r.unfrozen + r.uploaded > 0) d.logger.info({ ...r }, 'pins and frozen tags synced with the bucket');
  return r;
}

async function syncPins(d: SyncDeps, r: SyncResult): Promise<void> {
  const { bucket, index } = d;
  const local = new Map<string, PinRecord>(index.allPins().map((p) => [p.ref, p]));
  const seen = new Set<string>();
  let n = 0;
  for await (const o of bucket.list(PINS_PREFIX)) {
    if (++n > MAX_RECORDS) break;
    const ref = refOfPinKey(o.key);
    if (ref === undefined || d.pending(o.key)) continue;
    const got = await bucket.getJson(o.key);
    const rec = got ? parsePinJson(got.value) : undefined;
    if (!rec || rec.ref !== ref) continue;
    seen.add(ref);
    const mine = local.get(ref);
    if (rec.pinned) {
      if (mine && sameDigests(mine.digests, rec.digests)) continue;
      if (!mine || mine.createdAt < rec.at) {
        await index.pin({ ref, registry: rec.registry, repository: rec.repository, digests: rec.digests, createdAt: rec.at });
        r.pinned++;
      } else {
        d.upload.pin(pinOf(mine));
        r.uploaded++;
      }
    } else if (mine) {
      if (mine.createdAt < rec.at) {
        await index.unpin(ref);
        r.unpinned++;
      } else {
        d.upload.pin(pinOf(mine));
        r.uploaded++;
      }
    }
  }
  if (n > MAX_RECORDS) return; // not all seen: nothing is "missing from the bucket"
  for (const [ref, mine] of local) {
    if (seen.has(ref) || d.pending(pinKey(ref))) continue;
    d.upload.pin(pinOf(mine));
    r.uploaded++;
  }
}

function pinOf(p: PinRecord): PinJson {
  return { ref: p.ref, registry: p.registry, repository: p.repository, digests: p.digests, pinned: true, at: p.createdAt };
}

async function syncFreezes(d: SyncDeps, r: SyncResult): Promise<void> {
  const { bucket, index } = d;
  const seen = new Set<string>();
  let n = 0;
  for await (const o of bucket.list(FROZEN_PREFIX)) {
    if (++n > MAX_RECORDS) break;
    const k = parseFrozenKey(o.key);
    if (!k || d.pending(o.key)) continue;
    const got = await bucket.getJson(o.key);
    const rec = got ? parseFrozenJson(got.value) : undefined;
    if (!rec || rec.registry !== k.registry || rec.repository !== k.repository || rec.tag !== k.tag) continue;
    seen.add(o.key);
    const mine = index.frozen(rec.registry, rec.repository, rec.tag);
    if (rec.digest !== null) {
      if (mine && mine.digest === rec.digest) continue;
      if (!mine || mine.at < rec.at) {
        await index.freeze(rec.registry, rec.repository, rec.tag, rec.digest, rec.at);
        r.frozen++;
      } else {
        d.upload.frozen({ ...k, digest: mine.digest, at: mine.at });
        r.uploaded++;
      }
    } else if (mine) {
      if (mine.at < rec.at) {
        await index.unfreeze(rec.registry, rec.repository, rec.tag, rec.at);
        r.unfrozen++;
      } else {
        d.upload.frozen({ ...k, digest: mine.digest, at: mine.at });
        r.uploaded++;
      }
    }
  }
  if (n > MAX_RECORDS) return;
  for (const { registry, repository, tag, rec: f } of index.allFreezes()) {
    let key: string;
    try {
      key = frozenKey(registry, repository, tag);
    } catch {
      continue;
    }
    if (seen.has(key) || d.pending(key)) continue;
    d.upload.frozen({ registry, repository, tag, digest: f.digest, at: f.at });
    r.uploaded++;
  }
}
