// `node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N]`: where a CPU profile
// (from `npm run bench -- --node-args "--cpu-prof --cpu-prof-dir=DIR"`) spent its time: self
// time by function and by file, as a Markdown table for bench/README.md and issue reports.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
  children?: number[];
}

export interface CpuProfile {
  nodes: ProfileNode[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime {
  name: string;
  ms: number;
  pct: number;
}

const ROOT = path.resolve(fileURLToPath(new URL('..', import.meta.url)));

function shortUrl(url: string): string {
  const p = url.startsWith('file://') ? fileURLToPath(url) : url;
  return p.startsWith(ROOT) ? path.relative(ROOT, p) : p || '(native)';
}

/** Self time per function and per file, largest first. */
export function selfTimes(p: CpuProfile): { total: number; byFunction: SelfTime[]; byFile: SelfTime[] } {
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  let total = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const node = byId.get(p.samples[i] as number);
    const dt = (p.timeDeltas[i] ?? 0) / 1000;
    if (!node) continue;
    total += dt;
    const cf = node.callFrame;
    const f = shortUrl(cf.url);
    const key = `${cf.functionName || '(anonymous)'} ${f}${cf.url ? `:${cf.lineNumber + 1}` : ''}`;
    fn.set(key, (fn.get(key) ?? 0) + dt);
    const fk = f.includes('node_modules/') ? `node_modules/${f.split('node_modules/')[1]?.split('/')[0] ?? ''}` : f;
    file.set(fk, (file.get(fk) ?? 0) + dt);
  }
  const sorted = (m: Map<string, number>) =>
    [...m.entries()].map(([name, ms]) => ({ name, ms, pct: total ? (ms / total) * 100 : 0 })).sort((a, b) => b.ms - a.ms);
  return { total, byFunction: sorted(fn), byFile: sorted(file) };
}

export function renderSelfTimes(title: string, p: CpuProfile, top = 20): string {
  const s = selfTimes(p);
  const rows = (list: SelfTime[]) => list.slice(0, top).map((r) => `| ${r.name.replace(/\|/g, '\\|')} | ${r.ms.toFixed(0)} | ${r.pct.toFixed(1)}% |`);
  return [
    `### ${title} (${(s.total / 1000).toFixed(2)} s sampled)`,
    '',
    '| function (self time) | ms | share |',
    '| --- | --- | --- |',
    ...rows(s.byFunction),
    '',
    '| file or package (self time) | ms | share |',
    '| --- | --- | --- |',
    ...rows(s.byFile),
    '',
  ].join('\n');
}

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const args = process.argv.slice(2);
  const topIdx = args.indexOf('--top');
  const top = topIdx >= 0 ? Number(args[topIdx + 1]) : 20;
  const files = args.filter((a, i) => a !== '--top' && i !== topIdx + 1);
  if (files.length === 0) {
    process.stderr.write('usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [--top N]\n');
    process.exit(2);
  }
  for (const f of files) {
    const p = JSON.parse(await readFile(f, 'utf8')) as CpuProfile;
    process.stdout.write(renderSelfTimes(path.basename(f), p, top) + '\n');
  }
}
