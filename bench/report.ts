// Turns scenario results into the judged targets of issue 4, the Markdown report (ratios,
// medians with spread, machine info) and the SVG charts of the herd and throughput scenarios.
import type { MachineInfo } from './machine-info.ts';
import type { ScenarioId } from './options.ts';
import { findSummary, type Contender, type ScenarioResult } from './results-model.ts';
import { FD_TOLERANCE, RSS_TOLERANCE, SOAK_MIN_JUDGED_SECONDS } from './scenarios/soak.ts';
import { barChartSvg, type BarGroup, type Panel } from './svg-chart.ts';
import { lineChartSvg, type LinePanel } from './svg-line-chart.ts';
import type { Trend } from './trend.ts';
import { cases, cell, med, NAMES, ratioCheck, type TargetCheck } from './report-checks.ts';
import { regionChecks } from './report-region.ts';

export type { TargetCheck } from './report-checks.ts';

export type Results = Partial<Record<ScenarioId, ScenarioResult>>;

export const RSS_LIMIT_BYTES = 150e6;
export const READY_LIMIT_S = 2;

export function evaluateTargets(res: Results): TargetCheck[] {
  const out: TargetCheck[] = [];
  const a = res['cold-pull'];
  if (a) {
    for (const c of cases(a)) {
      out.push(ratioCheck('a', a, c, 'seconds', 'cold pull time, ocirelay / Distribution proxy', 'distribution-proxy', '<=', 0.8));
      out.push(ratioCheck('a', a, c, 'seconds', 'cold pull time, ocirelay / upstream direct', 'upstream', '<=', 1.15));
    }
  }
  const b = res.herd;
  if (b) {
    for (const c of cases(b)) {
      const ratios = b.samples.filter((s) => s.case === c && s.contender === 'ocirelay').map((s) => s.values.upstreamRatio ?? NaN);
      const worst = ratios.length ? Math.max(...ratios) : undefined;
      const refS = findSummary(b, c, 'distribution-proxy', 'upstreamRatio');
      const failed = (b.failures ?? []).filter((f) => f.case === c && f.contender === 'ocirelay').length;
      out.push({
        id: 'b',
        scenario: 'herd',
        case: c,
        measure: 'upstream bytes / blob size, ocirelay (worst repetition)',
        ocirelay: cell(findSummary(b, c, 'ocirelay', 'upstreamBytes'), 'bytes'),
        reference: `Distribution proxy: ${cell(refS, 'x')}`,
        value: worst,
        valueText: (worst === undefined ? '—' : `${worst.toFixed(3)}x`) + (failed ? ` (ocirelay failed ${failed} sample${failed > 1 ? 's' : ''})` : ''),
        target: '= 1.0x',
        met: failed > 0 ? false : worst === undefined || !Number.isFinite(worst) ? undefined : ratios.every((v) => v === 1),
      });
      out.push(ratioCheck('b', b, c, 'wallS', 'herd wall time, ocirelay / Distribution proxy', 'distribution-proxy', '<=', 0.5));
    }
  }
  const cRes = res['warm-throughput'];
  if (cRes) {
    for (const c of cases(cRes)) {
      out.push(ratioCheck('c', cRes, c, 'throughput', 'warm throughput, ocirelay / Distribution proxy', 'distribution-proxy', '>=', 0.9));
      out.push(ratioCheck('c', cRes, c, 'throughput', 'warm throughput, ocirelay / nginx sendfile', 'nginx', 'info', 0));
    }
  }
  const d = res['manifest-load'];
  if (d) {
    for (const [c, bound] of [
      ['by tag', 10],
      ['by digest', 1.5],
    ] as const) {
      const check = ratioCheck('d', d, c, 'rps', `manifest GET ${c}, req/s ocirelay / Distribution proxy`, 'distribution-proxy', '>=', bound);
      const errs = d.samples.filter((s) => s.case === c && s.contender === 'ocirelay').reduce((acc, s) => acc + (s.values.errors ?? 0), 0);
      const p = (who: Contender) => `p50 ${cell(findSummary(d, c, who, 'p50Ms'), 'ms')}, p99 ${cell(findSummary(d, c, who, 'p99Ms'), 'ms')}`;
      check.ocirelay += `; ${p('ocirelay')}`;
      check.reference += `; ${p('distribution-proxy')}`;
      if (errs > 0) {
        check.met = false;
        check.valueText += ` (${errs} errors)`;
      }
      out.push(check);
    }
  }
  const e = res['peak-rss'];
  if (e) {
    const peakOf = (who: Contender) => Math.max(...e.samples.filter((s) => s.contender === who).map((s) => s.values.peakRss ?? 0));
    const ours = peakOf('ocirelay');
    const theirs = peakOf('distribution-proxy');
    out.push({
      id: 'e',
      scenario: 'peak-rss',
      case: 'herd + warm, all samples',
      measure: 'peak RSS of ocirelay (max over samples)',
      ocirelay: `${(ours / 1e6).toFixed(0)} MB`,
      reference: `Distribution proxy: ${(theirs / 1e6).toFixed(0)} MB`,
      value: ours,
      valueText: `${(ours / 1e6).toFixed(0)} MB`,
      target: `<= ${RSS_LIMIT_BYTES / 1e6} MB`,
      met: Number.isFinite(ours) && ours > 0 ? ours <= RSS_LIMIT_BYTES : undefined,
    });
  }
  const f = res.startup;
  if (f) {
    const c = cases(f).find((x) => x !== 'empty cache');
    if (c) {
      const s = findSummary(f, c, 'ocirelay', 'readyzS');
      const empty = findSummary(f, 'empty cache', 'ocirelay-empty-cache', 'readyzS');
      const v = med(s);
      out.push({
        id: 'f',
        scenario: 'startup',
        case: c,
        measure: 'spawn to ready (/readyz 200), median',
        ocirelay: cell(s, 's'),
        reference: `empty cache: ${cell(empty, 's')}`,
        value: v,
        valueText: v === undefined ? '—' : `${v.toFixed(2)} s`,
        target: `<= ${READY_LIMIT_S} s${(f.params.blobs as number) < 100_000 ? ' (defined for 100k blobs)' : ''}`,
        met: v === undefined ? undefined : v <= READY_LIMIT_S,
      });
    }
  }
  const g = res.soak;
  if (g) out.push(...soakChecks(g));
  const h = res.replication;
  if (h) out.push(...replicationChecks(h));
  const i = res.failover;
  if (i) {
    for (const c of cases(i)) {
      // The no-outage case is a reference (a cold pull from the upstream through the same D).
      const reference = c.includes('no outage');
      const measure = reference ? 'cold pull through D with its upstream up (reference) / upstream direct' : 'cold pull through D (upstream down, failover from peer A) / upstream direct';
      out.push(ratioCheck('i', i, c, 'seconds', measure, 'upstream', reference ? 'info' : '<=', FAILOVER_RATIO));
    }
  }
  out.push(...regionChecks(res));
  return out;
}

