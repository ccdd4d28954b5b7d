// The bucket's budget (storage.s3.maxBytes, issue 11 item 5). One member of the region, the
// holder of the lease meta/lease/budget.json (lease.ts: 60 s, renewed every 20 s), lists the
// content objects every few minutes and, when they pass maxBytes, deletes down to 90% of it:
// first what nothing in the bucket refers to (bucket-references.ts: not reachable from a tag
// record, a frozen tag or a pin), then the least recently used (access-log.ts: every
// instance's last accesses, merged; an object's own creation time counts as a use).
//
// Never deleted: pinned content (pins in the bucket, and this instance's own index), and any
// object created or accessed within the grace period (default 30 min). The keeper cannot see
// other instances' fills and promotions: a fill is not in the bucket until its write-behind,
// which creates the object (so it is young), and a promotion reads an object an instance just
// accessed (recorded within ~30 s), so the grace period is what protects both.
import type { Logger } from '../logger.ts';
import { digestHex, type Digest } from '../oci/digest.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';
import { readRegionAccess } from './access-log.ts';
import { BucketReferences } from './bucket-references.ts';
import type { Lease } from './lease.ts';
import { BLOBS_PREFIX, digestOfBlobKey } from './metadata-keys.ts';
import type { RegionMetrics } from './region-metrics.ts';

export interface BucketBudgetOptions {
  bucket: S3Bucket;
  maxBytes: number;
  lease: Lease;
  metrics: RegionMetrics;
  logger: Logger;
  /** Evict down to maxBytes * this; default 0.9. */
  lowWatermark?: number;
  /** Objects created or accessed this recently are never evicted; default 30 min. */
  graceMs?: number;
  /** Pinned on this instance (its CacheIndex). */
  isPinnedLocally?: (d: Digest) => boolean;
  /** How often the budget is checked by the holder; default 5 min. */
  intervalMs?: number;
  /** How often the lease is taken or renewed; default 20 s. */
  renewMs?: number;
  now?: () => number;
}

export type BucketEvictionReason = 'unreferenced' | 'lru';

export interface EnforceResult {
  totalBytes: number;
  evicted: Array<{ digest: Digest; size: number; reason: BucketEvictionReason }>;
  freedBytes: number;
  /** Over budget after the pass (nothing more could go). */
  overBudget: boolean;
}

interface Candidate {
  digest: Digest;
  size: number;
  lastUse: number;
}

export class BucketBudget {
  private readonly refs: BucketReferences;
  private readonly now: () => number;
  private renewTimer: NodeJS.Timeout | undefined;
  private checkTimer: NodeJS.Timeout | undefined;
  private running: Promise<EnforceResult | undefined> | undefined;
  private closed = false;
  private checkedOnce = false;

  constructor(private readonly o: BucketBudgetOptions) {
    this.refs = new BucketReferences(o.bucket);
    this.now = o.now ?? Date.now;
    o.metrics.bucketBudgetBytes.set(o.maxBytes);
  }

  /** Contend for the lease now and every renewMs; check the budget every intervalMs while holding it. */
  start(): void {
    if (this.renewTimer || this.closed) return;
    const renew = () =>
      void this.o.lease
        .tryAcquire()
        .then((held) => {
          this.o.metrics.budgetLeader.set(held ? 1 : 0);
          // A new holder looks at the budget at once, then every intervalMs.
          if (held && !this.checkedOnce) {
            this.checkedOnce = true;
            void this.check();
          }
        })
        .catch((err: unknown) => {
          this.o.metrics.budgetLeader.set(0);
          this.o.logger.warn({ err: (err as Error).message }, 'bucket budget lease: S3 unavailable');
        });
    renew();
    this.renewTimer = setInterval(renew, this.o.renewMs ?? 20_000);
    this.renewTimer.unref();
    this.checkTimer = setInterval(() => void this.check(), this.o.intervalMs ?? 300_000);
    this.checkTimer.unref();
  }

  /** One pass if this member holds the lease (coalesced); failures are logged. */
  check(): Promise<EnforceResult | undefined> {
    if (!this.o.lease.held || this.closed) return Promise.resolve(undefined);
    this.running ??= this.enforce()
      .catch((err: unknown) => {
        if (err instanceof S3Unavailable) this.o.logger.warn({ err: err.message }, 'bucket budget pass stopped: S3 unavailable');
        else this.o.logger.error({ err }, 'bucket budget pass failed');
        return undefined;
      })
      .finally(() => (this.running = undefined));
    return this.running;
  }

  /** Lists the bucket and evicts down to the low watermark when over maxBytes. Only while the lease is held. Throws S3Unavailable. */
  async enforce(): Promise<EnforceResult> {
    const objects = new Map<Digest, { size: number; created: number }>();
    let total = 0;
    for await (const o of this.o.bucket.list(BLOBS_PREFIX)) {
      const d = digestOfBlobKey(o.key);
      if (!d) continue;
      objects.set(d, { size: o.size, created: o.lastModified.getTime() });
      total += o.size;
    }
    this.o.metrics.bucketBytes.set(total);
    const result: EnforceResult = { totalBytes: total, evicted: [], freedBytes: 0, overBudget: false };
    if (total <= this.o.maxBytes) return result;

    const now = this.now();
    const grace = this.o.graceMs ?? 30 * 60_000;
    const [access, { referenced, pinned }] = [await readRegionAccess(this.o.bucket, this.o.logger, now), await this.refs.scan(objects)];
    const unreferenced: Candidate[] = [];
    const lru: Candidate[] = [];
    for (const [digest, o] of objects) {
      if (pinned.has(digest) || this.o.isPinnedLocally?.(digest)) continue;
      const lastUse = Math.max(o.created, access.get(digestHex(digest)) ?? 0);
      if (now - lastUse < grace) continue;
      (referenced.has(digest) ? lru : unreferenced).push({ digest, size: o.size, lastUse });
    }
    const target = this.o.maxBytes * (this.o.lowWatermark ?? 0.9);
    const passes: Array<[BucketEvictionReason, Candidate[]]> = [
      ['unreferenced', unreferenced],
      ['lru', lru],
    ];
    for (const [reason, list] of passes) {
      list.sort((a, b) => a.lastUse - b.lastUse);
      for (const c of list) {
        if (total <= target) break;
        // Someone else may hold it by now: stop rather than race its pass.
        if (!this.o.lease.held || this.closed) break;
        await this.o.bucket.delete(`${BLOBS_PREFIX}${digestHex(c.digest)}`);
        total -= c.size;
        result.freedBytes += c.size;
        result.evicted.push({ digest: c.digest, size: c.size, reason });
        this.o.metrics.bucketEvictions.inc({ reason });
        this.o.metrics.bucketEvictedBytes.inc({ reason }, c.size);
      }
    }
    result.totalBytes = total;
    result.overBudget = total > this.o.maxBytes;
    this.o.metrics.bucketBytes.set(total);
    if (result.evicted.length > 0) this.o.logger.info({ evicted: result.evicted.length, freedBytes: result.freedBytes, bucketBytes: total, budget: this.o.maxBytes }, 'evicted from the bucket');
    if (result.overBudget) this.o.logger.warn({ bucketBytes: total, budget: this.o.maxBytes }, 'bucket over budget: the rest is pinned, referenced-and-recent or within the grace period');
    return result;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.renewTimer) clearInterval(this.renewTimer);
    if (this.checkTimer) clearInterval(this.checkTimer);
    await this.running;
    await this.o.lease.release().catch(() => undefined);
    this.o.metrics.budgetLeader.set(0);
  }
}
