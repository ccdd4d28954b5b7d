// i. Failover pull (issue 10, item 7): a cold `skopeo copy` through region D during an upstream
// outage, every byte read from its failover peer A (which holds the image), next to the same cold
// pull straight from the upstream. D's upstream is a TCP forwarder to the bench upstream: a fresh
// D (empty data dir) per repetition warms up with bench/warmup through the live upstream, then
// the forwarder is cut (connects refused), as when an upstream goes down. Two cases:
//   - outage just began: D's upstream circuit is closed, so each request first tries the
//     upstream (with ocirelay's retries) before it asks A, until 5 failures open the circuit;
//   - outage under way: D's circuit was opened first (failed requests for a missing tag), as in
//     an outage older than a few requests: D goes to A at once;
//   - no outage (reference, not judged): the same D with its upstream up.
// A is started once and primed. Contenders interleaved, the order alternating per repetition;
// only when named.
import { access, rm } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { skopeoCopy } from '../../test/fixtures/skopeo.ts';
import type { BenchEnv } from '../bench-env.ts';
import type { RunningOcirelay } from '../ocirelay-launcher.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { REGISTRY, startFailoverRegion, startSource } from '../regions.ts';
import { bigImage, replicationSize } from '../replication-images.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { upstreamBlobFile, type SeededImage } from '../seed.ts';
import { startTcpForwarder } from '../tcp-forwarder.ts';

/** Where ocirelay keeps a committed blob (src/storage/layout.ts). */
function cachedBlobFile(dataDir: string, digest: string): string {
  const hex = digest.replace(/^sha256:/, '');
  return path.join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

type Outage = 'none' | 'began' | 'under way';

/** Ask D for missing tags until its upstream circuit is open (bounded). */
async function openCircuit(d: RunningOcirelay): Promise<void> {
  for (let i = 0; i < 20; i++) {
    const metrics = await (await fetch(`${d.url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
    if (new RegExp(`ocirelay_upstream_circuit_open\\{[^}]*registry="${REGISTRY}"[^}]*\\} 1`).test(metrics)) return;
    const res = await fetch(`${d.url}/v2/bench/warmup/manifests/missing-${i}`, { signal: AbortSignal.timeout(60_000) });
    await res.arrayBuffer();
    await sleep(10);
  }
  throw new Error("D's upstream circuit did not open after 20 failed requests");
}

export async function failover(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const img = await bigImage(env);
  const size = replicationSize(env);
  const cases: Array<{ name: string; outage: Outage }> = [
    { name: `${size} image, outage just began`, outage: 'began' },
    { name: `${size} image, outage under way (circuit open)`, outage: 'under way' },
    // Not failover: the same fresh D with its upstream up, to tell the cost of reading from a
    // peer apart from that of any cold pull through ocirelay (issue 4's target a).
    { name: `${size} image, no outage (reference)`, outage: 'none' },
  ];
  const rec = new ScenarioRecorder(
    'failover',
    `i. Failover: cold pull of a ${size} image through D from peer A (upstream down) vs from the upstream`,
    o.mode,
    {
      seconds: { unit: 's', better: 'lower', description: 'skopeo copy wall time, from spawn to exit' },
      proxyCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of D during the pull' },
      peerCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of A (the failover peer) during the pull' },
      upstreamGets: { unit: '', better: 'lower', description: 'GETs the upstream answered during a pull through D (in an outage expected 0: D cannot reach it, A serves from its cache)' },
    },
    {
      cases: cases.map((c) => ({ case: c.name, repo: img.repo, pullBytes: img.pullBytes })),
      reps: o.reps,
      contenders: ['ocirelay', 'upstream'],
      regions:
        'D: registries docker.io -> a TCP forwarder to the bench upstream, cut after the warm-up; peers {a: {failover: true, replicate: false}}; fresh data dir per repetition and case. A: one process for the scenario, image primed',
      client: 'skopeo copy docker://HOST/... oci:DIR (plain HTTP)',
    },
  );
  const a = await startSource(env);
  const up = new URL(env.upstream.url);
  try {
    await prime(env, a, img);
    const aFiles = img.blobs.map((b) => cachedBlobFile(a.dataDir, b.digest));
    for (const f of aFiles) await access(f); // primed means on A's disk, not only in flight
    const upFiles = img.blobs.map((b) => upstreamBlobFile(env.upstream, b.digest));
    let n = 0;
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const c of cases) {
        const order: Contender[] = rep % 2 === 1 ? ['ocirelay', 'upstream'] : ['upstream', 'ocirelay'];
        for (const contender of order) {
          const dest = path.join(env.workDir, `failover-pull-${++n}`);
          const fw = contender === 'ocirelay' ? await startTcpForwarder(up.hostname, Number(up.port)) : undefined;
          const region: { d?: RunningOcirelay } = {};
          try {
            await rec.measure({ case: c.name, contender, rep }, async () => {
              if (fw) {
                const d = (region.d = await startFailoverRegion(env, a, fw.url));
                await env.warmUpProcess(d.host); // through the live upstream
                if (c.outage !== 'none') await fw.cut();
                if (c.outage === 'under way') await openCircuit(d);
              }
              const d = region.d;
              // The source's copies in page cache (each side reads a file someone else wrote).
              await warmPageCache(d ? aFiles : upFiles);
              await env.meter.waitQuiet(300);
              const mark = await env.meter.mark();
              const cpuD0 = d ? await cpuSeconds(d.pid) : undefined;
              const cpuA0 = d ? await cpuSeconds(a.pid) : undefined;
              const t0 = performance.now();
              await skopeoCopy(`docker://${d ? d.host : env.upstream.host}/${img.repo}:${img.tag}`, `oci:${dest}:${img.tag}`, { srcTlsVerify: false, timeoutMs: 600_000 });
              const seconds = (performance.now() - t0) / 1000;
              if (!d) return { values: { seconds } };
              const cpuD1 = await cpuSeconds(d.pid);
              const cpuA1 = await cpuSeconds(a.pid);
              const t = await env.meter.trafficSince(mark, '-');
              return {
                values: {
                  seconds,
                  upstreamGets: t.requests.GET ?? 0,
                  ...(cpuD0 !== undefined && cpuD1 !== undefined ? { proxyCpuS: cpuD1 - cpuD0 } : {}),
                  ...(cpuA0 !== undefined && cpuA1 !== undefined ? { peerCpuS: cpuA1 - cpuA0 } : {}),
                },
              };
            });
          } finally {
            await region.d?.stop();
            await fw?.cut();
            await rm(dest, { recursive: true, force: true });
          }
        }
      }
    }
  } finally {
    await a.stop();
  }
  return rec.finish();
}

/** Pull bench/warmup and the image through A, and let A finish storing. */
async function prime(env: BenchEnv, a: RunningOcirelay, img: SeededImage): Promise<void> {
  await env.warmUpProcess(a.host);
  const dest = path.join(env.workDir, 'failover-prime');
  try {
    await skopeoCopy(`docker://${a.host}/${img.repo}:${img.tag}`, `oci:${dest}:${img.tag}`, { srcTlsVerify: false, timeoutMs: 600_000 });
  } finally {
    await rm(dest, { recursive: true, force: true });
  }
  await env.meter.waitQuiet(500);
}
