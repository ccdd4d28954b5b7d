// Hand-written SVG bar charts: groups of bars (one per contender) at the median, with a
// whisker from the fastest to the slowest repetition. No dependencies, readable source.

export interface Bar {
  label: string;
  median: number;
  min: number;
  max: number;
}

export interface BarGroup {
  label: string;
  bars: Bar[];
}

export interface Panel {
  title: string;
  /** Axis label, e.g. 'GB/s'. */
  unit: string;
  groups: BarGroup[];
  /** Values are divided by this for display (e.g. 1e9 for GB/s). */
  scale?: number;
  /** A horizontal reference line, e.g. 1.0 for "exactly once". */
  refLine?: { value: number; label: string };
}

const COLORS: Record<string, string> = {
  ocirelay: '#2b6cb0',
  'distribution-proxy': '#c05621',
  nginx: '#718096',
  upstream: '#2f855a',
};
const FALLBACK = ['#6b46c1', '#b83280', '#2c7a7b'];

export function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function fmt(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

const WIDTH = 760;
const PANEL_H = 300;
const M = { top: 40, right: 20, bottom: 50, left: 60 };

function renderPanel(p: Panel, y0: number, colorOf: (label: string) => string): string {
  const scale = p.scale ?? 1;
  const plotW = WIDTH - M.left - M.right;
  const plotH = PANEL_H - M.top - M.bottom;
  const top = y0 + M.top;
  const values = p.groups.flatMap((g) => g.bars.map((b) => Math.max(b.max, b.median) / scale));
  if (p.refLine) values.push(p.refLine.value);
  const vmax = niceMax(Math.max(0, ...values.filter(Number.isFinite)));
  const yOf = (v: number) => top + plotH - (Math.max(0, v) / vmax) * plotH;
  const out: string[] = [];
  out.push(`<text x="${M.left}" y="${y0 + 22}" font-size="15" font-weight="bold">${esc(p.title)}</text>`);
  for (let i = 0; i <= 4; i++) {
    const v = (vmax * i) / 4;
    const y = yOf(v);
    out.push(`<line x1="${M.left}" x2="${WIDTH - M.right}" y1="${y}" y2="${y}" stroke="#e2e8f0"/>`);
    out.push(`<text x="${M.left - 6}" y="${y + 4}" font-size="11" text-anchor="end">${fmt(v)}</text>`);
  }
  out.push(`<text x="14" y="${top + plotH / 2}" font-size="12" transform="rotate(-90 14 ${top + plotH / 2})" text-anchor="middle">${esc(p.unit)}</text>`);
  const groupW = plotW / Math.max(1, p.groups.length);
  for (const [gi, g] of p.groups.entries()) {
    const gx = M.left + gi * groupW;
    const barW = Math.min(48, (groupW * 0.8) / Math.max(1, g.bars.length));
    const startX = gx + (groupW - barW * g.bars.length) / 2;
    for (const [bi, b] of g.bars.entries()) {
      const x = startX + bi * barW;
      const med = b.median / scale;
      const y = yOf(med);
      out.push(`<rect x="${x + 2}" y="${y}" width="${barW - 4}" height="${top + plotH - y}" fill="${colorOf(b.label)}"><title>${esc(`${g.label} ${b.label}: ${fmt(med)} ${p.unit} (min ${fmt(b.min / scale)}, max ${fmt(b.max / scale)})`)}</title></rect>`);
      const cx = x + barW / 2;
      if (Number.isFinite(b.min) && Number.isFinite(b.max) && b.max > b.min) {
        out.push(`<line x1="${cx}" x2="${cx}" y1="${yOf(b.min / scale)}" y2="${yOf(b.max / scale)}" stroke="#1a202c" stroke-width="1.5"/>`);
        for (const v of [b.min, b.max]) out.push(`<line x1="${cx - 5}" x2="${cx + 5}" y1="${yOf(v / scale)}" y2="${yOf(v / scale)}" stroke="#1a202c" stroke-width="1.5"/>`);
      }
      out.push(`<text x="${cx}" y="${y - 4}" font-size="10" text-anchor="middle">${fmt(med)}</text>`);
    }
    out.push(`<text x="${gx + groupW / 2}" y="${top + plotH + 18}" font-size="12" text-anchor="middle">${esc(g.label)}</text>`);
  }
  if (p.refLine) {
    const y = yOf(p.refLine.value);
    out.push(`<line x1="${M.left}" x2="${WIDTH - M.right}" y1="${y}" y2="${y}" stroke="#e53e3e" stroke-dasharray="6 4"/>`);
    out.push(`<text x="${WIDTH - M.right}" y="${y - 4}" font-size="11" text-anchor="end" fill="#e53e3e">${esc(p.refLine.label)}</text>`);
  }
  out.push(`<line x1="${M.left}" x2="${WIDTH - M.right}" y1="${top + plotH}" y2="${top + plotH}" stroke="#4a5568"/>`);
  return out.join('\n');
}

/** Panels stacked vertically, one legend for all. */
export function barChartSvg(panels: Panel[], caption: string): string {
  const labels = [...new Set(panels.flatMap((p) => p.groups.flatMap((g) => g.bars.map((b) => b.label))))];
  const colorOf = (l: string) => COLORS[l] ?? FALLBACK[labels.indexOf(l) % FALLBACK.length] ?? '#000';
  const legendH = 30;
  const height = panels.length * PANEL_H + legendH + 24;
  const parts = panels.map((p, i) => renderPanel(p, legendH + i * PANEL_H, colorOf));
  const legend = labels
    .map((l, i) => `<rect x="${M.left + i * 170}" y="8" width="12" height="12" fill="${colorOf(l)}"/><text x="${M.left + i * 170 + 18}" y="19" font-size="12">${esc(l)}</text>`)
    .join('');
  return `<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="#ffffff"/>
${legend}
${parts.join('\n')}
<text x="${M.left}" y="${height - 8}" font-size="11" fill="#4a5568">${esc(caption)}</text>
</svg>
`;
}
