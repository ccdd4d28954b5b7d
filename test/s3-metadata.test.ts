// SharedMetadata (the region's tag records, links, pins and frozen tags in the bucket) against a
// real S3 server (moto_server): two instances' SharedMetadata on one bucket. Compare-and-swap
// of tag records (the newer resolution wins whatever the order), links written by one read by
// the other (commits and upstream HEAD confirmations), pins and freezes synced into another
// instance's CacheIndex and back, and S3 not answering: reads say "not known" quickly, writes
// wait and complete once it is back.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { Registry } from 'prom-client';
import { createLogger } from '../src/logger.ts';
import { parseDigest, type Digest } from '../src/oci/digest.ts';
import { S3Bucket } from '../src/s3/bucket.ts';
import { SharedMetadata } from '../src/s3/shared-metadata.ts';
import { RegionMetrics } from '../src/s3/region-metrics.ts';
import { linkKey, tagKey, pinKey, parseTagKey, parseFrozenKey, frozenKey, refOfPinKey } from '../src/s3/metadata-keys.ts';
import { CacheIndex } from '../src/storage/cache-index.ts';
import { CacheLayout } from '../src/storage/layout.ts';
import { startRegionMetadata } from '../src/s3/region-metadata.ts';
import { CacheEvents } from '../src/cache-events.ts';
import { Metrics } from '../src/metrics.ts';
import { DiskBlobStore } from '../src/storage/disk-blob-store.ts';
import { startMoto, type MotoFixture } from './fixtures/moto.ts';
import { makeTempDir, removeTempDir } from './fixtures/processes.ts';

const logger = createLogger({ level: 'silent' });
const BUCKET = 'ocirelay-meta';
let moto: MotoFixture;
const cleanups: Array<() => Promise<void> | void> = [];

const dg = (s: string): Digest => parseDigest(`sha256:${createHash('sha256').update(s).digest('hex')}`)!;
const MT = 'application/vnd.oci.image.manifest.v1+json';

function bucketOf(endpoint: string, headersTimeoutMs = 5_000): S3Bucket {
  const b = new S3Bucket({ bucket: BUCKET, prefix: 'region/', endpoint, region: 'us-east-1', forcePathStyle: true, headersTimeoutMs, connectTimeoutMs: 1_000 });
  cleanups.push(() => b.destroy());
  return b;
}

async function instance(endpoint: string, o: { index?: CacheIndex; headersTimeoutMs?: number } = {}) {
  const metrics = new RegionMetrics(new Registry());
  const bucket = bucketOf(endpoint, o.headersTimeoutMs);
  const shared = new SharedMetadata({ bucket, logger, metrics, ...(o.index ? { index: o.index } : {}), tagTtlMs: 1, negativeTtlMs: 1, minBackoffMs: 200 });
  cleanups.push(() => shared.close(1_000));
  return { shared, metrics, bucket };
}

async function localIndex(): Promise<CacheIndex> {
  const dir = await makeTempDir('ocirelay-meta-index-');
  const index = new CacheIndex(new CacheLayout(dir), logger);
  await index.init();
  cleanups.push(async () => {
    await index.close();
    await removeTempDir(dir);
  });
  return index;
}

async function counter(c: { get(): Promise<{ values: Array<{ value: number }> }> }): Promise<number> {
  return (await c.get()).values.reduce((a, v) => a + v.value, 0);
}

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

