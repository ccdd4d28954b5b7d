// The admin commands as users run them: `node bin/ocirelay.js <command>` as a child process,
// against a real ocirelay (with its admin listener) in front of a real Distribution registry.
// Every run is checked for the admin token: it must never appear in any output.
import type { Stats } from '../src/admin-cli/admin-client.ts';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { buildImages, pushImages, type BuiltImages, type PushedImages } from './fixtures/images.ts';
import { freePort, waitFor } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const BIN = fileURLToPath(new URL('../bin/ocirelay.js', import.meta.url));
const TOKEN = 'test-admin-token';
const MANIFEST_ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

let upstream: RegistryFixture;
let built: BuiltImages;
let images: PushedImages;
let proxy: OcirelayProcess;
let adminUrl: string;
let dir: string;
/** A port nothing listens on: the `dead.local` registry's upstream, and an unreachable admin API. */
let deadPort: number;
/** `hang.local`'s upstream: accepts requests and never answers, so a prefetch from it keeps running. */
let hangingUpstream: Awaited<ReturnType<typeof countingServer>>;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-admin-cli-'));
  built = await buildImages({ bigLayerBytes: 1024 * 1024 });
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, built);
  deadPort = await freePort();
  hangingUpstream = await countingServer('hang');
  const adminPort = await freePort();
  proxy = await startOcirelay({
    registries: {
      // tagTTL 1s: the rollback test sees a moved tag on the next pull.
      'docker.io': { url: upstream.url, tagTTL: '1s' },
      'dead.local': { url: `http://127.0.0.1:${deadPort}` },
      'hang.local': { url: hangingUpstream.url },
    },
    admin: { listen: `127.0.0.1:${adminPort}`, token: TOKEN },
  });
  adminUrl = `http://127.0.0.1:${adminPort}`;
  await waitFor(async () => (await fetch(`${adminUrl}/healthz`)).status === 200, { timeoutMs: 10_000, what: `admin listener on ${adminUrl}` });
});

