// Blob fills against a real Distribution upstream behind a tampering pass-through:
// one upstream GET for a herd, streaming before the fill ends, slow and leaving clients,
// and hostile upstreams (corrupt, truncated, failing, hanging) that must leave nothing cached.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';
import { download, pushBlob, randomBlob } from './helpers/http-client.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const MiB = 1024 * 1024;
let upstream: RegistryFixture;
let tamper: TamperProxy;
let images: PushedImages;
let proxy: OcirelayProcess;

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  const built = await buildImages(); // the 256 MiB layer
  images = await pushImages(upstream, built);
  tamper = await startTamperProxy(upstream.url);
  proxy = await startOcirelay({
    // The tamper proxy's CDN is another loopback address: trusted, or its redirects are refused.
    registries: { 'docker.io': { url: tamper.url, trustedHosts: [new URL(tamper.cdnUrl).host] } },
    upstream: { headersTimeout: '2s', idleTimeout: '2s', retries: 1, breakerMaxFails: 1000 },
  });
});

after(async () => {
  await proxy?.cleanup();
  await tamper?.stop();
  await upstream?.stop();
});

const blobFile = (digest: string) => path.join(proxy.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
const tempFiles = async () => readdir(path.join(proxy.dataDir, 'tmp'));
const blobUrl = (repo: string, digest: string) => `${proxy.url}/v2/${repo}/blobs/${digest}`;

async function coldBlob(repo: string, bytes: number): Promise<string> {
  return pushBlob(upstream.url, repo, randomBlob(bytes));
}

describe('one upstream download per digest', () => {
  test('16 concurrent cold GETs of the 256 MiB layer: one upstream GET, 16 verified bodies', async () => {
    const layer = images.big.layers[0]!;
    assert.ok(layer.size >= 256 * MiB);
    const url = blobUrl('library/big', layer.digest);
    // The memory fills keep for their readers, sampled while the herd runs: one fill's window
    // (4 MiB written + at most 4 batches being written, each 1 MiB plus the socket read that
    // crossed it, which may be up to 1 MiB itself).
    let sampling = true;
    let maxFillMemory = 0;
    const sampler = (async () => {
      for (let i = 0; i < 2000 && sampling; i++) {
        maxFillMemory = Math.max(maxFillMemory, await proxy.metric('ocirelay_fill_memory_bytes'));
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const results = await Promise.all(Array.from({ length: 16 }, () => download(url))).finally(() => (sampling = false));
    await sampler;
    assert.ok(maxFillMemory <= 14 * MiB, `fill memory peaked at ${maxFillMemory} bytes`);
    await eventually(async () => (await proxy.metric('ocirelay_fill_memory_bytes')) === 0, 'fill memory released once the fill and its readers are done');
    for (const r of results) {
      assert.equal(r.status, 200);
      assert.equal(r.aborted, false);
      assert.equal(r.size, layer.size);
      assert.equal(r.sha256, layer.digest);
    }
    assert.equal(tamper.count({ method: 'GET', pathIncludes: layer.digest }), 1, 'one GET reached the pass-through');
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: layer.digest }), 1, 'one GET reached the registry');
    assert.equal(await proxy.metric('ocirelay_coalesced_waiters_total'), 15);
    await eventually(() => existsSync(blobFile(layer.digest)), 'committed');
    // Warm now: 8 concurrent readers from disk, mixed with small blobs (file descriptors are
    // opened and closed all the time), all verified, and no more upstream traffic.
    const small = images.single.layers[0]!;
    const warm = await Promise.all([
      ...Array.from({ length: 8 }, () => download(url)),
      ...Array.from({ length: 8 }, () => download(blobUrl('library/single', small.digest))),
    ]);
    for (const w of warm.slice(0, 8)) assert.equal(w.sha256, layer.digest);
    for (const w of warm.slice(8)) assert.equal(w.sha256, small.digest);
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: layer.digest }), 1);
  });

  test('the first byte does not wait for the whole download', async () => {
    const digest = await coldBlob('stream/first-byte', 4 * MiB);
    tamper.setMode(digest, 'slow', { bytesPerSecond: 1 * MiB });
    try {
      let inFlightAtFirstByte = -1;
      let checked: Promise<void> | undefined;
      const r = await download(blobUrl('stream/first-byte', digest), {
        onChunk: () => {
          if (!checked) checked = proxy.metric('ocirelay_fills_in_flight').then((v) => void (inFlightAtFirstByte = v));
        },
      });
      await checked;
      assert.equal(r.sha256, digest);
      assert.ok(r.totalMs > 2500, `throttled download took ${r.totalMs} ms`);
      assert.ok(r.firstByteMs < r.totalMs / 3, `first byte after ${r.firstByteMs} ms of ${r.totalMs}`);
      assert.equal(inFlightAtFirstByte, 1, 'bytes reached the client while the fill was still running');
    } finally {
      tamper.clearRules();
    }
  });

  test('ranges at odd offsets follow a running fill (from its memory window) byte for byte', async () => {
    const size = 6 * MiB + 12345;
    const data = randomBlob(size);
    const digest = await pushBlob(upstream.url, 'stream/ranges', data);
    const url = blobUrl('stream/ranges', digest);
    // A throttled upstream keeps the fill running while the readers follow it: ranges that
    // start and end inside upstream chunks and across 1 MiB batches.
    tamper.setMode(digest, 'slow', { bytesPerSecond: 8 * MiB });
    try {
      const ranges: Array<[number, number]> = [
        [0, 0],
        [1, 65_536],
        [65_535, 65_537],
        [MiB - 3, MiB + 70_000],
        [100_001, 3 * MiB + 777],
        [5 * MiB + 1, size - 1],
      ];
      const full = download(url);
      const parts = await Promise.all(
        ranges.map(async ([a, b]) => {
          const res = await fetch(url, { headers: { range: `bytes=${a}-${b}` } });
          return { status: res.status, contentRange: res.headers.get('content-range'), body: Buffer.from(await res.arrayBuffer()) };
        }),
      );
      for (const [i, [a, b]] of ranges.entries()) {
        const p = parts[i]!;
        assert.equal(p.status, 206);
        assert.equal(p.contentRange, `bytes ${a}-${b}/${size}`);
        assert.ok(p.body.equals(data.subarray(a, b + 1)), `bytes ${a}-${b} match the blob`);
      }
      assert.equal((await full).sha256, digest);
    } finally {
      tamper.clearRules();
    }
    assert.equal(tamper.count({ method: 'GET', pathIncludes: digest }), 1, 'one upstream GET for all of them');
  });

  test('a slow client neither slows the fill nor is cut off; a client leaving does not cancel it', async () => {
    const size = 64 * MiB;
    const digest = await coldBlob('stream/slow', size);
    const url = blobUrl('stream/slow', digest);
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    // Reads its first chunk, then stalls until the others are done.
    const slow = download(url, { onChunk: (n) => (n < 4 * MiB ? gate : undefined) });
    const leaving = download(url, { abortAfter: 1 * MiB });
    const fast = await Promise.all(Array.from({ length: 3 }, () => download(url)));
    for (const f of fast) assert.equal(f.sha256, digest);
    assert.equal((await leaving).aborted, true);
    // The fill finished while the slow client was still stalled.
    await eventually(() => existsSync(blobFile(digest)), 'committed while a client was stalled');
    await eventually(async () => (await proxy.metric('ocirelay_fills_in_flight')) === 0, 'no fill in flight');
    // The slow reader is still attached, so the fill's last window is kept for it...
    assert.ok((await proxy.metric('ocirelay_fill_memory_bytes')) > 0, 'the window is kept while a reader remains');
    release();
    const s = await slow;
    assert.equal(s.aborted, false);
    assert.equal(s.size, size);
    assert.equal(s.sha256, digest);
    // ...and released when it is gone. It read the first part of the blob from the file (it
    // stalled far behind the window) and the end from memory: both arrived intact.
    await eventually(async () => (await proxy.metric('ocirelay_fill_memory_bytes')) === 0, 'fill memory released');
    assert.equal(tamper.count({ method: 'GET', pathIncludes: digest }), 1);
  });

  test('a client leaving alone does not cancel the fill', async () => {
    const digest = await coldBlob('stream/alone', 16 * MiB);
    const r = await download(blobUrl('stream/alone', digest), { abortAfter: 512 * 1024 });
    assert.equal(r.aborted, true);
    await eventually(() => existsSync(blobFile(digest)), 'the fill completed and committed without any client');
    const again = await download(blobUrl('stream/alone', digest));
    assert.equal(again.sha256, digest);
    assert.equal(tamper.count({ method: 'GET', pathIncludes: digest }), 1);
  });
});

