// Three regions in a full mesh (issue 10, item 6) with real components: ocirelay A, B and C
// (three processes, own data dirs and ports), each listing the other two as peers with a token of
// its own per link and accepting their pushes; one seeded Distribution registry as the upstream
// of A; a plain Distribution registry (Basic auth) as A's `kind: registry` vault under mirror/.
// B's and C's upstream is a closed loopback port from the start, so whatever they hold, A's
// replication brought (checked with a peer's HEAD, which answers from the cache alone, and by
// their failover-read counters staying at 0: their peers are failover peers too).
// One set of processes serves every test, in order: replicate, pull with the upstream stopped,
// count the pushes (no loops), restart B and pull again.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { startContainerd, writeHostsToml, type ContainerdFixture } from './fixtures/containerd.ts';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { freePort } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { receivedPushes, type ReceivedPush } from './helpers/received-pushes.ts';

type Region = 'a' | 'b' | 'c';
const REGIONS: readonly Region[] = ['a', 'b', 'c'];
/** One token per link (sender → receiver): the receiver's accept entry names the sender by it. */
const link = (from: Region, to: Region) => `geo-${from}-to-${to}-0123456789`;
const ACCEPT = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v2+json',
].join(', ');
/** How long replication may take to reach every region and the vault (a bound, not a target). */
const REPLICATION_BOUND_MS = 30_000;

let dir: string;
let upstream: RegistryFixture;
let vault: RegistryFixture;
let images: PushedImages;
let containerd: ContainerdFixture;
let deadPort: number;
const ports = {} as Record<Region, number>;
const region = {} as Record<Region, OcirelayProcess>;
/** Every ocirelay process started here (B twice), for cleanup. */
const started: OcirelayProcess[] = [];
const hostsDir = {} as Record<'b' | 'c', string>;

/** The platform of the index skopeo and containerd pick on this machine. */
const pulledPlatform = () => {
  const arch = process.arch === 'x64' ? 'amd64' : process.arch;
  const p = images.multi.platforms.find((x) => x.platform.architecture === arch);
  assert.ok(p, `the multi index has no ${arch} platform`);
  return p;
};

function regionConfig(r: Region): Record<string, unknown> {
  const others = REGIONS.filter((o) => o !== r);
  const peers: Record<string, unknown> = {};
  for (const o of others) peers[o] = { url: `http://127.0.0.1:${ports[o]}`, token: link(r, o) };
  if (r === 'a') peers.vault = { url: vault.url, kind: 'registry', prefix: 'mirror', username: vault.user, password: vault.password };
  return {
    region: r,
    registries: { 'docker.io': { url: r === 'a' ? upstream.url : `http://127.0.0.1:${deadPort}` } },
    // B and C never reach their upstream: fail fast instead of retrying.
    ...(r === 'a' ? {} : { upstream: { retries: 0, connectTimeout: '2s' } }),
    peers,
    replication: { accept: others.map((o) => ({ name: o, token: link(o, r) })) },
  };
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-geo-'));
  for (const r of REGIONS) ports[r] = await freePort();
  // Nothing listens here: connections are refused at once.
  deadPort = await freePort();
  const [up, v, cd, built] = await Promise.all([startRegistry({ auth: 'none' }), startRegistry({ auth: 'basic' }), startContainerd(), buildImages({ bigLayerBytes: 64 * 1024 })]);
  [upstream, vault, containerd] = [up, v, cd];
  images = await pushImages(upstream, built);
  await Promise.all(
    REGIONS.map(async (r) => {
      region[r] = await startOcirelay(regionConfig(r), { port: ports[r] });
      started.push(region[r]);
    }),
  );
  for (const r of ['b', 'c'] as const) {
    hostsDir[r] = path.join(dir, `certs.d-${r}`);
    await writeHostsToml(hostsDir[r], 'docker.io', region[r].url);
  }
});