test('keys: every name is validated before it forms a key; keys parse back', () => {
  const d = dg('k');
  assert.equal(parseTagKey(tagKey('docker.io', 'library/alpine', '3.19')!)?.repository, 'library/alpine');
  assert.deepEqual(parseFrozenKey(frozenKey('localhost:5000', 'a/b-c', 'v1.0')), { registry: 'localhost:5000', repository: 'a/b-c', tag: 'v1.0' });
  assert.equal(refOfPinKey(pinKey('docker.io/library/alpine:3.19#linux/amd64')), 'docker.io/library/alpine:3.19#linux/amd64');
  assert.match(linkKey('docker.io', 'library/alpine', d), /^meta\/links\/[0-9a-f]{64}\/docker\.io\/library\/alpine$/);
  for (const [r, n, t] of [['docker.io', '../x', 'a'], ['Docker.io', 'x', 'a'], ['docker.io', 'x', '../a'], ['docker.io/evil', 'x', 'a'], ['docker.io', 'x/_tags', 'a']]) {
    assert.throws(() => tagKey(r!, n!, t!), /invalid name/);
  }
  assert.throws(() => linkKey('docker.io', 'a//b', d), /invalid name/);
});

test('tag records: two writers, the newer resolution wins whatever the order', async () => {
  const a = await instance(moto.endpoint);
  const b = await instance(moto.endpoint);
  const reader = await instance(moto.endpoint);
  const older = { digest: dg('old'), resolvedAt: 1_000 };
  const newer = { digest: dg('new'), resolvedAt: 2_000 };
  const ev = (tag: string, x: { digest: Digest; resolvedAt: number }) => ({ registry: 'docker.io', repository: 'library/app', tag, mediaType: MT, via: 'upstream' as const, ...x });

  // Newer first, then the older one: the older never overwrites.
  a.shared.tagResolved(ev('t1', newer));
  assert.equal(await a.shared.flush(10_000), true);
  b.shared.tagResolved(ev('t1', older));
  assert.equal(await b.shared.flush(10_000), true);
  assert.equal((await reader.shared.tag('docker.io', 'library/app', 't1'))?.digest, newer.digest);

  // Older first, then the newer one: replaced.
  b.shared.tagResolved(ev('t2', older));
  assert.equal(await b.shared.flush(10_000), true);
  a.shared.tagResolved(ev('t2', newer));
  assert.equal(await a.shared.flush(10_000), true);
  const t2 = await reader.shared.tag('docker.io', 'library/app', 't2');
  assert.deepEqual(t2, { digest: newer.digest, mediaType: MT, resolvedAt: 2_000 });

  // Both at once, many times over: compare-and-swap leaves the newest.
  for (let i = 0; i < 5; i++) {
    const tag = `race${i}`;
    for (let k = 0; k < 4; k++) {
      a.shared.tagResolved(ev(tag, { digest: dg(`a${k}`), resolvedAt: 10_000 + k * 2 }));
      b.shared.tagResolved(ev(tag, { digest: dg(`b${k}`), resolvedAt: 10_000 + k * 2 + 1 }));
    }
  }
  assert.equal(await a.shared.flush(20_000), true);
  assert.equal(await b.shared.flush(20_000), true);
  for (let i = 0; i < 5; i++) assert.equal((await reader.shared.tag('docker.io', 'library/app', `race${i}`))?.digest, dg('b3'));
  // Content read from the region is not written back.
  a.shared.tagResolved({ ...ev('t3', newer), via: 'region' });
  assert.equal(a.shared.pendingWrites, 0);
  assert.equal(await reader.shared.tag('docker.io', 'library/app', 't3'), undefined);
  assert.equal(await reader.shared.tag('docker.io', 'library/app', '../x'), undefined);
});

