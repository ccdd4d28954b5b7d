// d. Warm manifest GETs by tag and by digest under load: wrk, one thread, N connections.
// Requests per second and latency percentiles; every answer must be a 2xx.
import { isAlive, type BenchEnv } from '../bench-env.ts';
import { curlGet, runWrk } from '../load-clients.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';

const CONTENDERS: Contender[] = ['ocirelay', 'distribution-proxy'];

export async function manifestLoad(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const warm = await env.warmContenders();
  const img = env.image(o.sizes[0] ?? '4m');
  const refs = [
    { name: 'by tag', ref: img.tag },
    { name: 'by digest', ref: img.manifestDigest },
  ];
  const headers = { Accept: img.mediaType };
  const rec = new ScenarioRecorder(
    'manifest-load',
    `d. Warm manifest GET under load (wrk -t1 -c${o.loadConnections}, ${o.loadSeconds} s per sample)`,
    o.mode,
    {
      rps: { unit: 'req/s', better: 'higher', description: 'requests per second (wrk)' },
      p50Ms: { unit: 'ms', better: 'lower', description: 'median latency' },
      p99Ms: { unit: 'ms', better: 'lower', description: '99th percentile latency' },
      errors: { unit: '', better: 'lower', description: 'non-2xx answers and socket errors (must be 0)' },
      serverCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of the proxy process during the sample' },
    },
    { repo: img.repo, tag: img.tag, digest: img.manifestDigest, mediaType: img.mediaType, connections: o.loadConnections, seconds: o.loadSeconds, reps: o.reps, contenders: CONTENDERS },
  );
  const base = (c: Contender) => (c === 'ocirelay' ? warm.ocirelay : warm.proxy);
  // Warm-up, not recorded: JIT, connection pools, the first revalidation.
  for (const r of refs) {
    for (const c of CONTENDERS) {
      const url = `${base(c).url}/v2/${img.repo}/manifests/${r.ref}`;
      await curlGet(url, { headers, timeoutMs: 30_000 });
      await runWrk(url, { connections: o.loadConnections, seconds: 1, headers });
    }
  }
  for (const r of refs) {
    for (let rep = 1; rep <= o.reps; rep++) {
      for (const c of CONTENDERS) {
        const url = `${base(c).url}/v2/${img.repo}/manifests/${r.ref}`;
        const pid = base(c).pid;
        const ok = await rec.measure({ case: r.name, contender: c, rep }, async () => {
          const cpu0 = await cpuSeconds(pid);
          const w = await runWrk(url, { connections: o.loadConnections, seconds: o.loadSeconds, headers });
          const cpu1 = await cpuSeconds(pid);
          if (w.errors > 0) rec.note(`${r.name} ${c} rep ${rep}: ${w.errors} errors (non-2xx or socket)`);
          return {
            values: {
              rps: w.rps,
              p50Ms: w.p50Ms,
              p99Ms: w.p99Ms,
              errors: w.errors,
              ...(cpu0 !== undefined && cpu1 !== undefined ? { serverCpuS: cpu1 - cpu0 } : {}),
            },
            detail: { requests: w.requests, p90Ms: w.p90Ms },
          };
        });
        // wrk reports a server that died mid-run as socket errors, not as a failure: check the process.
        if (!ok || !isAlive(pid)) {
          if (ok) rec.note(`${r.name} ${c} rep ${rep}: the process exited during the sample`);
          rec.note(await env.recoverWarm(c === 'ocirelay' ? 'ocirelay' : 'distribution-proxy'));
        }
      }
    }
  }
  return rec.finish();
}
