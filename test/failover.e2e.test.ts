// Failover reads (issue 10, item 4) with real components: a seeded Distribution registry as the
// upstream, ocirelay A (a region that pulled images), and regions that name A as a failover
// peer (through a tampering pass-through, so a test can count what reached A or corrupt it).
// Region D reads from A only when its upstream fails; region E reads from A first.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startContainerd, writeHostsToml, type ContainerdFixture } from './fixtures/containerd.ts';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { freePort } from './fixtures/ports.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const MiB = 1024 * 1024;
const PEER_TOKEN = 'd-reads-from-a-0123456789';
let dir: string;
let upstream: RegistryFixture;
let images: PushedImages;
let a: OcirelayProcess;
let toA: TamperProxy;
let d: OcirelayProcess;
let containerd: ContainerdFixture;
/** A plain Distribution registry with Basic auth as a `kind: registry` DR vault (content under mirror/). */
let vault: RegistryFixture;

async function pullDir(from: OcirelayProcess, ref: string): Promise<string> {
  const out = await mkdtemp(path.join(dir, 'pull-'));
  await skopeoCopy(`docker://${from.host}/docker.io/${ref}`, `dir:${out}`, { srcTlsVerify: false, timeoutMs: 120_000 });
  return out;
}

/** Every file of a `dir:` copy named after a digest hashes to it; returns the manifest's digest. */
async function verifyDirCopy(out: string): Promise<string> {
  for (const f of await readdir(out)) {
    if (!/^[a-f0-9]{64}$/.test(f)) continue;
    assert.equal(createHash('sha256').update(await readFile(path.join(out, f))).digest('hex'), f, `blob ${f} intact`);
  }
  return `sha256:${createHash('sha256').update(await readFile(path.join(out, 'manifest.json'))).digest('hex')}`;
}

const blobFile = (p: OcirelayProcess, digest: string) => path.join(p.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-failover-'));
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, await buildImages({ bigLayerBytes: 4 * MiB }));
  a = await startOcirelay({ region: 'a', registries: { 'docker.io': { url: upstream.url } } });
  // Region A pulls every image once (skopeo, this machine's platform of the index).
  for (const name of ['single', 'v2s2', 'multi', 'big']) await pullDir(a, `library/${name}:1.0`);
  toA = await startTamperProxy(a.url);
  d = await startOcirelay({
    region: 'd',
    registries: { 'docker.io': { url: upstream.url } },
    upstream: { retries: 0, connectTimeout: '2s' },
    peers: { a: { url: toA.url, token: PEER_TOKEN, failover: true, replicate: false } },
  });
  containerd = await startContainerd();
  vault = await startRegistry({ auth: 'basic' });
  await skopeoCopy(`docker://${upstream.host}/library/single:1.0`, `docker://${vault.host}/mirror/docker.io/library/single:1.0`, {
    srcTlsVerify: false,
    destTlsVerify: false,
    destCreds: vault.creds!,
    preserveDigests: true,
    timeoutMs: 120_000,
  });
});