test('a revalidation that confirms a tag refreshes the region record (at most every 30 s per tag)', async () => {
  const indexA = await localIndex();
  const a = await instance(moto.endpoint, { index: indexA });
  indexA.onTagConfirmed = (r, n, t, rec) => a.shared.tagConfirmed(r, n, t, rec);
  const reader = await instance(moto.endpoint);
  const d = dg('confirmed');
  const t0 = 1_000_000;
  indexA.setTag('docker.io', 'library/conf', 'v1', { digest: d, mediaType: MT, checkedAt: t0 });
  a.shared.tagResolved({ registry: 'docker.io', repository: 'library/conf', tag: 'v1', digest: d, mediaType: MT, resolvedAt: t0, via: 'upstream' });
  assert.equal(await a.shared.flush(10_000), true);
  assert.equal((await reader.shared.tag('docker.io', 'library/conf', 'v1'))?.resolvedAt, t0);
  // Confirmed by the upstream five minutes later: the record is refreshed.
  indexA.setTag('docker.io', 'library/conf', 'v1', { digest: d, mediaType: MT, checkedAt: t0 + 300_000 });
  assert.equal(await a.shared.flush(10_000), true);
  assert.equal((await reader.shared.tag('docker.io', 'library/conf', 'v1'))?.resolvedAt, t0 + 300_000);
  // Again 10 s later: not written (rate limit); an older confirmation never lands.
  indexA.setTag('docker.io', 'library/conf', 'v1', { digest: d, mediaType: MT, checkedAt: t0 + 310_000 });
  a.shared.tagConfirmed('docker.io', 'library/conf', 'v1', { digest: d, mediaType: MT, checkedAt: t0 + 1 });
  assert.equal(await a.shared.flush(10_000), true);
  assert.equal((await reader.shared.tag('docker.io', 'library/conf', 'v1'))?.resolvedAt, t0 + 300_000);
});

test('a tag record older than the registry tagTTL is no answer, unless the upstream is down', async () => {
  let down = false;
  const metrics = new RegionMetrics(new Registry());
  const writer = await instance(moto.endpoint);
  const reader = new SharedMetadata({ bucket: bucketOf(moto.endpoint), logger, metrics, tagTtlMs: 1, tagMaxAgeMs: () => 60_000, upstreamDown: () => down });
  cleanups.push(() => reader.close(1_000));
  const ev = (tag: string, resolvedAt: number) => ({ registry: 'docker.io', repository: 'library/aged', tag, digest: dg(tag), mediaType: MT, resolvedAt, via: 'upstream' as const });
  writer.shared.tagResolved(ev('fresh', Date.now() - 10_000));
  writer.shared.tagResolved(ev('old', Date.now() - 120_000));
  assert.equal(await writer.shared.flush(10_000), true);
  assert.equal((await reader.tag('docker.io', 'library/aged', 'fresh'))?.digest, dg('fresh'));
  assert.equal(await reader.tag('docker.io', 'library/aged', 'old'), undefined);
  down = true;
  assert.equal((await reader.tag('docker.io', 'library/aged', 'old'))?.digest, dg('old'));
});

test('links: a commit or an upstream HEAD confirmation on A authorises the repository on B, no other', async () => {
  const indexA = await localIndex();
  const a = await instance(moto.endpoint, { index: indexA });
  indexA.onLinked = (r, n, d) => a.shared.linked(r, n, d);
  const b = await instance(moto.endpoint);
  const layer = dg('layer');
  const other = dg('other');
  assert.equal(await b.shared.isLinked('docker.io', 'team/private', layer), false);

  a.shared.contentCommitted({ kind: 'blob', registry: 'docker.io', repository: 'team/private', digest: layer, size: 5, via: 'upstream' });
  // An upstream HEAD confirmation links through the local index (no commit).
  indexA.link('docker.io', 'team/confirmed', other);
  // Region content is authorised in the region already.
  a.shared.contentCommitted({ kind: 'blob', registry: 'docker.io', repository: 'team/regional', digest: layer, size: 5, via: 'region' });
  assert.equal(await a.shared.flush(10_000), true);

  assert.equal(await b.shared.isLinked('docker.io', 'team/private', layer), true);
  assert.equal(await b.shared.isLinked('docker.io', 'team/confirmed', other), true);
  assert.equal(await b.shared.isLinked('docker.io', 'team/other', layer), false);
  assert.equal(await b.shared.isLinked('docker.io', 'team/regional', layer), false);
  assert.equal(await b.shared.isLinked('docker.io', 'team/private', other), false);
  assert.equal(await b.shared.isLinked('ghcr.io', 'team/private', layer), false);
  assert.equal(await b.shared.isLinked('docker.io', 'bad//name', layer), false);
});

