// The cluster ring (issue 11 item 4: one upstream fetch per region) with real components: three
// ocirelay processes listing each other in `cluster.members` with a shared token file and one
// S3 bucket (moto_server: storage.s3, as a region runs them), in front of one seeded
// Distribution registry (through a tampering pass-through that can slow a blob
// down, so a kill lands mid-fill). Upstream requests are counted in the registry's access log.
// One set of processes serves every test, in order; the last one kills a member.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { ownerOf } from '../src/cluster/rendezvous.ts';
import { ListObjectsV2Command } from '@aws-sdk/client-s3';
import { motoClient, startMoto, type MotoFixture } from './fixtures/moto.ts';
import { freePort } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startTamperProxy, type TamperProxy } from './fixtures/tamper-proxy.ts';
import { eventually } from './helpers/eventually.ts';
import { download, type Download } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const MiB = 1024 * 1024;
const TOKEN = 'cluster-ring-shared-token-0123456789';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
/** Short enough that the tag test sees a revalidation, long enough for two pulls within it. */
const TAG_TTL_S = 4;

let dir: string;
let moto: MotoFixture;
let upstream: RegistryFixture;
let proxy: TamperProxy;
let members: string[];
const nodes: OcirelayProcess[] = [];
let herd: RandomImage;

const nodeOf = (url: string) => nodes.find((n) => n.url === url)!;
const blobsOf = (img: RandomImage) => [img.configDigest, ...img.layers.map((l) => l.digest)];
const upstreamGets = (repo: string, ref: string) => upstream.countRequests({ method: 'GET', pathIncludes: `/v2/${repo}/blobs/${ref}` });

async function pullManifest(n: OcirelayProcess, repo: string, tag: string): Promise<string> {
  const res = await fetch(`${n.url}/v2/docker.io/${repo}/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
  const body = Buffer.from(await res.arrayBuffer());
  assert.equal(res.status, 200, body.toString().slice(0, 300));
  return `sha256:${createHash('sha256').update(body).digest('hex')}`;
}

function blobUrl(n: OcirelayProcess, repo: string, digest: string): string {
  return `${n.url}/v2/docker.io/${repo}/blobs/${digest}`;
}

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-cluster-ring-'));
  await writeFile(path.join(dir, 'cluster-token'), `${TOKEN}\n`);
  moto = await startMoto();
  await moto.createBucket('cluster-ring');
  upstream = await startRegistry({ auth: 'none' });
  proxy = await startTamperProxy(upstream.url);
  const ports = [await freePort(), await freePort(), await freePort()];
  members = ports.map((p) => `http://127.0.0.1:${p}`);
  const start = async (i: number) => {
    nodes[i] = await startOcirelay(
      {
        registries: { 'docker.io': { url: proxy.url, tagTTL: `${TAG_TTL_S}s` } },
        upstream: { retries: 0 },
        cluster: { members, self: members[i], tokenFile: path.join(dir, 'cluster-token') },
        storage: { s3: { bucket: 'cluster-ring', endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true } },
      },
      { port: ports[i]!, env: { ...moto.env } },
    );
  };
  // The first start alone (on a loaded machine three cold starts at once can pass the helper's
  // 20 s; later starts find tsx's transform cache warm), then the other two together.
  const [img] = await Promise.all([pushRandomImage(upstream.url, 'library/herd', '1.0', [32 * MiB, 2 * MiB, 300 * 1024]), start(0)]);
  await Promise.all([start(1), start(2)]);
  herd = img;
  // Each sees the three live (health checks every ~2 s).
  for (const n of nodes) await eventually(async () => (await n.metric('ocirelay_cluster_members', { state: 'live' })) === 3, `${n.url} sees 3 live members`, 15_000);
});

