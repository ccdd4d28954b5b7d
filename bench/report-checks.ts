// The pieces every judged target is built from: the TargetCheck row, the contenders' names,
// medians with their spread, and the ratio-of-medians check (report.ts, report-region.ts).
import { findSummary, formatValue, type Contender, type ScenarioResult } from './results-model.ts';
import type { ScenarioId } from './options.ts';
import type { Summary } from './stats.ts';

export interface TargetCheck {
  /** Issue 4's letter: a..f; g for the soak (issue 9); h, i: replication and failover (issue 10); j, k: the region (issue 11). */
  id: string;
  scenario: ScenarioId;
  case: string;
  measure: string;
  ocirelay: string;
  reference: string;
  /** The judged ratio (or the absolute value, for e and f). */
  value: number | undefined;
  valueText: string;
  target: string;
  /** undefined: not judged (information, or not measured). */
  met: boolean | undefined;
}

export const NAMES: Record<Contender, string> = {
  ocirelay: 'ocirelay',
  'distribution-proxy': 'Distribution proxy',
  upstream: 'upstream direct',
  nginx: 'nginx sendfile',
  'ocirelay-empty-cache': 'ocirelay, empty cache',
  'ocirelay-region': 'ocirelay region (3 instances, S3, cluster)',
  's3-sdk': 'plain SDK GetObject',
};

export function cases(r: ScenarioResult): string[] {
  return [...new Set(r.samples.map((s) => s.case))];
}

export function med(s: Summary | undefined): number | undefined {
  return s && Number.isFinite(s.median) ? s.median : undefined;
}

export function ratio(a: number | undefined, b: number | undefined): number | undefined {
  return a !== undefined && b !== undefined && b !== 0 ? a / b : undefined;
}

export function cell(s: Summary | undefined, unit: string): string {
  if (!s || s.n === 0) return '—';
  if (s.n === 1) return formatValue(s.median, unit);
  return `${formatValue(s.median, unit)} (${formatValue(s.min, unit)}–${formatValue(s.max, unit)}, n=${s.n})`;
}

/** The ratio of medians `subject` / `ref` of one metric in one case, judged against `bound`. */
export function ratioCheck(
  id: string,
  r: ScenarioResult,
  c: string,
  metric: string,
  measure: string,
  ref: Contender,
  op: '<=' | '>=' | 'info',
  bound: number,
  subject: Contender = 'ocirelay',
): TargetCheck {
  const unit = r.metrics[metric]?.unit ?? '';
  const a = findSummary(r, c, subject, metric);
  const b = findSummary(r, c, ref, metric);
  const v = ratio(med(a), med(b));
  const failed = (r.failures ?? []).filter((f) => f.case === c && f.contender === subject).length;
  return {
    id,
    scenario: r.scenario,
    case: c,
    measure,
    ocirelay: cell(a, unit),
    reference: `${NAMES[ref]}: ${cell(b, unit)}`,
    value: v,
    valueText: (v === undefined ? '—' : `${v.toFixed(2)}x`) + (failed ? ` (${NAMES[subject]} failed ${failed} sample${failed > 1 ? 's' : ''})` : ''),
    target: op === 'info' ? '(info)' : `${op} ${bound}x`,
    met: op === 'info' ? undefined : failed > 0 ? false : v === undefined ? undefined : op === '<=' ? v <= bound : v >= bound,
  };
}