test('pins and frozen tags round-trip between instances through the bucket (the later change wins)', async () => {
  const indexA = await localIndex();
  const indexB = await localIndex();
  const a = await instance(moto.endpoint, { index: indexA });
  const b = await instance(moto.endpoint, { index: indexB });
  const root = dg('pinned-root');
  const child = dg('pinned-child');
  const ref = 'docker.io/library/pinned:1';

  // A pins and freezes (as CacheAdmin does: index first, then the event).
  const now = Date.now();
  await indexA.pin({ ref, registry: 'docker.io', repository: 'library/pinned', digests: [root, child], createdAt: now });
  a.shared.pinChanged({ registry: 'docker.io', repository: 'library/pinned', ref, digests: [root, child], pinned: true });
  await indexA.freeze('docker.io', 'library/pinned', '1', root, now);
  a.shared.freezeChanged({ registry: 'docker.io', repository: 'library/pinned', tag: '1', digest: root, at: now });
  // A freeze made before S3 (only in A's index) is uploaded by A's sync.
  await indexA.freeze('docker.io', 'library/pinned', 'old', child, now - 60_000);
  assert.equal(await a.shared.flush(10_000), true);
  await a.shared.sync();
  assert.equal(await a.shared.flush(10_000), true);

  const got = await b.shared.sync();
  assert.ok(got);
  assert.equal(indexB.isPinned(child), true);
  assert.equal(indexB.isPinned(root), true);
  assert.equal(indexB.frozen('docker.io', 'library/pinned', '1')?.digest, root);
  assert.equal(indexB.frozen('docker.io', 'library/pinned', 'old')?.digest, child);
  // A second sync changes nothing.
  assert.deepEqual(await b.shared.sync(), { pinned: 0, unpinned: 0, frozen: 0, unfrozen: 0, uploaded: 0 });

  // B unpins and unfreezes later: A follows.
  await new Promise((r) => setTimeout(r, 5));
  assert.equal(await indexB.unpin(ref), true);
  b.shared.pinChanged({ registry: 'docker.io', repository: 'library/pinned', ref, digests: [root, child], pinned: false });
  assert.equal(await indexB.unfreeze('docker.io', 'library/pinned', '1'), true);
  b.shared.freezeChanged({ registry: 'docker.io', repository: 'library/pinned', tag: '1', digest: undefined, at: Date.now() });
  assert.equal(await b.shared.flush(10_000), true);
  const back = await a.shared.sync();
  assert.equal(back?.unpinned, 1);
  assert.equal(back?.unfrozen, 1);
  assert.equal(indexA.isPinned(child), false);
  assert.equal(indexA.frozen('docker.io', 'library/pinned', '1'), undefined);
  assert.equal(indexA.frozen('docker.io', 'library/pinned', 'old')?.digest, child);
  // The tombstones keep A from uploading its older state again.
  assert.equal(a.shared.pendingWrites, 0);
});

