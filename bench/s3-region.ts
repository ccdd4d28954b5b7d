// A region of ocirelay instances for the region-herd and s3-read scenarios (issue 11): one
// moto_server (a real S3 server; a machine without moto fails loudly, see test/fixtures/moto.ts),
// buckets on it, and instances with `storage.s3` on a bucket and, for a cluster, `cluster.members`
// listing each other with a shared token file. Every process is stopped through the BenchEnv.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort } from '../test/fixtures/ports.ts';
import { DeleteObjectsCommand, HeadObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { motoClient, startMoto, type MotoFixture } from '../test/fixtures/moto.ts';
import type { BenchEnv } from './bench-env.ts';
import type { RunningOcirelay } from './ocirelay-launcher.ts';
import { progress } from './progress.ts';

/** Start-up allowance: three instances start at once (and check the bucket) on two shared cores. */
const START_TIMEOUT_MS = 120_000;
const CLUSTER_TOKEN = 'bench-region-cluster-token-0123456789';

const motos = new WeakMap<BenchEnv, Promise<MotoFixture>>();

/**
 * The run's moto_server, started on first use and shared by the region scenarios (each uses
 * buckets of its own; starting moto takes seconds), stopped by the env's close().
 */
export function benchMoto(env: BenchEnv): Promise<MotoFixture> {
  let m = motos.get(env);
  if (!m) {
    m = startMoto().then((moto) => {
      env.track(() => moto.stop());
      return moto;
    });
    // A failed start is not cached: the next scenario tries again (and fails loudly too).
    m.catch(() => motos.delete(env));
    motos.set(env, m);
  }
  return m;
}

/** The `storage:` section for a bucket on the bench's moto. */
export function s3Storage(moto: MotoFixture, bucket: string): Record<string, unknown> {
  return { storage: { s3: { bucket, endpoint: moto.endpoint, region: moto.env.AWS_REGION, forcePathStyle: true } } };
}

/** One instance on the bucket, no cluster; `extra`: more config (a dead upstream). */
export function startS3Instance(env: BenchEnv, moto: MotoFixture, bucket: string, extra: Record<string, unknown> = {}): Promise<RunningOcirelay> {
  return env.coldOcirelay({ ...s3Storage(moto, bucket), ...extra }, { env: { ...moto.env }, startTimeoutMs: START_TIMEOUT_MS });
}

export interface Region {
  instances: RunningOcirelay[];
  /** The members' origins, as in `cluster.members` (the rendezvous hashing's names). */
  members: string[];
  stop(): Promise<void>;
}

/**
 * `n` fresh instances (empty data dirs) on one bucket, each listing all `n` as cluster members;
 * resolves once every one sees all `n` live (health checks run every ~2 s), so that the owner
 * of a digest is the same for all of them from the first request.
 */
export async function startRegion(env: BenchEnv, moto: MotoFixture, bucket: string, n: number): Promise<Region> {
  const t0 = performance.now();
  const tokenFile = path.join(env.workDir, 'cluster-token');
  await writeFile(tokenFile, `${CLUSTER_TOKEN}\n`);
  const ports: number[] = [];
  for (let i = 0; i < n; i++) ports.push(await freePort());
  const members = ports.map((p) => `http://127.0.0.1:${p}`);
  const settled = await Promise.allSettled(
    ports.map((port, i) => env.coldOcirelay({ ...s3Storage(moto, bucket), cluster: { members, self: members[i], tokenFile } }, { port, env: { ...moto.env }, startTimeoutMs: START_TIMEOUT_MS })),
  );
  const instances = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const stop = async () => {
    for (const i of instances) await i.stop();
  };
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await stop();
    throw failed.reason;
  }
  try {
    for (const i of instances) await waitMetric(i.url, 'ocirelay_cluster_members', { state: 'live' }, (v) => v === n, 20_000);
  } catch (e) {
    await stop();
    throw e;
  }
  const ready = instances.map((i) => `${(i.readyzMs / 1000).toFixed(1)} s`).join(', ');
  progress(`region of ${n} on bucket ${bucket}: each sees ${n} live members after ${((performance.now() - t0) / 1000).toFixed(1)} s (ready after ${ready})`);
  return { instances, members, stop };
}

/** The sum of a metric's samples matching `labels` on an instance's /metrics (0 when absent). */
export async function metricValue(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`GET ${url}/metrics answered ${res.status}`);
  let sum = 0;
  for (const m of text.matchAll(/^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? (\S+)$/gm)) {
    if (m[1] !== name) continue;
    const have = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((l) => [l[1], l[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[3]);
  }
  return sum;
}

/** Polls a metric until `ok` (every 100 ms, bounded by `timeoutMs`); resolves with the waited ms. */
export async function waitMetric(url: string, name: string, labels: Record<string, string>, ok: (v: number) => boolean, timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  let last = NaN;
  while (performance.now() - t0 < timeoutMs) {
    last = await metricValue(url, name, labels);
    if (ok(last)) return performance.now() - t0;
    await sleep(100);
  }
  throw new Error(`${url}: ${name}${JSON.stringify(labels)} still ${last} after ${timeoutMs} ms`);
}

/** Waits until the write-behind of every instance has nothing pending; returns the ms waited. */
export async function waitWriteBehind(instances: readonly RunningOcirelay[], timeoutMs: number): Promise<number> {
  const t0 = performance.now();
  for (const i of instances) await waitMetric(i.url, 'ocirelay_s3_pending_bytes', {}, (v) => v === 0, Math.max(1, timeoutMs - (performance.now() - t0)));
  return performance.now() - t0;
}

/** Waits until `key` is in the bucket (HeadObject 200; polled every 200 ms); returns the ms waited. */
export async function waitObject(moto: MotoFixture, bucket: string, key: string, timeoutMs: number): Promise<number> {
  const s3 = motoClient(moto.endpoint);
  const t0 = performance.now();
  try {
    while (performance.now() - t0 < timeoutMs) {
      try {
        await s3.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
        return performance.now() - t0;
      } catch (e) {
        if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode !== 404) throw e;
      }
      await sleep(200);
    }
  } finally {
    s3.destroy();
  }
  throw new Error(`s3://${bucket}/${key} not written within ${timeoutMs} ms`);
}

/** The content key of a digest in a bucket without prefix (src/s3/bucket-layout.ts). */
export function contentKey(digest: string): string {
  return `blobs/sha256/${digest.slice('sha256:'.length)}`;
}

/** Deletes every object of a bucket (a page of up to 1000 keys at a time, at most 100 pages). */
export async function emptyBucket(moto: MotoFixture, bucket: string): Promise<void> {
  const s3 = motoClient(moto.endpoint);
  try {
    for (let page = 0; page < 100; page++) {
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: bucket, MaxKeys: 1000 }));
      const keys = (listed.Contents ?? []).flatMap((c) => (c.Key !== undefined ? [{ Key: c.Key }] : []));
      if (keys.length === 0) return;
      await s3.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys } }));
    }
  } finally {
    s3.destroy();
  }
}
