// j. Region herd (issue 11 item 8): N sha256-checking clients released together on one cold
// blob, spread round-robin over a region of three ocirelay instances that share one S3 bucket
// (moto_server) and list each other as cluster members: the blob's owner fetches it from the
// upstream once, the other two stream it from the owner. Reference, in the same run and
// interleaved per repetition (the order alternating): the single-instance herd of the same N
// (one ocirelay, no S3, no cluster). Everything fresh per repetition (a new bucket, new
// instances with empty data dirs, each warmed up with bench/warmup); only when named.
import { ownerOf } from '../../src/cluster/rendezvous.ts';
import type { BenchEnv } from '../bench-env.ts';
import { concurrentHashGetsOf } from '../hash-clients.ts';
import type { RunningOcirelay } from '../ocirelay-launcher.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds, peakRss } from '../proc-stats.ts';
import { progress } from '../progress.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { benchMoto, contentKey, emptyBucket, metricValue, startRegion, waitObject, waitWriteBehind } from '../s3-region.ts';
import { upstreamBlobFile, type SeededImage } from '../seed.ts';
import { quantile } from '../stats.ts';

export const REGION_INSTANCES = 3;
const CONTENDERS: Contender[] = ['ocirelay-region', 'ocirelay'];

/** Clients of the herd: issue 11's 16; the smoke preset's herd size otherwise. */
export function regionClients(env: BenchEnv): number {
  return env.options.mode === 'smoke' ? (env.options.herdClients[0] ?? 4) : 16;
}

export async function regionHerd(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const img = env.image(o.herdSize);
  const blob = img.layer;
  const clients = regionClients(env);
  const name = `${clients} clients`;
  const rec = new ScenarioRecorder(
    'region-herd',
    `j. Region herd: ${clients} cold GETs of one ${o.herdSize} blob over ${REGION_INSTANCES} instances on one S3 bucket`,
    o.mode,
    {
      wallS: { unit: 's', better: 'lower', description: 'from releasing all clients to the last client having every byte (sha256 checked)' },
      ttfbP50S: { unit: 's', better: 'lower', description: 'median time to first body byte over the clients' },
      ttfbMaxS: { unit: 's', better: 'lower', description: 'slowest time to first body byte' },
      upstreamBytes: { unit: 'bytes', better: 'lower', description: 'body bytes the upstream sent for the blob (its access log, after it went quiet)' },
      upstreamRatio: { unit: 'x', better: 'lower', description: 'upstreamBytes / blob size (must be exactly 1)' },
      upstreamGets: { unit: '', better: 'lower', description: 'GETs of the blob the upstream answered' },
      ownerCpuS: { unit: 's', better: 'lower', description: "CPU seconds during the herd of the blob's owner (rendezvous hashing over the members; the single instance itself)" },
      memberCpuMaxS: { unit: 's', better: 'lower', description: 'CPU seconds during the herd of the busier non-owner instance' },
      regionCpuS: { unit: 's', better: 'lower', description: 'CPU seconds during the herd of all instances together' },
      regionCpuSPerGiB: { unit: 's/GiB', better: 'lower', description: 'regionCpuS / GiB the clients received' },
      peakRssMax: { unit: 'bytes', better: 'lower', description: 'the largest peak RSS (VmHWM) of the instances (fresh processes)' },
      ownerFailures: { unit: '', better: 'lower', description: 'reads from the owner that failed (ocirelay_cluster_owner_failures_total, all instances): then fetched directly' },
      s3ServerCpuS: { unit: 's', better: 'lower', description: "CPU seconds of moto_server (the region's S3, on the same two cores) during the herd: the owner's write-behind starts when its fill commits, possibly while clients still read" },
      writeBehindS: { unit: 's', better: 'lower', description: "from the last client done until the blob is in the bucket and no instance's write-behind has anything pending" },
    },
    {
      blob: { repo: img.repo, digest: blob.digest, size: blob.size },
      clients,
      instances: REGION_INSTANCES,
      reps: o.reps,
      contenders: CONTENDERS,
      client: 'node client per process, sha256 of every body checked against the digest (as containerd does); round-robin over the instances',
      region: `${REGION_INSTANCES} ocirelay processes, storage.s3 on one moto_server bucket (fresh per repetition), cluster.members listing all ${REGION_INSTANCES} with a shared tokenFile; each pulls bench/warmup first and sees ${REGION_INSTANCES} live members`,
      reference: 'single-instance herd: one fresh ocirelay, no S3, no cluster, warmed up the same way',
    },
  );
  const moto = await benchMoto(env);
  for (let rep = 1; rep <= o.reps; rep++) {
    const order = rep % 2 === 1 ? CONTENDERS : [...CONTENDERS].reverse();
    for (const contender of order) {
      await rec.measure({ case: name, contender, rep }, async () => {
        if (contender === 'ocirelay') {
          const one = await env.coldOcirelay();
          try {
            await env.warmUpProcess(one.host);
            return await herdOver(env, img, [one], [one.url], clients, 0);
          } finally {
            await one.stop();
          }
        }
        const bucket = `bench-region-herd-${rep}`;
        await moto.createBucket(bucket);
        const region = await startRegion(env, moto, bucket, REGION_INSTANCES);
        try {
          const w0 = performance.now();
          await Promise.all(region.instances.map((i) => env.warmUpProcess(i.host)));
          // The warm-up's own write-behind is done before the herd starts.
          await waitWriteBehind(region.instances, 60_000);
          progress(`[region-herd] the ${REGION_INSTANCES} instances pulled bench/warmup in ${((performance.now() - w0) / 1000).toFixed(1)} s`);
          const owner = region.members.indexOf(ownerOf(blob.digest, region.members) ?? '');
          const m = await herdOver(env, img, region.instances, region.members, clients, owner, moto.process.pid);
          const t0 = performance.now();
          await waitObject(moto, bucket, contentKey(blob.digest), 300_000);
          await waitWriteBehind(region.instances, 300_000);
          m.values.writeBehindS = (performance.now() - t0) / 1000 + m.sinceDoneS;
          return m;
        } finally {
          await region.stop();
          // moto holds objects in memory: a 256 MiB blob per repetition is let go.
          await emptyBucket(moto, bucket);
        }
      });
    }
  }
  rec.note(`upstream bytes are counted at the upstream (Distribution's access log) after it went quiet; the region's owner is the member with the highest rendezvous weight for the digest among ${REGION_INSTANCES} live members`);
  return rec.finish();
}

