// The S3 tier (issue 11 items 1, 3, 6) with real components: moto_server as the region's bucket,
// a seeded Distribution registry as the upstream, ocirelay processes sharing the bucket (no
// cluster). Write-behind of every blob and manifest; two instances filling one blob at once
// (one object, the loser's write counted as exists); S3 paused mid-run (pulls go on, /readyz
// degraded, ocirelay_s3_up 0) and back (the write-behind catches up); kill -9 during a multipart
// upload (no partial object, the stale upload aborted at restart); and last, with the upstream
// stopped, an instance with an empty disk serving from the bucket, verified, ranged, promoted to
// its disk, and refusing a repository the upstream never confirmed.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { GetObjectCommand, HeadObjectCommand, ListMultipartUploadsCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
import { motoClient, startMoto, type MotoFixture } from './fixtures/moto.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { eventually } from './helpers/eventually.ts';
import { download, pushBlob } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const KiB = 1024;
const MiB = 1024 * KiB;
const BUCKET = 'ocirelay-s3-tier';
const PREFIX = 'cache/';

let moto: MotoFixture;
let s3: S3Client;
let upstream: RegistryFixture;
let a: OcirelayProcess;
let img: RandomImage;
const started: OcirelayProcess[] = [];

const keyOf = (digest: string) => `${PREFIX}blobs/sha256/${digest.slice('sha256:'.length)}`;
const blobFile = (p: OcirelayProcess, digest: string) => path.join(p.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

function s3Config(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    registries: { 'docker.io': { url: upstream.url } },
    // The S3 client takes the upstream timeouts: a paused (never answering) moto is found down within 3 s.
    upstream: { retries: 0, connectTimeout: '2s', headersTimeout: '3s' },
    storage: { s3: { bucket: BUCKET, prefix: PREFIX, endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, ...extra } },
  };
}

async function start(extra: Record<string, unknown> = {}): Promise<OcirelayProcess> {
  const p = await startOcirelay(s3Config(extra), { env: { ...moto.env } });
  started.push(p);
  return p;
}

async function objectInfo(digest: string): Promise<{ size: number } | undefined> {
  try {
    const r = await s3.send(new HeadObjectCommand({ Bucket: BUCKET, Key: keyOf(digest) }));
    return { size: r.ContentLength ?? -1 };
  } catch (e) {
    if ((e as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode === 404) return undefined;
    throw e;
  }
}

async function objectSha256(digest: string): Promise<string> {
  const r = await s3.send(new GetObjectCommand({ Bucket: BUCKET, Key: keyOf(digest) }));
  const bytes = Buffer.from(await r.Body!.transformToByteArray());
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

async function multipartUploads(): Promise<Array<{ key: string; initiated: Date | undefined }>> {
  const r = await s3.send(new ListMultipartUploadsCommand({ Bucket: BUCKET, Prefix: PREFIX }));
  return (r.Uploads ?? []).map((u) => ({ key: u.Key ?? '', initiated: u.Initiated }));
}

const digestsOf = (i: RandomImage) => [i.manifestDigest, i.configDigest, ...i.layers.map((l) => l.digest)];

before(async () => {
  moto = await startMoto();
  await moto.createBucket(BUCKET);
  s3 = motoClient(moto.endpoint);
  upstream = await startRegistry({ auth: 'none' });
  img = await pushRandomImage(upstream.url, 'library/s3-first', '1.0', [300 * KiB, 40 * KiB]);
  a = await start();
});

after(async () => {
  for (const p of started) await p.cleanup().catch(() => undefined);
  s3?.destroy();
  await upstream?.stop().catch(() => undefined);
  if (moto) {
    moto.resume();
    await moto.stop();
  }
});

test('write-behind: a pull through A puts every blob and the manifest into the bucket, content-addressed, counted', async () => {
  assert.equal(await a.metric('ocirelay_s3_up'), 1);
  await pullVerified(a.url, img);
  for (const d of digestsOf(img)) {
    await eventually(async () => (await objectInfo(d)) !== undefined, `${d} in the bucket`, 15_000);
    assert.equal(await objectSha256(d), d, `the object at ${keyOf(d)} holds the bytes of ${d}`);
  }
  assert.equal((await objectInfo(img.layers[0]!.digest))?.size, 300 * KiB);
  await eventually(async () => (await a.metric('ocirelay_s3_writes_total', { result: 'created' })) >= 4, 'four writes counted as created');
  await eventually(async () => (await a.metric('ocirelay_s3_pending_bytes')) === 0, 'nothing pending');
  assert.equal(await a.metric('ocirelay_s3_write_failures_total'), 0);
  // The start-up probe object is gone; nothing but content keys was written by the write-behind.
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: `${PREFIX}probes/` }));
  assert.equal(listed.KeyCount ?? 0, 0, 'the start-up probe deleted its object');
  const log = a.logs().find((l) => typeof l.msg === 'string' && l.msg.includes('conditional writes honoured'));
  assert.ok(log, 'the start-up check found conditional writes honoured');
});

