// The region benchmark scenarios of issue 11 (`bench/run.ts --smoke --scenarios region-herd,s3-read`)
// end to end on a 1 MiB blob: a real moto_server, a seeded Distribution upstream, three ocirelay
// processes on one bucket with a cluster ring, the single-instance reference, an instance
// reading from the bucket with its upstream dead, and the SDK reference. Checks that the
// results are well formed (every contender has samples, nothing failed), that the region's
// herd cost the upstream exactly one copy of the blob, and that the targets j and k are rendered.
// Kept apart from bench-smoke.test.ts: these scenarios take a minute or more by themselves.
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { runBench } from './helpers/run-bench.ts';
import { DEFAULT_SCENARIOS, parseBenchArgs } from '../bench/options.ts';
import { evaluateTargets } from '../bench/report.ts';
import type { ScenarioResult } from '../bench/results-model.ts';


let out: string;
before(async () => {
  out = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-bench-region-smoke-'));
});
after(async () => {
  if (out) await rm(out, { recursive: true, force: true });
});

async function readResult(files: string[], scenario: string): Promise<ScenarioResult> {
  const file = files.find((f) => new RegExp(`^\\d{4}-\\d{2}-\\d{2}-${scenario}\\.json$`).test(f));
  assert.ok(file, `no JSON for ${scenario} in ${files.join(', ')}`);
  return JSON.parse(await readFile(path.join(out, file), 'utf8')) as ScenarioResult;
}

test('region-herd and s3-read run only when named', () => {
  assert.ok(!DEFAULT_SCENARIOS.includes('region-herd'));
  assert.ok(!DEFAULT_SCENARIOS.includes('s3-read'));
  const o = parseBenchArgs(['--smoke', '--scenarios', 'region-herd,s3-read'], '/tmp/x');
  assert.ok(o !== 'help');
  assert.deepEqual(o.scenarios, ['region-herd', 's3-read']);
});

test('bench --smoke --scenarios region-herd,s3-read: well-formed results, one upstream copy for the region', { timeout: 420_000 }, async () => {
  const r = await runBench(['--smoke', '--scenarios', 'region-herd,s3-read', '--out-dir', out], 360_000);
  // Exit code 0: both scenarios ran (a missed target does not fail the run, a scenario error does).
  assert.equal(r.code, 0, `bench exited ${r.code}\n${r.stderr}`);
  const files = await readdir(out);

  const herd = await readResult(files, 'region-herd');
  const read = await readResult(files, 's3-read');
  for (const [res, contenders] of [
    [herd, ['ocirelay-region', 'ocirelay']],
    [read, ['ocirelay', 's3-sdk']],
  ] as const) {
    assert.equal(res.mode, 'smoke');
    assert.deepEqual(res.failures, [], `${res.scenario}: failed samples`);
    for (const c of contenders) assert.ok(res.samples.some((s) => s.contender === c), `${res.scenario}: no sample of ${c}`);
    for (const s of res.samples) {
      for (const [k, v] of Object.entries(s.values)) {
        assert.ok(k in res.metrics, `${res.scenario}: undeclared metric ${k}`);
        assert.ok(Number.isFinite(v), `${res.scenario}: ${k} = ${v}`);
      }
    }
  }

  // The region's herd: the upstream sent the blob exactly once (one GET), the single instance too.
  for (const s of herd.samples) {
    assert.equal(s.values.upstreamRatio, 1, `${s.contender} rep ${s.rep}: upstream bytes / blob size`);
    assert.equal(s.values.upstreamGets, 1, `${s.contender} rep ${s.rep}: upstream GETs`);
    assert.ok((s.values.wallS ?? 0) > 0);
  }
  const region = herd.samples.find((s) => s.contender === 'ocirelay-region');
  assert.equal(region?.values.ownerFailures, 0, 'no read from the owner failed');
  assert.equal((region?.detail?.instances as unknown[] | undefined)?.length, 3, 'three instances');

  // Warm from S3: the read through ocirelay was an S3 hit; both contenders have a throughput.
  for (const s of read.samples) assert.ok((s.values.throughput ?? 0) > 0, `${s.contender}: throughput`);
  assert.ok((read.samples.find((s) => s.contender === 'ocirelay')?.values.s3Hits ?? 0) >= 1);
  assert.ok(read.notes.some((n) => n.includes('local disk is empty')), 'the result says what warm from S3 means');

  // Targets j (bytes met, wall judged) and k (judged) in the report and from evaluateTargets.
  const targets = evaluateTargets({ 'region-herd': herd, 's3-read': read });
  const j = targets.filter((t) => t.id === 'j');
  assert.equal(j.length, 2);
  assert.equal(j[0]?.met, true, `upstream bytes target: ${JSON.stringify(j[0])}`);
  assert.equal(typeof j[1]?.met, 'boolean');
  assert.equal(typeof targets.find((t) => t.id === 'k')?.met, 'boolean');
  const md = await readFile(path.join(out, 'latest.md'), 'utf8');
  assert.match(md, /^\| j \| .* \| = 1\.0x \| \*\*met\*\* \|$/m);
  assert.match(md, /^\| k \| /m);
});
