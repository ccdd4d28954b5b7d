// Did a series stay flat? For the soak's RSS and fd samples: a least-squares line through the
// first half and one through the last half of the run. A leak shows as a last half that still
// climbs; warm-up (JIT, the memory tier filling, pools opening) only in the first half. Pure
// functions, unit-tested in test/bench-smoke.test.ts.

export interface Point {
  /** Seconds since the start. */
  t: number;
  v: number;
}

/** Slope of the least-squares line through the points, per second (0 for < 2 distinct times). */
export function slope(points: readonly Point[]): number {
  const n = points.length;
  if (n < 2) return 0;
  const mt = points.reduce((a, p) => a + p.t, 0) / n;
  const mv = points.reduce((a, p) => a + p.v, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.v - mv);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

function median(values: readonly number[]): number {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] as number) : ((s[mid - 1] as number) + (s[mid] as number)) / 2;
}

export interface Trend {
  /** Per second, through the first half of the samples. */
  firstHalfSlope: number;
  /** Per second, through the last half of the samples. */
  lastHalfSlope: number;
  /** lastHalfSlope times the last half's duration: how much the fitted line rose over it. */
  lastHalfRise: number;
  firstHalfMedian: number;
  lastHalfMedian: number;
  /** The largest rise still called flat: max(absolute, relative x lastHalfMedian). */
  tolerance: number;
  /** lastHalfRise <= tolerance (a falling series is flat too). */
  flat: boolean;
}

/**
 * Split at the middle of the time range and fit each half. `absolute` and `relative` set the
 * tolerance for the last half's rise (e.g. 10 MB or 5% of RSS; 4 fds or 10%).
 */
export function trendOf(points: readonly Point[], absolute: number, relative: number): Trend {
  const sorted = [...points].sort((a, b) => a.t - b.t);
  const t0 = sorted[0]?.t ?? 0;
  const t1 = sorted[sorted.length - 1]?.t ?? 0;
  const mid = (t0 + t1) / 2;
  const first = sorted.filter((p) => p.t <= mid);
  const last = sorted.filter((p) => p.t >= mid);
  const lastHalfSlope = slope(last);
  const lastHalfRise = lastHalfSlope * (t1 - mid);
  const lastHalfMedian = median(last.map((p) => p.v));
  const tolerance = Math.max(absolute, relative * (Number.isFinite(lastHalfMedian) ? lastHalfMedian : 0));
  return {
    firstHalfSlope: slope(first),
    lastHalfSlope,
    lastHalfRise,
    firstHalfMedian: median(first.map((p) => p.v)),
    lastHalfMedian,
    tolerance,
    flat: sorted.length >= 4 && lastHalfRise <= tolerance,
  };
}
