// g. Soak (not in the default run, not in CI): one ocirelay under mixed load for --soak-seconds
// (cold pulls of new random images, warm blob GETs, manifest GETs by tag and digest, clients
// hanging up mid-blob; see soak-load.ts), with a small cache budget so that eviction runs too.
// Its RSS (VmRSS) and open fds (/proc/PID/fd) are sampled every --soak-sample-seconds; the
// result says whether both stayed flat (trend.ts: the last half's fitted rise within a
// tolerance) and whether every request was answered correctly.
import type { BenchEnv } from '../bench-env.ts';
import { curlGet } from '../load-clients.ts';
import { soakWarmSize } from '../options.ts';
import { cpuSeconds, currentRss, openFds } from '../proc-stats.ts';
import { ScenarioRecorder, type ScenarioResult } from '../results-model.ts';
import { SoakLoad } from '../soak-load.ts';
import { trendOf, type Point } from '../trend.ts';
import { setTimeout as sleep } from 'node:timers/promises';

/** Cache budget of the soaked ocirelay: small, so that evictions happen within minutes. */
export const SOAK_CACHE_BYTES = 256 * 2 ** 20;
/** RSS is flat when the last half's fitted rise is at most max(10 MB, 5% of its median). */
export const RSS_TOLERANCE = { absolute: 10e6, relative: 0.05 };
/**
 * Shorter soaks are reported but not judged: warm-up (JIT, the memory tier filling) can take
 * minutes, and a rise over a short last half says little about a slow leak.
 */
export const SOAK_MIN_JUDGED_SECONDS = 600;
/** fds are flat when the last half's fitted rise is at most max(4, 10% of the median). */
export const FD_TOLERANCE = { absolute: 4, relative: 0.1 };