/** h: a replication lag may exceed the loopback transfer of the same bytes by at most this. */
export const LAG_SLACK_S = 1;
/** i: a failover pull may take at most this times the pull straight from the upstream. */
export const FAILOVER_RATIO = 1.2;

/**
 * h: replication lag A -> B (median over repetitions) <= 1 s + the median loopback transfer of
 * the same bytes: the big image's lag, and the burst's p50 and p99 over its images (the limit
 * of the burst is the transfer of all its images: the last one cannot arrive before them all).
 */
function replicationChecks(h: ScenarioResult): TargetCheck[] {
  const out: TargetCheck[] = [];
  for (const c of cases(h)) {
    const limit = findSummary(h, c, 'upstream', 'transferS');
    const failed = (h.failures ?? []).filter((f) => f.case === c && f.contender === 'ocirelay').length;
    const metrics = findSummary(h, c, 'ocirelay', 'lagS') ? [['lagS', 'lag']] : [
      ['lagP50S', 'lag p50 over the images'],
      ['lagP99S', 'lag p99 over the images'],
    ];
    for (const [metric, label] of metrics as Array<[string, string]>) {
      const s = findSummary(h, c, 'ocirelay', metric);
      const lag = med(s);
      const lim = med(limit);
      const bound = lim === undefined ? undefined : LAG_SLACK_S + lim;
      out.push({
        id: 'h',
        scenario: 'replication',
        case: c,
        measure: `replication ${label} A -> B (after the pull through A ends) vs 1 s + loopback transfer`,
        ocirelay: cell(s, 's'),
        reference: `loopback transfer: ${cell(limit, 's')}`,
        value: lag,
        valueText:
          (lag === undefined || bound === undefined ? '—' : `${lag.toFixed(3)} s of ${bound.toFixed(3)} s`) + (failed ? ` (ocirelay failed ${failed} sample${failed > 1 ? 's' : ''})` : ''),
        target: `<= ${LAG_SLACK_S} s + transfer`,
        met: failed > 0 ? false : lag === undefined || bound === undefined ? undefined : lag <= bound,
      });
    }
  }
  return out;
}

