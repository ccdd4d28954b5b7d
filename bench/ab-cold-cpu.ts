// `node --import tsx bench/ab-cold-cpu.ts ROOT_A ROOT_B [rounds]`: CPU-seconds of ocirelay for
// one cold GET of a 256 MiB blob from a seeded upstream (curl to /dev/null), two checkouts
// alternated round by round (ROOT/bin/ocirelay.js; build each with `node scripts/build.mjs`).
// CPU-s, not wall: less sensitive to other work on the machine, though still noisy on 2 shared
// cores: use 8 rounds or more and compare medians. Per round it prints the CPU ticks (1/100 s)
// of the main thread and of the other threads (V8's GC and compiler workers, libuv's pool).
//   AB_NODE_ARGS="--flag ..."  extra node flags for both
//   AB_PROF=DIR                a --cpu-prof of each process into DIR/<root name>/
//   AB_PERF=DIR                `perf record` of each process during the GET into DIR
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { startRegistry } from '../test/fixtures/registry.ts';
import { makeTempDir, removeTempDir } from '../test/fixtures/processes.ts';
import { OcirelayLauncher } from './ocirelay-launcher.ts';
import { seedUpstream } from './seed.ts';

type Ticks = Record<'main' | 'threads', [user: number, system: number]>;

function ticks(pid: number): Ticks {
  const out: Ticks = { main: [0, 0], threads: [0, 0] };
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    const text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const t = out[tid === String(pid) ? 'main' : 'threads'];
    t[0] += Number(rest[11]);
    t[1] += Number(rest[12]);
  }
  return out;
}

const [rootA, rootB, roundsArg] = process.argv.slice(2);
if (!rootA || !rootB) throw new Error('usage: ab-cold-cpu.ts ROOT_A ROOT_B [rounds]');
const rounds = Number(roundsArg ?? 8);
const reg = await startRegistry();
try {
  const seeded = await seedUpstream(reg, ['256m'], undefined);
  const img = seeded.layers['256m']!;
  const cpu = new Map<string, number[]>([
    [rootA, []],
    [rootB, []],
  ]);
  for (let r = 0; r < rounds; r++) {
    for (const root of r % 2 === 0 ? [rootA, rootB] : [rootB, rootA]) {
      const dir = await makeTempDir('ocirelay-ab-');
      const nodeArgs = [
        ...(process.env['AB_NODE_ARGS'] ?? '').split(' ').filter(Boolean),
        ...(process.env['AB_PROF'] ? ['--cpu-prof', `--cpu-prof-dir=${process.env['AB_PROF']}/${path.basename(root)}`] : []),
      ];
      const o = await new OcirelayLauncher(path.join(root, 'bin/ocirelay.js')).start({ dir, upstreamUrl: reg.url, logLevel: 'warn', nodeArgs });
      try {
        const get = (repo: string, d: string) => spawnSync('curl', ['-sf', '-o', '/dev/null', `${o.url}/v2/${repo}/blobs/${d}`]);
        // A cold cache, not a cold process: JIT and connections warmed on the 1 MiB image first.
        for (const b of seeded.warmup.blobs) get(seeded.warmup.repo, b.digest);
        const perf = process.env['AB_PERF'] ? spawn('perf', ['record', '-s', '-o', `${process.env['AB_PERF']}/${path.basename(root)}-${r}.data`, '-p', String(o.pid)], { stdio: 'ignore' }) : undefined;
        if (perf) await new Promise((res) => setTimeout(res, 500));
        const t0 = ticks(o.pid);
        const res = get(img.repo, img.layer.digest);
        const t1 = ticks(o.pid);
        if (perf) {
          perf.kill('SIGINT');
          await new Promise((res) => perf.once('exit', res));
        }
        if (res.status !== 0) throw new Error(`curl of the 256 MiB blob through ${root} failed (${res.status})`);
        const d = (k: 'main' | 'threads', i: 0 | 1) => t1[k][i] - t0[k][i];
        const s = (d('main', 0) + d('main', 1) + d('threads', 0) + d('threads', 1)) / 100;
        console.log(`${path.basename(root)} ${s.toFixed(2)} cpu-s (main user ${d('main', 0)} sys ${d('main', 1)}, other threads user ${d('threads', 0)} sys ${d('threads', 1)} ticks)`);
        cpu.get(root)!.push(s);
      } finally {
        await o.stop();
        await removeTempDir(dir);
      }
    }
  }
  for (const [root, xs] of cpu) {
    xs.sort((a, b) => a - b);
    console.log(root, 'cpu-s', xs.map((x) => x.toFixed(2)).join(' '), 'median', xs[Math.floor(xs.length / 2)]!.toFixed(2));
  }
} finally {
  await reg.stop();
}
