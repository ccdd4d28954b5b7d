// b. Herd: N clients ask a cold proxy for one big blob at the same moment. Measured: wall time
// until the last client has every byte, first-byte times, and what the upstream sent (at the
// upstream, after it went quiet), plus the proxy's peak RSS (e) and CPU (also per GiB served).
// The clients hash what they receive (--client hash, the default) or discard it (curl).
import type { BenchEnv, Endpoint } from '../bench-env.ts';
import { clientDescription, concurrentBlobGets } from '../hash-clients.ts';
import { repsFor } from '../options.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds, peakRss } from '../proc-stats.ts';
import { upstreamBlobFile } from '../seed.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { quantile } from '../stats.ts';

const CONTENDERS: Contender[] = ['ocirelay', 'distribution-proxy'];

export async function herd(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const img = env.image(o.herdSize);
  const blob = img.layer;
  const reps = repsFor(o, o.herdSize);
  const rec = new ScenarioRecorder(
    'herd',
    `b. Herd: concurrent cold GETs of one ${o.herdSize} blob`,
    o.mode,
    {
      wallS: { unit: 's', better: 'lower', description: 'from starting all clients to the last client having every byte' },
      ttfbP50S: { unit: 's', better: 'lower', description: 'median time to first body byte over the clients' },
      ttfbMaxS: { unit: 's', better: 'lower', description: 'slowest time to first body byte' },
      upstreamBytes: { unit: 'bytes', better: 'lower', description: 'body bytes the upstream sent for the blob (its access log)' },
      upstreamRatio: { unit: 'x', better: 'lower', description: 'upstreamBytes / blob size' },
      upstreamGets: { unit: '', better: 'lower', description: 'GETs of the blob the upstream answered' },
      peakRss: { unit: 'bytes', better: 'lower', description: 'peak RSS (VmHWM) of the proxy process, fresh for this repetition' },
      proxyCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of the proxy process during the herd' },
      proxyCpuSPerGiB: { unit: 's/GiB', better: 'lower', description: 'proxyCpuS / GiB the clients received' },
    },
    { blob: { repo: img.repo, digest: blob.digest, size: blob.size }, clients: o.herdClients, reps, contenders: CONTENDERS, client: clientDescription(o.client), clientMode: o.client },
  );
  for (const clients of o.herdClients) {
    const name = `${clients} clients`;
    for (let rep = 1; rep <= reps; rep++) {
      for (const contender of CONTENDERS) {
        let ep: Endpoint;
        let stop: () => Promise<void>;
        if (contender === 'ocirelay') {
          const r = await env.coldOcirelay();
          ep = r;
          stop = r.stop;
        } else {
          const p = await env.coldDistributionProxy();
          ep = p;
          stop = p.stop;
        }
        try {
          await env.warmUpProcess(ep.host);
          await rec.measure({ case: name, contender, rep }, async () => {
            // The upstream's copy in page cache: the upstream is not what is measured.
            await warmPageCache([upstreamBlobFile(env.upstream, blob.digest)]);
            await env.meter.waitQuiet(300);
            const mark = await env.meter.mark();
            const cpu0 = await cpuSeconds(ep.pid);
            const r = await concurrentBlobGets(o.client, `${ep.url}/v2/${img.repo}/blobs/${blob.digest}`, clients, { expectDigest: blob.digest, expectBytes: blob.size, timeoutMs: 900_000 });
            const cpu1 = await cpuSeconds(ep.pid);
            const rss = await peakRss(ep.pid);
            await env.meter.waitQuiet(600);
            const t = await env.meter.trafficSince(mark, blob.digest);
            const ttfbs = r.clients.map((c) => c.ttfbS).sort((a, b) => a - b);
            return {
              values: {
                wallS: r.wallS,
                ttfbP50S: quantile(ttfbs, 0.5),
                ttfbMaxS: ttfbs[ttfbs.length - 1] ?? NaN,
                upstreamBytes: t.blobBytes,
                upstreamRatio: t.blobBytes / blob.size,
                upstreamGets: t.blobGets,
                ...(rss !== undefined ? { peakRss: rss } : {}),
                ...(cpu0 !== undefined && cpu1 !== undefined ? { proxyCpuS: cpu1 - cpu0, proxyCpuSPerGiB: (cpu1 - cpu0) / (r.bytes / 2 ** 30) } : {}),
              },
              detail: { upstreamRequests: t.requests, clientSeconds: r.clients.map((c) => Number(c.totalS.toFixed(3))) },
            };
          });
        } finally {
          await stop();
        }
      }
    }
  }
  return rec.finish();
}
