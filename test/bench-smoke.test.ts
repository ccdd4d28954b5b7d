// The benchmark harness end to end on tiny images (`bench/run.ts --smoke`): every scenario runs
// against real processes (Distribution upstream and proxy, ocirelay, nginx, curl, wrk, skopeo)
// and writes well-formed results into a temp dir. Plus the parts that need no fixture: the hashing
// blob clients (a wrong digest fails), the soak's trend test, options, stats, wrk parsing.
// The soak itself is not run here (it is not a CI scenario).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { runBench } from './helpers/run-bench.ts';
import { concurrentHashGets } from '../bench/hash-clients.ts';
import { parseWrk } from '../bench/load-clients.ts';
import { DEFAULT_SCENARIOS, parseBenchArgs } from '../bench/options.ts';
import { evaluateTargets } from '../bench/report.ts';
import type { ScenarioResult } from '../bench/results-model.ts';
import { summarize } from '../bench/stats.ts';
import { trendOf } from '../bench/trend.ts';


let out: string;
before(async () => {
  out = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-bench-smoke-'));
});
after(async () => {
  if (out) await rm(out, { recursive: true, force: true });
});

test('bench --smoke runs every scenario end to end and writes JSON, Markdown and SVG', { timeout: 180_000 }, async () => {
  const r = await runBench(['--smoke', '--out-dir', out], 150_000);
  assert.equal(r.code, 0, `bench exited ${r.code}\n${r.stderr}`);
  const files = await readdir(out);

  // One JSON per scenario of the default run (all but the soak), every raw sample in it.
  assert.ok(!files.some((f) => f.endsWith('-soak.json')), 'the soak ran without being asked for');
  for (const scenario of DEFAULT_SCENARIOS) {
    const file = files.find((f) => new RegExp(`^\\d{4}-\\d{2}-\\d{2}-${scenario}\\.json$`).test(f));
    assert.ok(file, `no JSON for ${scenario} in ${files.join(', ')}`);
    const result = JSON.parse(await readFile(path.join(out, file), 'utf8')) as ScenarioResult & { machine: { cpuModel: string; cores: number } };
    assert.equal(result.scenario, scenario);
    assert.equal(result.mode, 'smoke');
    assert.ok(result.samples.length + result.failures.length > 0, `${scenario}: no samples`);
    assert.ok(result.samples.length > 0, `${scenario}: every sample failed: ${JSON.stringify(result.failures)}`);
    for (const s of result.samples) {
      assert.ok(s.case && s.contender && s.rep >= 1, `${scenario}: malformed sample ${JSON.stringify(s)}`);
      for (const [k, v] of Object.entries(s.values)) {
        assert.ok(k in result.metrics, `${scenario}: undeclared metric ${k}`);
        assert.equal(typeof v, 'number');
        assert.ok(Number.isFinite(v), `${scenario}: ${k} = ${v}`);
      }
    }
    assert.ok(result.summaries.length > 0);
    assert.ok(result.machine.cores > 0 && result.machine.cpuModel);
  }

  // Contenders measured side by side in the same run.
  const contenders = async (scenario: string) => {
    const f = files.find((x) => x.endsWith(`-${scenario}.json`)) as string;
    const res = JSON.parse(await readFile(path.join(out, f), 'utf8')) as ScenarioResult;
    return new Set([...res.samples, ...res.failures].map((s) => s.contender));
  };
  assert.deepEqual([...(await contenders('cold-pull'))].sort(), ['distribution-proxy', 'ocirelay', 'upstream']);
  assert.deepEqual([...(await contenders('herd'))].sort(), ['distribution-proxy', 'ocirelay']);
  assert.deepEqual([...(await contenders('warm-throughput'))].sort(), ['distribution-proxy', 'nginx', 'ocirelay']);

  // The herd counts upstream bytes at the upstream: ocirelay fetched the blob exactly once.
  const herdFile = files.find((x) => x.endsWith('-herd.json')) as string;
  const herd = JSON.parse(await readFile(path.join(out, herdFile), 'utf8')) as ScenarioResult;
  for (const s of herd.samples.filter((x) => x.contender === 'ocirelay')) assert.equal(s.values.upstreamRatio, 1);

  // Hashing clients by default, and server CPU per GiB served for every contender (nginx with its workers).
  const warmFile = files.find((x) => x.endsWith('-warm-throughput.json')) as string;
  const warmRes = JSON.parse(await readFile(path.join(out, warmFile), 'utf8')) as ScenarioResult;
  for (const res of [herd, warmRes]) {
    assert.equal(res.params.clientMode, 'hash', `${res.scenario}: clients do not hash`);
    const metric = res.scenario === 'herd' ? 'proxyCpuSPerGiB' : 'serverCpuSPerGiB';
    assert.ok(res.samples.length > 0);
    for (const s of res.samples) assert.ok((s.values[metric] ?? -1) >= 0, `${res.scenario} ${s.contender}: no ${metric}`);
  }
  assert.ok(warmRes.samples.some((s) => s.contender === 'nginx' && (s.values.serverCpuS ?? 0) > 0), 'nginx workers\' CPU not counted');

  // The Markdown report: machine info, a targets table naming every scenario's target, and the charts.
  const md = await readFile(path.join(out, 'latest.md'), 'utf8');
  assert.match(md, /^# ocirelay benchmark/);
  assert.match(md, /CPU: .+, \d+ cores; memory/);
  assert.match(md, /node v\d+/);
  assert.match(md, /\| \| case \| measure \| ocirelay \| reference \| ratio \/ value \| target \| result \|/);
  for (const letter of ['a', 'b', 'c', 'd', 'e', 'f']) {
    assert.match(md, new RegExp(`^\\| ${letter} \\|.*\\| \\*\\*(met|MISSED)\\*\\* \\|$`, 'm'), `no judged target row for ${letter}`);
  }
  assert.match(md, /!\[herd\]\(\d{4}-\d{2}-\d{2}-herd\.svg\)/);
  assert.match(md, /!\[warm-throughput\]\(\d{4}-\d{2}-\d{2}-warm-throughput\.svg\)/);
  assert.ok(files.some((f) => /^\d{4}-\d{2}-\d{2}-report\.md$/.test(f)));

  for (const chart of ['herd', 'warm-throughput']) {
    const f = files.find((x) => x.endsWith(`-${chart}.svg`));
    assert.ok(f, `no ${chart} chart`);
    const svg = await readFile(path.join(out, f), 'utf8');
    assert.match(svg, /^<\?xml version="1.0" encoding="UTF-8"\?>\n<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    assert.ok(svg.trimEnd().endsWith('</svg>'));
    assert.ok((svg.match(/<rect /g) ?? []).length >= 3, `${chart}: no bars`);
    // Well-formed enough for a browser: every tag closed, no raw ampersands.
    assert.equal((svg.match(/<text[ >]/g) ?? []).length, (svg.match(/<\/text>/g) ?? []).length);
    assert.doesNotMatch(svg, /&(?!amp;|lt;|gt;|quot;)/);
  }
});

test('hash clients: a body whose sha256 differs from the digest fails the sample', { timeout: 60_000 }, async () => {
  const body = Buffer.alloc(3 * 2 ** 20, 7);
  const digest = `sha256:${createHash('sha256').update(body).digest('hex')}`;
  let corrupt = false;
  const server = http.createServer((_req, res) => {
    const b = Buffer.from(body);
    if (corrupt) b[b.length - 1] = 8;
    res.writeHead(200, { 'content-length': b.length });
    res.end(b);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/blob`;
    const ok = await concurrentHashGets(url, 2, { expectDigest: digest, expectBytes: body.length, repeat: 2, timeoutMs: 30_000 });
    assert.equal(ok.bytes, 4 * body.length);
    assert.equal(ok.clients.length, 2);
    corrupt = true;
    await assert.rejects(concurrentHashGets(url, 2, { expectDigest: digest, expectBytes: body.length, timeoutMs: 30_000 }), /digest mismatch/);
  } finally {
    server.close();
  }
});

test('soak trend: a leak in the last half is not flat, noise and warm-up are', () => {
  const pts = (f: (t: number) => number) => Array.from({ length: 120 }, (_, i) => ({ t: i * 5, v: f(i * 5) }));
  // Warm-up growth in the first half, then level with jitter: flat.
  const warm = trendOf(pts((t) => 100e6 + Math.min(t, 200) * 1e5 + ((t * 7919) % 13) * 1e5), 10e6, 0.05);
  assert.equal(warm.flat, true, JSON.stringify(warm));
  assert.ok(warm.firstHalfSlope > warm.lastHalfSlope);
  // 50 kB/s all along: 15 MB over the last 300 s, more than the 10 MB (and 5%) tolerance.
  const leak = trendOf(pts((t) => 100e6 + t * 5e4), 10e6, 0.05);
  assert.equal(leak.flat, false);
  assert.ok(Math.abs(leak.lastHalfSlope - 5e4) < 1);
  // fds: one more every 30 s is a leak; a constant count is flat.
  assert.equal(trendOf(pts((t) => 30 + Math.floor(t / 30)), 4, 0.1).flat, false);
  assert.equal(trendOf(pts(() => 30), 4, 0.1).flat, true);
  // Too few samples to judge: not flat.
  assert.equal(trendOf([{ t: 0, v: 1 }], 4, 0.1).flat, false);
});

test('soak targets: judged from 600 s, never met by a process that died', () => {
  const soakResult = (seconds: number, rssFlat: number, alive: number): ScenarioResult => ({
    scenario: 'soak',
    title: 'g',
    date: '2026-12-02',
    mode: 'full',
    startedAt: '',
    finishedAt: '',
    params: { seconds },
    metrics: {},
    samples: [
      { case: 'totals', contender: 'ocirelay', rep: 1, values: { coldPulls: 10, warmGets: 10, manifestGets: 10, disconnects: 3, errors: 0, alive } },
      { case: 'trend', contender: 'ocirelay', rep: 1, values: { rssLastHalfRise: rssFlat ? 1e6 : 30e6, rssFlat, fdsLastHalfRise: 0, fdsFlat: 1 } },
    ],
    failures: [],
    summaries: [],
    notes: [],
  });
  const verdicts = (r: ScenarioResult) => evaluateTargets({ soak: r }).map((t) => t.met);
  assert.deepEqual(verdicts(soakResult(1800, 1, 1)), [true, true, true]);
  assert.deepEqual(verdicts(soakResult(1800, 0, 1)), [false, true, true]);
  assert.deepEqual(verdicts(soakResult(1800, 1, 0)), [false, false, false]);
  // A one-minute soak checks the harness: flatness is information only.
  assert.deepEqual(verdicts(soakResult(60, 0, 1)), [undefined, undefined, true]);
});

test('bench --smoke --scenarios replication,failover: lag next to its limit, failover pulls, judged as h and i', { timeout: 150_000 }, async () => {
  const dir = path.join(out, 'replication');
  const r = await runBench(['--smoke', '--scenarios', 'replication,failover', '--out-dir', dir], 120_000);
  assert.equal(r.code, 0, `bench exited ${r.code}\n${r.stderr}`);
  const files = await readdir(dir);
  assert.ok(!files.some((f) => f.endsWith('-cold-pull.json')), 'issue-4 scenarios ran without being asked for');
  for (const scenario of ['replication', 'failover']) {
    const file = files.find((f) => new RegExp(`^\\d{4}-\\d{2}-\\d{2}-${scenario}\\.json$`).test(f));
    assert.ok(file, `no JSON for ${scenario} in ${files.join(', ')}`);
    const result = JSON.parse(await readFile(path.join(dir, file), 'utf8')) as ScenarioResult;
    assert.deepEqual(result.failures, [], `${scenario}: failed samples`);
    // Every case has its measurement and, in the same run, its reference (the limit / the upstream pull).
    for (const c of new Set(result.samples.map((s) => s.case))) {
      for (const who of ['ocirelay', 'upstream']) assert.ok(result.samples.some((s) => s.case === c && s.contender === who), `${scenario} ${c}: no ${who} sample`);
    }
    for (const s of result.samples) for (const [k, v] of Object.entries(s.values)) assert.ok(k in result.metrics && Number.isFinite(v), `${scenario}: ${k} = ${v}`);
  }
  const report = await readFile(path.join(dir, 'latest.md'), 'utf8');
  for (const row of [/\| h \| 1m image \|/, /\| h \| burst of 5 images \| replication lag p99/, /\| i \| 1m image, outage just began \|/, /\| i \| 1m image, outage under way \(circuit open\) \|/]) assert.match(report, row);
  const opts = parseBenchArgs([], '/tmp/x');
  assert.ok(opts !== 'help' && !opts.scenarios.includes('replication') && !opts.scenarios.includes('failover'), 'replication and failover run only when named');
});

test('bench options: presets, lists and refusals', () => {
  const full = parseBenchArgs([], '/tmp/x');
  assert.ok(full !== 'help');
  assert.equal(full.mode, 'full');
  assert.ok(!full.scenarios.includes('soak'), 'the soak is not part of the default run');
  assert.equal(full.client, 'hash');
  assert.equal(full.soakSeconds, 1800);
  assert.equal(full.soakSampleSeconds, 5);
  const soak = parseBenchArgs(['--scenarios', 'soak', '--soak-seconds', '60', '--client', 'discard'], '/tmp/x');
  assert.ok(soak !== 'help');
  assert.deepEqual(soak.scenarios, ['soak']);
  assert.equal(soak.soakSeconds, 60);
  assert.equal(soak.soakSampleSeconds, 1);
  assert.equal(soak.client, 'discard');
  assert.throws(() => parseBenchArgs(['--client', 'sha1'], '/tmp/x'), /--client/);
  assert.equal(full.reps, 5);
  assert.deepEqual(full.sizes, ['4m', '256m', '1g']);
  assert.deepEqual(full.herdClients, [16, 32]);
  const quick = parseBenchArgs(['--quick', '--scenarios', 'herd,startup', '--reps', '2'], '/tmp/x');
  assert.ok(quick !== 'help');
  assert.deepEqual(quick.scenarios, ['herd', 'startup']);
  assert.equal(quick.reps, 2);
  assert.equal(quick.repsLarge, 2);
  const sized = parseBenchArgs(['--sizes', '256m,1g', '--reps-large', '3'], '/tmp/x');
  assert.ok(sized !== 'help');
  assert.deepEqual(sized.sizes, ['256m', '1g']);
  assert.equal(sized.repsLarge, 3);
  assert.throws(() => parseBenchArgs(['--scenarios', 'nope'], '/tmp/x'), /unknown scenario/);
  assert.throws(() => parseBenchArgs(['--sizes', '3g'], '/tmp/x'), /unknown size/);
  assert.throws(() => parseBenchArgs(['--reps', '0'], '/tmp/x'), /positive integer/);
  assert.equal(parseBenchArgs(['--help'], '/tmp/x'), 'help');
});

test('bench stats: median and spread', () => {
  const s = summarize([3, 1, 2, 10, 4]);
  assert.equal(s.n, 5);
  assert.equal(s.median, 3);
  assert.equal(s.min, 1);
  assert.equal(s.max, 10);
  assert.equal(s.spreadPct, 300);
  assert.equal(summarize([]).n, 0);
});

test('wrk output parsing', () => {
  const w = parseWrk(`Running 5s test @ http://127.0.0.1:1/v2/x/manifests/1.0
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  40.00ms   90.00%
  Latency Distribution
     50%  850.00us
     75%    2.00ms
     90%    4.00ms
     99%    1.02s
  71234 requests in 5.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  14246.80
Transfer/sec:      8.00MB
`);
  assert.equal(w.requests, 71234);
  assert.equal(w.rps, 14246.8);
  assert.equal(w.p50Ms, 0.85);
  assert.equal(w.p90Ms, 4);
  assert.equal(w.p99Ms, 1020);
  assert.equal(w.errors, 7);
});
