// The judged targets of issue 11 item 8: j (region-herd) upstream bytes exactly 1.0x the blob
// in every repetition and wall time <= 1.3x the single-instance herd of the same run; k (s3-read)
// warm-from-S3 throughput >= 0.8x a plain SDK GetObject of the same object.
import { cases, cell, ratioCheck, type TargetCheck } from './report-checks.ts';
import { findSummary, type ScenarioResult } from './results-model.ts';

/** j: the region's herd may take at most this times the single-instance herd. */
export const REGION_HERD_RATIO = 1.3;
/** k: a read from S3 through ocirelay must reach at least this share of a plain SDK GET. */
export const S3_READ_RATIO = 0.8;

export function regionChecks(res: Partial<Record<string, ScenarioResult>>): TargetCheck[] {
  const out: TargetCheck[] = [];
  const j = res['region-herd'];
  if (j) {
    for (const c of cases(j)) {
      const ratios = j.samples.filter((s) => s.case === c && s.contender === 'ocirelay-region').map((s) => s.values.upstreamRatio ?? NaN);
      const worst = ratios.length ? Math.max(...ratios) : undefined;
      const failed = (j.failures ?? []).filter((f) => f.case === c && f.contender === 'ocirelay-region').length;
      const gets = findSummary(j, c, 'ocirelay-region', 'upstreamGets');
      out.push({
        id: 'j',
        scenario: 'region-herd',
        case: c,
        measure: 'upstream bytes / blob size, region of 3 (worst repetition)',
        ocirelay: `${cell(findSummary(j, c, 'ocirelay-region', 'upstreamBytes'), 'bytes')}; upstream GETs ${cell(gets, '')}`,
        reference: `single instance: ${cell(findSummary(j, c, 'ocirelay', 'upstreamRatio'), 'x')}`,
        value: worst,
        valueText: (worst === undefined ? '—' : `${worst.toFixed(3)}x`) + (failed ? ` (region failed ${failed} sample${failed > 1 ? 's' : ''})` : ''),
        target: '= 1.0x',
        met: failed > 0 ? false : worst === undefined || !Number.isFinite(worst) ? undefined : ratios.every((v) => v === 1),
      });
      out.push(ratioCheck('j', j, c, 'wallS', 'herd wall time, region of 3 / single instance (same run)', 'ocirelay', '<=', REGION_HERD_RATIO, 'ocirelay-region'));
    }
  }
  const k = res['s3-read'];
  if (k) {
    for (const c of cases(k)) out.push(ratioCheck('k', k, c, 'throughput', 'warm-from-S3 throughput (empty local disk), ocirelay / plain SDK GetObject', 's3-sdk', '>=', S3_READ_RATIO));
  }
  return out;
}
