// Self-test of the fixtures against the real components: Distribution registries (open,
// Basic, token), skopeo, umoci-built images, containerd pulling through a hosts.toml
// mirror, and the tamper proxy. If this file passes, failures elsewhere are the proxy's.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startContainerd, writeHostsToml, type ContainerdFixture } from './fixtures/containerd.ts';
import { buildImages, pushImages, removeBuiltImages, type BuiltImages, type PushedImages } from './fixtures/images.ts';
import { MEDIA } from './fixtures/oci-layout.ts';
import { freePort, waitFor } from './fixtures/ports.ts';
import { makeTempDir, removeTempDir, requireBinary, spawnLogged } from './fixtures/processes.ts';
import { startRegistry, type RegistryAuth, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy, skopeoInspect, skopeoInspectRaw, writeRegistriesConf } from './fixtures/skopeo.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';

const BIG_LAYER_BYTES = 8 * 1024 * 1024;
const AUTHS: RegistryAuth[] = ['none', 'basic', 'token'];

let built: BuiltImages;
const registries = new Map<RegistryAuth, RegistryFixture>();
const pushed = new Map<RegistryAuth, PushedImages>();

/** Everything started, newest first, plus what must be gone afterwards. */
const stops: Array<() => Promise<void>> = [];
const pids: number[] = [];
const dirs: string[] = [];

function reg(auth: RegistryAuth): RegistryFixture {
  const r = registries.get(auth);
  if (!r) throw new Error(`registry ${auth} not started`);
  return r;
}

function images(auth: RegistryAuth): PushedImages {
  const p = pushed.get(auth);
  if (!p) throw new Error(`images not pushed to ${auth}`);
  return p;
}

async function tempDir(prefix: string): Promise<string> {
  const d = await makeTempDir(prefix);
  dirs.push(d);
  stops.unshift(() => removeTempDir(d));
  return d;
}

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