test('startRegionMetadata (as main.ts wires it): the region’s pins and frozen tags reach the local index at start; links and tag resolutions go out; it holds the budget lease', async () => {
  const writer = await instance(moto.endpoint);
  const ref = 'docker.io/library/wired:2';
  const root = dg('wired-root');
  writer.shared.writePin({ ref, registry: 'docker.io', repository: 'library/wired', digests: [root, dg('wired-layer')], pinned: true, at: Date.now() - 1_000 });
  writer.shared.writeFrozen({ registry: 'docker.io', repository: 'library/wired', tag: '2', digest: root, at: Date.now() - 1_000 });
  assert.equal(await writer.shared.flush(10_000), true);

  const dir = await makeTempDir('ocirelay-meta-wired-');
  const layout = new CacheLayout(dir);
  const index = new CacheIndex(layout, logger);
  await index.init();
  const disk = new DiskBlobStore(layout, logger);
  await disk.init();
  const events = new CacheEvents();
  const metrics = new Metrics();
  const region = startRegionMetadata({ bucket: bucketOf(moto.endpoint), index, disk, events, metrics, logger, dataDir: dir, maxBytes: 2 ** 30, instance: 'http://10.0.0.7:5000' });
  cleanups.push(async () => {
    await region.close();
    await index.close();
    await removeTempDir(dir);
  });
  assert.equal(region.instanceId, '10.0.0.7_5000');
  // The first sync runs at start (not awaited by it): sync() joins the one in flight.
  await region.shared.sync();
  assert.equal(index.isPinned(dg('wired-layer')), true);
  assert.equal(index.frozen('docker.io', 'library/wired', '2')?.digest, root);

  // A HEAD confirmation (a local link), a tag resolution event: both reach the bucket.
  const layer = dg('wired-confirmed');
  index.link('docker.io', 'library/wired', layer);
  await events.tagResolved({ registry: 'docker.io', repository: 'library/wired', tag: 'latest', digest: root, mediaType: MT, resolvedAt: Date.now(), via: 'upstream' });
  assert.equal(await region.shared.flush(10_000), true);
  assert.equal(await writer.shared.isLinked('docker.io', 'library/wired', layer), true);
  assert.equal((await writer.shared.tag('docker.io', 'library/wired', 'latest'))?.digest, root);
  // With maxBytes it contends for the budget lease (alone here: it holds it).
  for (let i = 0; i < 100 && region.budget && (await metrics.registry.getSingleMetricAsString('ocirelay_s3_budget_leader')).endsWith(' 0'); i++) await new Promise((r) => setTimeout(r, 50));
  assert.match(await metrics.registry.getSingleMetricAsString('ocirelay_s3_budget_leader'), / 1$/);
});

test('S3 not answering: reads say "not known" quickly, writes wait and complete when it is back', async () => {
  const own = await startMoto();
  cleanups.push(() => own.stop());
  await own.createBucket(BUCKET);
  const a = await instance(own.endpoint, { headersTimeoutMs: 1_000 });
  const b = await instance(own.endpoint, { headersTimeoutMs: 1_000 });
  const d = dg('while-down');
  own.pause();
  let resumed = false;
  try {
    const t0 = Date.now();
    assert.equal(await b.shared.isLinked('docker.io', 'down/repo', d), false);
    assert.equal(await b.shared.tag('docker.io', 'down/repo', 'latest'), undefined);
    assert.ok(Date.now() - t0 < 6_000, `reads took ${Date.now() - t0} ms`);
    // Within the read pause the next answers do not wait for S3 at all.
    const t1 = Date.now();
    assert.equal(await b.shared.isLinked('docker.io', 'down/repo', dg('x')), false);
    assert.ok(Date.now() - t1 < 200);

    a.shared.contentCommitted({ kind: 'blob', registry: 'docker.io', repository: 'down/repo', digest: d, size: 1, via: 'upstream' });
    a.shared.tagResolved({ registry: 'docker.io', repository: 'down/repo', tag: 'latest', digest: d, mediaType: MT, resolvedAt: 5, via: 'upstream' });
    assert.equal(await a.shared.flush(2_500), false);
    assert.ok(a.shared.pendingWrites > 0);
    assert.ok((await counter(a.metrics.metadataWriteFailures)) >= 1);
    own.resume();
    resumed = true;
    assert.equal(await a.shared.flush(30_000), true);
  } finally {
    if (!resumed) own.resume();
  }
  const c = await instance(own.endpoint);
  assert.equal(await c.shared.isLinked('docker.io', 'down/repo', d), true);
  assert.equal((await c.shared.tag('docker.io', 'down/repo', 'latest'))?.digest, d);
});
