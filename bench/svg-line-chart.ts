// Hand-written SVG line charts for time series (the soak's RSS and fd samples): one panel per
// series, time on the x axis, optional dashed fit lines (the first- and last-half trends).
import { esc, fmt, niceMax } from './svg-chart.ts';

export interface LinePanel {
  title: string;
  /** Axis label, e.g. 'MiB'. */
  unit: string;
  /** Seconds since start, value (already scaled for display). */
  points: Array<{ t: number; v: number }>;
  /** Straight segments drawn dashed over the series, e.g. fitted trends. */
  fits?: Array<{ from: { t: number; v: number }; to: { t: number; v: number }; label: string }>;
}

const WIDTH = 760;
const PANEL_H = 280;
const M = { top: 40, right: 20, bottom: 44, left: 60 };
const LINE = '#2b6cb0';
const FIT = '#e53e3e';

function renderPanel(p: LinePanel, y0: number): string {
  const plotW = WIDTH - M.left - M.right;
  const plotH = PANEL_H - M.top - M.bottom;
  const top = y0 + M.top;
  const tmax = Math.max(1, ...p.points.map((q) => q.t));
  const vmax = niceMax(Math.max(0, ...p.points.map((q) => q.v).filter(Number.isFinite)));
  const xOf = (t: number) => M.left + (t / tmax) * plotW;
  const yOf = (v: number) => top + plotH - (Math.max(0, v) / vmax) * plotH;
  const out: string[] = [];
  out.push(`<text x="${M.left}" y="${y0 + 22}" font-size="15" font-weight="bold">${esc(p.title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    out.push(`<line x1="${M.left}" x2="${WIDTH - M.right}" y1="${yOf(v)}" y2="${yOf(v)}" stroke="#e2e8f0"/>`);
    out.push(`<text x="${M.left - 6}" y="${yOf(v) + 4}" font-size="11" text-anchor="end">${fmt(v)}</text>`);
    const t = (tmax * i) / 4;
    out.push(`<text x="${xOf(t)}" y="${top + plotH + 16}" font-size="11" text-anchor="middle">${fmt(t)} s</text>`);
  }
  out.push(`<text x="14" y="${top + plotH / 2}" font-size="12" transform="rotate(-90 14 ${top + plotH / 2})" text-anchor="middle">${esc(p.unit)}</text>`);
  const path = p.points
    .filter((q) => Number.isFinite(q.v))
    .map((q, i) => `${i === 0 ? 'M' : 'L'}${xOf(q.t).toFixed(1)},${yOf(q.v).toFixed(1)}`)
    .join(' ');
  if (path) out.push(`<path d="${path}" fill="none" stroke="${LINE}" stroke-width="1.5"/>`);
  for (const f of p.fits ?? []) {
    out.push(`<line x1="${xOf(f.from.t)}" y1="${yOf(f.from.v)}" x2="${xOf(f.to.t)}" y2="${yOf(f.to.v)}" stroke="${FIT}" stroke-width="1.5" stroke-dasharray="6 4"><title>${esc(f.label)}</title></line>`);
  }
  out.push(`<line x1="${M.left}" x2="${WIDTH - M.right}" y1="${top + plotH}" y2="${top + plotH}" stroke="#4a5568"/>`);
  return out.join('\n');
}

/** Panels stacked vertically. */
export function lineChartSvg(panels: LinePanel[], caption: string): string {
  const height = panels.length * PANEL_H + 24;
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
${panels.map((p, i) => renderPanel(p, i * PANEL_H)).join('\n')}
<text x="${M.left}" y="${height - 8}" font-size="11" fill="#4a5568">${esc(caption)}</text>
</svg>
`;
}
