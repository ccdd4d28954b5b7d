// The disk budget under real pulls: eviction order (unreferenced first, then least recently
// used, recency across restarts), pinned and open content kept, concurrent pulls while eviction
// runs, a full disk (a real tmpfs) that degrades to streaming through, and kill -9 in the middle.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';
import { download, pushBlob, randomBlob } from './helpers/http-client.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const MiB = 1024 * 1024;
let dir: string;
let upstream: RegistryFixture;
let tamper: TamperProxy;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-lifecycle-'));
  upstream = await startRegistry({ auth: 'none' });
  tamper = await startTamperProxy(upstream.url);
});
after(async () => {
  await tamper?.stop();
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

const blobFile = (p: OcirelayProcess, digest: string) => path.join(p.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
const digestsOf = (img: RandomImage) => [img.manifestDigest, img.configDigest, ...img.layers.map((l) => l.digest)];
const allCached = (p: OcirelayProcess, img: RandomImage) => digestsOf(img).every((d) => existsSync(blobFile(p, d)));
const noneCached = (p: OcirelayProcess, img: RandomImage) => img.layers.every((l) => !existsSync(blobFile(p, l.digest)));

async function dirBytes(d: string): Promise<number> {
  let n = 0;
  for (const e of await readdir(d, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    n += (await stat(path.join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)).catch(() => ({ size: 0 }))).size;
  }
  return n;
}

const budget = (maxBytes: number) => ({ cache: { maxBytes, memoryBytes: 1 * MiB, highWatermark: 0.9, lowWatermark: 0.8 } });

let seq = 0;
const image = (layers: number[]) => pushRandomImage(upstream.url, `lifecycle/img${++seq}`, 'v1', layers);

describe('eviction order', () => {
  test('content no manifest refers to goes first', async () => {
    // 11 MiB (evict at 9.9, down to 8.8): A and B (8 MiB of layers plus their manifests and
    // configs) fit under the low watermark even while both of B's layers are in flight and
    // counted, so only the unreferenced blobs have to go, however the fills interleave.
    const proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url } }, ...budget(11 * MiB) });
    try {
      const a = await image([2 * MiB, 2 * MiB]);
      await pullVerified(proxy.url, a);
      const raw = [await pushBlob(upstream.url, 'lifecycle/raw', randomBlob(2 * MiB)), await pushBlob(upstream.url, 'lifecycle/raw', randomBlob(2 * MiB))];
      for (const d of raw) assert.equal((await download(`${proxy.url}/v2/lifecycle/raw/blobs/${d}`)).sha256, d);
      await pullVerified(proxy.url, a); // A is now the most recently used
      const b = await image([2 * MiB, 2 * MiB]);
      await pullVerified(proxy.url, b);
      await eventually(() => raw.every((d) => !existsSync(blobFile(proxy, d))), 'unreferenced blobs evicted');
      await eventually(() => allCached(proxy, b), 'B committed');
      assert.ok(allCached(proxy, a) && allCached(proxy, b), 'referenced images kept');
      assert.equal(await proxy.metric('ocirelay_evictions_total', { reason: 'unreferenced' }), 2);
      assert.equal(await proxy.metric('ocirelay_evictions_total', { reason: 'lru' }), 0);
      assert.ok((await proxy.metric('ocirelay_cache_bytes', { tier: 'disk' })) <= 11 * MiB * 0.9);
    } finally {
      await proxy.cleanup();
    }
  });

  test('then the least recently used, with recency surviving a restart; pinned content is never evicted', async () => {
    // 16 MiB (evict at 14.4, down to 12.8): pinned, A and B (12 MiB of layers) fit; C's 4 MiB
    // push it over, and evicting B alone gets back under the low watermark even when both of
    // C's layers are in flight and counted, so A must stay whatever the fills' timing.
    let proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url } }, ...budget(16 * MiB), admin: { token: 'lifecycle-token' } });
    try {
      const pinned = await image([2 * MiB, 2 * MiB]);
      const a = await image([2 * MiB, 2 * MiB]);
      const b = await image([2 * MiB, 2 * MiB]);
      await pullVerified(proxy.url, pinned);
      await eventually(() => allCached(proxy, pinned), 'pinned image committed');
      const pin = await fetch(`${proxy.adminUrl}/api/v1/pin`, {
        method: 'POST',
        headers: { authorization: 'Bearer lifecycle-token', 'content-type': 'application/json' },
        body: JSON.stringify({ image: `docker.io/${pinned.repo}:v1` }),
      });
      assert.equal(pin.status, 200);
      await pin.arrayBuffer();
      await pullVerified(proxy.url, a);
      await pullVerified(proxy.url, b);
      await eventually(() => allCached(proxy, a) && allCached(proxy, b), 'A and B committed');
      await new Promise((r) => setTimeout(r, 20));
      await pullVerified(proxy.url, a); // A more recent than B
      proxy = await proxy.restart(); // graceful: recency is persisted as file times
      const c = await image([2 * MiB, 2 * MiB]);
      await pullVerified(proxy.url, c);
      await eventually(() => allCached(proxy, c) && noneCached(proxy, b), 'C committed, B evicted');
      assert.ok(noneCached(proxy, b), 'B, the least recently used, evicted');
      assert.ok(allCached(proxy, a), 'A, used after B before the restart, kept');
      assert.ok(allCached(proxy, c));
      assert.ok(allCached(proxy, pinned), 'pinned: never evicted, although the oldest');
      assert.ok((await proxy.metric('ocirelay_evictions_total', { reason: 'lru' })) >= 1);
    } finally {
      await proxy.cleanup();
    }
  });

  test('a blob that is being read is not deleted under its reader', async () => {
    // Large enough that the server is still reading the file while the client stalls
    // (loopback socket buffers hold a few MiB).
    const proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url } }, ...budget(40 * MiB) });
    try {
      const old = await pushBlob(upstream.url, 'lifecycle/reading', randomBlob(24 * MiB));
      assert.equal((await download(`${proxy.url}/v2/lifecycle/reading/blobs/${old}`)).sha256, old);
      await eventually(() => existsSync(blobFile(proxy, old)), 'committed');
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      const slow = download(`${proxy.url}/v2/lifecycle/reading/blobs/${old}`, { onChunk: (n) => (n < 1 * MiB ? gate : undefined) });
      await new Promise((r) => setTimeout(r, 300));
      // Push the cache over budget: the blob being read is the oldest and unreferenced.
      for (let i = 0; i < 3; i++) {
        const d = await pushBlob(upstream.url, 'lifecycle/reading', randomBlob(8 * MiB));
        assert.equal((await download(`${proxy.url}/v2/lifecycle/reading/blobs/${d}`)).sha256, d);
      }
      await proxy.waitForLog((l) => l.msg === 'evicted from disk cache');
      assert.ok((await proxy.metric('ocirelay_evictions_total')) >= 1, 'something else was evicted');
      assert.ok(existsSync(blobFile(proxy, old)), 'still on disk while it is read');
      release();
      const r = await slow;
      assert.equal(r.aborted, false);
      assert.equal(r.sha256, old);
    } finally {
      await proxy.cleanup();
    }
  });
});

