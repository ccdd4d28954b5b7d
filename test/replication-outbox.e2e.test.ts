// Replication, sending side (issue 10 items 1, 3, 5): ocirelay A in front of a seeded
// Distribution upstream replicates what it caches to a plain Distribution registry in token
// mode (a `kind: registry` DR vault, prefix `mirror`). A skopeo pull through A appears in the
// vault (tag, manifests of every platform, every blob; a 70 MiB layer goes up in chunks); a kill
// -9 of A with jobs queued and the vault stopped loses none; a vault down for a while is caught
// up with; GET /api/v1/replication, `ocirelay replication` and the metrics show it. Then an
// ocirelay peer B (replication.accept, its own upstream unreachable) gets what A pulled, and
// A's pin and freeze.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { spawnLogged, type ManagedProcess } from './fixtures/processes.ts';
import { freePort, waitFor } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const BIN = fileURLToPath(new URL('../bin/ocirelay.js', import.meta.url));
const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');

let upstream: RegistryFixture;
let vault: RegistryFixture;
/** The vault restarted on its own port and storage (after a stop), when it was. */
let vaultAgain: ManagedProcess | undefined;
let images: PushedImages;
let a: OcirelayProcess;
let work: string;

const config = () => ({
  region: 'eu-west',
  registries: { 'docker.io': { url: upstream.url } },
  peers: { vault: { url: vault.url, kind: 'registry', prefix: 'mirror', username: vault.user, password: vault.password } },
  replication: { concurrency: 4 },
});