/** g: the soak's RSS and fds stayed flat, and every request was answered correctly. */
function soakChecks(g: ScenarioResult): TargetCheck[] {
  const trend = g.samples.find((s) => s.case === 'trend')?.values;
  const totals = g.samples.find((s) => s.case === 'totals')?.values;
  const rss = (metric: string) => cell(findSummary(g, 'timeline', 'ocirelay', metric), metric === 'rssBytes' ? 'bytes' : '');
  const base = { id: 'g', scenario: 'soak' as const, case: `${String(g.params.seconds)} s mixed load`, reference: '—' };
  // Flatness is judged only on a soak long enough for it to mean something.
  const judged = Number(g.params.seconds) >= SOAK_MIN_JUDGED_SECONDS;
  // A process that died part-way has no flat series, whatever its samples until then say.
  const alive = totals?.alive === 1;
  const flatTarget = (tol: string) => (judged ? `flat (<= ${tol})` : `(info: flat <= ${tol} is judged from ${SOAK_MIN_JUDGED_SECONDS} s)`);
  return [
    {
      ...base,
      measure: 'RSS: fitted rise over the last half',
      ocirelay: rss('rssBytes'),
      value: trend?.rssLastHalfRise,
      valueText: trend?.rssLastHalfRise !== undefined ? `${trend.rssLastHalfRise >= 0 ? '+' : ''}${(trend.rssLastHalfRise / 1e6).toFixed(1)} MB` : '—',
      target: flatTarget(`max(${RSS_TOLERANCE.absolute / 1e6} MB, ${RSS_TOLERANCE.relative * 100}%)`),
      met: !judged ? undefined : alive && trend?.rssFlat === 1,
    },
    {
      ...base,
      measure: 'open fds: fitted rise over the last half',
      ocirelay: rss('fds'),
      value: trend?.fdsLastHalfRise,
      valueText: trend?.fdsLastHalfRise !== undefined ? `${trend.fdsLastHalfRise >= 0 ? '+' : ''}${trend.fdsLastHalfRise.toFixed(1)}` : '—',
      target: flatTarget(`max(${FD_TOLERANCE.absolute}, ${FD_TOLERANCE.relative * 100}%)`),
      met: !judged ? undefined : alive && trend?.fdsFlat === 1,
    },
    {
      ...base,
      measure: 'requests answered wrongly or failed; process alive and ready after',
      ocirelay: totals ? `${totals.coldPulls} cold pulls, ${totals.warmGets} warm GETs, ${totals.manifestGets} manifest GETs, ${totals.disconnects} hang-ups` : '—',
      value: totals?.errors,
      valueText: totals ? `${totals.errors} errors, ${totals.alive === 1 ? 'alive' : 'NOT alive'}` : 'not measured',
      target: '0 errors, alive',
      met: totals ? totals.errors === 0 && totals.alive === 1 : false,
    },
  ];
}

function verdict(m: boolean | undefined): string {
  return m === undefined ? '—' : m ? '**met**' : '**MISSED**';
}

function esc(s: string): string {
  return s.replace(/\|/g, '\\|');
}

/** Key metrics shown per scenario in the detail tables. */
const DETAIL_METRICS: Record<ScenarioId, string[]> = {
  'cold-pull': ['seconds', 'proxyCpuS', 'proxyCpuSPerGiB', 'upstreamBytes'],
  herd: ['wallS', 'proxyCpuS', 'proxyCpuSPerGiB', 'ttfbP50S', 'ttfbMaxS', 'upstreamGets', 'upstreamRatio', 'peakRss'],
  'warm-throughput': ['throughput', 'wallS', 'serverCpuS', 'serverCpuSPerGiB', 'peakRss'],
  'manifest-load': ['rps', 'p50Ms', 'p99Ms', 'errors', 'serverCpuS'],
  'peak-rss': ['peakRss'],
  startup: ['readyzS', 'readyLogS', 'internalStartupS', 'cachedBlobs'],
  soak: ['rssBytes', 'fds', 'cpuS', 'coldPulls', 'warmGets', 'manifestGets', 'disconnects', 'errors', 'pushErrors', 'alive', 'rssLastHalfRise', 'fdsLastHalfRise'],
  replication: ['lagS', 'lagP50S', 'lagP99S', 'lagMaxS', 'lastAtPeerS', 'pullS', 'transferS', 'senderCpuS', 'receiverCpuS', 'bytes'],
  failover: ['seconds', 'proxyCpuS', 'peerCpuS', 'upstreamGets'],
  'region-herd': ['wallS', 'ttfbP50S', 'upstreamRatio', 'upstreamGets', 'ownerCpuS', 'memberCpuMaxS', 'regionCpuS', 'regionCpuSPerGiB', 'peakRssMax', 'ownerFailures', 's3ServerCpuS', 'writeBehindS'],
  's3-read': ['throughput', 'wallS', 'ttfbS', 'serverCpuS', 's3ServerCpuS', 's3Hits'],
};

