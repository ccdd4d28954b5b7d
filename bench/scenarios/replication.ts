// h. Replication lag A -> B (issue 10, item 7): how long after a client's pull through region A
// the receiving region B holds the image (by tag, asked of B with the peer token, so from B's
// cache alone; B's own upstream is unreachable), next to a plain loopback transfer of the same
// bytes from the upstream (the limit). Two cases: one big image pulled with skopeo, and a burst
// of small images pulled by sha256-checking clients in the harness, 8 at a time. Fresh A and B
// (empty data dirs) for every repetition of every case; only when named.
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { skopeoCopy } from '../../test/fixtures/skopeo.ts';
import type { BenchEnv } from '../bench-env.ts';
import { warmPageCache } from '../page-cache.ts';
import { cpuSeconds } from '../proc-stats.ts';
import { PEER_TOKEN, REGISTRY, startReceiver, startSender } from '../regions.ts';
import { hashPullAll, loopbackTransfer, waitAtPeer, type PeerPoll } from '../replication-clients.ts';
import { bigImage, replicationSize, SMALL_LAYER_BYTES, smallImages } from '../replication-images.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { upstreamBlobFile, type SeededImage } from '../seed.ts';
import { quantile } from '../stats.ts';

const CONTENDERS: Contender[] = ['upstream', 'ocirelay'];
/** Concurrent pulls through A in the burst (nodes pulling at once). */
export const BURST_CONCURRENCY = 8;
const POLL_TIMEOUT_MS = 120_000;

