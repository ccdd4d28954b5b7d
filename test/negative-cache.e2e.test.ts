// The negative cache against a real Distribution registry: an upstream 404 (unknown tag, blob or
// repository) is remembered for the registry's negativeTTL, so a flood of requests for names that
// do not exist costs the upstream at most a couple of requests; after the TTL a tag pushed
// meanwhile is found; `negativeTTL: 0s` remembers nothing. Upstream requests are counted in the
// registry's own access log.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { eventually } from './helpers/eventually.ts';
import { pushRandomImage } from './helpers/random-image.ts';

const SHORT = 'short.example'; // negativeTTL 1s
const OFF = 'off.example'; // negativeTTL 0s: disabled
// Distribution answers MANIFEST_UNKNOWN even for a repository it does not have; registries that
// answer NAME_UNKNOWN there are stood in for by a minimal upstream that knows no repository.
const NONAME = 'noname.example';
const MANIFEST_ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';

let upstream: RegistryFixture;
let proxy: OcirelayProcess;
let sentinels = 0;
let noname: http.Server;
const nonamePaths: string[] = [];

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  // The repository exists upstream, so unknown tags in it are MANIFEST_UNKNOWN (not NAME_UNKNOWN).
  await pushRandomImage(upstream.url, 'neg/app', 'v1', [512]);
  noname = http.createServer((req, res) => {
    if (req.url !== '/v2/') nonamePaths.push(req.url ?? '');
    const body = req.url === '/v2/' ? '{}' : '{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}';
    res.writeHead(req.url === '/v2/' ? 200 : 404, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
    res.end(req.method === 'HEAD' ? undefined : body);
  });
  await new Promise<void>((r) => noname.listen(0, '127.0.0.1', r));
  proxy = await startOcirelay({
    registries: {
      // Long enough that the floods below never outlive it on a loaded machine.
      'docker.io': { url: upstream.url, negativeTTL: '5m' },
      [SHORT]: { url: upstream.url, negativeTTL: '1s' },
      [OFF]: { url: upstream.url, negativeTTL: '0s' },
      [NONAME]: { url: `http://127.0.0.1:${(noname.address() as AddressInfo).port}`, negativeTTL: '5m' },
    },
    log: { level: 'info' },
  });
});

after(async () => {
  await proxy?.cleanup();
  await upstream?.stop();
  noname?.close();
});

/**
 * Upstream reads (GET and HEAD; pushes are not counted) whose path includes `pathIncludes`,
 * once every request made so far is in the access log (it is read from the registry's stderr,
 * which may lag): a direct request for a unique sentinel path is waited for first.
 */
async function upstreamCount(pathIncludes: string): Promise<number> {
  const sentinel = `/v2/sentinel/s${++sentinels}/manifests/x`;
  await (await fetch(`${upstream.url}${sentinel}`)).arrayBuffer();
  await eventually(async () => (await upstream.countRequests({ pathIncludes: sentinel })) === 1, 'sentinel request in the access log');
  return (await upstream.accessLog()).filter((e) => (e.method === 'GET' || e.method === 'HEAD') && e.path.includes(pathIncludes)).length;
}

