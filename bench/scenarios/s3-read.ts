// k. Warm from S3 (issue 11 item 8): an instance with an EMPTY local disk and its upstream
// unreachable serves a blob that is only in the region's bucket (moto_server), to one
// sha256-checking client; next to a plain AWS SDK GetObject of the same object, streamed and
// hashed in the bench process (the reference). The object is put into the bucket once by
// another instance's write-behind (a real pull of the blob through it, then its write-behind
// drained), which is then stopped. Interleaved per repetition (the order alternating); a fresh
// reading instance per repetition (each GET promotes the blob to its disk, so a second GET
// would be a local hit), warmed up with a GET of bench/warmup's layer, also from the bucket.
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { GetObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { motoClient, type MotoFixture } from '../../test/fixtures/moto.ts';
import type { BenchEnv } from '../bench-env.ts';
import { concurrentHashGets } from '../hash-clients.ts';
import { curlGet } from '../load-clients.ts';
import type { RunningOcirelay } from '../ocirelay-launcher.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { deadUpstreamUrl, REGISTRY } from '../regions.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { contentKey, metricValue, benchMoto, startS3Instance, waitObject, waitMetric, waitWriteBehind } from '../s3-region.ts';
import type { SeededBlob, SeededImage } from '../seed.ts';

const CONTENDERS: Contender[] = ['ocirelay', 's3-sdk'];
const BUCKET = 'bench-s3-read';
export const WARM_FROM_S3 =
  "warm from S3: the reading instance's local disk is empty (a fresh data dir per repetition), its upstream unreachable, and the object is in the bucket (written by another instance's write-behind); the reference reads the same object with the AWS SDK (GetObject, body streamed through sha256 in the bench process)";

export async function s3Read(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const img = env.image(o.herdSize);
  const blob = img.layer;
  const name = `${o.herdSize} from S3`;
  const rec = new ScenarioRecorder(
    's3-read',
    `k. Warm from S3: one ${o.herdSize} blob through an instance with an empty disk vs a plain SDK GET`,
    o.mode,
    {
      throughput: { unit: 'B/s', better: 'higher', description: 'blob bytes / wall time of the GET (body hashed and checked)' },
      wallS: { unit: 's', better: 'lower', description: 'from the request to the last body byte hashed' },
      ttfbS: { unit: 's', better: 'lower', description: 'time to the first body byte' },
      serverCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of the reading ocirelay during the GET' },
      s3ServerCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of moto_server during the GET' },
      s3Hits: { unit: '', better: 'higher', description: 'reads the instance counted as S3 hits during the GET (ocirelay_s3_reads_total{result="hit"}): 1 or more means it came from the bucket' },
    },
    { blob: { repo: img.repo, digest: blob.digest, size: blob.size }, reps: o.reps, contenders: CONTENDERS, warmFromS3: WARM_FROM_S3, client: 'ocirelay: one node client process, sha256 checked; s3-sdk: @aws-sdk/client-s3 GetObject in the bench process, sha256 checked' },
  );
  rec.note(WARM_FROM_S3);
  const moto = await benchMoto(env);
  const s3 = motoClient(moto.endpoint);
  try {
    await moto.createBucket(BUCKET);
    await seedBucket(env, moto, img);
    // The reference client's connection and code path are warm too.
    await sdkGet(s3, env.seeded.warmup.layer);
    for (let rep = 1; rep <= o.reps; rep++) {
      const order = rep % 2 === 1 ? CONTENDERS : [...CONTENDERS].reverse();
      for (const contender of order) {
        await rec.measure({ case: name, contender, rep }, async () => {
          if (contender === 's3-sdk') {
            const cpu0 = await cpuSeconds(moto.process.pid);
            const r = await sdkGet(s3, blob);
            const cpu1 = await cpuSeconds(moto.process.pid);
            return { values: { throughput: blob.size / r.wallS, wallS: r.wallS, ttfbS: r.ttfbS, ...diff('s3ServerCpuS', cpu0, cpu1) } };
          }
          // A port nothing listens on, taken afresh (a port once free may be reused later).
          const b = await startS3Instance(env, moto, BUCKET, { registries: { [REGISTRY]: { url: await deadUpstreamUrl(), tagTTL: '5m' } } });
          try {
            await hashGet(b, env.seeded.warmup.repo, env.seeded.warmup.layer);
            const hits0 = await metricValue(b.url, 'ocirelay_s3_reads_total', { result: 'hit' });
            const cpu0 = await Promise.all([cpuSeconds(b.pid), cpuSeconds(moto.process.pid)]);
            const r = await hashGet(b, img.repo, blob);
            const cpu1 = await Promise.all([cpuSeconds(b.pid), cpuSeconds(moto.process.pid)]);
            const hits = (await metricValue(b.url, 'ocirelay_s3_reads_total', { result: 'hit' })) - hits0;
            if (hits < 1) throw new Error(`the GET through ${b.url} was not counted as an S3 hit (ocirelay_s3_reads_total{result="hit"} +${hits})`);
            return {
              values: { throughput: blob.size / r.wallS, wallS: r.wallS, ttfbS: r.ttfbS, s3Hits: hits, ...diff('serverCpuS', cpu0[0], cpu1[0]), ...diff('s3ServerCpuS', cpu0[1], cpu1[1]) },
            };
          } finally {
            await b.stop();
          }
        });
      }
    }
  } finally {
    s3.destroy();
  }
  return rec.finish();
}

function diff(metric: string, a: number | undefined, b: number | undefined): Record<string, number> {
  return a !== undefined && b !== undefined ? { [metric]: b - a } : {};
}

/**
 * One instance on the bucket with the live upstream pulls the image (manifest by tag and digest,
 * the layer) and bench/warmup's layer; once both blobs are in the bucket and its write-behind
 * and metadata writes (the repository links that authorize a read elsewhere) are drained, it stops.
 */
async function seedBucket(env: BenchEnv, moto: MotoFixture, img: SeededImage): Promise<void> {
  const a = await startS3Instance(env, moto, BUCKET);
  try {
    for (const i of [env.seeded.warmup, img]) {
      const accept = { accept: i.mediaType };
      await curlGet(`${a.url}/v2/${i.repo}/manifests/${i.tag}`, { headers: accept, timeoutMs: 60_000 });
      await curlGet(`${a.url}/v2/${i.repo}/manifests/${i.manifestDigest}`, { headers: accept, timeoutMs: 60_000 });
      await hashGet(a, i.repo, i.layer);
      await waitObject(moto, BUCKET, contentKey(i.layer.digest), 300_000);
    }
    await waitWriteBehind([a], 300_000);
    await waitMetric(a.url, 'ocirelay_s3_metadata_pending', {}, (v) => v === 0, 60_000);
  } finally {
    await a.stop();
  }
}

async function hashGet(i: RunningOcirelay, repo: string, blob: SeededBlob): Promise<{ wallS: number; ttfbS: number }> {
  const r = await concurrentHashGets(`${i.url}/v2/${repo}/blobs/${blob.digest}`, 1, { expectDigest: blob.digest, expectBytes: blob.size, timeoutMs: 600_000 });
  return { wallS: r.wallS, ttfbS: r.clients[0]?.ttfbS ?? NaN };
}

/** GetObject of a blob's content key, the body streamed through sha256 and checked. */
async function sdkGet(s3: S3Client, blob: SeededBlob): Promise<{ wallS: number; ttfbS: number }> {
  const t0 = performance.now();
  const res = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: contentKey(blob.digest) }), { abortSignal: AbortSignal.timeout(600_000) });
  const body = res.Body as Readable | undefined;
  if (!body) throw new Error('GetObject without a body');
  const hash = createHash('sha256');
  let bytes = 0;
  let ttfbS = NaN;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    if (bytes === 0) ttfbS = (performance.now() - t0) / 1000;
    hash.update(chunk);
    bytes += chunk.length;
  }
  const wallS = (performance.now() - t0) / 1000;
  const digest = `sha256:${hash.digest('hex')}`;
  if (bytes !== blob.size || digest !== blob.digest) throw new Error(`GetObject of ${blob.digest}: ${bytes} bytes with ${digest}, expected ${blob.size}`);
  return { wallS, ttfbS };
}