async function get(url: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const res = await fetch(url, { headers, redirect: 'manual', signal: AbortSignal.timeout(30_000) });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

before(async () => {
  built = await buildImages({ bigLayerBytes: BIG_LAYER_BYTES });
  await Promise.all(
    AUTHS.map(async (auth) => {
      const r = await startRegistry({ auth });
      registries.set(auth, r);
      stops.unshift(() => r.stop());
      pids.push(r.process.pid);
      dirs.push(r.dir);
      if (r.tokenServer) dirs.push(r.tokenServer.dir);
    }),
  );
  await Promise.all(AUTHS.map(async (auth) => pushed.set(auth, await pushImages(reg(auth), built))));
});

after(async () => {
  // One at a time, newest first, and every one even if another fails.
  const errors: Error[] = [];
  for (const stop of stops) await stop().catch((e: unknown) => errors.push(e as Error));
  await removeBuiltImages();
  // Prove the cleanup: no process of ours left, no temp dir left.
  for (const pid of pids) {
    try {
      process.kill(pid, 0);
      errors.push(new Error(`pid ${pid} still running after stop()`));
    } catch {
      // ESRCH: gone, as it should be
    }
  }
  for (const d of [...dirs, built?.dir].filter((x): x is string => typeof x === 'string')) {
    if (await access(d).then(() => true, () => false)) errors.push(new Error(`temp dir left behind: ${d}`));
  }
  if (errors.length > 0) throw new AggregateError(errors, errors.map((e) => e.message).join('\n'));
});

test('ports: freePort is bindable on loopback; waitFor is bounded and reports the last error', async () => {
  const port = await freePort();
  const srv = http.createServer();
  await new Promise<void>((resolve) => srv.listen(port, '127.0.0.1', () => resolve()));
  await new Promise<void>((resolve) => srv.close(() => resolve()));

  let calls = 0;
  const started = Date.now();
  await assert.rejects(
    waitFor(
      () => {
        calls++;
        throw new Error('still refusing');
      },
      { timeoutMs: 300, intervalMs: 50, what: 'nothing' },
    ),
    /timed out after 300 ms .* waiting for nothing: last error: still refusing/,
  );
  assert.ok(Date.now() - started < 1_000);
  assert.ok(calls >= 3 && calls <= 8, `calls=${calls}`);
  assert.equal(await waitFor(() => (calls > 0 ? 'ready' : undefined), { timeoutMs: 100, what: 'x' }), 'ready');
});

test('processes: a missing binary is a clear error; a child dying at start-up shows its log tail', async () => {
  await assert.rejects(requireBinary('ocirelay-no-such-binary'), /ocirelay-no-such-binary not found: apt-get install/);
  const dir = await tempDir('ocirelay-proc-test-');
  const p = await spawnLogged({ name: 'doomed', cmd: 'sh', args: ['-c', 'echo "config error: boom" >&2; exit 3'], dir });
  pids.push(p.pid);
  const err = await waitFor(() => false, { timeoutMs: 5_000, intervalMs: 20, what: 'doomed', abortIf: () => p.diedError() }).then(
    () => undefined,
    (e: Error) => p.startupError(e.message),
  );
  assert.ok(err);
  assert.match(err.message, /doomed failed to start \(exited with 3\)/);
  assert.match(err.message, /config error: boom/);
});

test('images: layouts have the promised shapes', () => {
  assert.match(built.single.file.content, /^hello from ocirelay fixture [0-9a-f-]{36}\n$/);
  assert.equal(built.single.file.path, '/hello.txt');
  assert.equal(built.single.layers.length, 1);
  assert.equal(built.single.layers[0]?.mediaType, MEDIA.ociLayerGzip);
  assert.deepEqual(
    built.multi.platforms.map((p) => p.platform.architecture),
    ['amd64', 'arm64'],
  );
  assert.notEqual(built.multi.platforms[0]?.file.content, built.multi.platforms[1]?.file.content);
  assert.equal(built.big.layers[0]?.mediaType, MEDIA.ociLayerTar);
  // One 512-byte header, the data (a multiple of 512 here), two 512-byte end blocks.
  assert.equal(built.big.layers[0]?.size, BIG_LAYER_BYTES + 3 * 512);
});

for (const auth of AUTHS) {
  test(`registry (${auth}): pushed images read back with skopeo; the access log counts the pushes`, async () => {
    const r = reg(auth);
    const p = images(auth);
    const opts = { tlsVerify: false, timeoutMs: 60_000, ...(r.creds ? { creds: r.creds } : {}) };

    const single = await skopeoInspect(`docker://${r.host}/${p.single.ref}`, opts);
    assert.equal(single.Digest, p.single.manifestDigest);
    assert.deepEqual(single.Layers, p.single.layers.map((l) => l.digest));
    assert.equal(p.single.manifestDigest, built.single.manifestDigest, 'an OCI push keeps the manifest bytes');

    assert.equal(p.v2s2.mediaType, MEDIA.dockerManifest);
    assert.notEqual(p.v2s2.manifestDigest, built.v2s2.manifestDigest, '--format v2s2 rewrote the manifest');
    assert.equal((await skopeoInspectRaw(`docker://${r.host}/${p.v2s2.ref}`, opts)).digest, p.v2s2.manifestDigest);

    const index = await skopeoInspectRaw(`docker://${r.host}/${p.multi.ref}`, opts);
    assert.equal(index.digest, p.multi.manifestDigest);
    assert.equal(p.multi.manifestDigest, built.multi.indexDigest);
    assert.equal(p.multi.mediaType, MEDIA.ociIndex);
    assert.equal(p.multi.platforms.length, 2);

    assert.equal(p.big.layers[0]?.mediaType, MEDIA.ociLayerTar, 'the big layer stays uncompressed');
    assert.equal(p.big.layers[0]?.digest, built.big.layers[0]?.digest);

    // single, v2s2, big: one manifest PUT each; multi: two platform manifests and the index.
    assert.equal(await r.countRequests({ method: 'PUT', pathIncludes: '/manifests/' }), 6);
    assert.ok((await r.countRequests({ method: 'PUT', pathIncludes: '/blobs/uploads/' })) >= 9);
    // pushImages' read-back and skopeo inspect each GET the tag.
    assert.ok((await r.countRequests({ method: 'GET', pathIncludes: `/v2/${p.single.repo}/manifests/1.0`, status: 200 })) >= 2);
  });
}

test('registry (basic): anonymous requests are refused with a Basic challenge', async () => {
  const r = reg('basic');
  const res = await get(`${r.url}/v2/${images('basic').single.repo}/manifests/1.0`);
  assert.equal(res.status, 401);
  assert.match(res.headers.get('www-authenticate') ?? '', /^Basic realm=/);
  await assert.rejects(
    skopeoInspect(`docker://${r.host}/${images('basic').single.ref}`, { tlsVerify: false, timeoutMs: 60_000 }),
    /unauthorized|authentication required/i,
  );
});

test('registry (token): anonymous pull tokens work, anonymous push and wrong passwords do not', async () => {
  const r = reg('token');
  const ts = r.tokenServer;
  assert.ok(ts);
  const p = images('token');
  const challenge = await get(`${r.url}/v2/${p.single.repo}/manifests/1.0`);
  assert.equal(challenge.status, 401);
  assert.match(challenge.headers.get('www-authenticate') ?? '', new RegExp(`^Bearer realm="${ts.realm}",service="${ts.service}"`));

  const before = ts.requests.length;
  const anon = await skopeoInspect(`docker://${r.host}/${p.single.ref}`, { tlsVerify: false, timeoutMs: 60_000 });
  assert.equal(anon.Digest, p.single.manifestDigest);
  const anonRequests = ts.requests.slice(before);
  assert.ok(anonRequests.length >= 1);
  assert.ok(anonRequests.every((q) => q.user === undefined && q.status === 200));
  assert.ok(anonRequests.some((q) => q.scope === `repository:${p.single.repo}:pull`));

  await assert.rejects(
    skopeoCopy(built.single.srcRef, `docker://${r.host}/library/anon-push:1.0`, { destTlsVerify: false, timeoutMs: 60_000 }),
    /unauthorized|authentication required|denied/i,
  );
  const wrong = await get(`${ts.realm}?service=${ts.service}&scope=repository:x:pull`, {
    authorization: `Basic ${Buffer.from(`${r.user}:wrong`).toString('base64')}`,
  });
  assert.equal(wrong.status, 401);

  // A token as handed to a client: ES256 with the signing cert in x5c.
  const tokenRes = await get(`${ts.realm}?service=${ts.service}&scope=repository:${p.single.repo}:pull`);
  const body = JSON.parse(tokenRes.body.toString('utf8')) as { token: string; access_token: string; expires_in: number; issued_at: string };
  assert.equal(body.token, body.access_token);
  assert.equal(body.expires_in, 300);
  const header = JSON.parse(Buffer.from(body.token.split('.')[0] ?? '', 'base64url').toString('utf8')) as { alg: string; x5c: string[] };
  assert.equal(header.alg, 'ES256');
  assert.equal(header.x5c.length, 1);
  const ok = await get(`${r.url}/v2/${p.single.repo}/manifests/1.0`, { authorization: `Bearer ${body.token}`, accept: MEDIA.ociManifest });
  assert.equal(ok.status, 200);
  assert.equal(ok.headers.get('docker-content-digest'), p.single.manifestDigest);
});

test('registry (proxyRemoteUrl): Distribution in pull-through mode serves the upstream images', async () => {
  const upstream = reg('none');
  const p = images('none');
  const mirror = await startRegistry({ proxyRemoteUrl: upstream.url });
  stops.unshift(() => mirror.stop());
  pids.push(mirror.process.pid);
  dirs.push(mirror.dir);
  const before = await upstream.countRequests({ method: 'GET', pathIncludes: `/v2/${p.single.repo}/manifests/` });
  const info = await skopeoInspect(`docker://${mirror.host}/${p.single.ref}`, { tlsVerify: false, timeoutMs: 60_000 });
  assert.equal(info.Digest, p.single.manifestDigest);
  assert.ok((await upstream.countRequests({ method: 'GET', pathIncludes: `/v2/${p.single.repo}/manifests/` })) > before);
});

test('skopeo: a registries.conf path-prefix mirror is used for docker.io', async () => {
  const r = reg('none');
  const dir = await tempDir('ocirelay-skopeo-test-');
  // Seed the mirror under the path prefix the mirror location adds.
  await skopeoCopy(built.single.srcRef, `docker://${r.host}/docker.io/library/single:1.0`, { destTlsVerify: false, timeoutMs: 60_000 });
  const conf = path.join(dir, 'registries.conf');
  await writeRegistriesConf(conf, [{ prefix: 'docker.io', location: `${r.host}/docker.io`, insecure: true }]);
  const info = await skopeoInspect('docker://docker.io/library/single:1.0', { registriesConf: conf, timeoutMs: 60_000 });
  assert.equal(info.Digest, built.single.manifestDigest);
  await skopeoCopy('docker://docker.io/library/single:1.0', `dir:${path.join(dir, 'out')}`, { registriesConf: conf, timeoutMs: 60_000 });
  assert.ok((await r.countRequests({ method: 'GET', pathIncludes: '/v2/docker.io/library/single/manifests/1.0' })) >= 1);
});

test('containerd: pulls through a hosts.toml mirror and unpacks; files read back from the images', async () => {
  const r = reg('none');
  const p = images('none');
  const ctrd: ContainerdFixture = await startContainerd();
  stops.unshift(() => ctrd.stop());
  pids.push(ctrd.process.pid);
  dirs.push(ctrd.dir);
  const hostsDir = await tempDir('ocirelay-hosts-');
  // docker.io itself is unreachable here, so a successful pull proves the mirror served it.
  await writeHostsToml(hostsDir, 'docker.io', r.url);

  await ctrd.pull('docker.io/library/single:1.0', hostsDir);
  const check = await ctrd.check('docker.io/library/single:1.0');
  assert.equal(check.digest, p.single.manifestDigest);
  assert.ok(check.complete && check.unpacked, JSON.stringify(check));
  assert.equal(await ctrd.readFile('docker.io/library/single:1.0', '/hello.txt'), built.single.file.content);
  assert.equal(await ctrd.readFile('docker.io/library/single:1.0', '/data/sub/nested.txt'), built.single.files['/data/sub/nested.txt']);
  const fromContainerd = (await r.accessLog()).filter((e) => e.userAgent.startsWith('containerd/'));
  assert.ok(fromContainerd.some((e) => e.method === 'HEAD' && e.path === '/v2/library/single/manifests/1.0?ns=docker.io'));

  await ctrd.pull('docker.io/library/v2s2:1.0', hostsDir);
  assert.equal(await ctrd.readFile('docker.io/library/v2s2:1.0', '/v2s2.txt'), built.v2s2.file.content);

  const arm = p.multi.platforms.find((x) => x.platform.architecture === 'arm64');
  assert.ok(arm);
  await ctrd.pull('docker.io/library/multi:1.0', hostsDir, { platform: 'linux/arm64' });
  const info = await ctrd.imageInfo('docker.io/library/multi:1.0');
  assert.equal(info.digest, p.multi.manifestDigest);
  assert.equal(info.mediaType, MEDIA.ociIndex);
  assert.deepEqual(info.platforms, ['linux/amd64', 'linux/arm64']);
  assert.equal(await ctrd.readFile('docker.io/library/multi:1.0', '/arch.txt', { platform: 'linux/arm64' }), arm.file.content);
  // Then this machine's platform, which `ctr images check` can verify.
  await ctrd.pull('docker.io/library/multi:1.0', hostsDir);
  const multiCheck = await ctrd.check('docker.io/library/multi:1.0');
  assert.ok(multiCheck.complete && multiCheck.unpacked, JSON.stringify(multiCheck));
  const amd = p.multi.platforms.find((x) => x.platform.architecture === 'amd64');
  assert.equal(await ctrd.readFile('docker.io/library/multi:1.0', '/arch.txt'), amd?.file.content);

  await ctrd.pull('docker.io/library/big:1.0', hostsDir);
  assert.deepEqual(await ctrd.hashFile('docker.io/library/big:1.0', '/big.bin'), {
    size: built.big.file.size,
    sha256: built.big.file.sha256,
  });
});

let proxy: TamperProxy;
let tokenProxy: TamperProxy;

test('tamper proxy: passthrough, corrupt, truncate, fail, hang, slow', async (t) => {
  const r = reg('none');
  const p = images('none');
  proxy = await startTamperProxy(r.url);
  stops.unshift(() => proxy.stop());
  const bigLayer = p.big.layers[0];
  assert.ok(bigLayer);
  const blobPath = `/v2/${p.big.repo}/blobs/${bigLayer.digest}`;

  await t.test('passthrough keeps bytes and headers, and counts', async () => {
    const res = await get(`${proxy.url}/v2/${p.single.repo}/manifests/1.0`, { accept: MEDIA.ociManifest });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('docker-content-digest'), p.single.manifestDigest);
    assert.equal(sha256(res.body), p.single.manifestDigest);
    assert.equal(proxy.count({ method: 'GET', pathIncludes: '/manifests/' }), 1);
    assert.equal(proxy.requests[0]?.status, 200);
  });

  await t.test('corrupt flips one byte in the middle and keeps Content-Length', async () => {
    proxy.setMode(/\/blobs\//, 'corrupt');
    const res = await get(`${proxy.url}${blobPath}`);
    assert.equal(res.status, 200);
    assert.equal(Number(res.headers.get('content-length')), bigLayer.size);
    assert.equal(res.body.length, bigLayer.size);
    assert.notEqual(sha256(res.body), bigLayer.digest);
    const direct = await get(`${r.url}${blobPath}`);
    const diffs: number[] = [];
    for (let i = 0; i < direct.body.length; i++) if (direct.body[i] !== res.body[i]) diffs.push(i);
    assert.deepEqual(diffs, [Math.floor(bigLayer.size / 2)]);
  });

  await t.test('truncate sends the headers and half the body, then cuts the connection', async () => {
    proxy.setMode(/\/blobs\//, 'truncate');
    const { received, complete, contentLength } = await new Promise<{ received: number; complete: boolean; contentLength: number }>(
      (resolve, reject) => {
        const req = http.get(`${proxy.url}${blobPath}`, { agent: false }, (res) => {
          let received = 0;
          res.on('data', (c: Buffer) => (received += c.length));
          res.on('error', () => undefined); // "aborted" is the point of this test
          res.on('close', () => resolve({ received, complete: res.complete, contentLength: Number(res.headers['content-length']) }));
        });
        req.on('error', reject);
        req.setTimeout(10_000, () => req.destroy(new Error('truncate test timed out')));
      },
    );
    assert.equal(contentLength, bigLayer.size);
    assert.equal(complete, false);
    assert.equal(received, Math.floor(bigLayer.size / 2));
    assert.deepEqual(
      { status: proxy.requests.at(-1)?.status, mode: proxy.requests.at(-1)?.mode },
      { status: 200, mode: 'truncate' },
    );
    await assert.rejects(fetch(`${proxy.url}${blobPath}`).then((res) => res.arrayBuffer()));
  });

  await t.test('fail answers an OCI error the given number of times', async () => {
    proxy.clearRules();
    const rule = proxy.setMode(/\/manifests\//, 'fail', { status: 503, times: 1 });
    const first = await get(`${proxy.url}/v2/${p.single.repo}/manifests/1.0`);
    assert.equal(first.status, 503);
    assert.match(first.body.toString('utf8'), /"code":"UNAVAILABLE"/);
    const second = await get(`${proxy.url}/v2/${p.single.repo}/manifests/1.0`, { accept: MEDIA.ociManifest });
    assert.equal(second.status, 200);
    assert.equal(rule.applied, 1);
    // `times` holds under concurrency: the corrupt-once rule damages exactly one of 8.
    const layer = p.single.layers[0];
    assert.ok(layer);
    const once = proxy.setMode(layer.digest, 'corrupt', { times: 1 });
    const bodies = await Promise.all(Array.from({ length: 8 }, () => get(`${proxy.url}/v2/${p.single.repo}/blobs/${layer.digest}`)));
    assert.equal(bodies.filter((b) => sha256(b.body) !== layer.digest).length, 1);
    assert.equal(once.applied, 1);
    proxy.clearRules();
  });

  await t.test('hang never answers', async () => {
    proxy.setMode(/\/manifests\//, 'hang');
    await assert.rejects(fetch(`${proxy.url}/v2/${p.single.repo}/manifests/1.0`, { signal: AbortSignal.timeout(300) }), /timeout|abort/i);
    const last = proxy.requests.at(-1);
    assert.equal(last?.mode, 'hang');
    assert.equal(last?.status, 0);
    proxy.clearRules();
  });

  await t.test('slow throttles the body', async () => {
    const layer = p.single.layers[0];
    assert.ok(layer);
    const bytesPerSecond = 500;
    proxy.setMode(/\/blobs\//, 'slow', { bytesPerSecond });
    const started = Date.now();
    const res = await get(`${proxy.url}/v2/${p.single.repo}/blobs/${layer.digest}`);
    const elapsed = Date.now() - started;
    assert.equal(sha256(res.body), layer.digest, 'slow, not damaged');
    assert.ok(elapsed >= (layer.size / bytesPerSecond) * 1000 * 0.8, `took ${elapsed} ms for ${layer.size} bytes`);
    proxy.clearRules();
  });
});

test('tamper proxy: redirect sends blob GETs to a CDN host that needs no Authorization', async () => {
  const r = reg('token');
  const p = images('token');
  tokenProxy = await startTamperProxy(r.url);
  stops.unshift(() => tokenProxy.stop());
  tokenProxy.setMode(/\/blobs\/sha256:/, 'redirect', { method: 'GET' });
  const layer = p.big.layers[0];
  assert.ok(layer);
  const blobUrl = `${tokenProxy.url}/v2/${p.big.repo}/blobs/${layer.digest}`;

  // Without a token the upstream's challenge passes through untouched.
  const challenge = await get(blobUrl);
  assert.equal(challenge.status, 401);
  assert.match(challenge.headers.get('www-authenticate') ?? '', /^Bearer realm=/);

  const authorization = await r.authorization(`repository:${p.big.repo}:pull`);
  assert.ok(authorization);
  const redirected = await get(blobUrl, { authorization });
  assert.equal(redirected.status, 307);
  const location = redirected.headers.get('location') ?? '';
  assert.ok(location.startsWith(`${tokenProxy.cdnUrl}/v2/${p.big.repo}/blobs/${layer.digest}?sig=`), location);
  assert.ok(tokenProxy.cdnUrl.startsWith('http://127.0.0.2:'));

  // A client that (correctly) drops Authorization on the cross-host redirect gets the bytes.
  const fromCdn = await get(location);
  assert.equal(fromCdn.status, 200);
  assert.equal(fromCdn.body.length, layer.size);
  assert.equal(sha256(fromCdn.body), layer.digest);
  assert.equal(fromCdn.headers.get('docker-content-digest'), null, 'a CDN sends no registry headers');
  assert.deepEqual(
    tokenProxy.cdnRequests.map((c) => ({ path: c.path, authorization: c.authorization, status: c.status })),
    [{ path: `/v2/${p.big.repo}/blobs/${layer.digest}`, authorization: undefined, status: 200 }],
  );
  // A leaked header is recorded, so a test can catch a proxy that forwards it.
  await get(location, { authorization });
  assert.equal(tokenProxy.cdnRequests.at(-1)?.authorization, authorization);
  // A Range request is honoured by the CDN (resumed downloads).
  const ranged = await get(location, { range: 'bytes=100-' });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.body.length, layer.size - 100);
  // Forged signatures are refused.
  assert.equal((await get(`${tokenProxy.cdnUrl}/v2/${p.big.repo}/blobs/${layer.digest}?sig=forged`)).status, 403);
  assert.equal(tokenProxy.count({ method: 'GET', pathIncludes: '/blobs/', status: 307 }), 1);
  assert.equal(tokenProxy.count({ method: 'GET', pathIncludes: '/blobs/', status: 401 }), 1);
});
