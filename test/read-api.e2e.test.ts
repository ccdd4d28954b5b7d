// The OCI read API through ocirelay, against a real Distribution registry as docker.io.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const ALL_MANIFESTS = [OCI_INDEX, OCI_MANIFEST, 'application/vnd.docker.distribution.manifest.list.v2+json', DOCKER_MANIFEST].join(', ');
const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

let upstream: RegistryFixture;
let images: PushedImages;
let proxy: OcirelayProcess;
let referrersUpstream: http.Server;
let referrersHits = 0;
const PAGED_TAGS = ['a', 'b', 'c', 'd', 'e'];
let bystander: http.Server;
let bystanderHits = 0;

async function listen(handler: http.RequestListener): Promise<http.Server> {
  const s = http.createServer(handler);
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  return s;
}
const portOf = (s: http.Server) => (s.address() as AddressInfo).port;

function rawGet(path: string): Promise<{ status: number; contentType: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: proxy.port, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, contentType: String(res.headers['content-type'] ?? ''), body }));
    });
    req.on('error', reject).end();
  });
}

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  const built = await buildImages({ bigLayerBytes: 4 * 1024 * 1024 });
  images = await pushImages(upstream, built);
  // Distribution 2.8 has no referrers API: a small upstream that has one, which ignores the filter.
  referrersUpstream = await listen((req, res) => {
    referrersHits++;
    if (req.url?.startsWith('/v2/org/paged/tags/list')) {
      // Distribution 2.8 ignores n and never sends a Link; registries that paginate do (n, last, Link).
      const q = new URL(req.url, 'http://x').searchParams;
      const n = Number(q.get('n') ?? PAGED_TAGS.length);
      const from = q.has('last') ? PAGED_TAGS.indexOf(q.get('last')!) + 1 : 0;
      const tags = PAGED_TAGS.slice(from, from + n);
      const headers: Record<string, string> = { 'content-type': 'application/json' };
      if (from + n < PAGED_TAGS.length) headers.link = `</v2/org/paged/tags/list?last=${tags[tags.length - 1]}&n=${n}>; rel="next"`;
      res.writeHead(200, headers);
      res.end(JSON.stringify({ name: 'org/paged', tags }));
      return;
    }
    if (req.url?.startsWith('/v2/org/signed/referrers/')) {
      const body = JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          { mediaType: OCI_MANIFEST, digest: `sha256:${'1'.repeat(64)}`, size: 10, artifactType: 'application/vnd.dev.cosign.artifact.sig.v1+json' },
          { mediaType: OCI_MANIFEST, digest: `sha256:${'2'.repeat(64)}`, size: 10, artifactType: 'application/spdx+json' },
        ],
      });
      res.writeHead(200, { 'content-type': OCI_INDEX, 'content-length': Buffer.byteLength(body) });
      res.end(body);
      return;
    }
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end('{"errors":[{"code":"NAME_UNKNOWN","message":"no"}]}');
  });
  bystander = await listen((_req, res) => {
    bystanderHits++;
    res.end('should never be asked');
  });
  proxy = await startOcirelay({
    registries: {
      'docker.io': { url: upstream.url },
      'referrers.test': { url: `http://127.0.0.1:${portOf(referrersUpstream)}` },
    },
  });
});

after(async () => {
  await proxy?.cleanup();
  await upstream?.stop();
  referrersUpstream?.close();
  bystander?.close();
});

