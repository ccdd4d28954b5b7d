// The `ocirelay` command as users run it: bin/ocirelay.js as a child process.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePort } from './fixtures/ports.ts';

const BIN = fileURLToPath(new URL('../bin/ocirelay.js', import.meta.url));
let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-cli-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

function run(args: string[], env: Record<string, string> = {}, opts: { untilLog?: string } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], { cwd: dir, env: { ...process.env, OCIRELAY_CONFIG: '', OCIRELAY_LISTEN: '', OCIRELAY_DATA_DIR: '', ...env } });
    let stdout = '';
    let stderr = '';
    let signalled = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
    child.stdout.setEncoding('utf8').on('data', (s: string) => {
      stdout += s;
      if (opts.untilLog && !signalled && stdout.includes(opts.untilLog)) {
        signalled = true;
        child.kill('SIGTERM');
      }
    });
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('error', reject);
    // 'close', not 'exit': only then has everything the child wrote to its pipes arrived.
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

test('an invalid config stops start-up with exit code 2 and a message naming the key', async () => {
  const file = path.join(dir, 'bad.yaml');
  await writeFile(file, 'cache:\n  maxBytes: lots\n');
  const r = await run(['serve', '--config', file]);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /cache\.maxBytes: "lots" is not a size/);
  const viaEnv = await run(['serve'], { OCIRELAY_CONFIG: file });
  assert.equal(viaEnv.code, 2);
  assert.match(viaEnv.stderr, /cache\.maxBytes/);
  const badListen = await run(['serve', '--listen', 'nope']);
  assert.equal(badListen.code, 2);
  assert.match(badListen.stderr, /listen: "nope" is not HOST:PORT/);
  const badFlag = await run(['serve', '--bogus']);
  assert.equal(badFlag.code, 2);
  assert.match(badFlag.stderr, /usage: ocirelay serve/);
});

test('flags beat env beat the config file; SIGTERM exits 0', async () => {
  const file = path.join(dir, 'ok.yaml');
  const [filePort, envPort, flagPort] = [await freePort(), await freePort(), await freePort()];
  await writeFile(file, `listen: 127.0.0.1:${filePort}\ndataDir: from-file\n`);
  const r = await run(['serve', '--config', file, '--listen', `127.0.0.1:${flagPort}`], { OCIRELAY_LISTEN: `127.0.0.1:${envPort}`, OCIRELAY_DATA_DIR: path.join(dir, 'from-env') }, { untilLog: 'ocirelay ready' });
  assert.equal(r.code, 0, r.stderr);
  const ready = r.stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>).find((l) => l.msg === 'ocirelay ready');
  assert.ok(ready);
  assert.equal(ready.listen, `127.0.0.1:${flagPort}`);
  assert.equal(ready.dataDir, path.join(dir, 'from-env'));
});

test('--help', async () => {
  const r = await run(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /usage: ocirelay serve/);
});
