// f. Start-up to ready with a big cache on disk: a data dir with N committed small blobs and
// their index journal, in ocirelay's layout; time from spawn to the 'ocirelay ready' log line
// and to the first 200 from /readyz. An empty data dir is measured alongside, for the floor
// (node + tsx start-up).
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import type { BenchEnv } from '../bench-env.ts';
import { generateCacheDir } from '../cache-dir-generator.ts';
import { ScenarioRecorder, type Contender, type ScenarioResult } from '../results-model.ts';
import { progress } from '../progress.ts';

export async function startup(env: BenchEnv): Promise<ScenarioResult> {
  const o = env.options;
  const big = path.join(env.workDir, 'startup-cache');
  progress(`[startup] writing ${o.startupBlobs} cached blobs...`);
  const gen = await generateCacheDir(big, o.startupBlobs);
  const withBlobs = `${o.startupBlobs} blobs`;
  const rec = new ScenarioRecorder(
    'startup',
    `f. Start-up to ready with ${o.startupBlobs} cached blobs on disk`,
    o.mode,
    {
      readyzS: { unit: 's', better: 'lower', description: 'spawn to the first 200 from GET /readyz' },
      readyLogS: { unit: 's', better: 'lower', description: "spawn to the 'ocirelay ready' log line" },
      internalStartupS: { unit: 's', better: 'lower', description: "startupMs that ocirelay logs (cache scan + index replay + listen)" },
      cachedBlobs: { unit: '', better: 'higher', description: 'cachedBlobs from the ready line (must equal the blobs written)' },
    },
    { blobs: o.startupBlobs, blobBytes: 1024, journalLines: gen.journalLines, generateSeconds: gen.seconds, reps: o.reps, pageCache: 'warm (not dropped: that would disturb the whole machine)' },
  );
  // Warm-up start, not recorded: tsx's transform cache and the page cache, as on a restart.
  await (await env.ocirelayOn(big)).stop();
  for (let rep = 1; rep <= o.reps; rep++) {
    for (const contender of ['ocirelay', 'ocirelay-empty-cache'] as Contender[]) {
      const empty = path.join(env.workDir, `startup-empty-${rep}`);
      if (contender === 'ocirelay-empty-cache') await mkdir(empty, { recursive: true });
      const r = await env.ocirelayOn(contender === 'ocirelay' ? big : empty);
      try {
        const cached = Number(r.readyLine?.cachedBlobs);
        if (contender === 'ocirelay' && cached !== o.startupBlobs) rec.note(`rep ${rep}: ocirelay reported ${cached} cached blobs, ${o.startupBlobs} written`);
        const internal = Number(r.readyLine?.startupMs);
        rec.add({
          case: contender === 'ocirelay' ? withBlobs : 'empty cache',
          contender,
          rep,
          values: {
            readyzS: r.readyzMs / 1000,
            ...(r.readyLogMs !== undefined ? { readyLogS: r.readyLogMs / 1000 } : {}),
            ...(Number.isFinite(internal) ? { internalStartupS: internal / 1000 } : {}),
            ...(Number.isFinite(cached) ? { cachedBlobs: cached } : {}),
          },
        });
      } finally {
        await r.stop();
        await rm(empty, { recursive: true, force: true });
      }
    }
  }
  await rm(big, { recursive: true, force: true });
  return rec.finish();
}
