// Prefetch jobs: pull a list of images into the cache in the background. Idempotent: the same
// set of images (and platforms) maps to the same job id while it runs and for a minute after.
import { createHash } from 'node:crypto';
import type { Logger } from '../logger.ts';
import { RegistryError } from '../errors.ts';
import type { ImageRef } from './image-ref.ts';
import type { ImagePuller } from './image-puller.ts';

export interface PrefetchImage {
  image: string;
  state: 'pending' | 'running' | 'done' | 'failed';
  digest?: string;
  bytes: number;
  error?: string;
}

export interface PrefetchJob {
  id: string;
  state: 'running' | 'done' | 'failed';
  total: number;
  done: number;
  failed: number;
  bytesDone: number;
  images: PrefetchImage[];
  createdAt: string;
  finishedAt: string | null;
}

const REUSE_FINISHED_MS = 60_000;
const MAX_JOBS_KEPT = 200;

export class PrefetchJobs {
  private readonly jobs = new Map<string, { job: PrefetchJob; finishedAt?: number }>();

  constructor(
    private readonly puller: ImagePuller,
    private readonly logger: Logger,
    private readonly concurrency = 2,
  ) {}

  start(refs: ImageRef[], platforms: string[] | undefined): { job: PrefetchJob; created: boolean } {
    const key = JSON.stringify([[...new Set(refs.map((r) => r.canonical))].sort(), [...(platforms ?? [])].sort()]);
    const id = `pf-${createHash('sha256').update(key).digest('hex').slice(0, 12)}`;
    const existing = this.jobs.get(id);
    if (existing && (existing.job.state === 'running' || Date.now() - (existing.finishedAt ?? 0) < REUSE_FINISHED_MS)) {
      return { job: existing.job, created: false };
    }
    const unique = [...new Map(refs.map((r) => [r.canonical, r])).values()];
    const job: PrefetchJob = {
      id,
      state: 'running',
      total: unique.length,
      done: 0,
      failed: 0,
      bytesDone: 0,
      images: unique.map((r) => ({ image: r.canonical, state: 'pending', bytes: 0 })),
      createdAt: new Date().toISOString(),
      finishedAt: null,
    };
    const entry: { job: PrefetchJob; finishedAt?: number } = { job };
    this.jobs.set(id, entry);
    this.trim();
    void this.run(entry, unique, platforms);
    return { job, created: true };
  }

  get(id: string): PrefetchJob {
    const e = this.jobs.get(id);
    if (!e) throw new RegistryError('NOT_FOUND', `no prefetch job ${id}`);
    return e.job;
  }

  private async run(entry: { job: PrefetchJob; finishedAt?: number }, refs: ImageRef[], platforms: string[] | undefined): Promise<void> {
    const { job } = entry;
    let next = 0;
    const worker = async () => {
      while (next < refs.length) {
        const i = next++;
        const ref = refs[i]!;
        const item = job.images[i]!;
        item.state = 'running';
        try {
          const r = await this.puller.pull(ref.registry, ref.repository, ref.digest ?? ref.tag!, platforms, (n) => {
            item.bytes += n;
            job.bytesDone += n;
          });
          item.digest = r.digest;
          item.state = 'done';
          job.done++;
        } catch (e) {
          item.state = 'failed';
          item.error = e instanceof RegistryError ? `${e.code}: ${e.message}` : (e as Error).message;
          job.failed++;
          this.logger.warn({ job: job.id, image: item.image, err: item.error }, 'prefetch of an image failed');
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, refs.length) }, worker));
    job.state = job.failed > 0 ? 'failed' : 'done';
    job.finishedAt = new Date().toISOString();
    entry.finishedAt = Date.now();
    this.logger.info({ job: job.id, done: job.done, failed: job.failed, bytes: job.bytesDone }, 'prefetch finished');
  }

  private trim(): void {
    if (this.jobs.size <= MAX_JOBS_KEPT) return;
    for (const [id, e] of this.jobs) {
      if (this.jobs.size <= MAX_JOBS_KEPT) break;
      if (e.job.state !== 'running') this.jobs.delete(id);
    }
  }
}