describe('budget under concurrent pulls', () => {
  test('10 images (3x the budget) pulled concurrently by skopeo: no pull fails, no wrong byte, the budget holds within one blob', async () => {
    const max = 20 * MiB;
    const proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url } }, ...budget(max), log: { level: 'info' } });
    try {
      const imgs: RandomImage[] = [];
      for (let i = 0; i < 10; i++) imgs.push(await image([3 * MiB, 3 * MiB]));
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, await dirBytes(path.join(proxy.dataDir, 'blobs')).catch(() => 0));
          await new Promise((r) => setTimeout(r, 25));
        }
      })();
      await Promise.all(
        imgs.map((img, i) => skopeoCopy(`docker://${proxy.host}/${img.repo}:${img.tag}`, `dir:${path.join(dir, `concurrent-${i}`)}`, { srcTlsVerify: false, timeoutMs: 120_000 })),
      );
      sampling = false;
      await sampler;
      for (const [i, img] of imgs.entries()) {
        const out = path.join(dir, `concurrent-${i}`);
        for (const l of img.layers) {
          const b = await readFile(path.join(out, l.digest.slice(7)));
          assert.equal(`sha256:${createHash('sha256').update(b).digest('hex')}`, l.digest);
        }
      }
      // Commits are admitted under the budget; manifests (a few hundred bytes each) are the slack.
      assert.ok(peak <= max + 64 * 1024, `peak ${peak} bytes on disk for a ${max}-byte budget`);
      assert.ok((await proxy.metric('ocirelay_evictions_total')) > 0);
      assert.ok((await proxy.metric('ocirelay_cache_bytes', { tier: 'disk' })) <= max);
      // Everything served was verified: no fill failed.
      assert.equal(await proxy.metric('ocirelay_fills_total', { result: 'digest_mismatch' }), 0);
    } finally {
      await proxy.cleanup();
    }
  });
});

