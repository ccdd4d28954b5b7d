// Protocol details against a running ocirelay: invalid manifest references are unknown
// manifests (no upstream request), an unusable Range is ignored, response types are ours and
// never an upstream's arbitrary Content-Type, and the admin API authenticates before routing.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const TOKEN = 'admin-token-for-protocol';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const EVIL_TYPE = 'application/evil+html';
const LAYER = 1000;

let upstream: RegistryFixture;
let proxy: OcirelayProcess;
let image: RandomImage;
let layerBytes: Buffer;
let odd: http.Server;
const oddPaths: string[] = [];

// An upstream that labels everything with a type of its own choosing.
const declared = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${'a'.repeat(64)}`, size: 2 }, layers: [] }));
const undeclaredIndex = Buffer.from(JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: OCI_MANIFEST, digest: `sha256:${'b'.repeat(64)}`, size: 10 }] }));
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  image = await pushRandomImage(upstream.url, 'proto/img', 'v1', [LAYER]);
  const r = await fetch(`${upstream.url}/v2/proto/img/blobs/${image.layers[0]!.digest}`);
  layerBytes = Buffer.from(await r.arrayBuffer());
  odd = http.createServer((req, res) => {
    oddPaths.push(req.url ?? '');
    const send = (body: Buffer, type: string) => {
      res.writeHead(200, { 'content-type': type, 'content-length': body.length, 'docker-content-digest': sha(body) });
      res.end(req.method === 'HEAD' ? undefined : body);
    };
    if (req.url === '/v2/') return send(Buffer.from('{}'), 'text/html');
    if (req.url === '/v2/odd/app/manifests/declared') return send(declared, EVIL_TYPE);
    if (req.url === '/v2/odd/app/manifests/undeclared') return send(undeclaredIndex, EVIL_TYPE);
    if (req.url?.startsWith('/v2/odd/app/tags/list')) return send(Buffer.from(JSON.stringify({ name: 'odd/app', tags: ['declared', 'undeclared'] })), 'text/html');
    if (req.url?.startsWith('/v2/odd/app/referrers/')) return send(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: [] })), 'text/html');
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
  });
  await new Promise<void>((r) => odd.listen(0, '127.0.0.1', r));
  proxy = await startOcirelay({
    registries: { 'docker.io': { url: upstream.url }, 'odd.test': { url: `http://127.0.0.1:${(odd.address() as AddressInfo).port}` } },
    admin: { token: TOKEN },
    log: { level: 'info' },
  });
});

after(async () => {
  await proxy?.cleanup();
  await upstream?.stop();
  odd?.close();
});

