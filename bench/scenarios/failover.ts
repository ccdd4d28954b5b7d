// i. Failover pull (issue 10, item 7): a cold `skopeo copy` through region D, whose upstream is
// unreachable (a loopback port nothing listens on) and whose failover peer A holds the image,
// next to the same cold pull straight from the upstream. A fresh D (empty data dir) per
// repetition, first warmed up with bench/warmup (also read from A: a process that has served
// before, its upstream circuit as a live outage leaves it); A is started once and primed.
// Contenders interleaved, the order alternating per repetition; only when named.
import { access, rm } from 'node:fs/promises';
import path from 'node:path';
import { skopeoCopy } from '../../test/fixtures/skopeo.ts';
import type { BenchEnv } from '../bench-env.ts';
import type { RunningOcirelay } from '../ocirelay-launcher.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { startFailoverRegion, startSource } from '../regions.ts';
import { bigImage, replicationSize } from '../replication-images.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { upstreamBlobFile, type SeededImage } from '../seed.ts';

/** Where ocirelay keeps a committed blob (src/storage/layout.ts). */
function cachedBlobFile(dataDir: string, digest: string): string {
  const hex = digest.replace(/^sha256:/, '');
  return path.join(dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

export async function failover(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const img = await bigImage(env);
  const name = `${replicationSize(env)} image`;
  const rec = new ScenarioRecorder(
    'failover',
    `i. Failover: cold pull of a ${replicationSize(env)} image through D from peer A vs from the upstream`,
    o.mode,
    {
      seconds: { unit: 's', better: 'lower', description: 'skopeo copy wall time, from spawn to exit' },
      proxyCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of D during the pull' },
      peerCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of A (the failover peer) during the pull' },
      upstreamGets: { unit: '', better: 'lower', description: 'GETs the upstream answered during a pull through D (A serves from its cache: expected 0)' },
    },
    {
      case: { case: name, repo: img.repo, pullBytes: img.pullBytes },
      reps: o.reps,
      contenders: ['ocirelay', 'upstream'],
      regions: 'D: registries docker.io -> a closed loopback port, peers {a: {failover: true, replicate: false}}, fresh data dir per repetition; A: one process for the scenario, image primed',
      client: 'skopeo copy docker://HOST/... oci:DIR (plain HTTP)',
    },
  );
  const a = await startSource(env);
  try {
    await prime(env, a, img);
    const aFiles = img.blobs.map((b) => cachedBlobFile(a.dataDir, b.digest));
    for (const f of aFiles) await access(f); // primed means on A's disk, not only in flight
    const upFiles = img.blobs.map((b) => upstreamBlobFile(env.upstream, b.digest));
    let n = 0;
    for (let rep = 1; rep <= o.reps; rep++) {
      const order: Contender[] = rep % 2 === 1 ? ['ocirelay', 'upstream'] : ['upstream', 'ocirelay'];
      for (const contender of order) {
        const dest = path.join(env.workDir, `failover-pull-${++n}`);
        let d: RunningOcirelay | undefined;
        try {
          await rec.measure({ case: name, contender, rep }, async () => {
            if (contender === 'ocirelay') {
              d = await startFailoverRegion(env, a);
              await env.warmUpProcess(d.host);
            }
            // The source's copies in page cache (each side reads a file someone else wrote).
            await warmPageCache(contender === 'ocirelay' ? aFiles : upFiles);
            await env.meter.waitQuiet(300);
            const mark = await env.meter.mark();
            const host = d ? d.host : env.upstream.host;
            const cpuD0 = d ? await cpuSeconds(d.pid) : undefined;
            const cpuA0 = d ? await cpuSeconds(a.pid) : undefined;
            const t0 = performance.now();
            await skopeoCopy(`docker://${host}/${img.repo}:${img.tag}`, `oci:${dest}:${img.tag}`, { srcTlsVerify: false, timeoutMs: 600_000 });
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
          await d?.stop();
          await rm(dest, { recursive: true, force: true });
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
