// The region's shared metadata (issue 11 items 2 and 5) with real components: two ocirelay
// processes sharing one moto_server bucket (no cluster), a seeded Distribution registry as the
// upstream. A's pulls put tag records and repository links into the bucket (and exactly one of
// the two holds the budget lease); a pin and a freeze on A land as records; an admin purge on A
// removes the image's records and the content objects no other repository links (a link that
// only B wrote keeps its layer); with the upstream stopped, B answers a tag only A resolved and
// serves its blobs on A's links, and refuses a repository no instance ever confirmed.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, test } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { motoClient, startMoto, type MotoFixture } from './fixtures/moto.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { eventually } from './helpers/eventually.ts';
import { download, pushBlob } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const KiB = 1024;
const BUCKET = 'ocirelay-shared-meta';
const PREFIX = 'region/';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

let moto: MotoFixture;
let s3: S3Client;
let upstream: RegistryFixture;
let a: OcirelayProcess;
let b: OcirelayProcess;
let img: RandomImage;
const started: OcirelayProcess[] = [];

const hex = (digest: string) => digest.slice('sha256:'.length);
const blobKey = (digest: string) => `${PREFIX}blobs/sha256/${hex(digest)}`;
const linkKey = (repo: string, digest: string) => `${PREFIX}meta/links/${hex(digest)}/docker.io/${repo}`;
const tagKey = (repo: string, tag: string) => `${PREFIX}meta/repos/docker.io/${repo}/_tags/${tag}.json`;
const digestsOf = (i: RandomImage) => [i.manifestDigest, i.configDigest, ...i.layers.map((l) => l.digest)];

async function exists(key: string): Promise<boolean> {
  try {
    await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: key }));
    return true;
  } catch (e) {
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return false;
    throw e;
  }
}

async function start(): Promise<OcirelayProcess> {
  const p = await startOcirelay(
    {
      // short.ttl: the same upstream under a 1 s tagTTL (clients name it as a path prefix).
      registries: { 'docker.io': { url: upstream.url }, 'short.ttl': { url: upstream.url, tagTTL: '1s' } },
      upstream: { retries: 0, connectTimeout: '2s', headersTimeout: '3s' },
      // maxBytes: both contend for the budget lease (nothing here is old enough to evict).
      storage: { s3: { bucket: BUCKET, prefix: PREFIX, endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, maxBytes: '1GiB' } },
    },
    { env: { ...moto.env } },
  );
  started.push(p);
  return p;
}

before(async () => {
  moto = await startMoto();
  await moto.createBucket(BUCKET);
  s3 = motoClient(moto.endpoint);
  upstream = await startRegistry({ auth: 'none' });
  img = await pushRandomImage(upstream.url, 'library/shared', '1.0', [200 * KiB, 30 * KiB]);
  [a, b] = await Promise.all([start(), start()]);
});

after(async () => {
  for (const p of started) await p.cleanup().catch(() => undefined);
  s3?.destroy();
  await upstream?.stop().catch(() => undefined);
  await moto?.stop();
});

test('a pull through A writes the tag record and a link per digest into the bucket', async () => {
  await pullVerified(a.url, img);
  await eventually(async () => exists(tagKey(img.repo, img.tag)), 'the tag record in the bucket', 15_000);
  for (const d of digestsOf(img)) {
    await eventually(async () => exists(linkKey(img.repo, d)), `the link of ${d}`, 15_000);
    await eventually(async () => exists(blobKey(d)), `the content of ${d}`, 15_000);
  }
  assert.equal(await a.metric('ocirelay_s3_metadata_write_failures_total'), 0);
  await eventually(async () => (await a.metric('ocirelay_s3_metadata_pending')) === 0, 'nothing pending');
  // Started together, both contended for the budget lease: exactly one holds it.
  await eventually(async () => (await a.metric('ocirelay_s3_budget_leader')) + (await b.metric('ocirelay_s3_budget_leader')) === 1, 'one budget keeper', 15_000);
  assert.ok(await exists(`${PREFIX}meta/lease/budget.json`));
});

