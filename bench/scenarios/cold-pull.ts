// a. Cold pull of a whole image with `skopeo copy` through each proxy (fresh cache every
// repetition), against the same pull straight from the upstream.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { skopeoCopy } from '../../test/fixtures/skopeo.ts';
import type { BenchEnv, Endpoint } from '../bench-env.ts';
import { repsFor, type SizeName } from '../options.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { upstreamBlobFile, type SeededImage } from '../seed.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';

const CONTENDERS: Contender[] = ['ocirelay', 'distribution-proxy', 'upstream'];

export async function coldPull(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const cases: Array<{ name: string; image: SeededImage; reps: number }> = o.sizes.map((s: SizeName) => ({ name: s, image: env.image(s), reps: repsFor(o, s) }));
  if (o.pullIndex && env.seeded.multi) cases.push({ name: 'multi-arch index (--all)', image: env.seeded.multi, reps: o.reps });
  const rec = new ScenarioRecorder(
    'cold-pull',
    'a. Cold pull of a whole image (skopeo copy, fresh cache per repetition)',
    o.mode,
    {
      seconds: { unit: 's', better: 'lower', description: 'skopeo copy wall time, from spawn to exit' },
      upstreamBytes: { unit: 'bytes', better: 'lower', description: 'body bytes the upstream sent during the pull (its access log), background fetches included' },
      upstreamGets: { unit: '', better: 'lower', description: 'GET requests the upstream answered during the pull' },
      proxyCpuS: { unit: 's', better: 'lower', description: 'CPU seconds the proxy process used during the pull' },
      proxyCpuSPerGiB: { unit: 's/GiB', better: 'lower', description: 'proxyCpuS / GiB of the image (manifests and blobs skopeo received)' },
    },
    { cases: cases.map((c) => ({ case: c.name, repo: c.image.repo, pullBytes: c.image.pullBytes, reps: c.reps })), contenders: CONTENDERS, client: 'skopeo copy docker://... oci:DIR (plain HTTP)' },
  );
  let n = 0;
  for (const c of cases) {
    for (let rep = 1; rep <= c.reps; rep++) {
      for (const contender of CONTENDERS) {
        let endpoint: Endpoint;
        let stop = async (): Promise<void> => undefined;
        if (contender === 'ocirelay') {
          const r = await env.coldOcirelay();
          endpoint = r;
          stop = r.stop;
        } else if (contender === 'distribution-proxy') {
          const p = await env.coldDistributionProxy();
          endpoint = p;
          stop = p.stop;
        } else {
          endpoint = { url: env.upstream.url, host: env.upstream.host, pid: env.upstream.process.pid };
        }
        const dest = path.join(env.workDir, `pull-${++n}`);
        try {
          if (contender !== 'upstream') await env.warmUpProcess(endpoint.host);
          await rec.measure({ case: c.name, contender, rep }, async () => {
            // The upstream's copies in page cache: the upstream is not what is measured.
            await warmPageCache(c.image.blobs.map((b) => upstreamBlobFile(env.upstream, b.digest)));
            await env.meter.waitQuiet(300);
            const mark = await env.meter.mark();
            const cpu0 = contender === 'upstream' ? undefined : await cpuSeconds(endpoint.pid);
            const t0 = performance.now();
            await skopeoCopy(`docker://${endpoint.host}/${c.image.repo}:${c.image.tag}`, `oci:${dest}:${c.image.tag}`, {
              srcTlsVerify: false,
              ...(c.image.isIndex ? { all: true } : {}),
              timeoutMs: 900_000,
            });
            const seconds = (performance.now() - t0) / 1000;
            const cpu1 = contender === 'upstream' ? undefined : await cpuSeconds(endpoint.pid);
            // A proxy may go on fetching after its client is served: that traffic counts too.
            await env.meter.waitQuiet(600);
            const t = await env.meter.trafficSince(mark, '-');
            return {
              values: {
                seconds,
                upstreamBytes: t.totalBytes,
                upstreamGets: t.requests.GET ?? 0,
                ...(cpu0 !== undefined && cpu1 !== undefined ? { proxyCpuS: cpu1 - cpu0, proxyCpuSPerGiB: (cpu1 - cpu0) / (c.image.pullBytes / 2 ** 30) } : {}),
              },
              detail: { upstreamRequests: t.requests },
            };
          });
        } finally {
          await stop();
          await rm(dest, { recursive: true, force: true });
        }
      }
    }
  }
  return rec.finish();
}
