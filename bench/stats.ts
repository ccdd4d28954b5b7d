// Summaries of repeated measurements: median and spread, never a lone mean.

export interface Summary {
  n: number;
  median: number;
  min: number;
  max: number;
  p25: number;
  p75: number;
  mean: number;
  /** (max - min) / median, in percent: how far apart the repetitions landed. */
  spreadPct: number;
}

/** Linear-interpolated quantile of sorted values, q in [0, 1]. */
export function quantile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return NaN;
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo] as number;
  const b = sorted[hi] as number;
  return a + (b - a) * (pos - lo);
}

export function summarize(values: readonly number[]): Summary {
  const s = [...values].filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (s.length === 0) return { n: 0, median: NaN, min: NaN, max: NaN, p25: NaN, p75: NaN, mean: NaN, spreadPct: NaN };
  const median = quantile(s, 0.5);
  const min = s[0] as number;
  const max = s[s.length - 1] as number;
  return {
    n: s.length,
    median,
    min,
    max,
    p25: quantile(s, 0.25),
    p75: quantile(s, 0.75),
    mean: s.reduce((a, b) => a + b, 0) / s.length,
    spreadPct: median === 0 ? 0 : ((max - min) / median) * 100,
  };
}
