// The bucket budget against a real S3 server (moto_server): the lease (two contenders, exactly
// one holder; an expired lease is taken over), eviction under a small maxBytes (unreferenced
// first, then least recently used by the region's access logs; never a pinned digest, never an
// object inside the grace period; only while holding the lease), and an admin purge removing
// content objects no other repository links, with its tag and link records.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { Registry } from 'prom-client';
import { createLogger } from '../src/logger.ts';
import { digestOf, type Digest } from '../src/oci/digest.ts';
import { S3Bucket } from '../src/s3/bucket.ts';
import { Lease } from '../src/s3/lease.ts';
import { BucketBudget } from '../src/s3/bucket-budget.ts';
import { AccessRecorder } from '../src/s3/access-log.ts';
import { RegionMetrics } from '../src/s3/region-metrics.ts';
import { SharedMetadata } from '../src/s3/shared-metadata.ts';
import { blobKey, linkKey, pinKey, tagKey } from '../src/s3/metadata-keys.ts';
import { startMoto, type MotoFixture } from './fixtures/moto.ts';

const logger = createLogger({ level: 'silent' });
const BUCKET = 'ocirelay-budget';
let moto: MotoFixture;
const cleanups: Array<() => Promise<void> | void> = [];

function bucketOf(prefix: string): S3Bucket {
  const b = new S3Bucket({ bucket: BUCKET, prefix, endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, headersTimeoutMs: 5_000 });
  cleanups.push(() => b.destroy());
  return b;
}

async function put(b: S3Bucket, data: Buffer): Promise<Digest> {
  const d = digestOf(data);
  assert.equal(await b.putIfAbsent(blobKey(d), () => data, data.length), 'created');
  return d;
}

const exists = async (b: S3Bucket, d: Digest) => (await b.head(blobKey(d))) !== undefined;

before(async () => {
  process.env['AWS_ACCESS_KEY_ID'] = 'test';
  process.env['AWS_SECRET_ACCESS_KEY'] = 'test';
  moto = await startMoto();
  await moto.createBucket(BUCKET);
});

after(async () => {
  for (const c of cleanups.reverse()) await c();
  await moto?.stop();
});

test('lease: two contenders, exactly one holder; renewals keep it; an expired lease is taken over', async () => {
  for (let i = 0; i < 4; i++) {
    const name = `race-${i}`;
    const a = new Lease({ bucket: bucketOf('lease/'), name, holder: 'a', ttlMs: 60_000 });
    const b = new Lease({ bucket: bucketOf('lease/'), name, holder: 'b', ttlMs: 60_000 });
    const got = await Promise.all([a.tryAcquire(), b.tryAcquire()]);
    assert.equal(got.filter(Boolean).length, 1, `round ${i}: ${JSON.stringify(got)}`);
    const [holder, other] = got[0] ? [a, b] : [b, a];
    assert.equal(holder.held, true);
    assert.equal(other.held, false);
    assert.equal(await holder.tryAcquire(), true);
    assert.equal(await other.tryAcquire(), false);
    assert.equal((await other.current())?.holder, holder.holder);
  }
  const a = new Lease({ bucket: bucketOf('lease/'), name: 'expiry', holder: 'a', ttlMs: 1_200, marginMs: 200 });
  const b = new Lease({ bucket: bucketOf('lease/'), name: 'expiry', holder: 'b', ttlMs: 1_200, marginMs: 200 });
  assert.equal(await a.tryAcquire(), true);
  assert.equal(await b.tryAcquire(), false);
  await new Promise((r) => setTimeout(r, 1_400));
  // A stopped acting before its lease expired; B takes it over, and A cannot take it back.
  assert.equal(a.held, false);
  assert.equal(await b.tryAcquire(), true);
  assert.equal(await a.tryAcquire(), false);
  // A released lease is free at once.
  await b.release();
  assert.equal(await a.tryAcquire(), true);
});