async function getStatus(path: string, method: 'GET' | 'HEAD' = 'GET'): Promise<{ status: number; code: string | undefined }> {
  const res = await fetch(`${proxy.url}${path}`, { method, headers: { accept: MANIFEST_ACCEPT } });
  if (method === 'HEAD') return { status: res.status, code: undefined };
  const text = await res.text();
  let code: string | undefined;
  try {
    code = (JSON.parse(text) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    code = undefined; // a success body (manifest or blob)
  }
  return { status: res.status, code };
}

/** `total` requests, `concurrency` at a time; returns every answer. */
async function flood(path: string, total: number, concurrency: number): Promise<Array<{ status: number; code: string | undefined }>> {
  const out: Array<{ status: number; code: string | undefined }> = [];
  for (let i = 0; i < total; i += concurrency) {
    const batch = Array.from({ length: Math.min(concurrency, total - i) }, () => getStatus(path));
    out.push(...(await Promise.all(batch)));
  }
  return out;
}

describe('negative cache', () => {
  test('1,000 GETs of an unknown tag: all 404 MANIFEST_UNKNOWN, at most 2 upstream requests', async () => {
    const answers = await flood('/v2/neg/app/manifests/missing-tag', 1000, 50);
    assert.equal(answers.length, 1000);
    assert.ok(answers.every((a) => a.status === 404 && a.code === 'MANIFEST_UNKNOWN'), `answers: ${JSON.stringify(answers.find((a) => a.status !== 404 || a.code !== 'MANIFEST_UNKNOWN'))}`);
    const n = await upstreamCount('/v2/neg/app/manifests/missing-tag');
    assert.ok(n >= 1 && n <= 2, `upstream saw ${n} manifest requests`);
    // Every batch after the first was answered from memory.
    assert.ok((await proxy.metric('ocirelay_negative_cache_hits_total', { registry: 'docker.io', kind: 'manifest' })) >= 950);
  });

  test('1,000 GETs of an unknown blob digest: all 404 BLOB_UNKNOWN, at most 2 upstream requests', async () => {
    const digest = `sha256:${randomBytes(32).toString('hex')}`;
    const answers = await flood(`/v2/neg/app/blobs/${digest}`, 1000, 50);
    assert.ok(answers.every((a) => a.status === 404 && a.code === 'BLOB_UNKNOWN'), `answers: ${JSON.stringify(answers.find((a) => a.status !== 404 || a.code !== 'BLOB_UNKNOWN'))}`);
    const n = await upstreamCount(digest);
    assert.ok(n >= 1 && n <= 2, `upstream saw ${n} blob requests`);
    // HEAD of the same blob is answered from memory too.
    assert.equal((await getStatus(`/v2/neg/app/blobs/${digest}`, 'HEAD')).status, 404);
    assert.equal(await upstreamCount(digest), n);
  });

  test('HEAD and GET of an unknown tag share the remembered 404', async () => {
    assert.equal((await getStatus('/v2/neg/app/manifests/head-first', 'HEAD')).status, 404);
    for (let i = 0; i < 20; i++) assert.equal((await getStatus('/v2/neg/app/manifests/head-first', i % 2 ? 'HEAD' : 'GET')).status, 404);
    const n = await upstreamCount('/v2/neg/app/manifests/head-first');
    assert.ok(n >= 1 && n <= 2, `upstream saw ${n} manifest requests`);
  });

  test('within the TTL a tag pushed after the 404 is still answered 404 from memory, without asking', async () => {
    assert.equal((await getStatus('/v2/neg/app/manifests/pushed-now')).status, 404);
    const before = await upstreamCount('/v2/neg/app/manifests/pushed-now');
    await pushRandomImage(upstream.url, 'neg/app', 'pushed-now', [256]);
    assert.deepEqual(await getStatus('/v2/neg/app/manifests/pushed-now'), { status: 404, code: 'MANIFEST_UNKNOWN' });
    assert.equal(await upstreamCount('/v2/neg/app/manifests/pushed-now'), before);
  });

  test('after negativeTTL (1s) a tag pushed meanwhile is found, and found again', async () => {
    const path = `/v2/neg/late/manifests/v1?ns=${SHORT}`;
    const first = await getStatus(path);
    assert.equal(first.status, 404);
    await pushRandomImage(upstream.url, 'neg/late', 'v1', [256]);
    await sleep(1300);
    assert.equal((await getStatus(path)).status, 200);
    assert.equal((await getStatus(path)).status, 200);
    // Its blobs too: an unknown digest in the repository expires the same way.
    const digest = `sha256:${randomBytes(32).toString('hex')}`;
    assert.equal((await getStatus(`/v2/neg/late/blobs/${digest}?ns=${SHORT}`)).status, 404);
  });

  test('negativeTTL 0s remembers nothing: every request asks the upstream', async () => {
    const path = `/v2/neg/app/manifests/never-there?ns=${OFF}`;
    for (let i = 0; i < 5; i++) assert.deepEqual(await getStatus(path), { status: 404, code: 'MANIFEST_UNKNOWN' });
    assert.equal(await upstreamCount('/v2/neg/app/manifests/never-there'), 5);
  });

  test('an unknown repository (NAME_UNKNOWN) is remembered for the whole repository: other tags and blobs are not asked for', async () => {
    assert.deepEqual(await getStatus(`/v2/neg/no-such-repo/manifests/t0?ns=${NONAME}`), { status: 404, code: 'NAME_UNKNOWN' });
    for (let i = 1; i <= 100; i++) assert.deepEqual(await getStatus(`/v2/neg/no-such-repo/manifests/t${i}?ns=${NONAME}`), { status: 404, code: 'NAME_UNKNOWN' });
    assert.deepEqual(await getStatus(`/v2/neg/no-such-repo/blobs/sha256:${randomBytes(32).toString('hex')}?ns=${NONAME}`), { status: 404, code: 'NAME_UNKNOWN' });
    assert.deepEqual(nonamePaths, ['/v2/neg/no-such-repo/manifests/t0']);
    // Another repository of the same registry is still asked.
    assert.equal((await getStatus(`/v2/neg/other-repo/manifests/t0?ns=${NONAME}`)).status, 404);
    assert.deepEqual(nonamePaths, ['/v2/neg/no-such-repo/manifests/t0', '/v2/neg/other-repo/manifests/t0']);
  });
});