describe('version check and errors', () => {
  test('GET /v2/ answers 200 with the API version header', async () => {
    const res = await fetch(`${proxy.url}/v2/`);
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-distribution-api-version'), 'registry/2.0');
    assert.deepEqual(await res.json(), {});
  });

  test('writes answer 405 UNSUPPORTED', async () => {
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      const res = await fetch(`${proxy.url}/v2/library/single/manifests/1.0`, { method, body: method === 'DELETE' ? undefined : 'x' });
      assert.equal(res.status, 405, method);
      const body = (await res.json()) as { errors: Array<{ code: string }> };
      assert.equal(body.errors[0]?.code, 'UNSUPPORTED');
    }
    const up = await fetch(`${proxy.url}/v2/library/single/blobs/uploads/`, { method: 'POST' });
    assert.equal(up.status, 405);
  });

  test('malformed names, tags and digests are OCI errors, never file paths', async () => {
    const cases: Array<[string, number, string]> = [
      ['/v2/Library/Single/manifests/1.0', 400, 'NAME_INVALID'],
      ['/v2/library/../../etc/manifests/1.0', 400, 'NAME_INVALID'],
      ['/v2/library/%2e%2e/manifests/1.0', 400, 'NAME_INVALID'],
      ['/v2/library/single/manifests/-bad', 404, 'MANIFEST_UNKNOWN'],
      ['/v2/library/single/manifests/.INVALID_MANIFEST_NAME', 404, 'MANIFEST_UNKNOWN'],
      ['/v2/library/single/blobs/sha256:1234', 400, 'DIGEST_INVALID'],
      ['/v2/library/single/blobs/md5:d41d8cd98f00b204e9800998ecf8427e', 400, 'DIGEST_INVALID'],
      ['/v2/library/single/blobs/../../../etc/passwd', 400, 'NAME_INVALID'],
      ['/v2/library/single/manifests/2.0', 404, 'MANIFEST_UNKNOWN'],
      [`/v2/library/single/blobs/sha256:${'f'.repeat(64)}`, 404, 'BLOB_UNKNOWN'],
      ['/v2/library/nothere/tags/list', 404, 'NAME_UNKNOWN'],
      ['/nothing', 404, 'NAME_UNKNOWN'],
    ];
    for (const [path, status, code] of cases) {
      // A raw request: fetch() would normalise the dot segments away before sending.
      const res = await rawGet(path);
      assert.equal(res.status, status, path);
      assert.match(res.contentType, /application\/json/);
      const body = JSON.parse(res.body) as { errors: Array<{ code: string; message: string }> };
      assert.equal(body.errors[0]?.code, code, path);
    }
  });

  test('an unknown ns or registry prefix is refused and never contacted', async () => {
    const host = `127.0.0.1:${portOf(bystander)}`;
    const viaNs = await fetch(`${proxy.url}/v2/library/single/manifests/1.0?ns=${host}`);
    assert.equal(viaNs.status, 404);
    assert.equal(((await viaNs.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'NAME_UNKNOWN');
    const viaPrefix = await fetch(`${proxy.url}/v2/${host}/library/single/manifests/1.0`);
    assert.equal(viaPrefix.status, 404);
    await viaPrefix.arrayBuffer();
    const viaBlob = await fetch(`${proxy.url}/v2/x/blobs/sha256:${'a'.repeat(64)}?ns=evil.example.com`);
    assert.equal(viaBlob.status, 404);
    await viaBlob.arrayBuffer();
    assert.equal(bystanderHits, 0);
  });
});

describe('manifests', () => {
  test('HEAD and GET by tag in all three client forms, with the spec headers', async () => {
    const img = images.single;
    const forms = [
      `/v2/single/manifests/1.0?ns=docker.io`, // containerd, short docker.io name
      `/v2/library/single/manifests/1.0?ns=docker.io`,
      `/v2/docker.io/library/single/manifests/1.0`, // registries.conf path prefix
      `/v2/library/single/manifests/1.0`, // Docker registry-mirrors, bare
    ];
    for (const p of forms) {
      const head = await fetch(`${proxy.url}${p}`, { method: 'HEAD', headers: { accept: ALL_MANIFESTS } });
      assert.equal(head.status, 200, p);
      assert.equal(head.headers.get('docker-content-digest'), img.manifestDigest, p);
      assert.equal(head.headers.get('content-type'), img.mediaType, p);
      assert.equal(head.headers.get('content-length'), String(img.manifestSize), p);
      assert.equal(head.headers.get('etag'), `"${img.manifestDigest}"`);
      const get = await fetch(`${proxy.url}${p}`, { headers: { accept: ALL_MANIFESTS } });
      const body = Buffer.from(await get.arrayBuffer());
      assert.equal(get.status, 200);
      assert.equal(sha(body), img.manifestDigest);
      assert.equal(get.headers.get('content-length'), String(body.length));
    }
  });

  test('by digest, and a multi-arch index with its platform manifests', async () => {
    const idx = images.multi;
    const res = await fetch(`${proxy.url}/v2/library/multi/manifests/1.0`, { headers: { accept: ALL_MANIFESTS } });
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), OCI_INDEX);
    assert.equal(sha(body), idx.manifestDigest);
    for (const p of idx.platforms) {
      const r = await fetch(`${proxy.url}/v2/library/multi/manifests/${p.manifestDigest}`, { headers: { accept: ALL_MANIFESTS } });
      const b = Buffer.from(await r.arrayBuffer());
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('docker-content-digest'), p.manifestDigest);
      assert.equal(sha(b), p.manifestDigest);
    }
  });

  test('Docker v2s2 manifests keep their media type', async () => {
    const img = images.v2s2;
    const res = await fetch(`${proxy.url}/v2/library/v2s2/manifests/1.0`, { headers: { accept: DOCKER_MANIFEST } });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('content-type'), DOCKER_MANIFEST);
    assert.equal(sha(Buffer.from(await res.arrayBuffer())), img.manifestDigest);
  });

  test('skopeo-style repeated Accept headers are merged', async () => {
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = http.request(`${proxy.url}/v2/library/multi/manifests/1.0`, { method: 'HEAD' }, resolve);
      req.setHeader('accept', [OCI_MANIFEST, OCI_INDEX]);
      req.on('error', reject).end();
    });
    res.resume();
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-type'], OCI_INDEX);
  });

  test('a cached manifest in a type the client does not accept is asked for again with its Accept', async () => {
    const img = images.v2s2;
    const path = `/v2/library/v2s2/manifests/${img.manifestDigest}`;
    const first = await fetch(`${proxy.url}${path}`, { headers: { accept: DOCKER_MANIFEST } });
    assert.equal(first.status, 200);
    await first.arrayBuffer();
    const before = await upstream.countRequests({ method: 'GET', pathIncludes: path });
    const again = await fetch(`${proxy.url}${path}`, { headers: { accept: DOCKER_MANIFEST } });
    await again.arrayBuffer();
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: path }), before, 'an accepted cached manifest is served from cache');
    const other = await fetch(`${proxy.url}${path}`, { headers: { accept: OCI_MANIFEST } });
    await other.arrayBuffer();
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: path }), before + 1, 'not accepted: fetched again with the client Accept');
  });
});

