// e. Peak RSS of each proxy process during the herd (b) and warm-throughput (c) scenarios:
// collected there, sample by sample, and gathered here into a result of its own.
import type { Mode } from '../options.ts';
import { ScenarioRecorder, type ScenarioResult } from '../results-model.ts';

export function peakRssFrom(mode: Mode, sources: Array<ScenarioResult | undefined>): ScenarioResult {
  const rec = new ScenarioRecorder(
    'peak-rss',
    'e. Peak RSS of each proxy process during the herd (b) and warm throughput (c)',
    mode,
    { peakRss: { unit: 'bytes', better: 'lower', description: 'VmHWM: fresh process per herd repetition; reset with clear_refs before each warm sample' } },
    { from: sources.filter((s): s is ScenarioResult => s !== undefined).map((s) => s.scenario) },
  );
  for (const src of sources) {
    if (!src) continue;
    const prefix = src.scenario === 'herd' ? 'herd' : 'warm';
    for (const s of src.samples) {
      const v = s.values.peakRss;
      if (v === undefined) continue;
      rec.add({ case: `${prefix} ${s.case}`, contender: s.contender, rep: s.rep, values: { peakRss: v } });
    }
  }
  return rec.finish();
}
