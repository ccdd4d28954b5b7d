// Starts the region's S3 tier (storage.s3): the bucket, checked before the proxy listens (an
// unfit store or refused credentials stop the start; an unreachable bucket only degrades),
// the shared metadata (tags, links, pins, frozen tags, the bucket budget), the S3 read source
// (asked first on a local miss) and the write-behind of every local commit. main.ts imports
// this module only when storage.s3 is configured: it is what loads the AWS SDK.
import type { CacheEvents } from '../cache-events.ts';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { ContentSource } from '../sources/content-source.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import type { CacheLayout } from '../storage/layout.ts';
import { S3Bucket } from './bucket.ts';
import { startRegionMetadata } from './region-metadata.ts';
import { S3Health } from './s3-health.ts';
import { S3Source } from './s3-source.ts';
import { WriteBehind } from './write-behind.ts';
import { WriteBehindJournal } from './write-behind-journal.ts';

export interface S3TierDeps {
  config: Config;
  layout: CacheLayout;
  index: CacheIndex;
  disk: DiskBlobStore;
  events: CacheEvents;
  metrics: Metrics;
  logger: Logger;
  /** Whether a registry's upstream circuit is open (a region tag record may then be older than its TTL). */
  upstreamDown(registry: string): boolean;
  /** The registry's upstream source (authorization of what the bucket holds). */
  upstream(registry: string): ContentSource;
}

export async function startS3Tier(c: NonNullable<Config['storage']['s3']>, d: S3TierDeps) {
  const { config, layout, index, disk, events, metrics, logger } = d;
  const bucket = new S3Bucket({
    bucket: c.bucket,
    prefix: c.prefix,
    ...(c.endpoint !== undefined ? { endpoint: c.endpoint } : {}),
    ...(c.region !== undefined ? { region: c.region } : {}),
    ...(c.forcePathStyle !== undefined ? { forcePathStyle: c.forcePathStyle } : {}),
    // The upstream timeouts: an S3 that accepts connections and never answers is down within them.
    connectTimeoutMs: config.upstream.connectTimeoutMs,
    headersTimeoutMs: config.upstream.headersTimeoutMs,
    idleTimeoutMs: config.upstream.idleTimeoutMs,
    multipartThreshold: c.multipartThreshold,
  });
  const health = new S3Health(bucket, { metrics, logger, clustered: config.cluster !== undefined });
  try {
    await health.check();
  } catch (e) {
    bucket.destroy();
    throw e;
  }
  health.start();
  // Tags, links, pins and frozen tags shared by the region (and the bucket budget, with maxBytes).
  const region = startRegionMetadata({
    bucket,
    index,
    disk,
    events,
    metrics,
    logger,
    dataDir: config.dataDir,
    ...(c.maxBytes !== undefined ? { maxBytes: c.maxBytes } : {}),
    ...(config.cluster ? { instance: config.cluster.self } : {}),
    // A region tag record answers within the registry's tagTTL, older only while the upstream is down.
    tagTtlMs: (registry) => config.registries.get(registry)?.tagTtlMs ?? 300_000,
    upstreamDown: d.upstreamDown,
  });
  const source = new S3Source({ bucket, health, index, regionIndex: region.shared, upstream: d.upstream, metrics, logger });
  // Writes pending at the last stop (a kill -9, or S3 down at shutdown) are redone.
  const { journal, pending } = await WriteBehindJournal.open(`${layout.root}/s3/write-behind.jsonl`, logger);
  // Pending bytes are bounded by what the local disk can hold anyway.
  const writeBehind = new WriteBehind({ bucket, disk, health, metrics, logger, journal, maxPendingBytes: config.cache.maxBytes, staleUploadAgeMs: c.staleUploadAgeMs });
  writeBehind.restore(pending);
  return { bucket, health, source, writeBehind, region };
}
