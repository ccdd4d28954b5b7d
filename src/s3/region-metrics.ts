// The metrics of the shared metadata and the bucket budget. Registered on the process's one
// prom-client Registry (Metrics.registry), kept here so the S3 metadata work does not grow
// metrics.ts while the other S3 pieces are added to it.
import { Counter, Gauge, type Registry } from 'prom-client';

export class RegionMetrics {
  readonly metadataWriteFailures: Counter<'reason'>;
  readonly metadataPending: Gauge;
  readonly metadataReads: Counter<'kind' | 'result'>;
  readonly bucketBytes: Gauge;
  readonly bucketBudgetBytes: Gauge;
  readonly bucketEvictions: Counter<'reason'>;
  readonly bucketEvictedBytes: Counter<'reason'>;
  readonly budgetLeader: Gauge;

  constructor(registry: Registry) {
    const registers = [registry];
    this.metadataWriteFailures = new Counter({
      name: 'ocirelay_s3_metadata_write_failures_total',
      help: 'Failed attempts to write shared metadata (tags, links, pins, freezes) to the bucket, by reason (timeout, network, server, throttled, auth, other, error, queue_full); S3 outages are retried',
      labelNames: ['reason'] as const,
      registers,
    });
    this.metadataPending = new Gauge({ name: 'ocirelay_s3_metadata_pending', help: 'Shared metadata writes queued or in progress', registers });
    this.metadataReads = new Counter({
      name: 'ocirelay_s3_metadata_reads_total',
      help: 'Shared metadata lookups by kind (link, tag) and result (hit, miss, cached, unavailable)',
      labelNames: ['kind', 'result'] as const,
      registers,
    });
    this.bucketBytes = new Gauge({ name: 'ocirelay_s3_bucket_bytes', help: 'Bytes of content objects in the bucket, as last listed by the budget keeper', registers });
    this.bucketBudgetBytes = new Gauge({ name: 'ocirelay_s3_bucket_budget_bytes', help: 'storage.s3.maxBytes (0: unbounded)', registers });
    this.bucketEvictions = new Counter({
      name: 'ocirelay_s3_bucket_evictions_total',
      help: 'Content objects deleted from the bucket by reason (unreferenced, lru, purge)',
      labelNames: ['reason'] as const,
      registers,
    });
    this.bucketEvictedBytes = new Counter({
      name: 'ocirelay_s3_bucket_evicted_bytes_total',
      help: 'Bytes deleted from the bucket by reason (unreferenced, lru, purge)',
      labelNames: ['reason'] as const,
      registers,
    });
    this.budgetLeader = new Gauge({ name: 'ocirelay_s3_budget_leader', help: '1 while this instance holds the bucket budget lease', registers });
  }
}
