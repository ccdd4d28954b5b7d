// Tag revalidation, serving stale through upstream trouble and outage, restarts, SIGTERM
// and kill -9 in the middle of fills. Real Distribution upstream behind a tampering pass-through.
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';
import { download, pushBlob, randomBlob } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const MiB = 1024 * 1024;
const ACCEPT = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let dir: string;
let upstream: RegistryFixture;
let tamper: TamperProxy;
let images: PushedImages;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-resilience-'));
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, await buildImages({ bigLayerBytes: 4 * MiB }));
  tamper = await startTamperProxy(upstream.url);
});
after(async () => {
  await tamper?.stop();
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const blobFile = (p: OcirelayProcess, digest: string) => path.join(p.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

describe('tag revalidation', () => {
  let proxy: OcirelayProcess;
  before(async () => {
    proxy = await startOcirelay({ registries: { 'docker.io': { url: tamper.url, tagTTL: '1s' } }, upstream: { retries: 0, breakerMaxFails: 1000 } });
  });
  after(async () => proxy?.cleanup());

  test('within tagTTL no upstream request; after it a HEAD, and a GET only when the digest moved', async () => {
    tamper.reset();
    const url = `${proxy.url}/v2/library/single/manifests/1.0`;
    const tagPath = '/v2/library/single/manifests/1.0';
    const first = await fetch(url, { headers: { accept: ACCEPT } });
    assert.equal(first.headers.get('docker-content-digest'), images.single.manifestDigest);
    await first.arrayBuffer();
    assert.equal(tamper.count({ method: 'GET', pathIncludes: tagPath }), 1);

    for (let i = 0; i < 5; i++) await (await fetch(url, { headers: { accept: ACCEPT } })).arrayBuffer();
    assert.equal(tamper.count({ pathIncludes: tagPath }), 1, 'fresh tag: served without asking the upstream');

    await sleep(1100);
    const revalidated = await fetch(url, { headers: { accept: ACCEPT } });
    await revalidated.arrayBuffer();
    assert.equal(revalidated.headers.get('docker-content-digest'), images.single.manifestDigest);
    assert.equal(tamper.count({ method: 'HEAD', pathIncludes: tagPath }), 1, 'revalidated with a HEAD');
    assert.equal(tamper.count({ method: 'GET', pathIncludes: tagPath }), 1, 'no GET: the digest did not change');

    // Move the tag upstream: the v2s2 image's manifest is pushed as library/single:1.0.
    const moved = await skopeoCopy(`docker://${upstream.host}/library/v2s2:1.0`, `docker://${upstream.host}/library/single:1.0`, {
      srcTlsVerify: false,
      destTlsVerify: false,
      preserveDigests: true,
      timeoutMs: 60_000,
    });
    assert.ok(moved);
    await sleep(1100);
    const after = await fetch(url, { headers: { accept: ACCEPT } });
    await after.arrayBuffer();
    assert.equal(after.headers.get('docker-content-digest'), images.v2s2.manifestDigest);
    assert.equal(tamper.count({ method: 'HEAD', pathIncludes: tagPath }), 2);
    assert.equal(tamper.count({ method: 'GET', pathIncludes: tagPath }), 2, 'digest moved: one GET');
    await proxy.waitForLog((l) => l.msg === 'tag moved' && l.to === images.v2s2.manifestDigest);
    // Put the tag back for the other tests.
    await skopeoCopy(`docker://${upstream.host}/library/single@${images.single.manifestDigest}`, `docker://${upstream.host}/library/single:1.0`, {
      srcTlsVerify: false,
      destTlsVerify: false,
      preserveDigests: true,
      timeoutMs: 60_000,
    });
  });

  for (const [status, reason] of [
    [503, 'http_503'],
    [429, 'rate_limited'],
  ] as const) {
    test(`an upstream answering ${status} gets the cached tag served stale, with a log line and a metric`, async () => {
      const url = `${proxy.url}/v2/library/multi/manifests/1.0`;
      const warm = await fetch(url, { headers: { accept: ACCEPT } });
      await warm.arrayBuffer();
      assert.equal(warm.status, 200);
      await sleep(1100);
      tamper.setMode('/manifests/', 'fail', { status, headers: status === 429 ? { 'retry-after': '3600' } : {} });
      try {
        const stale = await fetch(url, { headers: { accept: ACCEPT } });
        await stale.arrayBuffer();
        assert.equal(stale.status, 200);
        assert.equal(stale.headers.get('docker-content-digest'), images.multi.manifestDigest);
        assert.ok((await proxy.metric('ocirelay_stale_served_total', { registry: 'docker.io', reason })) >= 1);
        await proxy.waitForLog((l) => l.reason === reason && String(l.msg).includes('stale'));
        await proxy.waitForLog((l) => l.msg === 'request' && l.path === '/v2/library/multi/manifests/1.0' && l.cache === 'stale');
      } finally {
        tamper.clearRules();
      }
    });
  }
});

describe('upstream outage and restart', () => {
  let own: RegistryFixture;
  let ownImages: PushedImages;
  let proxy: OcirelayProcess;
  before(async () => {
    own = await startRegistry({ auth: 'none' });
    ownImages = await pushImages(own, await buildImages({ bigLayerBytes: 4 * MiB }));
    proxy = await startOcirelay({
      registries: { 'docker.io': { url: own.url, tagTTL: '1s' } },
      upstream: { connectTimeout: '1s', retries: 1, breakerMaxFails: 3, breakerReset: '1m' },
    });
  });
  after(async () => {
    await proxy?.cleanup();
    await own?.stop();
  });

  test('tags and digests pulled before still pull with the upstream stopped, and after a restart', async () => {
    const out1 = path.join(dir, 'before');
    await skopeoCopy(`docker://${proxy.host}/library/single:1.0`, `dir:${out1}`, { srcTlsVerify: false, timeoutMs: 60_000 });
    await skopeoCopy(`docker://${proxy.host}/library/multi:1.0`, `dir:${path.join(dir, 'multi-before')}`, { srcTlsVerify: false, timeoutMs: 60_000 });
    await own.stop();
    await sleep(1100); // past tagTTL: every tag must be revalidated, and cannot be

    const byTag = path.join(dir, 'down-tag');
    await skopeoCopy(`docker://${proxy.host}/library/single:1.0`, `dir:${byTag}`, { srcTlsVerify: false, timeoutMs: 60_000 });
    await skopeoCopy(`docker://${proxy.host}/library/single@${ownImages.single.manifestDigest}`, `dir:${path.join(dir, 'down-digest')}`, {
      srcTlsVerify: false,
      timeoutMs: 60_000,
    });
    await skopeoCopy(`docker://${proxy.host}/library/multi:1.0`, `dir:${path.join(dir, 'multi-down')}`, { srcTlsVerify: false, timeoutMs: 60_000 });
    assert.ok((await proxy.metric('ocirelay_stale_served_total', { registry: 'docker.io' })) >= 1);
    // Something never cached is an OCI UNAVAILABLE error, quickly (the circuit opened).
    const t0 = Date.now();
    const missing = await fetch(`${proxy.url}/v2/library/never/manifests/1.0`);
    assert.equal(missing.status, 503);
    assert.equal(((await missing.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAVAILABLE');
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(await proxy.metric('ocirelay_upstream_circuit_open', { registry: 'docker.io' }), 1);

    const restarted = await proxy.restart();
    try {
      await skopeoCopy(`docker://${restarted.host}/library/single:1.0`, `dir:${path.join(dir, 'restarted')}`, { srcTlsVerify: false, timeoutMs: 60_000 });
      const m = await fetch(`${restarted.url}/v2/library/multi/manifests/${ownImages.multi.manifestDigest}`, { headers: { accept: ACCEPT } });
      assert.equal(m.status, 200);
      await m.arrayBuffer();
      const layer = ownImages.single.layers[0]!;
      const b = await download(`${restarted.url}/v2/library/single/blobs/${layer.digest}`);
      assert.equal(b.sha256, layer.digest);
    } finally {
      await restarted.cleanup();
    }
  });
});

describe('shutdown and crashes', () => {
  test('SIGTERM lets an in-flight pull and its fill finish, then exits cleanly', async () => {
    const digest = await pushBlob(upstream.url, 'shutdown/app', randomBlob(3 * MiB));
    const proxy = await startOcirelay({ registries: { 'docker.io': { url: tamper.url } } });
    try {
      tamper.setMode(digest, 'slow', { bytesPerSecond: 1 * MiB });
      const pull = download(`${proxy.url}/v2/shutdown/app/blobs/${digest}`);
      await sleep(700);
      const exited = proxy.stop('SIGTERM');
      await sleep(200);
      await assert.rejects(fetch(`${proxy.url}/v2/`), 'no new connections once shutting down');
      const r = await pull;
      assert.equal(r.aborted, false);
      assert.equal(r.sha256, digest);
      assert.deepEqual(await exited, { code: 0, signal: null });
      assert.ok(existsSync(blobFile(proxy, digest)), 'the fill was committed before exit');
      assert.deepEqual(await readdir(path.join(proxy.dataDir, 'tmp')), []);
      await proxy.waitForLog((l) => l.msg === 'shut down');
    } finally {
      tamper.clearRules();
      await proxy.cleanup();
    }
  });

  test('kill -9 during a fill: after restart nothing partial survives and the blob fills again', async () => {
    const digest = await pushBlob(upstream.url, 'crash/app', randomBlob(4 * MiB));
    const proxy = await startOcirelay({ registries: { 'docker.io': { url: tamper.url } } });
    let restarted: OcirelayProcess | undefined;
    try {
      tamper.setMode(digest, 'slow', { bytesPerSecond: 1 * MiB });
      const pull = download(`${proxy.url}/v2/crash/app/blobs/${digest}`);
      await sleep(1000);
      assert.equal((await readdir(path.join(proxy.dataDir, 'tmp'))).length, 1, 'a fill is in flight');
      await proxy.stop('SIGKILL');
      const r = await pull.catch(() => ({ aborted: true, size: 0 }));
      assert.equal(r.aborted, true);
      tamper.clearRules();
      restarted = await startOcirelay({ registries: { 'docker.io': { url: tamper.url } } }, { dir: proxy.dir, port: proxy.port });
      assert.deepEqual(await readdir(path.join(restarted.dataDir, 'tmp')), [], 'leftover removed at start');
      assert.equal(existsSync(blobFile(restarted, digest)), false);
      await restarted.waitForLog((l) => l.msg === 'removed leftovers of interrupted fills');
      const again = await download(`${restarted.url}/v2/crash/app/blobs/${digest}`);
      assert.equal(again.sha256, digest);
    } finally {
      tamper.clearRules();
      await restarted?.cleanup();
      await proxy.cleanup();
    }
  });
});