export async function replication(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const size = replicationSize(env);
  const big = await bigImage(env);
  const burst = await smallImages(env, o.burstImages);
  const bigCase = `${size} image`;
  const burstCase = `burst of ${burst.length} images`;
  const rec = new ScenarioRecorder(
    'replication',
    `h. Replication lag A -> B: one ${size} image, a burst of ${burst.length} small images`,
    o.mode,
    {
      lagS: { unit: 's', better: 'lower', description: `${bigCase}: from the end of the pull through A (skopeo exit) until B answers the tag with the peer token (polled every 25 ms); negative when B had it first` },
      lagP50S: { unit: 's', better: 'lower', description: `${burstCase}: median over the images of (B has the tag) - (that image's pull through A ended); polled every 50 ms` },
      lagP99S: { unit: 's', better: 'lower', description: `${burstCase}: p99 over the images of the same lag` },
      lagMaxS: { unit: 's', better: 'lower', description: `${burstCase}: the largest lag of the images` },
      lastAtPeerS: { unit: 's', better: 'lower', description: 'from the start of the pull(s) through A until B holds every image' },
      pullS: { unit: 's', better: 'lower', description: 'the client pull(s) through A, wall time' },
      senderCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of A from the start of the pull until B holds everything' },
      receiverCpuS: { unit: 's', better: 'lower', description: 'CPU seconds of B over the same time' },
      transferS: { unit: 's', better: 'lower', description: 'the limit: the same bytes (manifests, configs, layers) GET from the upstream by one curl, in sequence on one keep-alive connection, bodies to /dev/null (sum of curl time_total)' },
      bytes: { unit: 'bytes', better: 'lower', description: 'bytes of the image(s): manifests, configs and layers' },
      senderFailures: { unit: '', better: 'lower', description: "failed push attempts of A during the measurement (ocirelay_replication_failures_total; each backs the peer off for 1 s or more)" },
    },
    {
      cases: [
        { case: bigCase, repo: big.repo, pullBytes: big.pullBytes, client: 'skopeo copy docker://A/... oci:DIR' },
        { case: burstCase, images: burst.length, layerBytes: SMALL_LAYER_BYTES, pullBytes: burst.reduce((a, i) => a + i.pullBytes, 0), client: `sha256-checking pulls from the harness (manifest by tag, config, layer), ${BURST_CONCURRENCY} at a time` },
      ],
      reps: o.reps,
      contenders: CONTENDERS,
      regions: 'fresh A (upstream: the bench upstream, peers: {b}) and B (replication.accept, upstream unreachable) per repetition and case; A first pulls bench/warmup and B must hold it before the measurement',
    },
  );
  let n = 0;
  for (let rep = 1; rep <= o.reps; rep++) {
    const plan: Array<[string, SeededImage[]]> = [
      [bigCase, [big]],
      [burstCase, burst],
    ];
    for (const [name, imgs] of plan) {
      const files = imgs.flatMap((i) => i.blobs.map((b) => upstreamBlobFile(env.upstream, b.digest)));
      const bytes = imgs.reduce((a, i) => a + i.pullBytes, 0);
      await rec.measure({ case: name, contender: 'upstream', rep }, async () => {
        await warmPageCache(files);
        const t = await loopbackTransfer(env.upstream.url, imgs, 300_000);
        return { values: { transferS: t.seconds, bytes: t.bytes } };
      });
      const b = await startReceiver(env);
      const a = await startSender(env, b).catch(async (e: unknown) => {
        await b.stop();
        throw e;
      });
      const dest = path.join(env.workDir, `repl-pull-${++n}`);
      try {
        const poll: PeerPoll = { url: b.url, registry: REGISTRY, token: PEER_TOKEN, intervalMs: imgs.length > 1 ? 50 : 25, timeoutMs: POLL_TIMEOUT_MS };
        await rec.measure({ case: name, contender: 'ocirelay', rep }, async () => {
          // Both processes have served before: the warm-up image went A -> B end to end.
          await env.warmUpProcess(a.host);
          await waitAtPeer(poll, [env.seeded.warmup]);
          await warmPageCache(files);
          const fail0 = await replicationFailures(a.url);
          const cpuA0 = await cpuSeconds(a.pid);
          const cpuB0 = await cpuSeconds(b.pid);
          const stop = { failed: false };
          const t0 = performance.now();
          // Polling starts with the pull: B may hold an image before its client is done.
          const seenP = waitAtPeer(poll, imgs, stop);
          seenP.catch(() => undefined);
          let ends: number[];
          try {
            ends = imgs.length === 1 ? [await skopeoPull(a.host, imgs[0] as SeededImage, dest)] : await hashPullAll(a.url, imgs, BURST_CONCURRENCY);
          } catch (e) {
            stop.failed = true;
            throw e;
          }
          const pullS = (Math.max(...ends) - t0) / 1000;
          const seen = await seenP;
          const cpuA1 = await cpuSeconds(a.pid);
          const cpuB1 = await cpuSeconds(b.pid);
          const fail1 = await replicationFailures(a.url);
          const failures = { senderFailures: fail1.total - fail0.total };
          const failDetail = { senderFailuresByReason: diffCounts(fail1.byReason, fail0.byReason) };
          const lags = seen.map((s, i) => (s - (ends[i] as number)) / 1000).sort((x, y) => x - y);
          const cpu = {
            ...(cpuA0 !== undefined && cpuA1 !== undefined ? { senderCpuS: cpuA1 - cpuA0 } : {}),
            ...(cpuB0 !== undefined && cpuB1 !== undefined ? { receiverCpuS: cpuB1 - cpuB0 } : {}),
          };
          const common = { pullS, lastAtPeerS: (Math.max(...seen) - t0) / 1000, bytes, ...cpu, ...failures };
          if (imgs.length === 1) return { values: { lagS: lags[0] as number, ...common }, detail: failDetail };
          return {
            values: { lagP50S: quantile(lags, 0.5), lagP99S: quantile(lags, 0.99), lagMaxS: lags[lags.length - 1] as number, ...common },
            detail: { lagsS: lags.map((l) => Number(l.toFixed(3))), ...failDetail },
          };
        });
      } finally {
        await a.stop();
        await b.stop();
        await rm(dest, { recursive: true, force: true });
      }
    }
  }
  return rec.finish();
}

async function skopeoPull(host: string, img: SeededImage, dest: string): Promise<number> {
  await skopeoCopy(`docker://${host}/${img.repo}:${img.tag}`, `oci:${dest}:${img.tag}`, { srcTlsVerify: false, timeoutMs: 600_000 });
  return performance.now();
}

/** A's failed push attempts so far, from its /metrics (ocirelay_replication_failures_total). */
async function replicationFailures(url: string): Promise<{ total: number; byReason: Record<string, number> }> {
  const text = await (await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(10_000) })).text();
  const byReason: Record<string, number> = {};
  let total = 0;
  for (const m of text.matchAll(/^ocirelay_replication_failures_total\{([^}]*)\} (\S+)$/gm)) {
    const reason = /reason="([^"]*)"/.exec(m[1] ?? '')?.[1] ?? '?';
    const v = Number(m[2]);
    byReason[reason] = (byReason[reason] ?? 0) + v;
    total += v;
  }
  return { total, byReason };
}

function diffCounts(now: Record<string, number>, before: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(now)) if (v - (before[k] ?? 0) !== 0) out[k] = v - (before[k] ?? 0);
  return out;
}
