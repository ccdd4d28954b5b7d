// The shape of what a scenario records: every raw sample, and per (case, contender, metric) a
// summary. This is what bench/results/<date>-<scenario>.json holds.
import type { Mode, ScenarioId } from './options.ts';
import { summarize, type Summary } from './stats.ts';
import { progress } from './progress.ts';

/**
 * `ocirelay-region`: three ocirelay instances on one S3 bucket with a cluster ring (issue 11);
 * `s3-sdk`: a plain AWS SDK GetObject from the bench process (the S3 read reference).
 */
export type Contender = 'ocirelay' | 'distribution-proxy' | 'upstream' | 'nginx' | 'ocirelay-empty-cache' | 'ocirelay-region' | 's3-sdk';

export interface Sample {
  /** What was measured, e.g. '256m', '16 clients', '1g x8', 'by tag', '100000 blobs'. */
  case: string;
  contender: Contender;
  /** 1-based repetition. */
  rep: number;
  /** Metric name -> value (units in ScenarioResult.metrics). */
  values: Record<string, number>;
  detail?: Record<string, unknown>;
}

/** A sample that could not be measured: the contender failed (crashed, answered wrongly). */
export interface FailedSample {
  case: string;
  contender: Contender;
  rep: number;
  error: string;
}

export interface MetricInfo {
  unit: string;
  better: 'lower' | 'higher';
  description: string;
}

export interface SummaryRow {
  case: string;
  contender: Contender;
  metric: string;
  summary: Summary;
}

export interface ScenarioResult {
  scenario: ScenarioId;
  title: string;
  date: string;
  mode: Mode;
  startedAt: string;
  finishedAt: string;
  /** Scenario parameters (sizes, clients, reps, durations, ...). */
  params: Record<string, unknown>;
  metrics: Record<string, MetricInfo>;
  samples: Sample[];
  failures: FailedSample[];
  summaries: SummaryRow[];
  notes: string[];
}

export class ScenarioRecorder {
  readonly samples: Sample[] = [];
  readonly failures: FailedSample[] = [];
  readonly notes: string[] = [];
  private readonly startedAt = new Date();

  constructor(
    readonly scenario: ScenarioId,
    readonly title: string,
    readonly mode: Mode,
    readonly metrics: Record<string, MetricInfo>,
    readonly params: Record<string, unknown>,
  ) {}

  add(s: Sample): void {
    for (const k of Object.keys(s.values)) if (!(k in this.metrics)) throw new Error(`${this.scenario}: undeclared metric ${k}`);
    this.samples.push(s);
    const vals = Object.entries(s.values)
      .map(([k, v]) => `${k}=${formatValue(v, this.metrics[k]?.unit ?? '')}`)
      .join(' ');
    progress(`[${this.scenario}] ${s.case} ${s.contender} #${s.rep}: ${vals}`);
  }

  /**
   * Run one measurement; a failure is recorded (not thrown) so that the other contenders and
   * repetitions still run. Returns false when it failed.
   */
  async measure(
    at: { case: string; contender: Contender; rep: number },
    fn: () => Promise<{ values: Record<string, number>; detail?: Record<string, unknown> }>,
  ): Promise<boolean> {
    try {
      const r = await fn();
      this.add({ ...at, ...r });
      return true;
    } catch (e) {
      const error = ((e as Error).message ?? String(e)).slice(0, 2000);
      this.failures.push({ ...at, error });
      progress(`[${this.scenario}] ${at.case} ${at.contender} #${at.rep}: FAILED: ${error.split('\n')[0]}`);
      return false;
    }
  }

  note(text: string): void {
    this.notes.push(text);
    progress(`[${this.scenario}] note: ${text}`);
  }

  finish(): ScenarioResult {
    const keys = new Map<string, { case: string; contender: Contender; metric: string; values: number[] }>();
    for (const s of this.samples) {
      for (const [metric, v] of Object.entries(s.values)) {
        const k = `${s.case}\u0000${s.contender}\u0000${metric}`;
        let e = keys.get(k);
        if (!e) keys.set(k, (e = { case: s.case, contender: s.contender, metric, values: [] }));
        e.values.push(v);
      }
    }
    return {
      scenario: this.scenario,
      title: this.title,
      date: this.startedAt.toISOString().slice(0, 10),
      mode: this.mode,
      startedAt: this.startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      params: this.params,
      metrics: this.metrics,
      samples: this.samples,
      failures: this.failures,
      summaries: [...keys.values()].map((e) => ({ case: e.case, contender: e.contender, metric: e.metric, summary: summarize(e.values) })),
      notes: this.notes,
    };
  }
}

export function formatValue(v: number, unit: string): string {
  if (!Number.isFinite(v)) return String(v);
  switch (unit) {
    case 'bytes':
      return v >= 2 ** 30 ? `${(v / 2 ** 30).toFixed(2)} GiB` : v >= 2 ** 20 ? `${(v / 2 ** 20).toFixed(1)} MiB` : `${Math.round(v)} B`;
    case 'B/s':
      return `${(v / 1e9).toFixed(2)} GB/s`;
    case 's':
      return `${v.toFixed(3)} s`;
    case 'ms':
      return `${v.toFixed(v < 10 ? 2 : 0)} ms`;
    case 'req/s':
      return `${Math.round(v)} req/s`;
    case 'x':
      return `${v.toFixed(2)}x`;
    case 'B/min':
      return `${(v / 1e6).toFixed(2)} MB/min`;
    case '/min':
      return `${v.toFixed(2)}/min`;
    default:
      return `${Number.isInteger(v) ? v : v.toFixed(2)}${unit ? ` ${unit}` : ''}`;
  }
}

/** The summary of one (case, contender, metric), if measured. */
export function findSummary(r: ScenarioResult | undefined, c: string, contender: Contender, metric: string): Summary | undefined {
  return r?.summaries.find((s) => s.case === c && s.contender === contender && s.metric === metric)?.summary;
}