after(async () => {
  await containerd?.stop();
  await vault?.stop();
  await d?.cleanup();
  await toA?.stop();
  await a?.cleanup();
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('with the upstream up', () => {
  test('a 404 from a live upstream is its answer: the peer is not asked', async () => {
    const before = toA.count();
    const tag = await fetch(`${d.url}/v2/docker.io/library/absent/manifests/1.0`);
    assert.equal(tag.status, 404);
    await tag.arrayBuffer();
    const digest = `sha256:${'0'.repeat(64)}`;
    const blob = await fetch(`${d.url}/v2/docker.io/library/single/blobs/${digest}`);
    assert.equal(blob.status, 404);
    await blob.arrayBuffer();
    assert.equal(toA.count(), before, 'no request reached the peer');
    assert.equal(await d.metric('ocirelay_failover_reads_total'), 0);
  });

  test('peers-first reads from the peer even with the upstream up', async () => {
    const e = await startOcirelay({
      region: 'e',
      registries: { 'docker.io': { url: upstream.url } },
      peers: { a: { url: toA.url, failover: true, replicate: false } },
      failover: { mode: 'peers-first' },
    });
    try {
      const upstreamBefore = await upstream.countRequests({ pathIncludes: 'library/v2s2/' });
      const peerBefore = toA.count({ pathIncludes: '/v2/docker.io/library/v2s2/' });
      const out = await pullDir(e, 'library/v2s2:1.0');
      assert.equal(await verifyDirCopy(out), images.v2s2.manifestDigest);
      assert.ok(toA.count({ pathIncludes: '/v2/docker.io/library/v2s2/' }) >= peerBefore + 3, 'manifest, config and layer came from the peer');
      assert.equal(await upstream.countRequests({ pathIncludes: 'library/v2s2/' }), upstreamBefore, 'the upstream was not asked');
      assert.ok((await e.metric('ocirelay_failover_reads_total', { peer: 'a', result: 'ok' })) >= 3);
      for (const l of images.v2s2.layers) assert.ok(existsSync(blobFile(e, l.digest)), 'E cached the layer');
    } finally {
      await e.cleanup();
    }
  });
});

describe('with the upstream stopped', () => {
  before(async () => {
    await upstream.process.stop();
  });

  test('skopeo pulls by tag and by digest through D: read from peer A, cached, the tag served stale', async () => {
    const byTag = await pullDir(d, 'library/single:1.0');
    assert.equal(await verifyDirCopy(byTag), images.single.manifestDigest);
    const byDigest = await pullDir(d, `library/single@${images.single.manifestDigest}`);
    assert.equal(await verifyDirCopy(byDigest), images.single.manifestDigest);
    assert.ok((await d.metric('ocirelay_failover_reads_total', { peer: 'a', result: 'ok' })) >= 3);
    assert.ok((await d.metric('ocirelay_stale_served_total', { registry: 'docker.io', reason: 'failover' })) >= 1);
    await d.waitForLog((l) => l.msg === 'upstream unavailable: serving cached manifest stale' && l.reason === 'failover');
    const reads = toA.requests.filter((r) => r.path.startsWith('/v2/docker.io/library/single/'));
    assert.ok(reads.length >= 3 && reads.every((r) => r.authorization === `Bearer ${PEER_TOKEN}`), 'every failover read carried the peer token');
    for (const digest of [images.single.configDigest, ...images.single.layers.map((l) => l.digest)]) {
      await eventually(() => existsSync(blobFile(d, digest)), `D cached ${digest}`);
    }
  });

  test('containerd pulls by tag and by digest through D (hosts.toml)', async () => {
    const hosts = path.join(dir, 'certs.d');
    await writeHostsToml(hosts, 'docker.io', d.url);
    const tagRef = 'docker.io/library/v2s2:1.0';
    await containerd.pull(tagRef, hosts);
    assert.equal((await containerd.readFile(tagRef, images.v2s2.file.path)).trim(), images.v2s2.file.content.trim());
    const digestRef = `docker.io/library/multi@${images.multi.manifestDigest}`;
    await containerd.pull(digestRef, hosts);
    const check = await containerd.check(digestRef);
    assert.ok(check.complete, JSON.stringify(check));
  });

  test('a peer that serves corrupted bytes: the failover read is refused and nothing is cached', async () => {
    const layer = images.big.layers[0]!;
    toA.setMode(layer.digest, 'corrupt', { method: 'GET' });
    try {
      const before = await d.metric('ocirelay_failover_reads_total', { peer: 'a', result: 'digest_mismatch' });
      const res = await fetch(`${d.url}/v2/docker.io/library/big/blobs/${layer.digest}`);
      let complete = res.status === 200;
      if (res.status === 200) {
        try {
          const body = Buffer.from(await res.arrayBuffer());
          complete = createHash('sha256').update(body).digest('hex') === layer.digest.slice(7);
        } catch {
          complete = false; // the transfer was aborted: what a client must see
        }
      }
      assert.equal(complete, false, 'no verified body reached the client');
      await eventually(async () => (await d.metric('ocirelay_failover_reads_total', { peer: 'a', result: 'digest_mismatch' })) > before, 'digest_mismatch counted');
      assert.ok(toA.requests.some((r) => r.mode === 'corrupt' && r.path.includes(layer.digest)), 'the peer sent corrupt bytes');
      assert.equal(existsSync(blobFile(d, layer.digest)), false, 'not cached');
      assert.deepEqual(await readdir(path.join(d.dataDir, 'tmp')), [], 'no temp file left');
      // The peer is now left alone for a while: the next read fails without asking it.
      const peerBefore = toA.count({ pathIncludes: layer.digest });
      const again = await fetch(`${d.url}/v2/docker.io/library/big/blobs/${layer.digest}`);
      assert.ok(again.status >= 500, `status ${again.status}`);
      await again.arrayBuffer();
      assert.equal(toA.count({ pathIncludes: layer.digest }), peerBefore);
      assert.ok((await d.metric('ocirelay_failover_reads_total', { peer: 'a', result: 'skipped' })) >= 1);
      assert.equal((await fetch(`${d.url}/readyz`)).status, 200);
    } finally {
      toA.clearRules();
    }
  });

  test('regions that are each other\'s failover peers do not ask each other in a loop', async () => {
    const hPort = await freePort();
    const g = await startOcirelay({
      region: 'g',
      registries: { 'docker.io': { url: upstream.url } },
      upstream: { retries: 0 },
      peers: { h: { url: `http://127.0.0.1:${hPort}`, failover: true, replicate: false } },
    });
    const h = await startOcirelay(
      { region: 'h', registries: { 'docker.io': { url: upstream.url } }, upstream: { retries: 0 }, peers: { g: { url: g.url, failover: true, replicate: false } } },
      { port: hPort },
    );
    try {
      const digest = `sha256:${createHash('sha256').update('held by no region').digest('hex')}`;
      const res = await fetch(`${g.url}/v2/docker.io/library/single/blobs/${digest}`, { signal: AbortSignal.timeout(30_000) });
      assert.equal(res.status, 503);
      await res.arrayBuffer();
      await g.flushLogs();
      await h.flushLogs();
      const asked = (p: OcirelayProcess) => p.logs().filter((l) => l.msg === 'request' && String(l.path).includes(digest)).length;
      assert.equal(asked(g), 1, 'G saw the client only');
      assert.equal(asked(h), 1, 'H saw G\'s failover read only, and did not pass it back');
      assert.equal(await h.metric('ocirelay_failover_reads_total'), 0);
    } finally {
      await h.cleanup();
      await g.cleanup();
    }
  });

  test('a registry peer (kind: registry, prefix, Basic credentials) serves a region with an empty cache', async () => {
    const v = await startOcirelay({
      region: 'v',
      registries: { 'docker.io': { url: upstream.url } },
      upstream: { retries: 0 },
      peers: { vault: { url: vault.url, kind: 'registry', prefix: 'mirror', username: vault.user, password: vault.password, failover: true, replicate: false } },
    });
    try {
      const out = await pullDir(v, 'library/single:1.0');
      assert.equal(await verifyDirCopy(out), images.single.manifestDigest);
      assert.ok((await v.metric('ocirelay_failover_reads_total', { peer: 'vault', result: 'ok' })) >= 3);
      assert.ok((await vault.countRequests({ method: 'GET', pathIncludes: '/v2/mirror/docker.io/library/single/blobs/', status: 200 })) >= 2);
      for (const l of images.single.layers) await eventually(() => existsSync(blobFile(v, l.digest)), `V cached ${l.digest}`);
    } finally {
      await v.cleanup();
    }
  });

  test('with peer A stopped too, D serves what it cached (skopeo and containerd)', async () => {
    await a.stop();
    const readsBefore = await d.metric('ocirelay_failover_reads_total', { result: 'ok' });
    const byTag = await pullDir(d, 'library/single:1.0');
    assert.equal(await verifyDirCopy(byTag), images.single.manifestDigest);
    const byDigest = await pullDir(d, `library/single@${images.single.manifestDigest}`);
    assert.equal(await verifyDirCopy(byDigest), images.single.manifestDigest);
    const hosts = path.join(dir, 'certs.d');
    const tagRef = 'docker.io/library/v2s2:1.0';
    await containerd.removeImage(tagRef);
    await containerd.pull(tagRef, hosts);
    assert.equal((await containerd.readFile(tagRef, images.v2s2.file.path)).trim(), images.v2s2.file.content.trim());
    assert.equal(await d.metric('ocirelay_failover_reads_total', { result: 'ok' }), readsBefore, 'no peer read needed');
  });
});
