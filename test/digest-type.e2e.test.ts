// Item 4 of issue 9: every digest from upstream content is validated before it names a file.
// The compile-time half: the storage layer takes the branded Digest, so a raw string is a type
// error (the @ts-expect-error lines fail `tsc --noEmit`, which the test command runs, if that
// ever stops being true). The run-time half: a manifest whose descriptors carry traversal
// "digests" is pinned through a running ocirelay and nothing is written outside its data dir.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { digestFromHex, digestHex, digestOf, parseDigest } from '../src/oci/digest.ts';
import { CacheLayout } from '../src/storage/layout.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

test('parseDigest accepts sha256:<64 lower hex> only', () => {
  const good = `sha256:${'a'.repeat(64)}`;
  assert.equal(parseDigest(good), good);
  for (const bad of ['sha256:../../../x', `sha256:${'A'.repeat(64)}`, `sha256:${'a'.repeat(63)}`, `sha512:${'a'.repeat(128)}`, `sha256:${'a'.repeat(64)}/..`, '', `sha256:${'a'.repeat(64)}\n`]) {
    assert.equal(parseDigest(bad), undefined, JSON.stringify(bad));
  }
  assert.equal(digestFromHex('../x'), undefined);
  const d = digestOf(Buffer.from('hello'));
  assert.equal(digestHex(d), createHash('sha256').update('hello').digest('hex'));
});

test('the storage layer refuses a raw string at compile time', () => {
  const layout = new CacheLayout('/nonexistent');
  const raw: string = 'sha256:../../../etc/x';
  // @ts-expect-error a string is not a Digest: only the parser makes one
  assert.throws(() => assertInside(layout.blobPath(raw), layout.root));
  const d = parseDigest(`sha256:${'b'.repeat(64)}`);
  assert.ok(d !== undefined);
  assertInside(layout.blobPath(d), layout.root);
  assertInside(layout.tempPath(d), layout.root);
});

function assertInside(p: string, root: string): void {
  const rel = path.relative(root, p);
  if (rel.startsWith('..') || path.isAbsolute(rel)) throw new Error(`${p} is outside ${root}`);
}

// An upstream that serves one manifest whose layer descriptors hold traversal digests.
let upstream: http.Server;
let proxy: OcirelayProcess;
let sandbox: string;
const evilDigests = ['sha256:../../../../escaped-by-digest', `sha256:${'c'.repeat(64)}/../../../../escaped2`];

before(async () => {
  sandbox = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-digest-'));
  const config = Buffer.from('{}');
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: digestOf(config), size: config.length },
      layers: evilDigests.map((digest) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: 4 })),
    }),
  );
  const manifestDigest = digestOf(manifest);
  upstream = http.createServer((req, res) => {
    const url = req.url ?? '';
    if (url === '/v2/' || url === '/v2') return void res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    if (/\/manifests\/(1|sha256:[a-f0-9]{64})$/.test(url)) {
      res.writeHead(200, { 'content-type': 'application/vnd.oci.image.manifest.v1+json', 'docker-content-digest': manifestDigest, 'content-length': manifest.length });
      return void res.end(req.method === 'HEAD' ? undefined : manifest);
    }
    if (url.endsWith(`/blobs/${digestOf(config)}`)) {
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': config.length });
      return void res.end(req.method === 'HEAD' ? undefined : config);
    }
    // Whatever the proxy would ask for a traversal digest: answer bytes, so only validation stops it.
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': 4 });
    res.end(req.method === 'HEAD' ? undefined : 'evil');
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  await mkdir(path.join(sandbox, 'a', 'b', 'c'), { recursive: true });
  proxy = await startOcirelay(
    { dataDir: path.join(sandbox, 'a', 'b', 'c', 'data'), registries: { 'evil.test': { url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` } } },
    { dir: path.join(sandbox, 'a', 'b', 'c') },
  );
});

after(async () => {
  await proxy?.cleanup();
  await new Promise<void>((r) => (upstream ? upstream.close(() => r()) : r()));
  if (sandbox) await rm(sandbox, { recursive: true, force: true });
});

test('pin and prefetch of a manifest with traversal digests: an OCI error, no file outside the data dir, process alive', async () => {
  const before = await listTree(sandbox);
  const pin = await fetch(`${proxy.adminUrl}/api/v1/pin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'evil.test/team/app:1' }) });
  const body = (await pin.json()) as { errors?: Array<{ code: string }> };
  assert.equal(pin.status, 502, JSON.stringify(body));
  assert.equal(body.errors?.[0]?.code, 'MANIFEST_INVALID');
  const pf = await fetch(`${proxy.adminUrl}/api/v1/prefetch`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ images: ['evil.test/team/app:1'] }) });
  assert.ok(pf.status < 500, `prefetch answered ${pf.status}`);
  // Give a background prefetch time to try (bounded), then look.
  await new Promise((r) => setTimeout(r, 1500));
  const afterTree = await listTree(sandbox);
  const dataDir = path.join(sandbox, 'a', 'b', 'c', 'data');
  const outside = afterTree.filter((f) => !before.includes(f) && !f.startsWith(dataDir + path.sep) && !f.startsWith(path.join(sandbox, 'a', 'b', 'c') + path.sep));
  assert.deepEqual(outside, []);
  for (const name of ['escaped-by-digest', 'escaped2']) {
    assert.equal(afterTree.some((f) => f.includes(name)), false, `${name} was written`);
    assert.equal(existsSync(path.join(os.tmpdir(), name)), false);
  }
  const ready = await fetch(`${proxy.url}/readyz`);
  assert.equal(ready.status, 200);
});

async function listTree(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(root, { withFileTypes: true, recursive: true })) out.push(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name));
  return out;
}