describe('manifest references', () => {
  test('a reference that is neither a tag nor a digest is 404 MANIFEST_UNKNOWN, for GET and HEAD, and no upstream is asked', async () => {
    const before = (await upstream.accessLog()).length;
    for (const ref of ['.INVALID_MANIFEST_NAME', '-bad', 'sha256:1234', `md5:${'d'.repeat(32)}`, 'a'.repeat(129)]) {
      const get = await fetch(`${proxy.url}/v2/proto/img/manifests/${ref}`);
      assert.equal(get.status, 404, ref);
      assert.equal(((await get.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'MANIFEST_UNKNOWN', ref);
      const head = await fetch(`${proxy.url}/v2/proto/img/manifests/${ref}`, { method: 'HEAD' });
      assert.equal(head.status, 404, `HEAD ${ref}`);
    }
    await proxy.flushLogs();
    assert.equal((await upstream.accessLog()).length, before, 'the upstream saw no request');
    // Blobs keep their own error: a bad digest there is DIGEST_INVALID.
    const blob = await fetch(`${proxy.url}/v2/proto/img/blobs/sha256:1234`);
    assert.equal(blob.status, 400);
    assert.equal(((await blob.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'DIGEST_INVALID');
  });
});

describe('Range', () => {
  const url = () => `${proxy.url}/v2/proto/img/blobs/${image.layers[0]!.digest}`;

  test('an invalid Range is ignored: 200 with the whole body, cold and warm', async () => {
    // The first request is a cold fill, the later ones come from the cache.
    for (const range of ['bytes=5-3', 'bytes=5-3', 'garbage', 'items=0-1', 'bytes=0-1,4-5', 'bytes=-', 'bytes=x-y']) {
      const res = await fetch(url(), { headers: { range } });
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(res.status, 200, range);
      assert.equal(res.headers.get('content-range'), null, range);
      assert.equal(body.length, LAYER, range);
      assert.ok(body.equals(layerBytes), range);
    }
  });

  test('a valid range is served (206), an unsatisfiable one stays 416', async () => {
    const part = await fetch(url(), { headers: { range: 'bytes=5-9' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 5-9/${LAYER}`);
    assert.ok(Buffer.from(await part.arrayBuffer()).equals(layerBytes.subarray(5, 10)));
    const past = await fetch(url(), { headers: { range: `bytes=${LAYER}-` } });
    assert.equal(past.status, 416);
    assert.equal(past.headers.get('content-range'), `bytes */${LAYER}`);
    await past.arrayBuffer();
  });
});

describe('response types are ours', () => {
  test("manifests are served with their parsed media type, never the upstream's Content-Type", async () => {
    const a = await fetch(`${proxy.url}/v2/odd.test/odd/app/manifests/declared`, { headers: { accept: '*/*' } });
    assert.equal(a.status, 200);
    assert.equal(a.headers.get('content-type'), OCI_MANIFEST);
    assert.ok(Buffer.from(await a.arrayBuffer()).equals(declared));
    const b = await fetch(`${proxy.url}/v2/odd.test/odd/app/manifests/undeclared`, { headers: { accept: '*/*' } });
    assert.equal(b.status, 200);
    assert.equal(b.headers.get('content-type'), OCI_INDEX, 'no mediaType field: judged by its shape');
    await b.arrayBuffer();
    // From the cache, the same.
    const again = await fetch(`${proxy.url}/v2/odd.test/odd/app/manifests/${sha(declared)}`, { method: 'HEAD', headers: { accept: '*/*' } });
    assert.equal(again.status, 200);
    assert.equal(again.headers.get('content-type'), OCI_MANIFEST);
  });

  test('tag lists are application/json and referrers an OCI index, whatever the upstream says', async () => {
    const tags = await fetch(`${proxy.url}/v2/odd.test/odd/app/tags/list`);
    assert.equal(tags.status, 200);
    assert.equal(tags.headers.get('content-type'), 'application/json');
    assert.deepEqual(await tags.json(), { name: 'odd/app', tags: ['declared', 'undeclared'] });
    const refs = await fetch(`${proxy.url}/v2/odd.test/odd/app/referrers/${sha(declared)}`);
    assert.equal(refs.status, 200);
    assert.equal(refs.headers.get('content-type'), OCI_INDEX);
    await refs.arrayBuffer();
    assert.ok(oddPaths.some((p) => p.startsWith('/v2/odd/app/referrers/')), 'the referrers came from the upstream');
  });
});

describe('admin API', () => {
  test('authentication comes before routing: an unknown path answers 401 without the token, 404 with it', async () => {
    for (const p of ['/nope', '/api/v1/nope', '/api/v2/images']) {
      const anon = await fetch(`${proxy.adminUrl}${p}`);
      assert.equal(anon.status, 401, p);
      assert.match(anon.headers.get('www-authenticate') ?? '', /^Bearer /);
      await anon.arrayBuffer();
      const authed = await fetch(`${proxy.adminUrl}${p}`, { headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(authed.status, 404, p);
      await authed.arrayBuffer();
    }
    const health = await fetch(`${proxy.adminUrl}/healthz`);
    assert.equal(health.status, 200, 'the health check stays open');
  });
});