/**
 * The herd itself: `clients` hashing clients round-robin over `instances`, released together;
 * the upstream's traffic for the blob after it went quiet; CPU of each instance during the herd.
 * `members` are the instances' names in the ring (their URLs); `owner` the index of the blob's
 * owner; `s3Pid` moto_server's, whose CPU during the herd is recorded too.
 */
async function herdOver(
  env: BenchEnv,
  img: SeededImage,
  instances: RunningOcirelay[],
  members: string[],
  clients: number,
  owner: number,
  s3Pid?: number,
): Promise<{ values: Record<string, number>; detail: Record<string, unknown>; sinceDoneS: number }> {
  const blob = img.layer;
  await warmPageCache([upstreamBlobFile(env.upstream, blob.digest)]);
  await env.meter.waitQuiet(300);
  const mark = await env.meter.mark();
  const failures0 = await ownerFailures(instances);
  const cpu0 = await Promise.all(instances.map((i) => cpuSeconds(i.pid)));
  const s3Cpu0 = s3Pid === undefined ? undefined : await cpuSeconds(s3Pid);
  const urls = Array.from({ length: clients }, (_, k) => `${(instances[k % instances.length] as RunningOcirelay).url}/v2/${img.repo}/blobs/${blob.digest}`);
  const r = await concurrentHashGetsOf(urls, { expectDigest: blob.digest, expectBytes: blob.size, timeoutMs: 900_000 });
  const done = performance.now();
  const cpu1 = await Promise.all(instances.map((i) => cpuSeconds(i.pid)));
  const s3Cpu1 = s3Pid === undefined ? undefined : await cpuSeconds(s3Pid);
  const rss = await Promise.all(instances.map((i) => peakRss(i.pid)));
  await env.meter.waitQuiet(600);
  const t = await env.meter.trafficSince(mark, blob.digest);
  const failures = (await ownerFailures(instances)) - failures0;
  const cpu = instances.map((_, k) => {
    const a = cpu0[k];
    const b = cpu1[k];
    return a !== undefined && b !== undefined ? b - a : NaN;
  });
  const others = cpu.filter((_, k) => k !== owner);
  const total = cpu.reduce((a, c) => a + c, 0);
  const ttfbs = r.clients.map((c) => c.ttfbS).sort((a, b) => a - b);
  const peaks = rss.filter((x): x is number => x !== undefined);
  const values: Record<string, number> = {
    wallS: r.wallS,
    ttfbP50S: quantile(ttfbs, 0.5),
    ttfbMaxS: ttfbs[ttfbs.length - 1] ?? NaN,
    upstreamBytes: t.blobBytes,
    upstreamRatio: t.blobBytes / blob.size,
    upstreamGets: t.blobGets,
    ...(cpu.every(Number.isFinite) ? { ownerCpuS: cpu[owner] as number, regionCpuS: total, regionCpuSPerGiB: total / (r.bytes / 2 ** 30) } : {}),
    ...(others.length > 0 && others.every(Number.isFinite) ? { memberCpuMaxS: Math.max(...others) } : {}),
    ...(peaks.length > 0 ? { peakRssMax: Math.max(...peaks) } : {}),
    ...(instances.length > 1 ? { ownerFailures: failures } : {}),
    ...(s3Cpu0 !== undefined && s3Cpu1 !== undefined ? { s3ServerCpuS: s3Cpu1 - s3Cpu0 } : {}),
  };
  return {
    values,
    detail: {
      instances: instances.map((i, k) => ({ url: members[k], pid: i.pid, owner: k === owner, clients: urls.filter((u) => u.startsWith(`${i.url}/`)).length, cpuS: Number((cpu[k] ?? NaN).toFixed(3)), peakRss: rss[k] })),
      upstreamRequests: t.requests,
      clientSeconds: r.clients.map((c) => Number(c.totalS.toFixed(3))),
    },
    sinceDoneS: (performance.now() - done) / 1000,
  };
}

/** Failed reads from the owner so far, summed over the instances. */
async function ownerFailures(instances: RunningOcirelay[]): Promise<number> {
  let sum = 0;
  for (const i of instances) sum += await metricValue(i.url, 'ocirelay_cluster_owner_failures_total');
  return sum;
}