test('two instances, no cluster, filling one blob at the same moment: one S3 object, the loser counted as exists', async () => {
  const [c, d] = await Promise.all([start(), start()]);
  const digest = await pushBlob(upstream.url, 'library/s3-race', randomBytes(2 * MiB));
  const created0 = (await c.metric('ocirelay_s3_writes_total', { result: 'created' })) + (await d.metric('ocirelay_s3_writes_total', { result: 'created' }));
  const exists0 = (await c.metric('ocirelay_s3_writes_total', { result: 'exists' })) + (await d.metric('ocirelay_s3_writes_total', { result: 'exists' }));
  const [rc, rd] = await Promise.all([c, d].map((p) => download(`${p.url}/v2/library/s3-race/blobs/${digest}`)));
  for (const r of [rc!, rd!]) {
    assert.equal(r.status, 200);
    assert.equal(r.sha256, digest);
  }
  const fromUpstream = await upstream.countRequests({ method: 'GET', pathIncludes: digest });
  await eventually(
    async () => {
      const created = (await c.metric('ocirelay_s3_writes_total', { result: 'created' })) + (await d.metric('ocirelay_s3_writes_total', { result: 'created' }));
      const exists = (await c.metric('ocirelay_s3_writes_total', { result: 'exists' })) + (await d.metric('ocirelay_s3_writes_total', { result: 'exists' }));
      // Both fetched from the upstream: both write, one wins. One read it from the bucket: it writes nothing.
      return created - created0 === 1 && exists - exists0 === (fromUpstream === 2 ? 1 : 0);
    },
    'one write created, the other (if it fetched too) counted as exists',
    15_000,
  );
  const listed = await s3.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: keyOf(digest) }));
  assert.equal(listed.KeyCount, 1, 'one object');
  assert.equal(await objectSha256(digest), digest);
  await c.cleanup();
  await d.cleanup();
});

test('S3 paused mid-run: no pull fails, /readyz 200 degraded, ocirelay_s3_up 0; back: the write-behind completes', async () => {
  const during = await pushRandomImage(upstream.url, 'library/s3-outage', '1.0', [500 * KiB, 70 * KiB]);
  moto.pause();
  try {
    await pullVerified(a.url, during);
    await eventually(async () => (await a.metric('ocirelay_s3_up')) === 0, 'ocirelay_s3_up 0', 15_000);
    const ready = await fetch(`${a.url}/readyz`);
    const body = (await ready.json()) as { status: string; problems: string[] };
    assert.equal(ready.status, 200);
    assert.equal(body.status, 'degraded');
    assert.ok(body.problems.some((p) => p.includes('S3')), JSON.stringify(body));
    assert.ok((await a.metric('ocirelay_s3_pending_bytes')) > 0, 'writes wait for S3');
    // While down, a pull of content A does not hold does not ask S3 (no request waits on it).
    const skipped0 = await a.metric('ocirelay_s3_reads_total', { result: 'down' });
    const errors0 = await a.metric('ocirelay_s3_reads_total', { result: 'error' });
    const again = await pushRandomImage(upstream.url, 'library/s3-outage2', '1.0', [10 * KiB]);
    await pullVerified(a.url, again);
    assert.ok((await a.metric('ocirelay_s3_reads_total', { result: 'down' })) > skipped0, 'the S3 source was skipped');
    assert.equal(await a.metric('ocirelay_s3_reads_total', { result: 'error' }), errors0, 'no read waited on S3 while it was known down');
  } finally {
    moto.resume();
  }
  await eventually(async () => (await a.metric('ocirelay_s3_up')) === 1, 'ocirelay_s3_up back to 1', 20_000);
  for (const d of digestsOf(during)) await eventually(async () => (await objectInfo(d)) !== undefined, `${d} written after the outage`, 30_000);
  await eventually(async () => (await a.metric('ocirelay_s3_pending_bytes')) === 0, 'pending bytes back to 0', 30_000);
  const ready = (await (await fetch(`${a.url}/readyz`)).json()) as { status: string };
  assert.equal(ready.status, 'ready');
  assert.ok(a.logs().some((l) => l.msg === 'S3 bucket down: reads skip it, the write-behind waits'));
  assert.ok(a.logs().some((l) => l.msg === 'S3 bucket back: the write-behind resumes'));
});