after(async () => {
  await containerd?.stop();
  for (const p of started) await p.cleanup();
  // A restarted process keeps the first one's dir (its cleanup leaves it).
  for (const p of started) await rm(p.dir, { recursive: true, force: true });
  await vault?.stop();
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** The digest B or C holds for a manifest reference or blob, asked as A asks (its cache alone). */
async function held(r: 'b' | 'c', repo: string, what: 'manifests' | 'blobs', ref: string): Promise<string | null> {
  const res = await fetch(`${region[r].url}/v2/docker.io/${repo}/${what}/${ref}`, {
    method: 'HEAD',
    headers: { accept: ACCEPT, authorization: `Bearer ${link('a', r)}` },
    signal: AbortSignal.timeout(10_000),
  });
  await res.arrayBuffer();
  return res.status === 200 ? res.headers.get('docker-content-digest') : null;
}

async function inVault(repo: string, what: 'manifests' | 'blobs', ref: string): Promise<string | null> {
  const name = `mirror/docker.io/${repo}`;
  const auth = (await vault.authorization(`repository:${name}:pull`))!;
  const res = await fetch(`${vault.url}/v2/${name}/${what}/${ref}`, { method: 'HEAD', headers: { accept: ACCEPT, authorization: auth }, signal: AbortSignal.timeout(10_000) });
  await res.arrayBuffer();
  return res.status === 200 ? res.headers.get('docker-content-digest') : null;
}

type Lookup = (repo: string, what: 'manifests' | 'blobs', ref: string) => Promise<string | null>;
interface Manifest {
  manifestDigest: string;
  configDigest: string;
  layers: Array<{ digest: string }>;
}

/** Both tags, the given manifests and all their blobs are where `lookup` looks. */
async function holds(lookup: Lookup, multiChildren: Manifest[]): Promise<boolean> {
  const want: Array<[string, 'manifests' | 'blobs', string, string]> = [
    ['library/single', 'manifests', '1.0', images.single.manifestDigest],
    ['library/multi', 'manifests', '1.0', images.multi.manifestDigest],
  ];
  const blobsOf = (repo: string, m: Manifest) => {
    want.push([repo, 'manifests', m.manifestDigest, m.manifestDigest]);
    for (const d of [m.configDigest, ...m.layers.map((l) => l.digest)]) want.push([repo, 'blobs', d, d]);
  };
  blobsOf('library/single', images.single);
  for (const m of multiChildren) blobsOf('library/multi', m);
  for (const [repo, what, ref, digest] of want) if ((await lookup(repo, what, ref)) !== digest) return false;
  return true;
}

interface ReplicationStatus {
  peers: Array<{ name: string; pending: number }>;
}
async function pendingAt(p: OcirelayProcess): Promise<number> {
  const res = await fetch(`${p.adminUrl}/api/v1/replication`);
  assert.equal(res.status, 200);
  return ((await res.json()) as ReplicationStatus).peers.reduce((n, x) => n + x.pending, 0);
}

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

/** GETs of a blob that this region answered 200 (its access log). */
const blobGets = (p: OcirelayProcess, digest: string) =>
  p.logs().filter((l) => l.msg === 'request' && l.method === 'GET' && l.status === 200 && String(l.path).endsWith(`/blobs/${digest}`)).length;

/**
 * Pulls by tag and by digest through `r`, with skopeo (the single image by tag, the index by
 * digest) and containerd (the index by tag, the single image by digest), every byte verified;
 * none of them needs a failover read: `r` serves what was pushed to it.
 */
async function pullEverywayThrough(r: 'b' | 'c'): Promise<void> {
  const p = region[r];
  const child = pulledPlatform();
  assert.equal(await verifyDirCopy(await pullDir(p, 'library/single:1.0')), images.single.manifestDigest);
  assert.equal(await verifyDirCopy(await pullDir(p, `library/multi@${images.multi.manifestDigest}`)), child.manifestDigest);

  const layer = images.single.layers[0]!.digest;
  await p.flushLogs();
  const gets = blobGets(p, layer);
  const tagRef = 'docker.io/library/multi:1.0';
  const digestRef = `docker.io/library/single@${images.single.manifestDigest}`;
  await containerd.pull(tagRef, hostsDir[r]);
  assert.equal((await containerd.imageInfo(tagRef)).digest, images.multi.manifestDigest);
  assert.equal((await containerd.readFile(tagRef, child.file.path)).trim(), child.file.content.trim());
  await containerd.pull(digestRef, hostsDir[r]);
  const check = await containerd.check(digestRef);
  assert.ok(check.complete, JSON.stringify(check));
  await p.flushLogs();
  assert.ok(blobGets(p, layer) > gets, `containerd fetched the layer from ${r}`);
  // Forgotten, so that the next pass fetches everything again from the region it asks.
  await containerd.removeImage(tagRef);
  await containerd.removeImage(digestRef);

  assert.equal(await p.metric('ocirelay_failover_reads_total'), 0, `${r} read nothing from its peers`);
}

describe('three regions in a full mesh, a registry vault', { timeout: 300_000 }, () => {
  test('a skopeo pull through A (an index and a single image) reaches B, C (their upstream unreachable) and the vault', async () => {
    const child = pulledPlatform();
    await skopeoCopy(`docker://${region.a.host}/docker.io/library/multi:1.0`, `dir:${await mkdtemp(path.join(dir, 'a-'))}`, { srcTlsVerify: false, timeoutMs: 120_000 });
    await skopeoCopy(`docker://${region.a.host}/docker.io/library/single:1.0`, `dir:${await mkdtemp(path.join(dir, 'a-'))}`, { srcTlsVerify: false, timeoutMs: 120_000 });
    const pulledAt = Date.now();
    const took: Record<string, number> = {};
    await Promise.all([
      // B and C: what A pulled (an ocirelay peer takes the index as it is).
      ...(['b', 'c'] as const).map((r) =>
        eventually(async () => (await holds((...q) => held(r, ...q), [child])) && (took[r] = Date.now() - pulledAt) > 0, `everything A pulled held by ${r}`, REPLICATION_BOUND_MS),
      ),
      // The vault refuses an index whose children it lacks: A sent every platform.
      eventually(async () => (await holds(inVault, images.multi.platforms)) && (took.vault = Date.now() - pulledAt) > 0, 'everything A pulled, every platform, in the vault', REPLICATION_BOUND_MS),
    ]);
    console.log(`replicated after the pull: ${JSON.stringify(took)} ms`);
    await eventually(async () => (await pendingAt(region.a)) === 0, "A's outbox empty", REPLICATION_BOUND_MS);
    for (const r of ['b', 'c'] as const) assert.equal(await region[r].metric('ocirelay_failover_reads_total'), 0, `${r} read nothing from its peers`);
  });

  describe('with the upstream stopped', () => {
    before(async () => {
      await upstream.process.stop();
    });

    test('by tag and by digest through B and C, with skopeo and containerd', async () => {
      await pullEverywayThrough('b');
      await pullEverywayThrough('c');
    });

    test('no loops: every blob crossed A→B and A→C once; nothing went B→C, C→B or back to A', async () => {
      // Nothing is left to send anywhere, and a second later nothing more has arrived.
      for (const r of REGIONS) assert.equal(await pendingAt(region[r]), 0, `${r}'s outbox empty`);
      await sleep(1000);
      for (const r of REGIONS) await region[r].flushLogs();

      const atA = receivedPushes(region.a);
      assert.deepEqual(atA, [], 'A received nothing');
      assert.equal(await region.a.metric('ocirelay_replication_received_total'), 0);
      const child = pulledPlatform();
      const blobs = [images.single.configDigest, ...images.single.layers.map((l) => l.digest), child.configDigest, ...child.layers.map((l) => l.digest)];
      for (const r of ['b', 'c'] as const) {
        const other = r === 'b' ? 'c' : 'b';
        const pushes = receivedPushes(region[r]);
        assert.deepEqual([...new Set(pushes.map((x) => x.peer))], ['a'], `${r} received from A only`);
        assert.equal(await region[r].metric('ocirelay_replication_received_total', { peer: other }), 0);
        assert.equal(await region[r].metric('ocirelay_replication_bytes_total'), 0, `${r} sent nothing`);
        assert.equal(await region[r].metric('ocirelay_replication_pending_jobs'), 0);
        // Each blob and each manifest reference crossed A→r at most once; what A pulled, exactly once.
        const times = countBy(pushes);
        console.log(`${r} received from A: ${pushes.filter((x) => x.kind === 'blob').length} blobs, ${pushes.filter((x) => x.kind === 'manifest').length} manifest pushes (results: ${pushes.map((x) => x.result).join(',')})`);
        for (const [key, n] of times) assert.equal(n, 1, `${key} pushed to ${r} ${n} times`);
        for (const d of blobs) assert.ok(times.has(`blob docker.io/library/${d === images.single.configDigest || images.single.layers.some((l) => l.digest === d) ? 'single' : 'multi'} ${d}`), `${d} pushed to ${r}`);
        for (const [repo, ref] of [['single', '1.0'], ['single', images.single.manifestDigest], ['multi', '1.0'], ['multi', images.multi.manifestDigest], ['multi', child.manifestDigest]] as const) {
          assert.ok(times.has(`manifest docker.io/library/${repo} ${ref}`), `${repo} ${ref} pushed to ${r}`);
        }
      }
      // A→vault: every blob uploaded once (a monolithic POST or the final PUT carries ?digest=).
      const uploads = new Map<string, number>();
      for (const e of await vault.accessLog()) {
        const m = /[?&]digest=sha256(?:%3A|:)([0-9a-f]{64})/i.exec(e.path);
        if (!m || (e.method !== 'PUT' && e.method !== 'POST') || e.status !== 201) continue;
        const d = `sha256:${m[1]!}`;
        uploads.set(d, (uploads.get(d) ?? 0) + 1);
      }
      const vaultBlobs = [images.single, ...images.multi.platforms].flatMap((m) => [m.configDigest, ...m.layers.map((l) => l.digest)]);
      for (const d of vaultBlobs) assert.equal(uploads.get(d), 1, `${d} uploaded to the vault ${uploads.get(d) ?? 0} times`);
      assert.equal(uploads.size, vaultBlobs.length, 'nothing else uploaded to the vault');
    });

    test('B restarted on its data dir (empty memory), upstream still down: the same pulls succeed', async () => {
      const exit = await region.b.stop('SIGKILL');
      assert.equal(exit.signal, 'SIGKILL');
      region.b = await region.b.restart();
      started.push(region.b);
      await pullEverywayThrough('b');
      // Received content was never queued: nothing to replay, nothing sent after the restart.
      await region.b.flushLogs();
      assert.equal(region.b.logs().filter((l) => l.msg === 'replication outbox replayed').length, 0);
      assert.equal(await pendingAt(region.b), 0);
      assert.equal(await region.b.metric('ocirelay_replication_bytes_total'), 0);
      assert.deepEqual(receivedPushes(region.b), []);
      await region.a.flushLogs();
      await region.c.flushLogs();
      assert.deepEqual(receivedPushes(region.a), []);
      assert.deepEqual([...new Set(receivedPushes(region.c).map((x) => x.peer))], ['a']);
    });
  });
});

/** How many times each (kind, repository, reference) was pushed. */
function countBy(pushes: ReceivedPush[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of pushes) {
    const key = `${x.kind} ${x.registry}/${x.repository} ${x.reference}`;
    m.set(key, (m.get(key) ?? 0) + 1);
  }
  return m;
}
