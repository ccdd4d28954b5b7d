// The admin API without a token refuses clients that are not on loopback. The client here is a
// real one on another host: a network namespace of our own, joined to this one by a veth pair.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { freePort } from './fixtures/ports.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const BIN = fileURLToPath(new URL('../bin/ocirelay.js', import.meta.url));
const id = randomBytes(3).toString('hex');
const ns = `ocr-${id}`;
const hostIf = `ocrh${id}`;
const nsIf = `ocrn${id}`;
// A /30 of our own, inside our own namespace pair; nothing else is ever addressed.
const octet = 16 + (parseInt(id, 16) % 200);
const hostAddr = `10.231.${octet}.1`;
const nsAddr = `10.231.${octet}.2`;
let proxy: OcirelayProcess | undefined;
let tokenProxy: OcirelayProcess | undefined;

const ip = (...args: string[]) => execFileSync('ip', args, { stdio: 'pipe' });

before(async () => {
  // Needs root and iproute2 (both present wherever the suite runs); fails loudly otherwise.
  ip('netns', 'add', ns);
  ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf);
  ip('link', 'set', nsIf, 'netns', ns);
  ip('addr', 'add', `${hostAddr}/30`, 'dev', hostIf);
  ip('link', 'set', hostIf, 'up');
  ip('netns', 'exec', ns, 'ip', 'addr', 'add', `${nsAddr}/30`, 'dev', nsIf);
  ip('netns', 'exec', ns, 'ip', 'link', 'set', nsIf, 'up');
  ip('netns', 'exec', ns, 'ip', 'link', 'set', 'lo', 'up');
});

after(async () => {
  await proxy?.cleanup();
  await tokenProxy?.cleanup();
  spawnSync('ip', ['link', 'del', hostIf]);
  spawnSync('ip', ['netns', 'del', ns]);
});

function cliFromNamespace(args: string[]): { status: number | null; stderr: string; stdout: string } {
  const r = spawnSync('ip', ['netns', 'exec', ns, process.execPath, BIN, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, OCIRELAY_ADMIN_TOKEN: '' },
  });
  return { status: r.status, stderr: r.stderr, stdout: r.stdout };
}

test('no admin token: a client from another host is refused (403 DENIED, CLI exit 4); loopback is served', async () => {
  const port = await freePort();
  proxy = await startOcirelay({ registries: { 'docker.io': { url: 'http://127.0.0.1:9' } }, admin: { listen: `0.0.0.0:${port}` } });
  const remote = cliFromNamespace(['ls', '--admin', `http://${hostAddr}:${port}`]);
  assert.equal(remote.status, 4, remote.stderr);
  assert.match(remote.stderr, /DENIED: no admin token configured/);
  const local = await fetch(`http://127.0.0.1:${port}/api/v1/images`);
  assert.equal(local.status, 200);
  await local.arrayBuffer();
});

test('with a token, a remote client holding it is served', async () => {
  const port = await freePort();
  tokenProxy = await startOcirelay({ registries: { 'docker.io': { url: 'http://127.0.0.1:9' } }, admin: { listen: `0.0.0.0:${port}`, token: 'remote-admin-token' } });
  const denied = cliFromNamespace(['ls', '--admin', `http://${hostAddr}:${port}`]);
  assert.equal(denied.status, 4);
  const ok = cliFromNamespace(['ls', '--admin', `http://${hostAddr}:${port}`, '--token', 'remote-admin-token', '--json']);
  assert.equal(ok.status, 0, ok.stderr);
  assert.deepEqual(JSON.parse(ok.stdout), { images: [] });
  assert.ok(!ok.stdout.includes('remote-admin-token') && !ok.stderr.includes('remote-admin-token'));
});