describe('blobs', () => {
  test('GET, HEAD, ranges (206 + Content-Range), 416 when unsatisfiable, an invalid Range ignored', async () => {
    const layer = images.single.layers[0]!;
    const url = `${proxy.url}/v2/library/single/blobs/${layer.digest}`;
    const full = await fetch(url);
    const bytes = Buffer.from(await full.arrayBuffer());
    assert.equal(full.status, 200);
    assert.equal(sha(bytes), layer.digest);
    assert.equal(full.headers.get('docker-content-digest'), layer.digest);
    assert.equal(full.headers.get('accept-ranges'), 'bytes');
    assert.equal(full.headers.get('etag'), `"${layer.digest}"`);

    const head = await fetch(url, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(layer.size));

    const part = await fetch(url, { headers: { range: 'bytes=10-' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 10-${layer.size - 1}/${layer.size}`);
    assert.deepEqual(Buffer.from(await part.arrayBuffer()), bytes.subarray(10));

    const mid = await fetch(url, { headers: { range: 'bytes=3-7' } });
    assert.equal(mid.status, 206);
    assert.deepEqual(Buffer.from(await mid.arrayBuffer()), bytes.subarray(3, 8));

    const past = await fetch(url, { headers: { range: `bytes=${layer.size}-` } });
    assert.equal(past.status, 416);
    assert.equal(past.headers.get('content-range'), `bytes */${layer.size}`);
    assert.equal(((await past.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'RANGE_INVALID');

    // An invalid range is ignored (RFC 9110): the whole body, 200.
    const bad = await fetch(url, { headers: { range: 'bytes=9-2' } });
    assert.equal(bad.status, 200);
    assert.deepEqual(Buffer.from(await bad.arrayBuffer()), bytes);
  });

  test('a Range on a cold blob is served from the fill', async () => {
    const layer = images.big.layers[0]!;
    const url = `${proxy.url}/v2/library/big/blobs/${layer.digest}`;
    const part = await fetch(url, { headers: { range: 'bytes=1000-' } });
    assert.equal(part.status, 206);
    assert.equal(part.headers.get('content-range'), `bytes 1000-${layer.size - 1}/${layer.size}`);
    const tail = Buffer.from(await part.arrayBuffer());
    assert.equal(tail.length, layer.size - 1000);
    const full = Buffer.from(await (await fetch(url)).arrayBuffer());
    assert.equal(sha(full), layer.digest);
    assert.deepEqual(full.subarray(1000), tail);
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: `/blobs/${layer.digest}` }), 1);
  });
});

describe('listings', () => {
  test('tags/list passes n and last upstream', async () => {
    const all = await fetch(`${proxy.url}/v2/docker.io/library/single/tags/list`);
    assert.equal(all.status, 200);
    assert.deepEqual(await all.json(), { name: 'library/single', tags: ['1.0'] });
    const page = await fetch(`${proxy.url}/v2/docker.io/library/single/tags/list?n=1`);
    assert.equal(page.status, 200);
    await page.arrayBuffer();
    const seen = (await upstream.accessLog()).filter((e) => e.path.includes('/tags/list?n=1'));
    assert.equal(seen.length, 1, 'n reached the upstream');
    const last = await fetch(`${proxy.url}/v2/docker.io/library/single/tags/list?n=5&last=1.0`);
    const direct = await fetch(`${upstream.url}/v2/library/single/tags/list?n=5&last=1.0`);
    assert.deepEqual(await last.json(), await direct.json(), 'the upstream answer, passed on');
    const withLast = (await upstream.accessLog()).filter((e) => /tags\/list\?(?=.*n=5)(?=.*last=1\.0)/.test(e.path));
    assert.equal(withLast.length, 2, 'n and last reached the upstream (once via ocirelay, once directly)');
  });

  test('a paginating upstream: the Link is rewritten to the client path and leads to the next page through the proxy', async () => {
    const first = await fetch(`${proxy.url}/v2/referrers.test/org/paged/tags/list?n=2`);
    assert.equal(first.status, 200);
    assert.deepEqual(await first.json(), { name: 'org/paged', tags: ['a', 'b'] });
    assert.equal(first.headers.get('link'), '</v2/referrers.test/org/paged/tags/list?last=b&n=2>; rel="next"');
    const viaNs = await fetch(`${proxy.url}/v2/org/paged/tags/list?n=2&last=b&ns=referrers.test`);
    assert.equal(viaNs.headers.get('link'), '</v2/org/paged/tags/list?last=d&n=2>; rel="next"', 'the ns form keeps its own path');
    await viaNs.arrayBuffer();
    const pages: string[][] = [];
    let next: string | undefined = '/v2/referrers.test/org/paged/tags/list?n=2';
    while (next !== undefined) {
      const r: Response = await fetch(`${proxy.url}${next}`);
      pages.push(((await r.json()) as { tags: string[] }).tags);
      next = /^<([^>]+)>/.exec(r.headers.get('link') ?? '')?.[1];
    }
    assert.deepEqual(pages, [['a', 'b'], ['c', 'd'], ['e']]);
  });

  test('referrers are passed through and filtered by artifactType when the upstream does not', async () => {
    const d = `sha256:${'9'.repeat(64)}`;
    const res = await fetch(`${proxy.url}/v2/org/signed/referrers/${d}?ns=referrers.test`);
    assert.equal(res.status, 200);
    assert.equal((((await res.json()) as { manifests: unknown[] }).manifests).length, 2);
    const filtered = await fetch(`${proxy.url}/v2/referrers.test/org/signed/referrers/${d}?artifactType=application/spdx%2Bjson`);
    assert.equal(filtered.status, 200);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    const body = (await filtered.json()) as { manifests: Array<{ artifactType: string }> };
    assert.deepEqual(body.manifests.map((m) => m.artifactType), ['application/spdx+json']);
    assert.ok(referrersHits >= 2);
    const none = await fetch(`${proxy.url}/v2/library/single/referrers/${d}`);
    assert.equal(none.status, 404, 'Distribution 2.8 has no referrers API: its 404 is passed on as an OCI error');
    await none.arrayBuffer();
  });
});

describe('operability', () => {
  test('one JSON log line per request with id, status, bytes, cache result and upstream; metrics', async () => {
    const layer = images.v2s2.layers[0]!;
    const res = await fetch(`${proxy.url}/v2/library/v2s2/blobs/${layer.digest}`, { headers: { 'x-request-id': 'test-req-1' } });
    await res.arrayBuffer();
    assert.equal(res.headers.get('x-request-id'), 'test-req-1');
    let line: Record<string, unknown> | undefined;
    for (let i = 0; i < 50 && !line; i++) {
      line = proxy.logs().find((l) => l.reqId === 'test-req-1');
      if (!line) await new Promise((r) => setTimeout(r, 20));
    }
    assert.ok(line, 'request logged');
    assert.equal(line.method, 'GET');
    assert.equal(line.status, 200);
    assert.equal(line.bytes, layer.size);
    assert.equal(line.cache, 'miss');
    assert.equal(line.upstream, 'docker.io');
    assert.equal(typeof line.ms, 'number');

    const health = await fetch(`${proxy.url}/healthz`);
    assert.equal(health.status, 200);
    const ready = await fetch(`${proxy.url}/readyz`);
    assert.equal(ready.status, 200);
    await Promise.all([health.arrayBuffer(), ready.arrayBuffer()]);

    assert.ok((await proxy.metric('ocirelay_http_requests_total')) > 10);
    assert.ok((await proxy.metric('ocirelay_cache_results_total', { kind: 'blob', result: 'miss' })) >= 1);
    assert.ok((await proxy.metric('ocirelay_cache_results_total', { kind: 'manifest', result: 'hit' })) >= 1);
    assert.ok((await proxy.metric('ocirelay_bytes_served_total', { source: 'fill' })) >= layer.size);
    assert.ok((await proxy.metric('ocirelay_upstream_requests_total', { registry: 'docker.io' })) >= 1);
    assert.ok((await proxy.metric('ocirelay_upstream_bytes_total', { registry: 'docker.io' })) >= layer.size);
    assert.ok((await proxy.metric('ocirelay_fills_total', { result: 'committed' })) >= 1);
    assert.equal(await proxy.metric('ocirelay_fills_in_flight'), 0);
    assert.ok((await proxy.metric('ocirelay_cache_bytes', { tier: 'disk' })) >= layer.size);
    const text = await proxy.metrics();
    for (const name of ['ocirelay_http_request_duration_seconds_bucket', 'ocirelay_upstream_request_duration_seconds_bucket', 'ocirelay_coalesced_waiters_total', 'ocirelay_digest_mismatches_total', 'ocirelay_upstream_ratelimit_remaining']) {
      assert.ok(text.includes(name), name);
    }
  });
});