function detailTable(r: ScenarioResult): string {
  const contenders = [...new Set(r.samples.map((s) => s.contender))];
  const lines = [`| case | metric | ${contenders.map((c) => NAMES[c]).join(' | ')} |`, `| --- | --- | ${contenders.map(() => '---').join(' | ')} |`];
  for (const c of cases(r)) {
    for (const m of DETAIL_METRICS[r.scenario]) {
      const unit = r.metrics[m]?.unit ?? '';
      const cells = contenders.map((who) => cell(findSummary(r, c, who, m), unit));
      if (cells.every((x) => x === '—')) continue;
      lines.push(`| ${esc(c)} | ${m} | ${cells.map(esc).join(' | ')} |`);
    }
  }
  return lines.join('\n');
}

export interface ReportInput {
  results: Results;
  targets: TargetCheck[];
  machine: MachineInfo;
  command: string;
  date: string;
  mode: string;
  durationS: number;
  /** Chart file names (relative to the report), by scenario. */
  charts: Partial<Record<ScenarioId, string>>;
  failures: string[];
}

export function renderMarkdown(i: ReportInput): string {
  const m = i.machine;
  const out: string[] = [];
  out.push(`# ocirelay benchmark, ${i.date} (${i.mode})`, '');
  out.push(`Command: \`${i.command}\` (took ${(i.durationS / 60).toFixed(1)} min). Medians of the repetitions, with (min–max, n) where there were several; contenders interleaved repetition by repetition; cold means a fresh data dir / fresh registry storage per repetition.`, '');
  out.push('## Machine', '');
  out.push(`- CPU: ${m.cpuModel}, ${m.cores} cores; memory ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB`);
  out.push(`- OS: ${m.os}, kernel ${m.kernel}; node ${m.node}`);
  out.push(`- Tools: ${Object.entries(m.tools).map(([k, v]) => `${k}: ${v}`).join('; ')}`);
  out.push(`- Load average at start: ${m.loadAvgAtStart.join(', ')} (other work on the machine skews results on 2 cores)`);
  out.push(`- ocirelay ran from: ${m.ocirelayRunsFrom}`, '');
  if (i.failures.length > 0) {
    out.push('## Failures', '', ...i.failures.map((f) => `- ${f.split('\n')[0]}`), '');
  }
  out.push('## Targets (issue 4; g, the soak: issue 9; h, i, replication and failover: issue 10; j, k, the region on S3: issue 11)', '');
  out.push('| | case | measure | ocirelay | reference | ratio / value | target | result |', '| --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const t of i.targets) {
    out.push(`| ${t.id} | ${esc(t.case)} | ${esc(t.measure)} | ${esc(t.ocirelay)} | ${esc(t.reference)} | ${esc(t.valueText)} | ${esc(t.target)} | ${verdict(t.met)} |`);
  }
  const judged = i.targets.filter((t) => t.met !== undefined);
  out.push('', `${judged.filter((t) => t.met).length} of ${judged.length} judged targets met.`, '');
  out.push('## Details', '');
  for (const r of Object.values(i.results)) {
    if (!r) continue;
    out.push(`### ${r.title}`, '');
    out.push(detailTable(r), '');
    for (const f of r.failures ?? []) out.push(`- FAILED: ${esc(f.case)} ${NAMES[f.contender]} rep ${f.rep}: ${esc(f.error.split('\n')[0] ?? '')}`);
    for (const n of r.notes) out.push(`- note: ${esc(n)}`);
    if (r.notes.length || r.failures?.length) out.push('');
    const chart = i.charts[r.scenario];
    if (chart) out.push(`![${r.scenario}](${chart})`, '');
    out.push(`Raw samples: \`${r.date}-${r.scenario}.json\`.`, '');
  }
  return out.join('\n');
}