before(async () => {
  work = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-repl-out-'));
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, await buildImages({ bigLayerBytes: 2 * 1024 * 1024 }));
  vault = await startRegistry({ auth: 'token' });
  a = await startOcirelay(config());
});
after(async () => {
  await a?.cleanup();
  // A restarted process keeps the first one's dir (its cleanup leaves it): removed here.
  if (a) await rm(a.dir, { recursive: true, force: true });
  await vaultAgain?.stop();
  await vault?.stop();
  await upstream?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Status of a manifest (by tag or digest) or blob in the vault under mirror/docker.io/<repo>. */
async function inVault(repo: string, what: 'manifests' | 'blobs', ref: string): Promise<{ status: number; digest: string | null; size: number }> {
  const name = `mirror/docker.io/${repo}`;
  const auth = await vault.authorization(`repository:${name}:pull`);
  const res = await fetch(`${vault.url}/v2/${name}/${what}/${ref}`, {
    method: 'HEAD',
    headers: { accept: ACCEPT, ...(auth ? { authorization: auth } : {}) },
    signal: AbortSignal.timeout(10_000),
  });
  await res.arrayBuffer();
  return { status: res.status, digest: res.headers.get('docker-content-digest'), size: Number(res.headers.get('content-length') ?? -1) };
}

async function imageInVault(img: { repo: string; tag: string; manifestDigest: string; configDigest: string; layers: Array<{ digest: string; size: number }> }): Promise<boolean> {
  const m = await inVault(img.repo, 'manifests', img.tag);
  if (m.status !== 200 || m.digest !== img.manifestDigest) return false;
  for (const b of [img.configDigest, ...img.layers.map((l) => l.digest)]) if ((await inVault(img.repo, 'blobs', b)).status !== 200) return false;
  return true;
}

interface Status {
  region: string;
  peers: Array<{ name: string; kind: string; pending: number; lagSeconds: number; lastSuccess: string | null; lastError: { at: string; message: string } | null; readiness: { images: number; bytes: number } }>;
}
async function status(): Promise<Status> {
  const res = await fetch(`${a.adminUrl}/api/v1/replication`);
  assert.equal(res.status, 200);
  return (await res.json()) as Status;
}
const pending = async () => (await status()).peers[0]!.pending;

async function stopVault(): Promise<void> {
  if (vaultAgain) await vaultAgain.stop();
  else await vault.process.stop();
  vaultAgain = undefined;
}

/** The vault again, on its port and storage (its config file is kept in its dir). */
async function startVault(): Promise<void> {
  const p = await spawnLogged({ name: `docker-registry-again-${Date.now()}`, cmd: 'docker-registry', args: ['serve', path.join(vault.dir, 'config.yml')], dir: vault.dir });
  vaultAgain = p;
  await waitFor(
    async () => {
      try {
        const res = await fetch(`${vault.url}/v2/`, { signal: AbortSignal.timeout(2_000) });
        await res.arrayBuffer();
        return res.headers.get('docker-distribution-api-version') === 'registry/2.0';
      } catch {
        return false;
      }
    },
    { timeoutMs: 20_000, intervalMs: 100, what: 'the vault back on its port', abortIf: () => p.diedError() },
  );
}

describe('replication to a registry vault (sending side)', () => {
  test('a skopeo pull through A appears in the vault: tags, every platform of an index, every blob; a 70 MiB blob goes in chunks', async () => {
    await skopeoCopy(`docker://${a.host}/library/single:1.0`, `oci:${path.join(work, 'single')}:x`, { srcTlsVerify: false, timeoutMs: 120_000 });
    const pulledAt = Date.now();
    const single = { ...images.single, repo: 'library/single' };
    await eventually(() => imageInVault(single), 'library/single:1.0 and its blobs in the vault', 60_000);
    const within = Date.now() - pulledAt;
    await skopeoCopy(`docker://${a.host}/library/multi:1.0`, `oci:${path.join(work, 'multi')}:x`, { srcTlsVerify: false, timeoutMs: 120_000 });
    const big = await pushRandomImage(upstream.url, 'library/huge', '1', [70 * 1024 * 1024, 4096]);
    await pullVerified(a.url, big);

    // A single-platform pull fetched one child; the vault would refuse an index whose children
    // it lacks, so the others were pulled through A and pushed first.
    await eventually(async () => (await inVault('library/multi', 'manifests', '1.0')).digest === images.multi.manifestDigest, 'the multi index by tag', 60_000);
    for (const p of images.multi.platforms) assert.ok(await imageInVault({ ...p, repo: 'library/multi', tag: p.manifestDigest }), `platform ${p.platform.architecture}`);
    await eventually(() => imageInVault(big), 'the 70 MiB image', 120_000);
    assert.equal((await inVault(big.repo, 'blobs', big.layers[0]!.digest)).size, 70 * 1024 * 1024);
    // Chunked: PATCH requests with Content-Range reached the vault for the big blob.
    assert.ok((await vault.countRequests({ method: 'PATCH', pathIncludes: '/mirror/docker.io/library/huge/blobs/uploads/' })) >= 5);
    await eventually(async () => (await pending()) === 0, 'outbox empty', 60_000);
    assert.ok(await a.metric('ocirelay_replication_bytes_total', { peer: 'vault' }) >= 70 * 1024 * 1024);
    assert.equal(await a.metric('ocirelay_replication_pending_jobs', { peer: 'vault' }), 0);
    console.log(`library/single:1.0 complete in the vault ${within} ms after skopeo finished pulling it`);
  });

  test('GET /api/v1/replication and `ocirelay replication` (table and --json) show the peer', async () => {
    const s = await status();
    assert.equal(s.region, 'eu-west');
    assert.equal(s.peers.length, 1);
    const p = s.peers[0]!;
    assert.equal(p.name, 'vault');
    assert.equal(p.kind, 'registry');
    assert.equal(p.pending, 0);
    assert.equal(p.lagSeconds, 0);
    assert.ok(p.lastSuccess && !Number.isNaN(Date.parse(p.lastSuccess)));
    // Every image A has cached was confirmed at the vault.
    assert.equal(p.readiness.images, 1);
    assert.equal(p.readiness.bytes, 1);
    assert.equal(await a.metric('ocirelay_dr_readiness_ratio', { peer: 'vault' }), 1);

    const run = promisify(execFile);
    const json = await run(process.execPath, [BIN, 'replication', '--admin', a.adminUrl, '--json'], { timeout: 30_000 });
    assert.deepEqual(JSON.parse(json.stdout).peers.map((x: { name: string }) => x.name), ['vault']);
    const table = await run(process.execPath, [BIN, 'replication', '--admin', a.adminUrl], { timeout: 30_000 });
    assert.match(table.stdout, /^region eu-west\n/);
    assert.match(table.stdout, /PEER\s+KIND\s+PENDING\s+LAG/);
    assert.match(table.stdout, /\nvault\s+registry\s+0\s+0s/);
  });

  test('vault down: jobs wait and are counted; vault back: it catches up and the outbox empties', async () => {
    await stopVault();
    const img = await pushRandomImage(upstream.url, 'library/while-down', '1', [300_000, 5000]);
    await pullVerified(a.url, img);
    await eventually(async () => (await pending()) > 0 && (await a.metric('ocirelay_replication_failures_total', { peer: 'vault', reason: 'unreachable' })) > 0, 'jobs pending, failures counted', 30_000);
    await new Promise((r) => setTimeout(r, 3000));
    const s = await status();
    assert.ok(s.peers[0]!.lagSeconds >= 2, `lag ${s.peers[0]!.lagSeconds}`);
    assert.ok(s.peers[0]!.lastError !== null);
    assert.ok((await a.metric('ocirelay_replication_lag_seconds', { peer: 'vault' })) > 0);
    await startVault();
    // Backoff grew while it was down (capped jitter, at most ~8 s by now): a bounded wait.
    await eventually(() => imageInVault(img), 'the image pulled while the vault was down', 90_000);
    await eventually(async () => (await pending()) === 0, 'outbox empty again', 60_000);
    assert.equal(await a.metric('ocirelay_replication_pending_jobs', { peer: 'vault' }), 0);
  });

  test('kill -9 of A with jobs queued and the vault stopped: after restarting both every job completes', async () => {
    await stopVault();
    const imgs: RandomImage[] = [];
    for (let i = 0; i < 3; i++) imgs.push(await pushRandomImage(upstream.url, `library/crash-${i}`, 'v1', [200_000 + i, 3000]));
    for (const img of imgs) await pullVerified(a.url, img);
    // Blob jobs on disk before the pulls were answered; manifest and tag jobs follow their writes.
    await eventually(async () => (await pending()) >= imgs.length * 5, 'jobs queued for every blob, manifest and tag', 30_000);
    const queued = await pending();
    const outboxFile = path.join(a.dataDir, 'replication', 'vault.jsonl');
    const lines = (await readFile(outboxFile, 'utf8')).split('\n').filter((l) => l.includes('"t":"add"'));
    assert.ok(lines.length >= queued, `${lines.length} add lines for ${queued} pending jobs`);

    const exit = await a.stop('SIGKILL');
    assert.equal(exit.signal, 'SIGKILL');
    await startVault();
    a = await a.restart();
    const replayed = await a.waitForLog((l) => l.msg === 'replication outbox replayed', 10_000);
    assert.ok((replayed.replayed as number) >= queued, `replayed ${String(replayed.replayed)} of ${queued}`);
    for (const img of imgs) await eventually(() => imageInVault(img), `${img.repo} in the vault after the crash`, 90_000);
    await eventually(async () => (await pending()) === 0, 'outbox empty after the restart', 60_000);
    // The outbox file is compacted once done lines dominate: no pending add remains in it.
    assert.equal((await status()).peers[0]!.lagSeconds, 0);
  });

  test('blobs evicted locally before they left are dropped and counted; the rest still arrives', async () => {
    // A small cache in front of the same upstream and vault: four 3 MiB images do not fit.
    const small = await startOcirelay({ ...config(), cache: { maxBytes: 8 * 1024 * 1024, memoryBytes: 1024 * 1024 } });
    try {
      await stopVault();
      const imgs: RandomImage[] = [];
      for (let i = 0; i < 4; i++) {
        const img = await pushRandomImage(upstream.url, `library/evict-${i}`, 'v1', [1536 * 1024, 1536 * 1024 + i]);
        await pullVerified(small.url, img);
        imgs.push(img);
      }
      await eventually(async () => (await small.metric('ocirelay_evictions_total')) > 0, 'the first images evicted', 30_000);
      await startVault();
      await eventually(async () => (await small.metric('ocirelay_replication_failures_total', { peer: 'vault', reason: 'evicted' })) > 0, 'evicted jobs counted', 90_000);
      await eventually(async () => (await small.metric('ocirelay_replication_pending_jobs', { peer: 'vault' })) === 0, 'outbox empty', 90_000);
      // The image pulled last was never evicted: it is complete in the vault.
      assert.ok(await imageInVault(imgs[3]!));
    } finally {
      await small.cleanup();
    }
  });

  test('pulling cached content again queues nothing; the tag went to the vault by name', async () => {
    // Pulled again: nothing new was committed and no tag moved, so no job is queued.
    const before = await a.metric('ocirelay_replication_pending_jobs', { peer: 'vault' });
    await skopeoCopy(`docker://${a.host}/library/single:1.0`, `oci:${path.join(work, 'single2')}:x`, { srcTlsVerify: false, timeoutMs: 120_000 });
    assert.equal(before, 0);
    assert.equal(await pending(), 0);
    // The vault logged PUTs of the tag (a plain registry ignores the header).
    assert.ok((await vault.countRequests({ method: 'PUT', pathIncludes: '/mirror/docker.io/library/single/manifests/1.0' })) >= 1);
  });
});

describe('replication to an ocirelay peer (B with replication.accept)', () => {
  const PEER_TOKEN = 'eu-west-to-b-token';
  let b: OcirelayProcess;
  let a2: OcirelayProcess;
  let deadPort: number;
  before(async () => {
    deadPort = await freePort();
    // B's upstream answers nothing: whatever B serves, replication brought.
    b = await startOcirelay({ region: 'us-east', registries: { 'docker.io': { url: `http://127.0.0.1:${deadPort}` } }, replication: { accept: [{ name: 'eu-west', token: PEER_TOKEN }] } });
    a2 = await startOcirelay({ region: 'eu-west', registries: { 'docker.io': { url: upstream.url } }, peers: { b: { url: b.url, token: PEER_TOKEN } } });
  });
  after(async () => {
    await a2?.cleanup();
    if (a2) await rm(a2.dir, { recursive: true, force: true });
    await b?.cleanup();
  });

  test('a pull through A is served by B with its upstream down; the tag carries its resolution time; a pin with freeze shows in B', async () => {
    const t0 = Date.now();
    await skopeoCopy(`docker://${a2.host}/library/v2s2:1.0`, `oci:${path.join(work, 'v2s2-a')}:x`, { srcTlsVerify: false, timeoutMs: 120_000 });
    const img = images.v2s2;
    await eventually(
      async () => {
        const res = await fetch(`${b.url}/v2/library/v2s2/manifests/1.0`, { headers: { accept: ACCEPT } });
        await res.arrayBuffer();
        return res.status === 200 && res.headers.get('docker-content-digest') === img.manifestDigest;
      },
      'B answers library/v2s2:1.0 by tag',
      60_000,
    );
    await eventually(async () => {
      for (const d of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
        const res = await fetch(`${b.url}/v2/library/v2s2/blobs/${d}`, { method: 'HEAD' });
        await res.arrayBuffer();
        if (res.status !== 200) return false;
      }
      return true;
    }, 'every blob at B', 60_000);
    // The tag went with A's resolution time (RFC 3339 with ms): B keeps it and shows it to peers.
    const head = await fetch(`${b.url}/v2/docker.io/library/v2s2/manifests/1.0`, { method: 'HEAD', headers: { accept: ACCEPT, authorization: `Bearer ${PEER_TOKEN}` } });
    await head.arrayBuffer();
    const resolvedAt = head.headers.get('ocirelay-resolved-at') ?? '';
    assert.match(resolvedAt, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    assert.ok(Date.parse(resolvedAt) >= t0 - 1000 && Date.parse(resolvedAt) <= Date.now(), resolvedAt);
    // A real client pulls it from B, the upstream still unreachable.
    await skopeoCopy(`docker://${b.host}/library/v2s2:1.0`, `oci:${path.join(work, 'v2s2-b')}:x`, { srcTlsVerify: false, timeoutMs: 120_000 });

    const pin = await fetch(`${a2.adminUrl}/api/v1/pin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: 'docker.io/library/v2s2:1.0', freeze: true }) });
    assert.equal(pin.status, 200, await pin.text());
    await eventually(
      async () => {
        const res = await fetch(`${b.adminUrl}/api/v1/images?repository=library/v2s2`);
        const { images: list } = (await res.json()) as { images: Array<{ digest: string; pinned: boolean; frozenTags: string[] }> };
        const i = list.find((x) => x.digest === img.manifestDigest);
        return !!i && i.pinned && i.frozenTags.includes('1.0');
      },
      'B shows the image pinned and its tag frozen',
      60_000,
    );
    const s = (await (await fetch(`${a2.adminUrl}/api/v1/replication`)).json()) as Status;
    assert.equal(s.peers[0]?.kind, 'ocirelay');
    await eventually(async () => ((await (await fetch(`${a2.adminUrl}/api/v1/replication`)).json()) as Status).peers[0]!.pending === 0, "A's outbox for B empty", 30_000);
  });

  test('a peer added later gets what was cached before only by `ocirelay replicate --peer NAME --all` (a registry with Basic auth and no prefix; the frozen tag goes as a tag)', async () => {
    const late = await startRegistry({ auth: 'basic' });
    try {
      // A again, same data dir and ports, now with a second peer.
      const cfg = { region: 'eu-west', registries: { 'docker.io': { url: upstream.url } }, peers: { b: { url: b.url, token: PEER_TOKEN }, late: { url: late.url, kind: 'registry', username: late.user, password: late.password } } };
      await a2.stop();
      a2 = await startOcirelay(cfg, { dir: a2.dir, port: a2.port, adminPort: Number(new URL(a2.adminUrl).port) });
      const img = images.v2s2;
      const basic = (await late.authorization('repository:docker.io/library/v2s2:pull'))!;
      const tagAt = async () => {
        const res = await fetch(`${late.url}/v2/docker.io/library/v2s2/manifests/1.0`, { method: 'HEAD', headers: { accept: ACCEPT, authorization: basic } });
        await res.arrayBuffer();
        return res.status === 200 ? res.headers.get('docker-content-digest') : null;
      };
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(await tagAt(), null, 'nothing cached before is copied by itself');

      const run = promisify(execFile);
      const out = await run(process.execPath, [BIN, 'replicate', '--peer', 'late', '--all', '--admin', a2.adminUrl, '--timeout', '120s'], { timeout: 150_000 });
      assert.match(out.stdout, /replicated \d+ images to late/);
      assert.match(out.stderr, /late: \[#+\] 0 jobs pending/);
      assert.equal(await tagAt(), img.manifestDigest);
      for (const d of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
        const res = await fetch(`${late.url}/v2/docker.io/library/v2s2/blobs/${d}`, { method: 'HEAD', headers: { authorization: basic } });
        await res.arrayBuffer();
        assert.equal(res.status, 200, d);
      }
      // An unknown peer is refused (exit code 3: not found).
      await assert.rejects(run(process.execPath, [BIN, 'replicate', '--peer', 'nope', '--all', '--admin', a2.adminUrl], { timeout: 30_000 }), (e: { code?: number }) => e.code === 3);
      const s = (await (await fetch(`${a2.adminUrl}/api/v1/replication`)).json()) as Status;
      assert.equal(s.peers.find((p) => p.name === 'late')?.readiness.images, 1);
    } finally {
      await late.stop();
    }
  });
});
