import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ConfigError, loadConfig, parseDuration, parseSize } from '../src/config.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-config-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test('zero config: listen 0.0.0.0:5000, ./data, the built-in upstreams, docker.io default', () => {
  const c = loadConfig({ env: {}, cwd: dir });
  assert.deepEqual(c.listen, { host: '0.0.0.0', port: 5000 });
  assert.equal(c.dataDir, path.join(dir, 'data'));
  assert.equal(c.defaultRegistry, 'docker.io');
  assert.deepEqual([...c.registries.keys()].sort(), ['docker.io', 'gcr.io', 'ghcr.io', 'mcr.microsoft.com', 'public.ecr.aws', 'quay.io', 'registry.k8s.io']);
  assert.equal(c.registries.get('docker.io')?.url, 'https://registry-1.docker.io');
  assert.equal(c.registries.get('docker.io')?.tagTtlMs, 300_000);
  assert.ok(Object.isFrozen(c));
});

test('YAML file, env and flags: flags beat env beat file; a configured registry replaces the built-in', async () => {
  const file = path.join(dir, 'c.yaml');
  await writeFile(path.join(dir, 'pw'), 'from-file\n');
  await writeFile(
    file,
    `listen: 127.0.0.1:6000
dataDir: /var/cache/x
registries:
  docker.io: {url: "http://127.0.0.1:5999/", username: u, passwordFile: pw, tagTTL: 30s}
  private.example:8443: {url: https://reg.example:8443}
cache: {maxBytes: 50GiB, memoryBytes: 64MiB}
`,
  );
  const fromFile = loadConfig({ file, env: {}, cwd: dir });
  assert.deepEqual(fromFile.listen, { host: '127.0.0.1', port: 6000 });
  assert.equal(fromFile.registries.get('docker.io')?.url, 'http://127.0.0.1:5999');
  assert.equal(fromFile.registries.get('docker.io')?.password, 'from-file');
  assert.equal(fromFile.registries.get('docker.io')?.tagTtlMs, 30_000);
  assert.equal(fromFile.registries.get('private.example:8443')?.url, 'https://reg.example:8443');
  assert.equal(fromFile.cache.maxBytes, 50 * 2 ** 30);
  assert.equal(fromFile.cache.memoryBytes, 64 * 2 ** 20);

  const env = { OCIRELAY_CONFIG: file, OCIRELAY_LISTEN: '127.0.0.1:7000', OCIRELAY_DATA_DIR: '/env/data' };
  const fromEnv = loadConfig({ env, cwd: dir });
  assert.equal(fromEnv.listen.port, 7000);
  assert.equal(fromEnv.dataDir, '/env/data');
  const fromFlags = loadConfig({ env, cwd: dir, flags: { listen: ':8000', dataDir: 'rel' } });
  assert.deepEqual(fromFlags.listen, { host: '0.0.0.0', port: 8000 });
  assert.equal(fromFlags.dataDir, path.join(dir, 'rel'));
});

test('invalid config stops start-up with a message naming the key', async () => {
  const cases: Array<[string, RegExp]> = [
    ['cache: {maxBytes: lots}', /cache\.maxBytes: "lots" is not a size/],
    ['registries: {ghcr.io: {url: "ftp://x"}}', /registries\.ghcr\.io\.url: must be an http/],
    ['registries: {ghcr.io: {url: "https://u:p@x"}}', /registries\.ghcr\.io\.url/],
    ['registries: {"Bad_Name": {url: "https://x"}}', /registries\.Bad_Name: registry keys/],
    ['registries: {x.io: {url: "https://x", tagTTL: "soon"}}', /registries\.x\.io\.tagTTL: "soon" is not a duration/],
    ['listen: nowhere', /listen: "nowhere" is not HOST:PORT/],
    ['defaultRegistry: nope.io', /defaultRegistry: "nope.io" is not a configured registry/],
    ['bogus: 1', /bogus|Unrecognized key/],
    ['registries: {x.io: {url: "https://x", password: p}}', /registries\.x\.io: password given without username/],
    ['[1, 2', /not valid YAML/],
  ];
  for (const [yaml, re] of cases) {
    const file = path.join(dir, 'bad.yaml');
    await writeFile(file, yaml);
    assert.throws(() => loadConfig({ file, env: {}, cwd: dir }), (e: unknown) => e instanceof ConfigError && re.test(e.message), yaml);
  }
  assert.throws(() => loadConfig({ file: path.join(dir, 'missing.yaml'), env: {} }), /cannot read config file .*ENOENT/);
});

test('sizes and durations', () => {
  assert.equal(parseSize('50GiB'), 50 * 2 ** 30);
  assert.equal(parseSize('512MB'), 512e6);
  assert.equal(parseSize(1024), 1024);
  assert.throws(() => parseSize('-1'));
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('1h30m'), 5_400_000);
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration(2), 2000);
  assert.throws(() => parseDuration('5 minutes'));
});

test('cache.memoryBytes defaults to min(256 MiB, maxBytes / 4): a small maxBytes alone starts', () => {
  const small = loadConfig({ env: {}, cwd: dir, values: { cache: { maxBytes: '250MiB' } } });
  assert.equal(small.cache.maxBytes, 250 * 2 ** 20);
  assert.equal(small.cache.memoryBytes, Math.floor((250 * 2 ** 20) / 4));
  const big = loadConfig({ env: {}, cwd: dir, values: { cache: { maxBytes: '50GiB' } } });
  assert.equal(big.cache.memoryBytes, 256 * 2 ** 20);
  // Set explicitly above maxBytes, it is still an error the user can fix.
  assert.throws(() => loadConfig({ env: {}, cwd: dir, values: { cache: { maxBytes: '1MiB', memoryBytes: '2MiB' } } }), /cache\.memoryBytes/);
});

test('server limits: production defaults, overridable, zero or unknown keys refused', () => {
  const d = loadConfig({ env: {}, cwd: dir }).server;
  assert.deepEqual(d, {
    headersTimeoutMs: 30_000,
    keepAliveTimeoutMs: 65_000,
    maxHeaderSize: 16 * 1024,
    maxConnections: 4096,
    sendStallTimeoutMs: 60_000,
    adminBodyLimit: 1024 * 1024,
  });
  const s = loadConfig({
    env: {},
    cwd: dir,
    values: { server: { headersTimeout: '3s', keepAliveTimeout: '5s', maxHeaderSize: '8KiB', maxConnections: 10, sendStallTimeout: '2s', adminBodyLimit: '4KiB' } },
  }).server;
  assert.deepEqual(s, { headersTimeoutMs: 3000, keepAliveTimeoutMs: 5000, maxHeaderSize: 8192, maxConnections: 10, sendStallTimeoutMs: 2000, adminBodyLimit: 4096 });
  assert.throws(() => loadConfig({ env: {}, cwd: dir, values: { server: { headersTimeout: 0 } } }), /server\.headersTimeout: must be above zero/);
  assert.throws(() => loadConfig({ env: {}, cwd: dir, values: { server: { maxConnections: 0 } } }), ConfigError);
  assert.throws(() => loadConfig({ env: {}, cwd: dir, values: { server: { requestTimeout: '1s' } as never } }), /server/);
});
