// Every metric ocirelay exports, in one place. Each Metrics owns its own prom-client
// Registry (no global default registry), so several instances can live in one process.
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

export type CacheResult = 'hit' | 'miss' | 'coalesced' | 'stale' | 'bypass' | 'error';
export type ObjectKind = 'manifest' | 'blob' | 'tags' | 'referrers';
export type ByteSource = 'memory' | 'disk' | 'upstream' | 'fill' | 's3';

export class Metrics {
  readonly registry = new Registry();

  readonly httpRequests = new Counter({
    name: 'ocirelay_http_requests_total',
    help: 'Client HTTP requests by method, route kind and status',
    labelNames: ['method', 'kind', 'status'] as const,
    registers: [this.registry],
  });
  readonly httpDuration = new Histogram({
    name: 'ocirelay_http_request_duration_seconds',
    help: 'Client request latency until the response is finished',
    labelNames: ['method', 'kind'] as const,
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });
  readonly cacheResults = new Counter({
    name: 'ocirelay_cache_results_total',
    help: 'Cache results by object kind (hit, miss, coalesced, stale, bypass, error)',
    labelNames: ['kind', 'result'] as const,
    registers: [this.registry],
  });
  readonly bytesServed = new Counter({
    name: 'ocirelay_bytes_served_total',
    help: 'Body bytes sent to clients by source (memory, disk, fill = from an in-flight upstream fill, upstream = passed through)',
    labelNames: ['source'] as const,
    registers: [this.registry],
  });
  readonly upstreamRequests = new Counter({
    name: 'ocirelay_upstream_requests_total',
    help: 'Requests sent to upstream registries by registry, method and status (or error class)',
    labelNames: ['registry', 'method', 'status'] as const,
    registers: [this.registry],
  });
  readonly upstreamBytes = new Counter({
    name: 'ocirelay_upstream_bytes_total',
    help: 'Body bytes received from upstream registries',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });
  readonly upstreamDuration = new Histogram({
    name: 'ocirelay_upstream_request_duration_seconds',
    help: 'Upstream latency until response headers',
    labelNames: ['registry', 'method'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [this.registry],
  });
  readonly upstreamRateLimitRemaining = new Gauge({
    name: 'ocirelay_upstream_ratelimit_remaining',
    help: "Pulls left in the upstream's rate-limit window (Docker Hub ratelimit-remaining)",
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });
  readonly upstreamRateLimitLimit = new Gauge({
    name: 'ocirelay_upstream_ratelimit_limit',
    help: "The upstream's rate-limit window size (Docker Hub ratelimit-limit)",
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });
  readonly circuitOpen = new Gauge({
    name: 'ocirelay_upstream_circuit_open',
    help: '1 while the circuit breaker of an upstream registry is open',
    labelNames: ['registry'] as const,
    registers: [this.registry],
  });
  readonly fillsInFlight = new Gauge({
    name: 'ocirelay_fills_in_flight',
    help: 'Blob downloads from upstream in progress',
    registers: [this.registry],
  });
  /** Set by the owner of the fills (BlobFills): bytes they keep in memory for their readers. */
  fillMemory: () => number = () => 0;
  readonly fillMemoryBytes = ((metrics: Metrics) =>
    new Gauge({
      name: 'ocirelay_fill_memory_bytes',
      help: 'Written blob batches in-flight fills keep in memory for the clients close behind them (bounded at 32 MiB over all fills)',
      registers: [this.registry],
      collect() {
        this.set(metrics.fillMemory());
      },
    }))(this);
  readonly fillResults = new Counter({
    name: 'ocirelay_fills_total',
    help: 'Finished blob fills by result (committed, digest_mismatch, size_mismatch, truncated, upstream_error, disk_error)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly coalescedWaiters = new Counter({
    name: 'ocirelay_coalesced_waiters_total',
    help: 'Client requests that joined a fill already in flight instead of going upstream',
    registers: [this.registry],
  });
  readonly digestMismatches = new Counter({
    name: 'ocirelay_digest_mismatches_total',
    help: 'Upstream content whose digest or size did not match (blobs and manifests); never cached',
    labelNames: ['kind'] as const,
    registers: [this.registry],
  });
  readonly negativeCacheHits = new Counter({
    name: 'ocirelay_negative_cache_hits_total',
    help: 'Requests answered 404 from the negative cache (a recent upstream 404) without asking the upstream, by registry and kind',
    labelNames: ['registry', 'kind'] as const,
    registers: [this.registry],
  });
  readonly journalWriteFailures = new Counter({
    name: 'ocirelay_index_journal_write_failures_total',
    help: 'Index journal appends that failed (ENOSPC, EIO): admin operations that needed them failed; pull-path metadata is kept in memory only until the next compaction',
    registers: [this.registry],
  });
  readonly staleServed = new Counter({
    name: 'ocirelay_stale_served_total',
    help: 'Tag manifests served stale because the upstream could not revalidate them, by reason',
    labelNames: ['registry', 'reason'] as const,
    registers: [this.registry],
  });
  readonly failoverReads = new Counter({
    name: 'ocirelay_failover_reads_total',
    help: 'Reads from failover peers by peer and result (ok, not_found, error, skipped: failed recently, digest_mismatch/size_mismatch: a blob it sent failed verification)',
    labelNames: ['peer', 'result'] as const,
    registers: [this.registry],
  });
  readonly cacheBytes = new Gauge({
    name: 'ocirelay_cache_bytes',
    help: 'Bytes held by each cache tier',
    labelNames: ['tier'] as const,
    registers: [this.registry],
  });
  readonly cacheEntries = new Gauge({
    name: 'ocirelay_cache_entries',
    help: 'Objects held by each cache tier',
    labelNames: ['tier'] as const,
    registers: [this.registry],
  });

  readonly evictions = new Counter({
    name: 'ocirelay_evictions_total',
    help: 'Objects evicted from the disk cache by reason (unreferenced: no cached manifest or tag refers to it; lru: least recently used)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly evictedBytes = new Counter({
    name: 'ocirelay_evicted_bytes_total',
    help: 'Bytes evicted from the disk cache by reason',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly diskWritable = new Gauge({
    name: 'ocirelay_disk_writable',
    help: '1 while the disk cache accepts writes; 0 while pulls stream through uncached (ENOSPC, read-only, permissions)',
    registers: [this.registry],
  });
  readonly diskErrors = new Counter({
    name: 'ocirelay_disk_errors_total',
    help: 'Disk cache write failures by error code',
    labelNames: ['code'] as const,
    registers: [this.registry],
  });
  readonly cacheBudgetBytes = new Gauge({
    name: 'ocirelay_cache_budget_bytes',
    help: 'The disk cache budget (cache.maxBytes)',
    registers: [this.registry],
  });

  // The S3 tier (issue 11): write-behind and bucket health.
  readonly s3Up = new Gauge({
    name: 'ocirelay_s3_up',
    help: "1 while the region's S3 bucket answers; 0 while it is down (pulls go on from disk and upstream)",
    registers: [this.registry],
  });
  readonly s3PendingBytes = new Gauge({
    name: 'ocirelay_s3_pending_bytes',
    help: 'Bytes of committed content waiting for the S3 write-behind',
    registers: [this.registry],
  });
  readonly s3Writes = new Counter({
    name: 'ocirelay_s3_writes_total',
    help: 'S3 write-behind results: created, or exists (another instance wrote it first)',
    labelNames: ['result'] as const,
    registers: [this.registry],
  });
  readonly s3WriteFailures = new Counter({
    name: 'ocirelay_s3_write_failures_total',
    help: 'S3 write-behind failures (an S3 failure is retried; queue_full, gone and gave_up drop the write)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  });
  readonly s3Reads = new Counter({
    name: 'ocirelay_s3_reads_total',
    help: 'Reads of the S3 tier by result (hit, miss, unauthorized, down, error)',
    labelNames: ['kind', 'result'] as const,
    registers: [this.registry],
  });

  constructor(opts: { defaultMetrics?: boolean } = {}) {
    if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: this.registry, prefix: 'ocirelay_' });
  }
}