export async function soak(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const warmImg = env.image(soakWarmSize(o.mode));
  const coldLayerBytes = o.mode === 'smoke' ? { min: 16 * 1024, max: 256 * 1024 } : { min: 64 * 1024, max: 2 ** 20 };
  const warmClients = 2;
  const rec = new ScenarioRecorder(
    'soak',
    `g. Soak: ${o.soakSeconds} s of mixed load on one ocirelay (cache budget ${SOAK_CACHE_BYTES / 2 ** 20} MiB), RSS and fds sampled every ${o.soakSampleSeconds} s`,
    o.mode,
    {
      tS: { unit: 's', better: 'lower', description: 'seconds since the load started' },
      rssBytes: { unit: 'bytes', better: 'lower', description: 'VmRSS of the ocirelay process' },
      heapUsedBytes: { unit: 'bytes', better: 'lower', description: 'V8 heap in use (nodejs_heap_size_used_bytes from its /metrics)' },
      heapTotalBytes: { unit: 'bytes', better: 'lower', description: 'V8 heap reserved (nodejs_heap_size_total_bytes)' },
      externalBytes: { unit: 'bytes', better: 'lower', description: 'ArrayBuffers and other memory outside the V8 heap (nodejs_external_memory_bytes)' },
      fds: { unit: '', better: 'lower', description: 'open file descriptors of the ocirelay process' },
      cpuS: { unit: 's', better: 'lower', description: 'CPU seconds of ocirelay since the load started' },
      coldPulls: { unit: '', better: 'higher', description: 'new images pulled through ocirelay (manifest, config, layer, all checked)' },
      coldBytes: { unit: 'bytes', better: 'higher', description: 'blob bytes of the cold pulls' },
      warmGets: { unit: '', better: 'higher', description: 'GETs of the cached blob, sha256 checked' },
      warmBytes: { unit: 'bytes', better: 'higher', description: 'bytes of the warm GETs' },
      manifestGets: { unit: '', better: 'higher', description: 'manifest GETs by tag and digest, checked' },
      disconnects: { unit: '', better: 'higher', description: 'clients that hung up mid-blob (warm, and during cold fills)' },
      errors: { unit: '', better: 'lower', description: 'requests answered wrongly or failed (must be 0)' },
      pushErrors: { unit: '', better: 'lower', description: 'pushes of new images to the upstream that failed (not ocirelay: the cycle is skipped)' },
      alive: { unit: '', better: 'higher', description: '1 when ocirelay was running and /readyz answered 200 after the load' },
      rssFirstHalfSlope: { unit: 'B/min', better: 'lower', description: 'RSS trend through the first half (least squares)' },
      rssLastHalfSlope: { unit: 'B/min', better: 'lower', description: 'RSS trend through the last half' },
      rssLastHalfRise: { unit: 'bytes', better: 'lower', description: 'how much the last half\u2019s RSS line rose over it' },
      rssFlat: { unit: '', better: 'higher', description: `1 when rssLastHalfRise <= max(${RSS_TOLERANCE.absolute / 1e6} MB, ${RSS_TOLERANCE.relative * 100}% of the last half's median)` },
      fdsFirstHalfSlope: { unit: '/min', better: 'lower', description: 'fd trend through the first half' },
      fdsLastHalfSlope: { unit: '/min', better: 'lower', description: 'fd trend through the last half' },
      fdsLastHalfRise: { unit: '', better: 'lower', description: 'how much the last half\u2019s fd line rose over it' },
      fdsFlat: { unit: '', better: 'higher', description: `1 when fdsLastHalfRise <= max(${FD_TOLERANCE.absolute}, ${FD_TOLERANCE.relative * 100}% of the last half's median)` },
    },
    {
      seconds: o.soakSeconds,
      sampleSeconds: o.soakSampleSeconds,
      cacheMaxBytes: SOAK_CACHE_BYTES,
      warmBlob: { repo: warmImg.repo, digest: warmImg.layer.digest, size: warmImg.layer.size },
      coldLayerBytes,
      mix: `1 cold puller (new image every cycle; every 4th has a client hang up mid-fill first), ${warmClients} warm blob clients, 1 manifest client (tag, digest, recent cold tags), 1 client hanging up mid-blob; all in the harness process, answers checked`,
    },
  );

  const r = await env.coldOcirelay({ cache: { maxBytes: SOAK_CACHE_BYTES } });
  try {
    const accept = { accept: warmImg.mediaType };
    await curlGet(`${r.url}/v2/${warmImg.repo}/manifests/${warmImg.tag}`, { headers: accept, timeoutMs: 60_000 });
    await curlGet(`${r.url}/v2/${warmImg.repo}/blobs/${warmImg.layer.digest}`, { expectBytes: warmImg.layer.size, timeoutMs: 600_000 });

    const load = new SoakLoad({ proxyUrl: r.url, upstreamUrl: env.upstream.url, warm: warmImg, coldLayerBytes, warmClients });
    const cpu0 = (await cpuSeconds(r.pid)) ?? NaN;
    const t0 = performance.now();
    const rss: Point[] = [];
    const fds: Point[] = [];
    let i = 0;
    const sample = async () => {
      const t = (performance.now() - t0) / 1000;
      const [m, f, c, js] = await Promise.all([currentRss(r.pid), openFds(r.pid), cpuSeconds(r.pid), jsMemory(r.url)]);
      if (m === undefined || f === undefined || c === undefined) throw new Error(`ocirelay (pid ${r.pid}) is gone after ${t.toFixed(0)} s of soak: ${r.outputTail().slice(-1500)}`);
      rss.push({ t, v: m });
      fds.push({ t, v: f });
      rec.add({ case: 'timeline', contender: 'ocirelay', rep: ++i, values: { tS: t, rssBytes: m, fds: f, cpuS: c - cpu0, ...js }, detail: { ...load.counters } });
    };
    load.start();
    try {
      await sample();
      // Samples on a fixed grid (k x interval), the last one at the end of the soak.
      const end = o.soakSeconds * 1000;
      for (let k = 1; ; k++) {
        const due = Math.min(k * o.soakSampleSeconds * 1000, end);
        await sleep(Math.max(0, due - (performance.now() - t0)));
        await sample();
        if (due >= end) break;
      }
    } catch (e) {
      // ocirelay died: recorded, and alive = 0 below fails the soak.
      rec.note((e as Error).message);
    } finally {
      await load.stop();
    }

    let ready = false;
    try {
      const res = await fetch(`${r.url}/readyz`, { signal: AbortSignal.timeout(5_000) });
      await res.arrayBuffer();
      ready = res.status === 200;
    } catch {
      // not answering: alive = 0 below
    }
    rec.add({ case: 'totals', contender: 'ocirelay', rep: 1, values: { ...load.counters, alive: ready ? 1 : 0 } });
    for (const m of load.errorMessages) rec.note(`error: ${m}`);

    const rt = trendOf(rss, RSS_TOLERANCE.absolute, RSS_TOLERANCE.relative);
    const ft = trendOf(fds, FD_TOLERANCE.absolute, FD_TOLERANCE.relative);
    rec.add({
      case: 'trend',
      contender: 'ocirelay',
      rep: 1,
      values: {
        rssFirstHalfSlope: rt.firstHalfSlope * 60,
        rssLastHalfSlope: rt.lastHalfSlope * 60,
        rssLastHalfRise: rt.lastHalfRise,
        rssFlat: rt.flat ? 1 : 0,
        fdsFirstHalfSlope: ft.firstHalfSlope * 60,
        fdsLastHalfSlope: ft.lastHalfSlope * 60,
        fdsLastHalfRise: ft.lastHalfRise,
        fdsFlat: ft.flat ? 1 : 0,
      },
      detail: { rss: rt, fds: ft },
    });
    const mb = (v: number) => `${(v / 1e6).toFixed(1)} MB`;
    const short = o.soakSeconds < SOAK_MIN_JUDGED_SECONDS ? ` (only ${o.soakSeconds} s: not judged, that takes ${SOAK_MIN_JUDGED_SECONDS} s or more)` : '';
    rec.note(
      `RSS ${rt.flat ? 'stayed flat' : 'did NOT stay flat'}${short}: median ${mb(rt.firstHalfMedian)} in the first half, ${mb(rt.lastHalfMedian)} in the last; fitted slope ${mb(rt.firstHalfSlope * 60)}/min then ${mb(rt.lastHalfSlope * 60)}/min (last-half rise ${mb(rt.lastHalfRise)}, tolerance ${mb(rt.tolerance)})`,
    );
    rec.note(
      `fds ${ft.flat ? 'stayed flat' : 'did NOT stay flat'}${short}: median ${ft.firstHalfMedian} in the first half, ${ft.lastHalfMedian} in the last; fitted slope ${(ft.firstHalfSlope * 60).toFixed(2)}/min then ${(ft.lastHalfSlope * 60).toFixed(2)}/min (last-half rise ${ft.lastHalfRise.toFixed(1)}, tolerance ${ft.tolerance.toFixed(1)})`,
    );
  } finally {
    await r.stop();
  }
  return rec.finish();
}

/**
 * What the process's own metrics say about its memory (V8 heap in use, ArrayBuffers and other
 * external memory): where an RSS rise comes from, or that it is not the JS side's. Empty when
 * /metrics does not answer.
 */
async function jsMemory(url: string): Promise<Record<string, number>> {
  try {
    const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5_000) });
    const text = await res.text();
    const out: Record<string, number> = {};
    for (const [key, name] of [
      ['heapUsedBytes', 'nodejs_heap_size_used_bytes'],
      ['heapTotalBytes', 'nodejs_heap_size_total_bytes'],
      ['externalBytes', 'nodejs_external_memory_bytes'],
    ] as const) {
      const m = new RegExp(`^(?:ocirelay_)?${name} (\\S+)`, 'm').exec(text);
      if (m) out[key] = Number(m[1]);
    }
    return out;
  } catch {
    return {};
  }
}