describe('hostile upstreams: clients see errors, nothing is cached', () => {
  for (const mode of ['corrupt', 'truncate'] as const) {
    test(`${mode}: every client stream of the fill is aborted and no byte is cached`, async () => {
      const size = 8 * MiB;
      const digest = await coldBlob(`hostile/${mode}`, size);
      const url = blobUrl(`hostile/${mode}`, digest);
      const metricBefore = await proxy.metric('ocirelay_fills_total', { result: mode === 'corrupt' ? 'digest_mismatch' : 'truncated' });
      tamper.setMode(digest, mode, { method: 'GET' });
      try {
        const results = await Promise.all(Array.from({ length: 3 }, () => download(url)));
        for (const r of results) {
          assert.equal(r.aborted, true, 'the transfer must not end cleanly');
          assert.ok(r.size < size, 'the last byte is never delivered');
        }
      } finally {
        tamper.clearRules();
      }
      assert.equal(existsSync(blobFile(digest)), false, 'nothing committed');
      assert.deepEqual(await tempFiles(), [], 'no temp file left');
      assert.equal(await proxy.metric('ocirelay_fills_total', { result: mode === 'corrupt' ? 'digest_mismatch' : 'truncated' }), metricBefore + 1);
      if (mode === 'corrupt') assert.ok((await proxy.metric('ocirelay_digest_mismatches_total', { kind: 'blob' })) >= 1);
      // The upstream heals: the next pull gets the right bytes.
      const ok = await download(url);
      assert.equal(ok.aborted, false);
      assert.equal(ok.sha256, digest);
    });
  }

  test('an upstream answering 503 gives an OCI UNAVAILABLE error, and nothing is cached', async () => {
    const digest = await coldBlob('hostile/fail', 1 * MiB);
    tamper.setMode(digest, 'fail', { status: 503 });
    try {
      const r = await download(blobUrl('hostile/fail', digest), { keep: true });
      assert.equal(r.status, 503);
      assert.equal((JSON.parse(r.body!.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAVAILABLE');
    } finally {
      tamper.clearRules();
    }
    assert.equal(existsSync(blobFile(digest)), false);
  });

  test('a hanging upstream times out into an OCI error instead of hanging the client', async () => {
    const digest = await coldBlob('hostile/hang', 1 * MiB);
    tamper.setMode(digest, 'hang', { method: 'GET' });
    try {
      const r = await download(blobUrl('hostile/hang', digest), { keep: true, timeoutMs: 30_000 });
      assert.equal(r.status, 503);
      assert.equal((JSON.parse(r.body!.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAVAILABLE');
    } finally {
      tamper.clearRules();
    }
    assert.equal(existsSync(blobFile(digest)), false);
    assert.deepEqual(await tempFiles(), []);
  });

  test('a redirect to a CDN host is followed without our Authorization, content verified', async () => {
    const digest = await coldBlob('redirect/app', 2 * MiB);
    tamper.setMode(digest, 'redirect', { method: 'GET' });
    try {
      const r = await download(blobUrl('redirect/app', digest));
      assert.equal(r.sha256, digest);
      const cdn = tamper.cdnRequests.filter((c) => c.path.includes(digest.slice(7)));
      assert.equal(cdn.length, 1);
      assert.equal(cdn[0]!.authorization, undefined);
    } finally {
      tamper.clearRules();
    }
  });
});

describe('hostile upstreams: manifests', () => {
  async function putManifest(repo: string, tag: string, manifest: object): Promise<string> {
    const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } }));
    const configDigest = await pushBlob(upstream.url, repo, config);
    const body = Buffer.from(JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [],
      ...manifest,
    }));
    const res = await fetch(`${upstream.url}/v2/${repo}/manifests/${tag}`, {
      method: 'PUT',
      headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' },
      body: new Uint8Array(body) as Uint8Array<ArrayBuffer>,
    });
    await res.arrayBuffer();
    assert.equal(res.status, 201, 'manifest pushed');
    return res.headers.get('docker-content-digest')!;
  }
  const ACCEPT = 'application/vnd.oci.image.manifest.v1+json';

  test('a manifest over 4 MiB is refused, and not cached', async () => {
    // Distribution itself refuses to store such a manifest, so a hostile upstream of our own
    // serves one: by tag with a Content-Length, and by digest chunked (no length up front).
    const big = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: ACCEPT, annotations: { pad: 'x'.repeat(4 * MiB + 10) } }));
    const digest = `sha256:${createHash('sha256').update(big).digest('hex')}`;
    const hostile = http.createServer((req, res) => {
      if (req.url?.includes('/manifests/v1')) res.writeHead(200, { 'content-type': ACCEPT, 'content-length': big.length, 'docker-content-digest': digest });
      else res.writeHead(200, { 'content-type': ACCEPT });
      res.end(req.method === 'HEAD' ? undefined : big);
    });
    await new Promise<void>((r) => hostile.listen(0, '127.0.0.1', r));
    const p2 = await startOcirelay({ registries: { 'huge.test': { url: `http://127.0.0.1:${(hostile.address() as AddressInfo).port}` } } });
    try {
      for (const ref of ['v1', digest]) {
        const r = await download(`${p2.url}/v2/huge.test/huge/manifest/manifests/${ref}`, { headers: { accept: ACCEPT }, keep: true });
        assert.equal(r.status, 502, ref);
        assert.equal((JSON.parse(r.body!.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'MANIFEST_INVALID');
      }
      assert.equal(existsSync(path.join(p2.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7))), false);
    } finally {
      await p2.cleanup();
      hostile.close();
    }
  });

  test('a corrupted manifest is refused by tag and by digest, and never cached', async () => {
    const digest = await putManifest('corrupt/manifest', 'v1', { annotations: { note: 'will be corrupted on the wire' } });
    const before = await proxy.metric('ocirelay_digest_mismatches_total', { kind: 'manifest' });
    tamper.setMode('/corrupt/manifest/manifests/', 'corrupt', { method: 'GET' });
    try {
      for (const ref of ['v1', digest]) {
        const r = await download(`${proxy.url}/v2/corrupt/manifest/manifests/${ref}`, { headers: { accept: ACCEPT }, keep: true });
        assert.equal(r.status, 502, ref);
        assert.equal((JSON.parse(r.body!.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'DIGEST_INVALID');
      }
    } finally {
      tamper.clearRules();
    }
    assert.equal(await proxy.metric('ocirelay_digest_mismatches_total', { kind: 'manifest' }), before + 2);
    assert.equal(existsSync(blobFile(digest)), false);
    const good = await download(`${proxy.url}/v2/corrupt/manifest/manifests/v1`, { headers: { accept: ACCEPT } });
    assert.equal(good.status, 200);
    assert.equal(good.sha256, digest);
  });
});