describe('disk trouble', () => {
  test('a full disk: pulls stream through uncached, /readyz and metrics say so, caching resumes when space returns', async () => {
    const mnt = path.join(dir, 'tmpfs');
    await mkdir(mnt, { recursive: true });
    // A real small filesystem. Needs root (CI and the test machines run as root); failing loudly otherwise.
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=12m', 'tmpfs', mnt]);
    let proxy: OcirelayProcess | undefined;
    try {
      proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url } }, dataDir: path.join(mnt, 'data') });
      const img = await image([4 * MiB]);
      const junk = path.join(mnt, 'junk');
      await writeFile(junk, Buffer.alloc(9 * MiB)); // leaves less than the layer's 4 MiB free
      await skopeoCopy(`docker://${proxy.host}/${img.repo}:${img.tag}`, `dir:${path.join(dir, 'full-disk')}`, { srcTlsVerify: false, timeoutMs: 60_000 });
      const layer = img.layers[0]!.digest;
      const b = await readFile(path.join(dir, 'full-disk', layer.slice(7)));
      assert.equal(`sha256:${createHash('sha256').update(b).digest('hex')}`, layer);
      assert.equal(existsSync(blobFile(proxy, layer)), false, 'not cached');
      assert.deepEqual(await readdir(path.join(proxy.dataDir, 'tmp')), []);
      assert.equal(await proxy.metric('ocirelay_disk_writable'), 0);
      assert.ok((await proxy.metric('ocirelay_disk_errors_total', { code: 'ENOSPC' })) >= 1);
      const ready = await fetch(`${proxy.url}/readyz`);
      const rj = (await ready.json()) as { status: string; problems: string[] };
      assert.equal(ready.status, 200, 'still serving pulls');
      assert.equal(rj.status, 'degraded');
      assert.match(rj.problems.join(' '), /ENOSPC/);
      await proxy.waitForLog((l) => String(l.msg).startsWith('disk cache not writable'));
      // A second pull also works (streams through again).
      assert.equal((await download(`${proxy.url}/v2/${img.repo}/blobs/${layer}`)).sha256, layer);

      await rm(junk);
      await proxy.waitForLog((l) => l.msg === 'disk cache writable again: caching resumed', 15_000);
      assert.equal(await proxy.metric('ocirelay_disk_writable'), 1);
      assert.equal((await download(`${proxy.url}/v2/${img.repo}/blobs/${layer}`)).sha256, layer);
      await eventually(() => existsSync(blobFile(proxy!, layer)), 'cached again');
      const ready2 = (await (await fetch(`${proxy.url}/readyz`)).json()) as { status: string };
      assert.equal(ready2.status, 'ready');
    } finally {
      await proxy?.cleanup();
      execFileSync('umount', [mnt]);
    }
  });
});

describe('crashes', () => {
  test('kill -9 during fills and evictions: after restart the index matches the disk and nothing partial survives', async () => {
    const imgs: RandomImage[] = [];
    for (let i = 0; i < 6; i++) imgs.push(await pushRandomImage(upstream.url, `crash/img${i}`, 'v1', [3 * MiB, 3 * MiB]));
    const config = { registries: { 'docker.io': { url: tamper.url } }, ...budget(16 * MiB) };
    await mkdir(path.join(dir, 'crash'), { recursive: true });
    const proxy = await startOcirelay(config, { dir: path.join(dir, 'crash') });
    try {
      for (const img of imgs.slice(0, 3)) await pullVerified(proxy.url, img);
      tamper.setMode(/crash\/img[345]\/blobs\//, 'slow', { bytesPerSecond: 2 * MiB });
      const pulls = imgs.slice(3).map((img) => pullVerified(proxy.url, img).catch((e: Error) => e));
      await new Promise((r) => setTimeout(r, 1500)); // fills in flight, evictions running
      assert.ok((await readdir(path.join(proxy.dataDir, 'tmp'))).length > 0, 'fills were in flight');
      await proxy.stop('SIGKILL');
      await Promise.all(pulls);
      tamper.clearRules();

      const restarted = await startOcirelay(config, { dir: proxy.dir });
      try {
        assert.deepEqual(await readdir(path.join(restarted.dataDir, 'tmp')), [], 'no partial fill survives');
        // Every committed file is exactly its digest.
        const blobsDir = path.join(restarted.dataDir, 'blobs', 'sha256');
        for (const shard of await readdir(blobsDir)) {
          for (const f of await readdir(path.join(blobsDir, shard))) {
            const b = await readFile(path.join(blobsDir, shard, f));
            assert.equal(createHash('sha256').update(b).digest('hex'), f, `blob ${f} intact`);
          }
        }
        // The index agrees with the disk: every listed manifest is there; pulls work for all.
        const list = (await (await fetch(`${restarted.adminUrl}/api/v1/images`)).json()) as { images: Array<{ digest: string }> };
        for (const i of list.images) assert.ok(existsSync(blobFile(restarted, i.digest)), `listed manifest ${i.digest} on disk`);
        for (const img of imgs) await pullVerified(restarted.url, img);
        assert.ok((await restarted.metric('ocirelay_cache_bytes', { tier: 'disk' })) <= 16 * MiB);
      } finally {
        await restarted.cleanup();
      }
    } finally {
      tamper.clearRules();
      await proxy.cleanup();
    }
  });
});