function groupsFor(r: ScenarioResult, metric: string, contenders: Contender[]): BarGroup[] {
  return cases(r).map((c) => ({
    label: c,
    bars: contenders.flatMap((who) => {
      const s = findSummary(r, c, who, metric);
      return s && s.n > 0 ? [{ label: who, median: s.median, min: s.min, max: s.max }] : [];
    }),
  }));
}

/** 'hash' or 'discard' clients, as recorded in the result (older results: curl discarding). */
function clientsOf(r: ScenarioResult): string {
  return r.params.clientMode === 'hash' ? 'sha256-checking clients' : 'curl, body to /dev/null';
}

export function throughputChart(r: ScenarioResult): string {
  const panels: Panel[] = [
    { title: 'Warm blob throughput (higher is better)', unit: 'GB/s', scale: 1e9, groups: groupsFor(r, 'throughput', ['ocirelay', 'distribution-proxy', 'nginx']) },
    { title: 'Server CPU-seconds per GiB served (lower is better)', unit: 'CPU-s/GiB', groups: groupsFor(r, 'serverCpuSPerGiB', ['ocirelay', 'distribution-proxy', 'nginx']) },
  ];
  return barChartSvg(panels, `${r.date} ${r.mode}: bars are medians, whiskers min–max over repetitions; clients: ${clientsOf(r)}.`);
}

export function herdChart(r: ScenarioResult): string {
  const contenders: Contender[] = ['ocirelay', 'distribution-proxy'];
  const panels: Panel[] = [
    { title: 'Herd: wall time until every client has the blob (lower is better)', unit: 's', groups: groupsFor(r, 'wallS', contenders) },
    { title: 'Herd: proxy CPU-seconds per GiB served (lower is better)', unit: 'CPU-s/GiB', groups: groupsFor(r, 'proxyCpuSPerGiB', contenders) },
    { title: 'Herd: bytes the upstream sent / blob size (lower is better)', unit: 'x blob size', groups: groupsFor(r, 'upstreamRatio', contenders), refLine: { value: 1, label: 'exactly once' } },
  ];
  return barChartSvg(panels, `${r.date} ${r.mode}: ${String((r.params.blob as { size?: number } | undefined)?.size ?? '')} byte blob; bars are medians, whiskers min–max; ${clientsOf(r)}.`);
}

/** RSS and fds over the soak, with the fitted first- and last-half trend lines. */
export function soakChart(r: ScenarioResult): string {
  const timeline = r.samples.filter((s) => s.case === 'timeline');
  const detail = r.samples.find((s) => s.case === 'trend')?.detail as { rss?: Trend; fds?: Trend } | undefined;
  const series = (metric: string, scale: number) => timeline.map((s) => ({ t: s.values.tS ?? NaN, v: (s.values[metric] ?? NaN) / scale }));
  const fits = (points: Array<{ t: number; v: number }>, trend: Trend | undefined, scale: number): LinePanel['fits'] => {
    if (!trend || points.length < 2) return [];
    const t0 = points[0]?.t ?? 0;
    const t1 = points[points.length - 1]?.t ?? 0;
    const mid = (t0 + t1) / 2;
    const seg = (from: number, to: number, median: number, slope: number, label: string) => {
      // Anchored at the half's median in its middle: shows the slope, not the exact intercept.
      const c = (from + to) / 2;
      return { from: { t: from, v: (median + slope * (from - c)) / scale }, to: { t: to, v: (median + slope * (to - c)) / scale }, label };
    };
    return [seg(t0, mid, trend.firstHalfMedian, trend.firstHalfSlope, 'first-half trend'), seg(mid, t1, trend.lastHalfMedian, trend.lastHalfSlope, 'last-half trend')];
  };
  const rssPoints = series('rssBytes', 2 ** 20);
  const fdPoints = series('fds', 1);
  const panels: LinePanel[] = [
    { title: 'ocirelay RSS (VmRSS) under mixed load', unit: 'MiB', points: rssPoints, fits: fits(rssPoints, detail?.rss, 2 ** 20) },
    { title: 'ocirelay open file descriptors', unit: 'fds', points: fdPoints, fits: fits(fdPoints, detail?.fds, 1) },
  ];
  return lineChartSvg(panels, `${r.date} ${r.mode}: ${String(r.params.seconds)} s soak, a sample every ${String(r.params.sampleSeconds)} s; dashed: fitted trend of each half.`);
}