test('budget: unreferenced first, then LRU; never pinned, never inside the grace period; only the lease holder evicts', async () => {
  const b = bucketOf('budget/');
  const metrics = new RegionMetrics(new Registry());
  const KiB = (n: number) => randomBytes(n * 1024);
  const config = await put(b, KiB(1));
  const layer = await put(b, KiB(1));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { digest: config, size: 1024 }, layers: [{ digest: layer, size: 1024 }] }));
  const m = await put(b, manifest);
  const u1 = await put(b, KiB(1));
  const u2 = await put(b, KiB(1));
  const young = await put(b, KiB(1));
  const pinned = await put(b, KiB(1));
  const localPin = await put(b, KiB(1));
  // The tag record and the pin in the bucket, as SharedMetadata writes them.
  await b.putJson(tagKey('docker.io', 'library/app', 'latest'), { digest: m, mediaType: 'application/vnd.oci.image.manifest.v1+json', resolvedAt: 1 });
  await b.putJson(pinKey('docker.io/library/pinned:1'), { ref: 'docker.io/library/pinned:1', registry: 'docker.io', repository: 'library/pinned', digests: [pinned], pinned: true, at: 1 });

  // The pass runs "an hour later" (every object is older than the grace period by creation time).
  const now = Date.now() + 3_600_000;
  const min = 60_000;
  // Two instances' access logs: the layer is the least recently used of the referenced objects;
  // the young one was read a minute ago.
  const accessA = new AccessRecorder({ bucket: b, instanceId: 'a', logger, now: () => now, local: () => [[config, now - 40 * min], [layer, now - 55 * min]] });
  const accessB = new AccessRecorder({ bucket: b, instanceId: 'b', logger, now: () => now, local: () => [[m, now - 45 * min], [young, now - 1 * min]] });
  cleanups.push(() => accessA.close(), () => accessB.close());
  await accessA.write();
  await accessB.write();
  // Rewrites are conditional too (If-Match on the last ETag; after a restart it is looked up).
  assert.equal(await accessA.write(), 2);
  const restartedA = new AccessRecorder({ bucket: b, instanceId: 'a', logger, now: () => now, local: () => [[config, now - 40 * min], [layer, now - 55 * min]] });
  assert.equal(await restartedA.write(), 2);

  const total = 7 * 1024 + manifest.length;
  const maxBytes = 5 * 1024; // target: 90% = 4608 bytes
  const leaseA = new Lease({ bucket: b, name: 'budget', holder: 'a', now: () => Date.now() });
  const leaseB = new Lease({ bucket: b, name: 'budget', holder: 'b' });
  const budgetA = new BucketBudget({ bucket: b, maxBytes, lease: leaseA, metrics, logger, graceMs: 30 * min, now: () => now, isPinnedLocally: (d) => d === localPin });
  const budgetB = new BucketBudget({ bucket: b, maxBytes, lease: leaseB, metrics: new RegionMetrics(new Registry()), logger, graceMs: 30 * min, now: () => now });
  cleanups.push(() => budgetA.close(), () => budgetB.close());
  assert.equal(await leaseA.tryAcquire(), true);
  assert.equal(await leaseB.tryAcquire(), false);
  // Not the holder: no pass at all.
  assert.equal(await budgetB.check(), undefined);

  const r = await budgetA.check();
  assert.ok(r);
  assert.deepEqual(r.evicted.map((e) => e.reason), ['unreferenced', 'unreferenced', 'lru']);
  assert.deepEqual(new Set(r.evicted.slice(0, 2).map((e) => e.digest)), new Set([u1, u2]));
  assert.equal(r.evicted[2]?.digest, layer);
  assert.equal(r.totalBytes, total - 3 * 1024);
  assert.ok(r.totalBytes <= maxBytes * 0.9);
  for (const d of [u1, u2, layer]) assert.equal(await exists(b, d), false);
  for (const d of [m, config, young, pinned, localPin]) assert.equal(await exists(b, d), true, `kept ${d}`);
  assert.equal((await metrics.bucketEvictions.get()).values.find((v) => v.labels.reason === 'lru')?.value, 1);
  assert.equal((await metrics.bucketBytes.get()).values[0]?.value, total - 3 * 1024);

  // Under budget now: the next pass evicts nothing.
  assert.deepEqual((await budgetA.check())?.evicted, []);
});

test('within the grace period nothing is evicted, however far over budget', async () => {
  const b = bucketOf('grace/');
  for (let i = 0; i < 4; i++) await put(b, randomBytes(2048));
  const lease = new Lease({ bucket: b, name: 'budget', holder: 'a' });
  const budget = new BucketBudget({ bucket: b, maxBytes: 1024, lease, metrics: new RegionMetrics(new Registry()), logger, graceMs: 30 * 60_000 });
  cleanups.push(() => budget.close());
  assert.equal(await lease.tryAcquire(), true);
  const r = await budget.check();
  assert.ok(r);
  assert.equal(r.evicted.length, 0);
  assert.equal(r.overBudget, true);
  assert.equal(r.totalBytes, 4 * 2048);
});

test('purge removes the tag and link records, and content no other repository links', async () => {
  const b = bucketOf('purge/');
  const metrics = new RegionMetrics(new Registry());
  const shared = new SharedMetadata({ bucket: b, logger, metrics, tagTtlMs: 1, negativeTtlMs: 1 });
  cleanups.push(() => shared.close(1_000));
  const onlyHere = await put(b, randomBytes(3000));
  const shared2 = await put(b, randomBytes(3000));
  const keptPinned = await put(b, randomBytes(3000));
  for (const x of [onlyHere, shared2, keptPinned]) shared.linked('docker.io', 'team/a', x);
  shared.linked('docker.io', 'team/b', shared2);
  shared.tagResolved({ registry: 'docker.io', repository: 'team/a', tag: 'latest', digest: onlyHere, mediaType: 'application/vnd.oci.image.manifest.v1+json', resolvedAt: 5, via: 'upstream' });
  assert.equal(await shared.flush(10_000), true);
  assert.ok(await b.head(tagKey('docker.io', 'team/a', 'latest')));

  const res = await shared.purged(
    { registry: 'docker.io', repository: 'team/a', tags: ['latest'], unfrozenTags: [], unpinnedRefs: [], digests: [onlyHere, shared2, keptPinned] },
    (x) => x === keptPinned,
  );
  assert.deepEqual(res, { removedObjects: 1, freedBytes: 3000, queued: false });
  assert.equal(await exists(b, onlyHere), false);
  assert.equal(await exists(b, shared2), true);
  assert.equal(await exists(b, keptPinned), true);
  assert.equal(await b.head(tagKey('docker.io', 'team/a', 'latest')), undefined);
  for (const x of [onlyHere, shared2, keptPinned]) assert.equal(await b.head(linkKey('docker.io', 'team/a', x)), undefined);
  assert.ok(await b.head(linkKey('docker.io', 'team/b', shared2)));
  assert.equal(await shared.isLinked('docker.io', 'team/a', onlyHere), false);
  assert.equal(await shared.isLinked('docker.io', 'team/b', shared2), true);
  assert.equal(await shared.tag('docker.io', 'team/a', 'latest'), undefined);
});
