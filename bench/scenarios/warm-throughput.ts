// c. Warm blob throughput: 1 and 8 concurrent clients downloading a blob every contender
// already holds (ocirelay and the Distribution proxy primed; nginx sendfile as the ceiling).
// Each client downloads the blob several times on one connection so that every sample moves
// at least ~1 GiB per client and process start-up is noise. Also peak RSS (e) and the server's
// CPU (nginx: master and workers) in total and per GiB served. The clients hash what they
// receive (--client hash, the default) or discard it (curl).
import path from 'node:path';
import type { BenchEnv } from '../bench-env.ts';
import { clientDescription, concurrentBlobGets } from '../hash-clients.ts';
import { SIZE_BYTES, repsFor, type SizeName } from '../options.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSecondsOf, peakRss, processTree, resetPeakRss } from '../proc-stats.ts';
import { upstreamBlobFile } from '../seed.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';

const CONTENDERS: Contender[] = ['ocirelay', 'distribution-proxy', 'nginx'];

/** Sizes worth a throughput test: the big ones (all of them when only small ones were asked for). */
export function throughputSizes(sizes: readonly SizeName[]): SizeName[] {
  const big = sizes.filter((s) => SIZE_BYTES[s] >= SIZE_BYTES['64m']);
  return big.length > 0 ? big : [...sizes];
}

export async function warmThroughput(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const warm = await env.warmContenders();
  const sizes = throughputSizes(o.sizes);
  const rec = new ScenarioRecorder(
    'warm-throughput',
    'c. Warm blob throughput (cached blob, page cache warm)',
    o.mode,
    {
      throughput: { unit: 'B/s', better: 'higher', description: 'body bytes all clients received / wall time' },
      wallS: { unit: 's', better: 'lower', description: 'wall time of the sample' },
      peakRss: { unit: 'bytes', better: 'lower', description: 'peak RSS (VmHWM, reset before the sample) of the serving process' },
      serverCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of the serving process (nginx: master and workers)' },
      serverCpuSPerGiB: { unit: 's/GiB', better: 'lower', description: 'serverCpuS / GiB the clients received' },
    },
    { sizes, clients: o.warmClients, contenders: CONTENDERS, client: clientDescription(o.client), clientMode: o.client },
  );
  for (const size of sizes) {
    const img = env.image(size);
    // ~1 GiB per client per sample.
    const repeat = Math.min(64, Math.max(1, Math.round(SIZE_BYTES['1g'] / SIZE_BYTES[size])));
    for (const clients of o.warmClients) {
      const name = `${size} x${clients}`;
      for (let rep = 1; rep <= repsFor(o, size); rep++) {
        for (const contender of CONTENDERS) {
          const hex = img.layer.digest.replace(/^sha256:/, '');
          const target = () => {
            if (contender === 'ocirelay')
              return { url: `${warm.ocirelay.url}/v2/${img.repo}/blobs/${img.layer.digest}`, pid: warm.ocirelay.pid, cpuRoot: warm.ocirelay.pid, file: path.join(warm.ocirelay.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex) };
            if (contender === 'distribution-proxy')
              return { url: `${warm.proxy.url}/v2/${img.repo}/blobs/${img.layer.digest}`, pid: warm.proxy.pid, cpuRoot: warm.proxy.pid, file: warm.proxy.blobFile(img.layer.digest) };
            // nginx: no RSS (the master's says nothing), CPU of the master and its workers.
            return { url: warm.nginxUrls[size] as string, pid: undefined, cpuRoot: warm.nginx.process.pid, file: upstreamBlobFile(env.upstream, img.layer.digest) };
          };
          const { url, pid, cpuRoot, file } = target();
          const cpuPids = await processTree(cpuRoot);
          await warmPageCache([file]);
          const ok = await rec.measure({ case: name, contender, rep }, async () => {
            if (pid !== undefined) await resetPeakRss(pid);
            const cpu0 = await cpuSecondsOf(cpuPids);
            const r = await concurrentBlobGets(o.client, url, clients, { expectDigest: img.layer.digest, expectBytes: img.layer.size, repeat, timeoutMs: 900_000 });
            const cpu1 = await cpuSecondsOf(cpuPids);
            const rss = pid !== undefined ? await peakRss(pid) : undefined;
            return {
              values: {
                throughput: r.bytes / r.wallS,
                wallS: r.wallS,
                ...(rss !== undefined ? { peakRss: rss } : {}),
                ...(cpu0 !== undefined && cpu1 !== undefined ? { serverCpuS: cpu1 - cpu0, serverCpuSPerGiB: (cpu1 - cpu0) / (r.bytes / 2 ** 30) } : {}),
              },
              detail: { bytes: r.bytes, downloadsPerClient: repeat, cpuPids },
            };
          });
          if (!ok && (contender === 'ocirelay' || contender === 'distribution-proxy')) rec.note(await env.recoverWarm(contender));
        }
      }
    }
  }
  return rec.finish();
}
