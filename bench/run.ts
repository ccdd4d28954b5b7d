// `npm run bench -- [options]`: starts a seeded upstream, ocirelay, a Distribution proxy and
// nginx on loopback, runs the selected scenarios, writes bench/results/<date>-<scenario>.json,
// the charts and the Markdown report (also as latest.md), and stops everything it started.
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { requireMoto } from '../test/fixtures/moto.ts';
import { requireBinary } from '../test/fixtures/processes.ts';
import { BenchEnv } from './bench-env.ts';
import { machineInfo } from './machine-info.ts';
import { DEFAULT_BIN } from './ocirelay-launcher.ts';
import { SCENARIOS, USAGE, parseBenchArgs, type BenchOptions, type ScenarioId } from './options.ts';
import { evaluateTargets, herdChart, renderMarkdown, soakChart, throughputChart, type Results } from './report.ts';
import type { ScenarioResult } from './results-model.ts';
import { coldPull } from './scenarios/cold-pull.ts';
import { failover } from './scenarios/failover.ts';
import { herd } from './scenarios/herd.ts';
import { manifestLoad } from './scenarios/manifest-load.ts';
import { peakRssFrom } from './scenarios/peak-rss.ts';
import { regionHerd } from './scenarios/region-herd.ts';
import { replication } from './scenarios/replication.ts';
import { s3Read } from './scenarios/s3-read.ts';
import { soak } from './scenarios/soak.ts';
import { startup } from './scenarios/startup.ts';
import { warmThroughput } from './scenarios/warm-throughput.ts';
import { progress } from './progress.ts';

const DEFAULT_OUT = fileURLToPath(new URL('./results/', import.meta.url));

const RUNNERS: Record<Exclude<ScenarioId, 'peak-rss'>, (env: BenchEnv) => Promise<ScenarioResult>> = {
  'cold-pull': coldPull,
  herd,
  'warm-throughput': warmThroughput,
  'manifest-load': manifestLoad,
  startup,
  soak,
  replication,
  failover,
  'region-herd': regionHerd,
  's3-read': s3Read,
};

/** The selected scenarios in canonical order; peak-rss needs herd and warm-throughput. */
function plan(o: BenchOptions): ScenarioId[] {
  const want = new Set(o.scenarios);
  if (want.has('peak-rss')) {
    want.add('herd');
    want.add('warm-throughput');
  }
  return SCENARIOS.filter((s) => want.has(s));
}

async function preflight(scenarios: ScenarioId[]): Promise<void> {
  const need = ['docker-registry', 'skopeo', 'curl', 'ss'];
  if (scenarios.includes('warm-throughput') || scenarios.includes('manifest-load')) need.push('nginx');
  if (scenarios.includes('manifest-load')) need.push('wrk');
  for (const b of need) await requireBinary(b);
  // The region scenarios' S3 is moto_server: missing, the run stops here, saying how to install it.
  if (scenarios.includes('region-herd') || scenarios.includes('s3-read')) await requireMoto();
}

function localDate(d: Date): string {
  const p = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

export async function main(argv: string[]): Promise<number> {
  let o: BenchOptions | 'help';
  try {
    o = parseBenchArgs(argv, DEFAULT_OUT);
  } catch (e) {
    process.stderr.write(`bench: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (o === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  const opts = o;
  const started = new Date();
  const date = localDate(started);
  const scenarios = plan(opts);
  const command = `npm run bench${argv.length ? ` -- ${argv.join(' ')}` : ''}`;
  await preflight(scenarios);
  await mkdir(opts.outDir, { recursive: true });
  const machine = await machineInfo(opts.ocirelayBin ?? DEFAULT_BIN);
  progress(`bench: ${opts.mode} run of ${scenarios.join(', ')}; results in ${opts.outDir}`);

  const env = await BenchEnv.create(opts);
  // A signal must not leave ocirelay children behind (the fixtures kill their own processes).
  const onSignal = (sig: NodeJS.Signals) => {
    env.killNow();
    process.stderr.write(`bench: ${sig}, stopped\n`);
    process.exit(130);
  };
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  process.once('exit', () => env.killNow());

  const results: Results = {};
  const failures: string[] = [];
  const writeResult = async (r: ScenarioResult) => {
    const file = path.join(opts.outDir, `${date}-${r.scenario}.json`);
    await writeFile(file, JSON.stringify({ ...r, command, machine, seeded: env.seeded }, null, 2) + '\n');
  };
  try {
    for (const s of scenarios) {
      if (s === 'peak-rss') continue;
      progress(`bench: scenario ${s}`);
      try {
        const r = await RUNNERS[s](env);
        results[s] = r;
        await writeResult(r);
      } catch (e) {
        failures.push(`${s}: ${(e as Error).stack ?? String(e)}`);
        progress(`bench: scenario ${s} failed: ${(e as Error).stack ?? String(e)}`);
      }
    }
    if (scenarios.includes('peak-rss') && (results.herd || results['warm-throughput'])) {
      const r = peakRssFrom(opts.mode, [results.herd, results['warm-throughput']]);
      results['peak-rss'] = r;
      await writeResult(r);
    }
  } finally {
    await env.close();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }

  const charts: Partial<Record<ScenarioId, string>> = {};
  if (results['warm-throughput']) {
    charts['warm-throughput'] = `${date}-warm-throughput.svg`;
    await writeFile(path.join(opts.outDir, charts['warm-throughput']), throughputChart(results['warm-throughput']));
  }
  if (results.soak) {
    charts.soak = `${date}-soak.svg`;
    await writeFile(path.join(opts.outDir, charts.soak), soakChart(results.soak));
  }
  if (results.herd) {
    charts.herd = `${date}-herd.svg`;
    await writeFile(path.join(opts.outDir, charts.herd), herdChart(results.herd));
  }
  const targets = evaluateTargets(results);
  const md = renderMarkdown({
    results,
    targets,
    machine,
    command,
    date,
    mode: opts.mode,
    durationS: (Date.now() - started.getTime()) / 1000,
    charts,
    failures,
  });
  await writeFile(path.join(opts.outDir, `${date}-report.md`), md);
  await writeFile(path.join(opts.outDir, 'latest.md'), md);
  process.stdout.write(md.slice(0, md.indexOf('## Details')) + `Full report: ${path.join(opts.outDir, 'latest.md')}\n`);
  return failures.length > 0 ? 1 : 0;
}

process.exitCode = await main(process.argv.slice(2));