test('kill -9 during a multipart upload: no partial object at the key, the stale upload aborted at restart, the write redone, nothing wrong served', async () => {
  // A multipart threshold of 5 MiB (advanced key) and a stale age of 1 s, for this instance only.
  const extra = { multipartThreshold: '5MiB', staleUploadAge: '1s' };
  const e = await start(extra);
  const big = randomBytes(32 * MiB);
  const digest = await pushBlob(upstream.url, 'library/s3-big', big);
  const key = keyOf(digest);
  let seen = false;
  const watch = (async () => {
    for (let i = 0; i < 1500 && !seen; i++) {
      if ((await multipartUploads()).some((u) => u.key === key)) seen = true;
      else await new Promise((r) => setTimeout(r, 10));
    }
  })();
  const r = await download(`${e.url}/v2/library/s3-big/blobs/${digest}`);
  assert.equal(r.sha256, digest);
  await watch;
  assert.ok(seen, 'a multipart upload of the blob was started');
  await e.stop('SIGKILL');
  // Killed mid-upload: nothing at the key (had the last part just completed, the whole blob).
  const afterKill = await objectInfo(digest);
  if (afterKill !== undefined) assert.equal(await objectSha256(digest), digest, 'an object at the key is the whole blob');
  // Older than the stale age by the time the restarted instance looks.
  await new Promise((res) => setTimeout(res, 1200));
  const e2 = await startOcirelay(s3Config(extra), { dir: e.dir, port: e.port, env: { ...moto.env } });
  started.push(e2);
  await eventually(async () => !(await multipartUploads()).some((u) => u.key === key), 'the stale upload aborted', 30_000);
  const aborted = await e2.waitForLog((l) => l.msg === 'aborted stale S3 multipart uploads', 10_000);
  assert.ok(Number(aborted.aborted) >= 1);
  // The blob was committed locally before the kill: served verified from disk (or refetched).
  const again = await download(`${e2.url}/v2/library/s3-big/blobs/${digest}`);
  assert.equal(again.status, 200);
  assert.equal(again.sha256, digest);
  // The write the kill left pending is in the journal: redone after the restart, whole.
  await eventually(async () => (await objectInfo(digest)) !== undefined, 'the pending write redone after the restart', 30_000);
  assert.equal(await objectSha256(digest), digest);
  await e2.cleanup();
});

test('upstream stopped: B (empty disk) serves a blob and the manifest A fetched from S3, verified, ranged, promoted; a repository never confirmed is refused', async () => {
  const b = await start();
  const [layer, small] = img.layers;
  // The upstream confirms, once, that library/s3-first may read both blobs (a HEAD through B: no bytes, no fill).
  for (const l of [layer!, small!]) {
    const h = await fetch(`${b.url}/v2/${img.repo}/blobs/${l.digest}`, { method: 'HEAD' });
    assert.equal(h.status, 200);
    assert.equal(h.headers.get('content-length'), String(l.size));
  }
  const manifestUrl = `${b.url}/v2/${img.repo}/manifests/${img.manifestDigest}`;
  const accept = { accept: 'application/vnd.oci.image.manifest.v1+json' };
  assert.equal((await fetch(manifestUrl, { method: 'HEAD', headers: accept })).status, 200);
  assert.equal(existsSync(blobFile(b, layer!.digest)), false, 'B has none of the blobs on disk');
  // (The manifest may be: once A's write-behind has put it in the bucket, B's HEAD can be answered
  // from S3 and the small, verified manifest kept. Either way the reads below count S3 hits.)
  await upstream.stop();
  // The manifest by digest, from the bucket (content-addressed like blobs), its digest checked.
  const m = await download(manifestUrl, { headers: accept, keep: true });
  assert.equal(m.status, 200);
  assert.equal(m.sha256, img.manifestDigest);
  assert.ok((await b.metric('ocirelay_s3_reads_total', { kind: 'manifest', result: 'hit' })) >= 1);
  const got = await download(`${b.url}/v2/${img.repo}/blobs/${layer!.digest}`, { keep: true });
  assert.equal(got.status, 200);
  assert.equal(got.aborted, false);
  assert.equal(got.sha256, layer!.digest, 'the body from S3 hashes to the digest');
  await eventually(() => existsSync(blobFile(b, layer!.digest)), 'promoted to B’s disk');
  assert.ok((await b.metric('ocirelay_s3_reads_total', { kind: 'blob', result: 'hit' })) >= 1);
  // B read it from the region: it does not write it back.
  assert.equal(await b.metric('ocirelay_s3_writes_total'), 0);

  // A ranged GET that misses locally: the range straight from S3 (206), the whole blob promoted in the background.
  const full = (await download(`${a.url}/v2/${img.repo}/blobs/${small!.digest}`, { keep: true })).body!;
  const ranged = await download(`${b.url}/v2/${img.repo}/blobs/${small!.digest}`, { headers: { range: 'bytes=100-4195' }, keep: true });
  assert.equal(ranged.status, 206);
  assert.equal(ranged.headers['content-range'], `bytes 100-4195/${small!.size}`);
  assert.deepEqual(ranged.body, full.subarray(100, 4196));
  assert.ok((await b.metric('ocirelay_s3_reads_total', { kind: 'range', result: 'hit' })) >= 1);
  await eventually(() => existsSync(blobFile(b, small!.digest)), 'the ranged blob promoted to B’s disk');

  // Another repository was never confirmed by the upstream (stopped): no bytes, from S3 or from B's disk.
  for (const d of [layer!.digest, img.configDigest]) {
    const refused = await download(`${b.url}/v2/library/not-linked/blobs/${d}`, { keep: true });
    assert.notEqual(refused.status, 200, `library/not-linked gets an error for ${d}`);
    assert.notEqual(refused.sha256, d);
  }
  await b.cleanup();
});
