// Builds the S3 metadata side of a region for startProxy (main.ts): the shared metadata (the
// S3 source's RegionIndex, a CacheEvents listener, fed new local links by CacheIndex.onLinked),
// this instance's access log, and, with storage.s3.maxBytes, the budget keeper and its lease.
// One call from main.ts; one close.
import { createHash } from 'node:crypto';
import os from 'node:os';
import type { CacheEvents } from '../cache-events.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import type { Digest } from '../oci/digest.ts';
import { AccessRecorder } from './access-log.ts';
import type { S3Bucket } from './bucket.ts';
import { BucketBudget } from './bucket-budget.ts';
import { Lease } from './lease.ts';
import { instanceIdOf } from './metadata-keys.ts';
import { RegionMetrics } from './region-metrics.ts';
import { SharedMetadata } from './shared-metadata.ts';

export interface RegionMetadataDeps {
  bucket: S3Bucket;
  index: CacheIndex;
  disk: DiskBlobStore;
  events: CacheEvents;
  metrics: Metrics;
  logger: Logger;
  /** storage.s3.maxBytes: with it, this instance contends for the budget lease. */
  maxBytes?: number;
  /** This instance's stable name in the bucket (cluster.self when clustered). */
  instance?: string;
  dataDir: string;
  /** Each registry's tagTTL: an older region tag record is not an answer (unless the upstream is down). */
  tagTtlMs?: (registry: string) => number;
  /** Whether the registry's upstream is in an outage (its circuit is open). */
  upstreamDown?: (registry: string) => boolean;
  /** How often this instance's access log is rewritten; default 5 min. */
  accessWriteMs?: number;
}

export interface RegionMetadata {
  shared: SharedMetadata;
  budget: BucketBudget | undefined;
  access: AccessRecorder;
  instanceId: string;
  close(): Promise<void>;
}

export function startRegionMetadata(d: RegionMetadataDeps): RegionMetadata {
  const metrics = new RegionMetrics(d.metrics.registry);
  // Stable across restarts (host and data dir), so an instance keeps one access log.
  const instanceId = instanceIdOf(d.instance ?? `${os.hostname()}-${createHash('sha256').update(d.dataDir).digest('hex').slice(0, 8)}`);
  const access = new AccessRecorder({
    bucket: d.bucket,
    instanceId,
    logger: d.logger,
    local: function* () {
      for (const digest of d.disk.lruOrder()) {
        const at = d.disk.lastAccess(digest);
        if (at !== undefined) yield [digest, at] as [Digest, number];
      }
    },
  });
  const shared = new SharedMetadata({
    bucket: d.bucket,
    logger: d.logger,
    metrics,
    index: d.index,
    onRegionRead: (digest) => access.touch(digest),
    ...(d.tagTtlMs ? { tagMaxAgeMs: d.tagTtlMs } : {}),
    ...(d.upstreamDown ? { upstreamDown: d.upstreamDown } : {}),
  });
  d.index.onLinked = (registry, repository, digest) => shared.linked(registry, repository, digest);
  d.index.onTagConfirmed = (registry, repository, tag, rec) => shared.tagConfirmed(registry, repository, tag, rec);
  d.events.listen(shared);
  shared.start();
  const writeAccess = () => void access.write().catch((err: unknown) => d.logger.warn({ err: (err as Error).message }, 'writing the access log to the bucket failed'));
  const accessTimer = setInterval(writeAccess, d.accessWriteMs ?? 300_000);
  accessTimer.unref();
  const budget =
    d.maxBytes !== undefined
      ? new BucketBudget({
          bucket: d.bucket,
          maxBytes: d.maxBytes,
          lease: new Lease({ bucket: d.bucket, name: 'budget', holder: instanceId }),
          metrics,
          logger: d.logger,
          isPinnedLocally: (digest) => d.index.isPinned(digest),
        })
      : undefined;
  budget?.start();
  return {
    shared,
    budget,
    access,
    instanceId,
    async close() {
      clearInterval(accessTimer);
      access.close();
      await budget?.close();
      // Queued metadata writes get a short while (S3 down must not hold a shutdown up); the rest
      // is lost, as the local index still has it and the sync uploads pins and freezes again.
      await shared.close(2_000);
    },
  };
}
