// Access to content, recorded coarsely and region-wide for the bucket budget's LRU order. Each
// instance keeps one object, meta/access/<instance>.json = {instance, writtenAt, access: {hex:
// ms}}: the last access of each digest it served in the last week (its local disk's recency,
// touched at most every 10 min, plus reads from the region's tiers), rewritten every few
// minutes when something changed, and within ~30 s of a digest's first read from the region
// (so the budget keeper sees a promotion starting). The budget keeper merges all instances'
// objects; an instance's object not rewritten for a week (the instance is gone) is deleted.
import type { Logger } from '../logger.ts';
import { digestHex, type Digest } from '../oci/digest.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';
import { ACCESS_PREFIX, accessKey } from './metadata-keys.ts';

const WEEK = 7 * 24 * 3_600_000;

export interface AccessRecorderOptions {
  bucket: S3Bucket;
  instanceId: string;
  /** The local disk's recency: digest and last access (ms). */
  local?: () => Iterable<[Digest, number]>;
  /** Accesses older than this are not written; default a week. */
  windowMs?: number;
  /** At most this many digests (the most recent) per instance; default 100,000. */
  maxEntries?: number;
  /** A first read from the region is written within this; default 30 s. */
  debounceMs?: number;
  logger: Logger;
  now?: () => number;
}

export class AccessRecorder {
  private readonly touched = new Map<Digest, number>();
  private readonly written = new Set<Digest>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** The ETag of our last write: every write is conditional (a bucket policy may require it). */
  private etag: string | undefined;
  private readonly now: () => number;

  constructor(private readonly o: AccessRecorderOptions) {
    this.now = o.now ?? Date.now;
  }

  /** A read of the digest from the region's tiers (S3 source, promotion). */
  touch(digest: Digest, at = this.now()): void {
    this.touched.delete(digest);
    this.touched.set(digest, at);
    if (this.touched.size > (this.o.maxEntries ?? 100_000)) this.touched.delete(this.touched.keys().next().value!);
    if (!this.written.has(digest) && !this.timer && !this.closed) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.write().catch((err: unknown) => this.o.logger.warn({ err: (err as Error).message }, 'writing the access log to the bucket failed'));
      }, this.o.debounceMs ?? 30_000);
      this.timer.unref();
    }
  }

  /** Writes this instance's access object now; returns the number of digests in it. */
  async write(): Promise<number> {
    const now = this.now();
    const since = now - (this.o.windowMs ?? WEEK);
    const latest = new Map<Digest, number>();
    for (const [d, at] of this.o.local?.() ?? []) if (at >= since) latest.set(d, at);
    for (const [d, at] of this.touched) if (at >= since && at > (latest.get(d) ?? 0)) latest.set(d, at);
    const entries = [...latest].sort((a, b) => b[1] - a[1]).slice(0, this.o.maxEntries ?? 100_000);
    const access: Record<string, number> = {};
    for (const [d, at] of entries) access[digestHex(d)] = at;
    const key = accessKey(this.o.instanceId);
    const record = { instance: this.o.instanceId, writtenAt: now, access };
    for (let attempt = 0; ; attempt++) {
      const r = await this.o.bucket.putJson(key, record, this.etag !== undefined ? { ifMatch: this.etag } : { ifNoneMatch: true });
      if (r !== 'conflict') {
        this.etag = r;
        break;
      }
      // Only this instance writes the key: a conflict means our ETag is not known (a restart).
      if (attempt >= 2) throw new Error(`writing ${key}: conditional write kept failing`);
      this.etag = (await this.o.bucket.head(key))?.etag;
    }
    this.written.clear();
    for (const [d] of entries) this.written.add(d);
    return entries.length;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Every instance's last access per content hex, merged (the latest wins); deletes objects of instances gone for `goneAfterMs`. */
export async function readRegionAccess(bucket: S3Bucket, logger: Logger, now = Date.now(), goneAfterMs = WEEK): Promise<Map<string, number>> {
  const merged = new Map<string, number>();
  const keys: string[] = [];
  for await (const o of bucket.list(ACCESS_PREFIX)) {
    if (!o.key.endsWith('.json')) continue;
    if (now - o.lastModified.getTime() > goneAfterMs) {
      await bucket.delete(o.key);
      continue;
    }
    keys.push(o.key);
  }
  for (const key of keys) {
    let got;
    try {
      got = await bucket.getJson(key);
    } catch (e) {
      if (e instanceof S3Unavailable && e.reason === 'other') {
        logger.warn({ key, err: e.message }, 'unreadable access log in the bucket: ignored');
        continue;
      }
      throw e;
    }
    const access = (got?.value as { access?: unknown } | undefined)?.access;
    if (typeof access !== 'object' || access === null) continue;
    for (const [hex, at] of Object.entries(access as Record<string, unknown>)) {
      if (typeof at !== 'number' || !/^[0-9a-f]{64}$/.test(hex)) continue;
      if (at > (merged.get(hex) ?? 0)) merged.set(hex, at);
    }
  }
  return merged;
}