after(async () => {
  await proxy?.cleanup();
  await upstream?.stop();
  await hangingUpstream?.close();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Every output must be free of the token, whichever command and whatever happened. */
function assertNoToken(r: Run, secrets: string[] = []): void {
  for (const s of [TOKEN, ...secrets]) {
    assert.ok(!r.stdout.includes(s), `stdout shows a token: ${r.stdout}`);
    assert.ok(!r.stderr.includes(s), `stderr shows a token: ${r.stderr}`);
  }
}

/**
 * `ocirelay ARGS` with the admin URL and token in the environment (as an operator's shell
 * would have them) unless `env` overrides them.
 */
function cli(args: string[], opts: { env?: Record<string, string>; stdin?: string; timeoutMs?: number; secrets?: string[] } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      cwd: dir,
      env: { ...process.env, OCIRELAY_ADMIN: adminUrl, OCIRELAY_ADMIN_TOKEN: TOKEN, ...opts.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.stdin.end(opts.stdin ?? '');
    child.on('error', reject);
    // 'close', not 'exit': only then has everything the child wrote to its pipes arrived.
    child.on('close', (code) => {
      clearTimeout(timer);
      const r = { code, stdout, stderr };
      assertNoToken(r, opts.secrets);
      resolve(r);
    });
  });
}

/** `cli` that must exit with `code`; the assertion message carries the output. */
async function expectExit(code: number, args: string[], opts: Parameters<typeof cli>[1] = {}): Promise<Run> {
  const r = await cli(args, opts);
  assert.equal(r.code, code, `ocirelay ${args.join(' ')} exited ${r.code}, wanted ${code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

function json<T = Record<string, unknown>>(r: Run): T {
  return JSON.parse(r.stdout) as T;
}

/** Table rows (header first) split on the two-space column gap. */
function tableRows(text: string): string[][] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => l.split(/ {2,}/).map((c) => c.trim()));
}

function short(digest: string): string {
  return digest.slice(0, 'sha256:'.length + 12);
}

/** The digest the upstream serves for repo:tag now. */
async function upstreamDigest(repo: string, tag: string): Promise<string> {
  const res = await fetch(`${upstream.url}/v2/${repo}/manifests/${tag}`, { method: 'HEAD', headers: { accept: MANIFEST_ACCEPT } });
  assert.equal(res.status, 200);
  return res.headers.get('docker-content-digest')!;
}

/** A pull of repo:tag's manifest through the proxy's registry port; returns the digest served. */
async function pullManifest(repo: string, tag: string): Promise<string> {
  const res = await fetch(`${proxy.url}/v2/${repo}/manifests/${tag}`, { headers: { accept: MANIFEST_ACCEPT } });
  await res.arrayBuffer();
  assert.equal(res.status, 200, `pull ${repo}:${tag} through the proxy`);
  return res.headers.get('docker-content-digest')!;
}

interface Job {
  id: string;
  state: string;
  total: number;
  done: number;
  failed: number;
  bytesTotal: number;
  bytesDone: number;
  images: Array<{ image: string; state: string; digest?: string; bytes?: number; error?: string }>;
}

interface Image {
  registry: string;
  repository: string;
  tags: string[];
  digest: string;
  size: number;
  cachedBlobs: number;
  missingBlobs: number;
  pinned: boolean;
  frozenTags: string[];
}

/** A real HTTP server on port 0 that counts requests; `hang` never answers. */
async function countingServer(mode: 'answer' | 'hang'): Promise<{ url: string; count: () => number; close: () => Promise<void> }> {
  let n = 0;
  const server = http.createServer((_req, res) => {
    n++;
    if (mode === 'answer') res.writeHead(500).end('{}');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    count: () => n,
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(() => r()));
    },
  };
}

// ---- usage and connection ---------------------------------------------------------------------

test('--help lists every admin command, the global flags and the exit codes', async () => {
  const r = await expectExit(0, ['--help']);
  for (const cmd of ['serve', 'ls', 'stats', 'pin', 'unpin', 'freeze', 'unfreeze', 'prefetch', 'purge', 'history']) {
    assert.match(r.stdout, new RegExp(`ocirelay ${cmd}\\b`));
  }
  for (const f of ['--admin URL', '--token T', '--token-file F', '--json', '--timeout D', 'OCIRELAY_ADMIN', 'OCIRELAY_ADMIN_TOKEN']) assert.ok(r.stdout.includes(f), f);
  assert.match(r.stdout, /exit codes:\n {2}0 {2}ok\n {2}1 .*failed.*\n {2}2 {2}usage error.*\n {2}3 {2}not found.*\n {2}4 {2}unauthorized or denied.*\n {2}5 {2}admin API unreachable/);
  const pin = await expectExit(0, ['pin', '--help']);
  assert.match(pin.stdout, /^usage: ocirelay pin IMAGE \[--platform OS\/ARCH\]\.\.\. \[--freeze\]/);
  assert.match(pin.stdout, /--freeze {12}also freeze the tag/);
});

test('usage errors exit 2 with the command usage on stderr, before any request is sent', async () => {
  const server = await countingServer('answer');
  try {
    const env = { OCIRELAY_ADMIN: server.url };
    const cases: Array<[string[], RegExp]> = [
      [['lss'], /unknown command "lss"/],
      [['ls', '--bogus'], /Unknown option '--bogus'/],
      [['ls', 'extra'], /unexpected argument "extra"/],
      [['stats', '--registry', 'x'], /Unknown option '--registry'/],
      [['pin'], /missing IMAGE/],
      [['pin', 'a:1', 'b:1'], /one IMAGE only/],
      [['pin', 'a:1', '--platform', 'amd64'], /--platform: "amd64" is not OS\/ARCH/],
      [['unpin'], /missing IMAGE/],
      [['freeze', 'a:1', '--digest', 'sha256:abc'], /--digest: "sha256:abc" is not sha256:<64 hex>/],
      [['freeze', 'a:1', '--digest'], /argument missing/],
      [['unfreeze'], /missing IMAGE/],
      [['prefetch'], /missing IMAGE \(or --file FILE\)/],
      [['prefetch', '--job', 'pf-1', 'a:1'], /--job follows an existing job/],
      [['prefetch', '--file', path.join(os.tmpdir(), 'no-such-ocirelay-list')], /--file: cannot read .*ENOENT/],
      [['purge'], /missing IMAGE or --repository REPO/],
      [['purge', 'a:1', '--repository', 'docker.io/a'], /either IMAGE or --repository, not both/],
      [['history'], /missing IMAGE or --repository REPO/],
      [['ls', '--timeout', 'soon'], /--timeout: "soon" is not a duration/],
      [['ls', '--admin', 'ftp://x'], /--admin: "ftp:\/\/x" is not an http/],
      [['ls', '--admin', 'http://u:p@127.0.0.1:1'], /must not carry credentials/],
      [['ls', '--token', 'abcdefgh', '--token-file', 'f'], /either --token or --token-file/],
      [['ls', '--token-file', path.join(dir, 'missing-token')], /--token-file: cannot read .*ENOENT/],
    ];
    // Independent runs, a few at a time: each is a fresh node process.
    const pending = [...cases];
    const worker = async () => {
      for (let c = pending.shift(); c; c = pending.shift()) {
        const [args, message] = c;
        const r = await expectExit(2, args, { env });
        assert.match(r.stderr, message, `ocirelay ${args.join(' ')}`);
        if (args[0] !== 'lss') assert.match(r.stderr, new RegExp(`usage: ocirelay ${args[0]}`));
        assert.equal(r.stdout, '');
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    const badEnv = await expectExit(2, ['ls'], { env: { OCIRELAY_ADMIN: 'ftp://x' } });
    assert.match(badEnv.stderr, /OCIRELAY_ADMIN: "ftp:\/\/x" is not an http/);
    assert.equal(server.count(), 0, 'a usage error must not reach the admin API');
  } finally {
    await server.close();
  }
});

test('an unreachable admin API exits 5 and says where it looked; a silent one hits --timeout and exits 1', async () => {
  const r = await expectExit(5, ['ls', '--token', 'secret-on-cmdline-1'], { env: { OCIRELAY_ADMIN: `http://127.0.0.1:${deadPort}` }, secrets: ['secret-on-cmdline-1'] });
  assert.match(r.stderr, new RegExp(`admin API unreachable at http://127.0.0.1:${deadPort}: .*ECONNREFUSED`));
  assert.match(r.stderr, /--admin URL or env OCIRELAY_ADMIN/);
  // --admin beats the environment.
  const viaFlag = await expectExit(5, ['stats', '--admin', `127.0.0.1:${deadPort}`]);
  assert.match(viaFlag.stderr, /unreachable/);

  const silent = await countingServer('hang');
  try {
    const started = Date.now();
    const t = await expectExit(1, ['ls', '--timeout', '700ms'], { env: { OCIRELAY_ADMIN: silent.url } });
    assert.match(t.stderr, /no answer within 700ms \(--timeout\)/);
    assert.ok(Date.now() - started < 15_000);
    assert.equal(silent.count(), 1);
  } finally {
    await silent.close();
  }
});

test('a missing or wrong token exits 4 with the OCI error; --token, --token-file and the env work; no token is ever printed', async () => {
  const none = await expectExit(4, ['ls'], { env: { OCIRELAY_ADMIN_TOKEN: '' } });
  assert.match(none.stderr, /^ocirelay ls: UNAUTHORIZED: /m);
  assert.match(none.stderr, /--token-file FILE or env OCIRELAY_ADMIN_TOKEN/);
  const wrong = 'wrong-token-4711';
  for (const args of [['ls', '--token', wrong], ['stats', '--json', '--token', wrong], ['prefetch', 'library/single:1.0', '--token', wrong]]) {
    const r = await expectExit(4, args, { secrets: [wrong] });
    assert.match(r.stderr, /UNAUTHORIZED: /);
    assert.match(r.stderr, /the token was refused/);
  }
  const wrongEnv = await expectExit(4, ['stats'], { env: { OCIRELAY_ADMIN_TOKEN: wrong }, secrets: [wrong] });
  assert.match(wrongEnv.stderr, /UNAUTHORIZED/);

  const tokenFile = path.join(dir, 'admin-token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  await expectExit(0, ['stats', '--token-file', tokenFile], { env: { OCIRELAY_ADMIN_TOKEN: '' } });
  await expectExit(0, ['stats', '--token', TOKEN, '--admin', adminUrl], { env: { OCIRELAY_ADMIN_TOKEN: '', OCIRELAY_ADMIN: `http://127.0.0.1:${deadPort}` } });
  // The flag beats the environment.
  await expectExit(4, ['stats', '--token', wrong], { secrets: [wrong] });
});

// ---- prefetch -------------------------------------------------------------------------------

test('prefetch follows the job with plain progress lines on a pipe, prints a summary table, then ls lists the images', async () => {
  const r = await expectExit(0, ['prefetch', 'docker.io/library/single:1.0', 'docker.io/library/multi:1.0']);
  // Progress: plain lines, no carriage return or escape sequence when stderr is not a terminal.
  assert.match(r.stderr, /^prefetch pf-\S+: 2 images$/m);
  assert.match(r.stderr, /^ {2}done {4}docker\.io\/library\/single:1\.0 {2}sha256:[0-9a-f]{12} {2}\S+ \S*B$/m);
  assert.match(r.stderr, /^ {2}done {4}docker\.io\/library\/multi:1\.0 /m);
  assert.match(r.stderr, /^ {2}2\/2 images {2}\S+ \S*B( \/ \S+ \S*B)? {2}\d+:\d\d$/m);
  assert.ok(!/[\r\x1b]/.test(r.stderr), 'no terminal control characters on a pipe');
  // Summary on stdout: one row per image, then the totals.
  const rows = tableRows(r.stdout);
  assert.deepEqual(rows[0], ['IMAGE', 'STATE', 'DIGEST', 'SIZE', 'ERROR']);
  assert.deepEqual(rows.slice(1, 3).map((row) => row.slice(0, 3)), [
    ['docker.io/library/single:1.0', 'done', short(images.single.manifestDigest)],
    ['docker.io/library/multi:1.0', 'done', short(images.multi.manifestDigest)],
  ]);
  assert.match(r.stdout, /^prefetch pf-\S+ done: 2 of 2 images, \S+ \S*B in \d+:\d\d$/m);

  const ls = await expectExit(0, ['ls']);
  const table = tableRows(ls.stdout);
  assert.deepEqual(table[0], ['IMAGE', 'TAGS', 'DIGEST', 'SIZE', 'BLOBS', 'LAST ACCESS', 'PINNED/FROZEN']);
  const single = table.find((row) => row[0] === 'docker.io/library/single');
  assert.ok(single, ls.stdout);
  // The server counts every content object of the image: the manifest, its config and layers.
  const blobs = 2 + images.single.layers.length;
  assert.deepEqual([single[1], single[2], single[4], single[6]], ['1.0', short(images.single.manifestDigest), `${blobs}/${blobs}`, '-']);
  assert.match(single[3]!, /^\d+(\.\d)? (B|KiB|MiB)$/);
  assert.match(single[5]!, /^(just now|\d+s ago|\d+m ago)$/);
  const multi = table.find((row) => row[0] === 'docker.io/library/multi' && row[1] === '1.0');
  assert.ok(multi, ls.stdout);
  assert.equal(multi[2], short(images.multi.manifestDigest));

  // --json is the API's answer; the filters reach the API.
  const all = json<{ images: Image[] }>(await expectExit(0, ['ls', '--json']));
  const singleJson = all.images.find((i) => i.repository === 'library/single' && i.tags.includes('1.0'));
  assert.ok(singleJson);
  assert.equal(singleJson.registry, 'docker.io');
  assert.equal(singleJson.digest, images.single.manifestDigest);
  assert.equal(singleJson.missingBlobs, 0);
  const filtered = json<{ images: Image[] }>(await expectExit(0, ['ls', '--json', '--registry', 'docker.io', '--repository', 'library/single']));
  assert.ok(filtered.images.length >= 1);
  assert.ok(filtered.images.every((i) => i.registry === 'docker.io' && i.repository === 'library/single'), JSON.stringify(filtered));
  const filteredTable = tableRows((await expectExit(0, ['ls', '--repository', 'library/multi'])).stdout);
  assert.ok(filteredTable.slice(1).every((row) => row[0] === 'docker.io/library/multi'), JSON.stringify(filteredTable));
  const nothing = await expectExit(0, ['ls', '--repository', 'library/never-cached']);
  assert.equal(nothing.stdout, '');
  assert.match(nothing.stderr, /no cached images/);
});

test('prefetch draws a progress bar when stderr is a terminal', async (t) => {
  if (spawnSync('script', ['--version']).status !== 0) {
    t.skip('script(1) (util-linux) is not installed: no pseudo-terminal to test with');
    return;
  }
  // script(1) runs the command on a pseudo-terminal: stderr.isTTY is true, as in a shell.
  const cmd = `${process.execPath} ${BIN} prefetch docker.io/library/big:1.0 docker.io/library/v2s2:1.0`;
  const r = await new Promise<Run>((resolve, reject) => {
    const child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: dir, env: { ...process.env, OCIRELAY_ADMIN: adminUrl, OCIRELAY_ADMIN_TOKEN: TOKEN, COLUMNS: '100' } });
    let out = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (out += s));
    child.on('error', reject);
    child.on('close', (code) => resolve({ code, stdout: out, stderr: '' }));
  });
  assertNoToken(r);
  assert.equal(r.code, 0, r.stdout);
  // The bar: [####....]  NN%  n/2 images  bytes  m:ss, redrawn in place and cleared at the end.
  assert.match(r.stdout, /\[#*\.*\] +\d+% {2}\d\/2 images/);
  assert.match(r.stdout, /\[#{10,}\] +100% {2}2\/2 images/);
  assert.ok(r.stdout.includes('\r\x1b[K'), 'the bar line is cleared with CR + erase-line');
  assert.match(r.stdout, /done {4}docker\.io\/library\/big:1\.0 {2}sha256:/);
  assert.match(r.stdout, /prefetch pf-\S+ done: 2 of 2 images/);
});

test('prefetch of an image the upstream does not have fails the job: exit 1, the error in the summary; the others are cached', async () => {
  const r = await expectExit(1, ['prefetch', 'docker.io/library/no-such-image:1.0', 'docker.io/library/v2s2:1.0']);
  assert.match(r.stderr, /^ {2}failed {2}docker\.io\/library\/no-such-image:1\.0: \S+/m);
  const rows = tableRows(r.stdout);
  const failed = rows.find((row) => row[0] === 'docker.io/library/no-such-image:1.0');
  assert.ok(failed, r.stdout);
  assert.equal(failed[1], 'failed');
  assert.ok((failed[4] ?? '').length > 0, 'the failed image shows its error');
  assert.equal(rows.find((row) => row[0] === 'docker.io/library/v2s2:1.0')?.[1], 'done');
  assert.match(r.stdout, /^prefetch pf-\S+ failed: 1 of 2 images failed \(the others are cached\)/m);

  const j = await expectExit(1, ['prefetch', '--json', 'dead.local/library/app:1.0']);
  const job = json<{ job: Job }>(j).job;
  assert.equal(job.state, 'failed');
  assert.equal(job.failed, 1);
  assert.equal(job.images[0]?.state, 'failed');
  assert.ok(job.images[0]?.error);
});

test('prefetch --no-wait prints the job id; --job follows it; --json prints the job; an unknown job exits 3', async () => {
  const started = await expectExit(0, ['prefetch', '--no-wait', 'docker.io/library/big:1.0', 'docker.io/library/single:1.0', '--platform', 'linux/amd64']);
  const id = /follow it with: ocirelay prefetch --job (\S+)/.exec(started.stdout)?.[1] ?? /^prefetch (pf-\S+) /m.exec(started.stdout)?.[1];
  assert.ok(id, started.stdout);
  // The same set of images and platforms is the same job (the API is idempotent).
  const same = await expectExit(0, ['prefetch', '--no-wait', '--json', 'docker.io/library/single:1.0', 'docker.io/library/big:1.0', '--platform', 'linux/amd64']);
  assert.equal(json<{ job: Job }>(same).job.id, id);
  const followed = await expectExit(0, ['prefetch', '--job', id, '--json']);
  const job = json<{ job: Job }>(followed).job;
  assert.equal(job.id, id);
  assert.equal(job.state, 'done');
  assert.equal(job.total, 2);
  assert.equal(job.done, 2);
  assert.deepEqual(job.images.map((i) => i.state), ['done', 'done']);
  assert.ok(job.bytesDone >= 0);
  // Once done, --job --no-wait shows the summary table.
  const shown = await expectExit(0, ['prefetch', '--job', id, '--no-wait']);
  assert.match(shown.stdout, new RegExp(`^prefetch ${id} done: 2 of 2 images`, 'm'));
  // --no-wait --json is the 202 answer.
  const again = json<{ job: Job }>(await expectExit(0, ['prefetch', '--no-wait', '--json', 'docker.io/library/v2s2:1.0']));
  assert.match(again.job.id, /\S/);
  assert.deepEqual(again.job.images.map((i) => i.image), ['docker.io/library/v2s2:1.0']);

  const unknown = await expectExit(3, ['prefetch', '--job', 'pf-does-not-exist']);
  assert.match(unknown.stderr, /^ocirelay prefetch: [A-Z_]+: /m);
});

test('prefetch --timeout stops following a job that is still running (exit 1); Ctrl-C stops it with 130; the job goes on', async () => {
  const started = Date.now();
  const t = await expectExit(1, ['prefetch', 'hang.local/library/app:1.0', '--timeout', '1500ms']);
  assert.ok(Date.now() - started < 20_000);
  const id = /^prefetch (pf-\S+): 1 image$/m.exec(t.stderr)?.[1];
  assert.ok(id, t.stderr);
  assert.match(t.stderr, new RegExp(`ocirelay prefetch: prefetch ${id} still running after 1500ms \\(--timeout\\); it goes on in the server: ocirelay prefetch --job ${id}`));
  assert.equal(t.stdout, '');
  const still = json<{ job: Job }>(await expectExit(0, ['prefetch', '--job', id, '--no-wait', '--json']));
  assert.equal(still.job.state, 'running');

  // Ctrl-C while following: SIGINT once the first progress line is out.
  const r = await new Promise<Run>((resolve, reject) => {
    const child = spawn(process.execPath, [BIN, 'prefetch', 'hang.local/library/other:1.0'], { cwd: dir, env: { ...process.env, OCIRELAY_ADMIN: adminUrl, OCIRELAY_ADMIN_TOKEN: TOKEN } });
    let stdout = '';
    let stderr = '';
    let sent = false;
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.stdout.setEncoding('utf8').on('data', (x: string) => (stdout += x));
    child.stderr.setEncoding('utf8').on('data', (x: string) => {
      stderr += x;
      if (!sent && /0\/1 images/.test(stderr)) {
        sent = true;
        child.kill('SIGINT');
      }
    });
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
  assertNoToken(r);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /^prefetch (pf-\S+) goes on in the server; follow it with: ocirelay prefetch --job \1$/m);
  assert.match(r.stderr, /^ocirelay prefetch: interrupted$/m);
});

test('prefetch --file reads one reference a line, skipping comments and blank lines; --file - reads stdin', async () => {
  const list = path.join(dir, 'images.txt');
  await writeFile(list, '# images for the nodes\n\ndocker.io/library/single:1.0   # the small one\n  docker.io/library/v2s2:1.0\n');
  const r = await expectExit(0, ['prefetch', '--json', '--file', list]);
  assert.deepEqual(json<{ job: Job }>(r).job.images.map((i) => i.image), ['docker.io/library/single:1.0', 'docker.io/library/v2s2:1.0']);
  const fromStdin = await expectExit(0, ['prefetch', '--json', 'docker.io/library/multi:1.0', '--file', '-'], { stdin: '# one more\ndocker.io/library/big:1.0\n' });
  assert.deepEqual(json<{ job: Job }>(fromStdin).job.images.map((i) => i.image), ['docker.io/library/multi:1.0', 'docker.io/library/big:1.0']);
  const empty = path.join(dir, 'empty.txt');
  await writeFile(empty, '# nothing yet\n\n');
  const none = await expectExit(2, ['prefetch', '--file', empty]);
  assert.match(none.stderr, /lists no image/);
});

// ---- stats ----------------------------------------------------------------------------------

test('stats shows hit ratio, bytes from cache and upstream, egress saved, disk vs budget, rate limits; --json is the API answer', async () => {
  await expectExit(0, ['prefetch', 'docker.io/library/single:1.0']);
  // Cache hits: the manifest by digest and its layer, both cached by the prefetch.
  await pullManifest('library/single', images.single.manifestDigest);
  const layer = await fetch(`${proxy.url}/v2/library/single/blobs/${images.single.layers[0]!.digest}`);
  assert.equal(layer.status, 200);
  await layer.arrayBuffer();

  const r = await expectExit(0, ['stats']);
  const rows = new Map(r.stdout.trimEnd().split('\n').map((l) => {
    const m = /^(.+?) {2,}(.*)$/.exec(l);
    assert.ok(m, `a key/value line: ${l}`);
    return [m[1]!, m[2]!] as const;
  }));
  assert.match(rows.get('requests') ?? '', /^\d+ \(hit \d+, miss \d+, coalesced \d+, stale \d+\)$/);
  assert.match(rows.get('hit ratio') ?? '', /^\d+\.\d %$/);
  for (const k of ['served from cache', 'served from upstream', 'received from upstreams', 'egress saved']) assert.match(rows.get(k) ?? '', /^\d+(\.\d)? (B|KiB|MiB|GiB)$/, k);
  assert.match(rows.get('disk usage') ?? '', /^\S+ \S*B of \S+ \S*B \(\d+\.\d %\)$/);
  assert.match(rows.get('memory') ?? '', /of .* entries$/);
  assert.match(rows.get('evictions') ?? '', /^\d+ unreferenced, \d+ lru$/);
  // The test upstream sends no RateLimit headers.
  assert.equal(rows.get('rate limit'), 'none reported by the upstreams');

  const s = json<Stats>(await expectExit(0, ['stats', '--json']));
  const q = s.requests;
  assert.ok(q.hit >= 2, `hits counted: ${JSON.stringify(q)}`);
  const total = q.hit + q.miss + q.coalesced + q.stale;
  assert.ok(Math.abs(s.hitRatio - (q.hit + q.coalesced + q.stale) / total) < 0.01, `hitRatio ${s.hitRatio} vs ${JSON.stringify(q)}`);
  assert.ok(s.bytesServed.cache > 0);
  assert.equal(typeof s.bytesServed.upstream, 'number');
  assert.ok(s.upstreamBytes > 0, 'the prefetches received bytes from the upstream');
  assert.equal(typeof s.egressSavedBytes, 'number');
  assert.ok(s.disk.bytes > 0 && s.disk.maxBytes > 0 && s.disk.entries > 0);
  assert.equal(s.disk.writable, true);
  assert.equal(typeof s.memory.maxBytes, 'number');
  assert.equal(typeof s.evictions.lru, 'number');
  assert.deepEqual(s.rateLimits, {});
});

// ---- pin, freeze, history, purge ------------------------------------------------------------

test('pin --platform --freeze; ls shows it; unpin --keep-frozen; unfreeze; nothing left to undo exits 3', async () => {
  const amd64 = images.multi.platforms.find((p) => p.platform.architecture === 'amd64')!;
  const arm64 = images.multi.platforms.find((p) => p.platform.architecture === 'arm64')!;
  const r = await expectExit(0, ['pin', 'docker.io/library/multi:1.0', '--platform', 'linux/amd64', '--freeze']);
  assert.match(r.stdout, new RegExp(`^pinned docker\\.io/library/multi:1\\.0 at ${images.multi.manifestDigest} \\(\\d+ manifests and blobs, \\S+ \\S*B\\)$`, 'm'));
  assert.match(r.stdout, new RegExp(`^frozen tag 1\\.0 at ${images.multi.manifestDigest}$`, 'm'));

  const pinned = json<{ pinned: { image: string; digest: string; digests: string[]; bytes: number }; frozen: { tag: string; digest: string } | null }>(
    await expectExit(0, ['pin', '--json', 'docker.io/library/multi:1.0', '--platform', 'linux/amd64']),
  );
  assert.equal(pinned.pinned.digest, images.multi.manifestDigest);
  assert.ok(pinned.pinned.digests.includes(images.multi.manifestDigest));
  assert.ok(pinned.pinned.digests.includes(amd64.manifestDigest), 'the amd64 manifest is pinned');
  assert.ok(!pinned.pinned.digests.includes(arm64.manifestDigest), 'only the platforms asked for are pinned');
  assert.ok(pinned.pinned.bytes > 0);
  assert.equal(pinned.frozen, null);

  const row = () => expectExit(0, ['ls', '--registry', 'docker.io', '--repository', 'library/multi']).then((x) => tableRows(x.stdout).find((c) => c[0] === 'docker.io/library/multi' && c[1] === '1.0'));
  assert.equal((await row())?.[6], 'pinned, frozen 1.0');

  const unpinned = await expectExit(0, ['unpin', 'docker.io/library/multi:1.0', '--keep-frozen']);
  assert.match(unpinned.stdout, /^unpinned docker\.io\/library\/multi:1\.0 \(\d+ pins? removed; tag freeze kept\)$/m);
  assert.equal((await row())?.[6], 'frozen 1.0');

  const unfrozen = json<{ unfrozen: boolean }>(await expectExit(0, ['unfreeze', '--json', 'docker.io/library/multi:1.0']));
  assert.equal(unfrozen.unfrozen, true);
  assert.equal((await row())?.[6], '-');

  const again = await expectExit(3, ['unfreeze', 'docker.io/library/multi:1.0']);
  assert.match(again.stderr, /^ocirelay unfreeze: NOT_FOUND: /m);
  const nothingPinned = await expectExit(3, ['unpin', 'docker.io/library/multi:1.0']);
  assert.match(nothingPinned.stderr, /^ocirelay unpin: NOT_FOUND: /m);

  // A bare reference means docker.io, with library/ for official images.
  const bare = await expectExit(0, ['pin', 'single:1.0']);
  assert.match(bare.stdout, new RegExp(`^pinned \\S*single:1\\.0 at ${images.single.manifestDigest} `, 'm'));
  const unpinBare = json<{ unpinned: number; unfrozen: boolean }>(await expectExit(0, ['unpin', '--json', 'docker.io/library/single:1.0']));
  assert.ok(unpinBare.unpinned >= 1);
});

test('freeze --digest rolls a moved tag back to an earlier digest; history lists upstream, freeze and unfreeze', async () => {
  // library/rollback:1.0 is first the single image, then the tag moves to the v2s2 image.
  const push = (src: string) => skopeoCopy(src, `docker://${upstream.host}/library/rollback:1.0`, { destTlsVerify: false, timeoutMs: 120_000 });
  await push(built.single.srcRef);
  const first = await upstreamDigest('library/rollback', '1.0');
  assert.equal(await pullManifest('library/rollback', '1.0'), first);
  await push(built.v2s2.srcRef);
  const second = await upstreamDigest('library/rollback', '1.0');
  assert.notEqual(second, first);
  await new Promise((r) => setTimeout(r, 1500)); // past tagTTL: the next pull revalidates
  assert.equal(await pullManifest('library/rollback', '1.0'), second);

  const table = await expectExit(0, ['history', 'docker.io/library/rollback:1.0']);
  const rows = tableRows(table.stdout);
  assert.deepEqual(rows[0], ['TIME', 'TAG', 'OLD', 'NEW', 'SOURCE']);
  const moved = rows.find((row) => row[2] === short(first) && row[3] === short(second));
  assert.ok(moved, table.stdout);
  assert.equal(moved[1], '1.0');
  assert.equal(moved[4], 'upstream');
  assert.match(moved[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

  // Rollback: freeze the tag to the earlier digest; the proxy serves it whatever the upstream says.
  const frozen = await expectExit(0, ['freeze', 'docker.io/library/rollback:1.0', '--digest', first]);
  assert.equal(frozen.stdout, `frozen docker.io/library/rollback:1.0 at ${first}\n`);
  await new Promise((r) => setTimeout(r, 1100));
  assert.equal(await pullManifest('library/rollback', '1.0'), first);

  const hist = json<{ history: Array<{ time: string; registry: string; repository: string; tag: string; oldDigest: string | null; newDigest: string; source: string }> }>(
    await expectExit(0, ['history', '--json', '--repository', 'docker.io/library/rollback']),
  );
  const last = hist.history.at(-1)!;
  assert.deepEqual({ ...last, time: undefined }, { time: undefined, registry: 'docker.io', repository: 'library/rollback', tag: '1.0', oldDigest: second, newDigest: first, source: 'freeze' });
  assert.ok(hist.history.some((h) => h.source === 'upstream' && h.oldDigest === first && h.newDigest === second));
  const times = hist.history.map((h) => Date.parse(h.time));
  assert.deepEqual(times, [...times].sort((a, b) => a - b), 'oldest first');

  const fj = json<{ frozen: { registry: string; repository: string; tag: string; digest: string } }>(await expectExit(0, ['freeze', '--json', 'docker.io/library/rollback:1.0']));
  assert.deepEqual(fj.frozen, { registry: 'docker.io', repository: 'library/rollback', tag: '1.0', digest: first });

  assert.equal((await expectExit(0, ['unfreeze', 'docker.io/library/rollback:1.0'])).stdout, 'unfrozen docker.io/library/rollback:1.0\n');
  await new Promise((r) => setTimeout(r, 1100));
  assert.equal(await pullManifest('library/rollback', '1.0'), second, 'unfrozen: the upstream digest again');
  const after = tableRows((await expectExit(0, ['history', '--repository', 'docker.io/library/rollback'])).stdout);
  assert.ok(after.some((row) => row[4] === 'unfreeze'), JSON.stringify(after));

  const none = await expectExit(0, ['history', 'docker.io/library/rollback:never-tagged']);
  assert.equal(none.stdout, '');
  assert.match(none.stderr, /no recorded tag changes/);
});

test('purge refuses a pinned image without --force (exit 4), removes it with --force; purge --repository keeps pinned images unless --force', async () => {
  await expectExit(0, ['prefetch', 'docker.io/library/single:1.0']); // a bystander repository
  await expectExit(0, ['pin', 'docker.io/library/big:1.0']);
  // docs/admin-api.md says pinned content is kept (200); the server refuses with 403 DENIED,
  // which the CLI maps like every 403: exit 4, the OCI code and message on stderr.
  const refused = await expectExit(4, ['purge', 'docker.io/library/big:1.0']);
  assert.match(refused.stderr, /^ocirelay purge: DENIED: .*pinned/m);
  assert.equal(refused.stdout, '');
  const stillThere = json<{ images: Image[] }>(await expectExit(0, ['ls', '--json', '--repository', 'library/big']));
  const big = stillThere.images.find((i) => i.digest === images.big.manifestDigest);
  assert.ok(big, 'pinned content survives a purge without --force');
  assert.equal(big.pinned, true);
  assert.deepEqual(big.tags, ['1.0']);

  const forced = await expectExit(0, ['purge', 'docker.io/library/big:1.0', '--force']);
  const m = /^purged docker\.io\/library\/big:1\.0: (\d+) manifests, (\d+) blobs, (\S+ \S*B) freed$/m.exec(forced.stdout);
  assert.ok(m, forced.stdout);
  assert.ok(Number(m[1]) >= 1 && Number(m[2]) >= 1, forced.stdout);
  assert.match(m[3]!, /MiB$/, 'the 1 MiB layer was freed');
  const gone = await expectExit(0, ['ls', '--repository', 'library/big']);
  assert.match(gone.stderr, /no cached images/);
  const again = await expectExit(3, ['purge', 'docker.io/library/big:1.0']);
  assert.match(again.stderr, /^ocirelay purge: MANIFEST_UNKNOWN: /m);

  // A repository: its pinned image stays without --force, goes with it.
  await expectExit(0, ['pin', 'docker.io/library/v2s2:1.0']);
  const soft = await expectExit(0, ['purge', '--repository', 'docker.io/library/v2s2']);
  assert.match(soft.stdout, /^purged docker\.io\/library\/v2s2: 0 manifests, 0 blobs, 0 B freed \(pinned content is kept without --force\)$/m);
  assert.ok(json<{ images: Image[] }>(await expectExit(0, ['ls', '--json', '--repository', 'library/v2s2'])).images.some((i) => i.pinned));
  const repo = json<{ removedManifests: number; removedBlobs: number; freedBytes: number }>(
    await expectExit(0, ['purge', '--json', '--force', '--repository', 'docker.io/library/v2s2']),
  );
  // (Its layers may stay: library/rollback, cached by another test, references the same blobs.)
  assert.ok(repo.removedManifests >= 1 && repo.freedBytes > 0, JSON.stringify(repo));
  const lsAll = json<{ images: Image[] }>(await expectExit(0, ['ls', '--json']));
  assert.ok(!lsAll.images.some((i) => i.repository === 'library/v2s2'), 'the purged repository is gone');
  assert.ok(lsAll.images.some((i) => i.repository === 'library/single'), 'other repositories stay');
  const unknownRepo = await expectExit(3, ['purge', '--repository', 'docker.io/library/v2s2']);
  assert.match(unknownRepo.stderr, /^ocirelay purge: NAME_UNKNOWN: /m);
});

test('a failed operation exits 1 with the OCI code and message; an invalid reference the API refuses exits 2', async () => {
  // dead.local's upstream does not listen: pinning must fetch from it and cannot.
  const down = await expectExit(1, ['pin', 'dead.local/library/app:1.0']);
  assert.match(down.stderr, /^ocirelay pin: [A-Z_]+: \S/m);
  assert.equal(down.stdout, '');
  const invalid = await expectExit(2, ['pin', 'docker.io/Library/UPPER:1.0']);
  assert.match(invalid.stderr, /^ocirelay pin: (NAME_INVALID|BAD_REQUEST|MANIFEST_INVALID): /m);
  // Freezing needs a tag: a digest reference is refused by the API.
  const noTag = await expectExit(2, ['freeze', `docker.io/library/single@${images.single.manifestDigest}`]);
  assert.match(noTag.stderr, /^ocirelay freeze: [A-Z_]+: .*tag/m);
  // A registry that is not configured is unknown (README: refused with NAME_UNKNOWN).
  const unknownRegistry = await expectExit(3, ['history', 'not-configured.example/app:1.0']);
  assert.match(unknownRegistry.stderr, /^ocirelay history: NAME_UNKNOWN: /m);
});