test('a pin and a freeze through A’s admin API reach the bucket as records (what other instances sync into their index)', async () => {
  const ref = `docker.io/${img.repo}:${img.tag}`;
  const res = await fetch(`${a.adminUrl}/api/v1/pin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: ref, freeze: true }) });
  const out = (await res.json()) as { pinned?: { digests: string[] } };
  assert.equal(res.status, 200, JSON.stringify(out));
  const pinKey = `${PREFIX}meta/pins/${Buffer.from(ref).toString('base64url')}.json`;
  const frozenKey = `${PREFIX}meta/frozen/docker.io/${img.repo}/${img.tag}.json`;
  await eventually(async () => (await exists(pinKey)) && (await exists(frozenKey)), 'the pin and freeze records', 15_000);
  const got = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: pinKey }));
  const pin = JSON.parse(await got.Body!.transformToString()) as { pinned: boolean; digests: string[] };
  assert.equal(pin.pinned, true);
  assert.deepEqual(new Set(pin.digests), new Set(digestsOf(img)));
  const f = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: frozenKey }));
  assert.equal((JSON.parse(await f.Body!.transformToString()) as { digest: string }).digest, img.manifestDigest);
});

test('purge on A removes the image from the bucket, but a layer that B linked for another repository stays', async () => {
  const sharedLayer = randomBytes(50 * KiB);
  const doomed = await pushRandomImage(upstream.url, 'library/purge-me', '1', [40 * KiB]);
  const sharedDigest = await pushBlob(upstream.url, 'library/purge-me', sharedLayer);
  assert.equal(await pushBlob(upstream.url, 'library/other', sharedLayer), sharedDigest);
  await pullVerified(a.url, doomed);
  const viaA = await download(`${a.url}/v2/library/purge-me/blobs/${sharedDigest}`);
  assert.equal(viaA.sha256, sharedDigest);
  for (const d of [...digestsOf(doomed), sharedDigest]) await eventually(async () => exists(blobKey(d)), `the content of ${d}`, 15_000);
  // B reads the shared layer under library/other (the upstream confirms it there): only B knows that link.
  const viaB = await download(`${b.url}/v2/library/other/blobs/${sharedDigest}`);
  assert.equal(viaB.sha256, sharedDigest);
  await eventually(async () => exists(linkKey('library/other', sharedDigest)), 'B’s link in the bucket', 15_000);
  await eventually(async () => exists(tagKey('library/purge-me', '1')), 'the tag record', 15_000);

  const res = await fetch(`${a.adminUrl}/api/v1/purge`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ repository: 'library/purge-me' }) });
  const out = (await res.json()) as { bucket?: { removedObjects: number; queued: boolean } };
  assert.equal(res.status, 200, JSON.stringify(out));
  assert.equal(out.bucket?.queued, false);
  assert.equal(out.bucket?.removedObjects, digestsOf(doomed).length);
  for (const d of digestsOf(doomed)) {
    assert.equal(await exists(blobKey(d)), false, `${d} removed from the bucket`);
    assert.equal(await exists(linkKey('library/purge-me', d)), false);
  }
  assert.equal(await exists(tagKey('library/purge-me', '1')), false, 'the tag record removed');
  assert.equal(await exists(blobKey(sharedDigest)), true, 'the layer library/other links stays');
  assert.equal(await exists(linkKey('library/other', sharedDigest)), true);
  assert.equal(await exists(linkKey('library/purge-me', sharedDigest)), false);
  assert.ok((await a.metric('ocirelay_s3_bucket_evictions_total', { reason: 'purge' })) >= digestsOf(doomed).length);
});

test('a tag that moved upstream is picked up after the tagTTL, by the instance that recorded it and by another', async () => {
  const digestVia = async (p: OcirelayProcess) => {
    const r = await fetch(`${p.url}/v2/short.ttl/library/moving/manifests/latest`, { headers: { accept: OCI_MANIFEST } });
    await r.arrayBuffer();
    assert.equal(r.status, 200);
    return r.headers.get('docker-content-digest');
  };
  const one = await pushRandomImage(upstream.url, 'library/moving', 'latest', [2 * KiB]);
  assert.equal(await digestVia(a), one.manifestDigest);
  await eventually(async () => exists(`${PREFIX}meta/repos/short.ttl/library/moving/_tags/latest.json`), 'the tag record', 15_000);
  assert.equal(await digestVia(b), one.manifestDigest);
  const two = await pushRandomImage(upstream.url, 'library/moving', 'latest', [2 * KiB]);
  await new Promise((r) => setTimeout(r, 1_200));
  // Past the TTL the bucket's record is no confirmation: the upstream is asked and the move seen.
  assert.equal(await digestVia(a), two.manifestDigest);
  assert.equal(await digestVia(b), two.manifestDigest);
});

test('upstream stopped: B answers the tag A resolved and serves its blobs on A’s links; a repository never confirmed is refused', async () => {
  await upstream.stop();
  const m = await fetch(`${b.url}/v2/${img.repo}/manifests/${img.tag}`, { headers: { accept: OCI_MANIFEST } });
  const body = Buffer.from(await m.arrayBuffer());
  assert.equal(m.status, 200, body.toString().slice(0, 300));
  assert.equal(m.headers.get('docker-content-digest'), img.manifestDigest);
  for (const d of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
    const r = await download(`${b.url}/v2/${img.repo}/blobs/${d}`);
    assert.equal(r.status, 200, `blob ${d} through B`);
    assert.equal(r.sha256, d);
  }
  // Now on B's disk too, yet library/not-linked was never confirmed anywhere: refused, from disk or S3.
  for (const d of [img.layers[0]!.digest, img.manifestDigest]) {
    const kind = d === img.manifestDigest ? 'manifests' : 'blobs';
    const r = await download(`${b.url}/v2/library/not-linked/${kind}/${d}`, { keep: true });
    assert.notEqual(r.status, 200, `library/not-linked must not read ${d}`);
    assert.notEqual(r.sha256, d);
  }
  // A tag no instance resolved is not answered from the bucket either.
  const unknown = await fetch(`${b.url}/v2/${img.repo}/manifests/never-resolved`, { headers: { accept: OCI_MANIFEST } });
  await unknown.arrayBuffer();
  assert.notEqual(unknown.status, 200);
});