after(async () => {
  for (const n of nodes) await n?.cleanup();
  await proxy?.stop();
  await upstream?.stop();
  await moto?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('16 concurrent cold pulls spread over the three members: one upstream GET per blob, every body verified', async () => {
  const repo = herd.repo;
  const digests = blobsOf(herd);
  const results = await Promise.all(
    Array.from({ length: 16 }, async (_, i) => {
      const n = nodes[i % 3]!;
      assert.equal(await pullManifest(n, repo, herd.tag), herd.manifestDigest);
      return Promise.all(digests.map(async (d) => ({ d, got: await download(blobUrl(n, repo, d), { timeoutMs: 60_000 }) })));
    }),
  );
  for (const pull of results) {
    for (const { d, got } of pull) {
      assert.equal(got.status, 200);
      assert.equal(got.aborted, false, `${d} complete`);
      assert.equal(got.sha256, d, 'body verified');
    }
  }
  for (const d of digests) assert.equal(await upstreamGets(repo, d), 1, `one upstream GET of ${d}`);
  // The owners served the other members: reads from owners happened on every member that
  // does not own everything, and nothing failed.
  let ownerReads = 0;
  for (const n of nodes) {
    ownerReads += await n.metric('ocirelay_cluster_owner_reads_total', { kind: 'blob', result: 'ok' });
    assert.equal(await n.metric('ocirelay_cluster_owner_failures_total'), 0);
  }
  assert.ok(ownerReads >= 2, `blob reads from owners: ${ownerReads}`);
  // The big layer's owner fetched it; each other member read it once from that owner.
  const big = herd.layers[0]!.digest;
  const owner = ownerOf(big, members)!;
  assert.ok((await nodeOf(owner).metric('ocirelay_cluster_member_requests_total', { result: 'accepted' })) >= 2, 'the owner served the members');
  // The bucket holds each blob once, written behind by the member that fetched it.
  const s3 = motoClient(moto.endpoint);
  try {
    await eventually(async () => {
      const keys = new Set(((await s3.send(new ListObjectsV2Command({ Bucket: 'cluster-ring', Prefix: 'blobs/sha256/' }))).Contents ?? []).map((o) => o.Key));
      return digests.every((d) => keys.has(`blobs/sha256/${d.slice('sha256:'.length)}`));
    }, 'every blob of the image in the bucket', 30_000);
  } finally {
    s3.destroy();
  }
  // The blobs and the manifest, each written by the one member that fetched it (the others
  // received it from that owner, as region content, which is not written again).
  const writes = async (result: string) => {
    let sum = 0;
    for (const n of nodes) sum += await n.metric('ocirelay_s3_writes_total', { result });
    return sum;
  };
  await eventually(async () => (await writes('created')) === digests.length + 1, 'one write per blob and the manifest', 15_000);
  assert.equal(await writes('exists'), 0, 'no member uploaded what another member had fetched');
});

test('member reads carry the cluster token: a right one is served as a member read (fetched there), a wrong one as a client request', async () => {
  // 30 layers: at least two of them hash to B but with a chance of about 1 in 12,000 (with 12 it was 1 in 18).
  const img = await pushRandomImage(upstream.url, 'library/tokens', '1.0', Array.from({ length: 30 }, () => 64 * 1024));
  const [a, b] = [nodes[0]!, nodes[1]!];
  // Blobs B owns (among the three live members): asked at A.
  const ownedByB = img.layers.map((l) => l.digest).filter((d) => ownerOf(d, members) === b.url);
  assert.ok(ownedByB.length >= 2, 'some layers hash to B');
  const [wrongOne, rightOne] = ownedByB as [string, string];

  const accepted = async (n: OcirelayProcess) => n.metric('ocirelay_cluster_member_requests_total', { result: 'accepted' });
  // A wrong token: A serves a client, so it reads the cold blob from its owner B (with the real token).
  const [aRefused0, bAccepted0] = [await a.metric('ocirelay_cluster_member_requests_total', { result: 'refused' }), await accepted(b)];
  const wrong = await download(blobUrl(a, img.repo, wrongOne), { headers: { 'ocirelay-cluster-token': 'not-the-cluster-token-000000' } });
  assert.equal(wrong.status, 200);
  assert.equal(wrong.sha256, wrongOne);
  assert.equal(await a.metric('ocirelay_cluster_member_requests_total', { result: 'refused' }), aRefused0 + 1, 'A counted a refused token');
  assert.equal(await accepted(b), bAccepted0 + 1, 'A asked the owner B');
  assert.equal(await upstreamGets(img.repo, wrongOne), 1);

  // The right token: A is the member asked, so it fetches itself and asks nobody (no loops).
  const [aAccepted1, bAccepted1] = [await accepted(a), await accepted(b)];
  const right = await download(blobUrl(a, img.repo, rightOne), { headers: { 'ocirelay-cluster-token': TOKEN } });
  assert.equal(right.status, 200);
  assert.equal(right.sha256, rightOne);
  assert.equal(await accepted(a), aAccepted1 + 1, 'A took it as a member read');
  assert.equal(await accepted(b), bAccepted1, 'B was not asked');
  assert.equal(await upstreamGets(img.repo, rightOne), 1, 'A fetched it from the upstream');
});

test("a tag pulled through two non-owners within the TTL: one upstream request of the tag; after the TTL one HEAD for the region", async () => {
  const img = await pushRandomImage(upstream.url, 'library/tagged', '2.0', [32 * 1024]);
  const owner = ownerOf(`docker.io/${img.repo}:${img.tag}`, members)!;
  const others = nodes.filter((n) => n.url !== owner);
  assert.equal(others.length, 2);
  const tagRequests = async () => (await upstream.accessLog()).filter((e) => e.path === `/v2/${img.repo}/manifests/${img.tag}` && e.method !== 'PUT');
  for (const n of others) assert.equal(await pullManifest(n, img.repo, img.tag), img.manifestDigest);
  assert.deepEqual((await tagRequests()).map((e) => e.method), ['GET'], 'one GET of the tag, by its owner');
  // Past the TTL every member's record is stale: both ask the owner, which asks upstream once.
  await sleep(TAG_TTL_S * 1000 + 500);
  for (const n of others) assert.equal(await pullManifest(n, img.repo, img.tag), img.manifestDigest);
  assert.deepEqual((await tagRequests()).map((e) => e.method), ['GET', 'HEAD'], 'one revalidation HEAD for the region');
  // Within the TTL again (from the owner's HEAD): nobody asks.
  for (const n of others) assert.equal(await pullManifest(n, img.repo, img.tag), img.manifestDigest);
  assert.equal((await tagRequests()).length, 2);
});

test('the owner of a digest killed mid-fill: the other members abort or deliver verified bytes, and a retry succeeds from the upstream', async () => {
  const img = await pushRandomImage(upstream.url, 'library/killed', '1.0', [12 * MiB]);
  const digest = img.layers[0]!.digest;
  const owner = nodeOf(ownerOf(digest, members)!);
  const others = nodes.filter((n) => n !== owner);
  // The owner's upstream GET crawls, so the kill lands mid-fill; the retry's GET is not slowed.
  proxy.setMode(new RegExp(`/blobs/${digest}$`), 'slow', { method: 'GET', bytesPerSecond: 2 * MiB, times: 1 });
  let started!: () => void;
  const midway = new Promise<void>((r) => (started = r));
  const pulls: Array<Promise<Download | Error>> = [];
  for (const n of others) {
    for (let i = 0; i < 3; i++) {
      pulls.push(
        download(blobUrl(n, img.repo, digest), {
          timeoutMs: 60_000,
          onChunk: (size) => {
            if (size > MiB) started();
          },
        }).catch((e: Error) => e),
      );
    }
  }
  await Promise.race([midway, sleep(30_000).then(() => assert.fail('no client received 1 MiB within 30 s'))]);
  await owner.stop('SIGKILL');
  for (const r of await Promise.all(pulls)) {
    if (r instanceof Error) continue; // the connection was cut before a response: fine
    if (r.status !== 200) continue; // an error status is not wrong bytes
    assert.ok(r.aborted || r.sha256 === digest, 'never a clean end with wrong bytes');
  }
  // A retry through each remaining member succeeds (from the upstream, the owner being gone).
  for (const n of others) {
    const again = await download(blobUrl(n, img.repo, digest), { timeoutMs: 60_000 });
    assert.equal(again.status, 200);
    assert.equal(again.aborted, false);
    assert.equal(again.sha256, digest);
  }
  let failures = 0;
  for (const n of others) failures += await n.metric('ocirelay_cluster_owner_failures_total');
  assert.ok(failures >= 1, 'the owner failure was counted');
  assert.ok((await upstreamGets(img.repo, digest)) >= 2, 'the retry went to the upstream');
  const logged = others.flatMap((n) => n.logs()).filter((l) => l.msg === 'cluster owner failed: fetching directly');
  assert.ok(logged.length >= 1 && logged.every((l) => l.member === owner.url), 'logged, naming the owner');
});
