// The S3 write-behind's queue against a real S3 (moto_server) and a real DiskBlobStore: the
// listener only enqueues (returns at once, no promise), the queue is bounded by jobs and bytes
// (a full queue drops and counts, never blocks), content read from the region is not written
// back, a file evicted before its turn is skipped, and the workers drain the queue to 0 pending.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { HeadObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { digestOf, digestHex, type Digest } from '../src/oci/digest.ts';
import { S3Bucket } from '../src/s3/bucket.ts';
import { S3Health } from '../src/s3/s3-health.ts';
import { WriteBehind } from '../src/s3/write-behind.ts';
import { WriteBehindJournal } from '../src/s3/write-behind-journal.ts';
import { DiskBlobStore } from '../src/storage/disk-blob-store.ts';
import { CacheLayout } from '../src/storage/layout.ts';
import { motoClient, startMoto, type MotoFixture } from './fixtures/moto.ts';
import { eventually } from './helpers/eventually.ts';

const BUCKET = 'write-behind-queue';
let moto: MotoFixture;
let client: S3Client;
let dir: string;

before(async () => {
  moto = await startMoto();
  await moto.createBucket(BUCKET);
  client = motoClient(moto.endpoint);
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-wb-'));
});

after(async () => {
  client?.destroy();
  await moto?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function exists(digest: Digest): Promise<boolean> {
  try {
    await client.send(new HeadObjectCommand({ Bucket: BUCKET, Key: `wb/blobs/sha256/${digestHex(digest)}` }));
    return true;
  } catch {
    return false;
  }
}

const value = async (m: Metrics, name: string, labels: Record<string, string> = {}) => {
  const got = await m.registry.getSingleMetric(name)?.get();
  return (got?.values ?? []).filter((v) => Object.entries(labels).every(([k, l]) => (v.labels as Record<string, unknown>)[k] === l)).reduce((n, v) => n + v.value, 0);
};

test('enqueue only, bounded by jobs and bytes, region content skipped, evicted files skipped, drained to 0 pending', async () => {
  const metrics = new Metrics({ defaultMetrics: false });
  const logger = createLogger({ level: 'silent' });
  const disk = new DiskBlobStore(new CacheLayout(dir), logger);
  await disk.init();
  const bucket = new S3Bucket({ bucket: BUCKET, prefix: 'wb/', client: motoClient(moto.endpoint) });
  const health = new S3Health(bucket, { metrics, logger, clustered: false });
  await health.check();
  assert.equal(health.conditionalWrites, 'honoured');
  const wb = new WriteBehind({ bucket, disk, health, metrics, logger, maxPendingJobs: 3, maxPendingBytes: 3000, staleUploadAgeMs: 3_600_000 });

  const blobs: Array<{ digest: Digest; data: Buffer }> = [];
  for (let i = 0; i < 6; i++) {
    const data = randomBytes(1000);
    const digest = digestOf(data);
    await disk.put(digest, data);
    blobs.push({ digest, data });
  }
  const commit = (i: number, via: 'upstream' | 'region' = 'upstream') =>
    wb.contentCommitted({ kind: 'blob', registry: 'docker.io', repository: 'library/x', digest: blobs[i]!.digest, size: 1000, via });

  // Returns at once: nothing for the commit to await.
  assert.equal(commit(0), undefined);
  commit(0); // a duplicate is one job
  commit(1, 'region'); // from the bucket already: not written back
  commit(2);
  commit(3);
  commit(4); // fourth job: over maxPendingJobs
  assert.equal(wb.pendingJobs, 3);
  assert.equal(await value(metrics, 'ocirelay_s3_pending_bytes'), 3000);
  assert.equal(await value(metrics, 'ocirelay_s3_write_failures_total', { reason: 'queue_full' }), 1);

  // Evicted before its turn: skipped, counted as gone.
  await disk.delete(blobs[3]!.digest);
  wb.start();
  await eventually(async () => (await value(metrics, 'ocirelay_s3_pending_bytes')) === 0, 'drained', 15_000);
  assert.equal(await value(metrics, 'ocirelay_s3_writes_total', { result: 'created' }), 2);
  assert.equal(await value(metrics, 'ocirelay_s3_write_failures_total', { reason: 'gone' }), 1);
  assert.equal(await exists(blobs[0]!.digest), true);
  assert.equal(await exists(blobs[2]!.digest), true);
  assert.equal(await exists(blobs[1]!.digest), false, 'region content not written back');
  assert.equal(await exists(blobs[3]!.digest), false);
  assert.equal(await exists(blobs[4]!.digest), false, 'dropped when the queue was full');
  assert.equal(disk.isOpen(blobs[0]!.digest), false, 'the upload released its reader');

  // The same content committed again (another instance wrote it, or this one did): counted as exists.
  commit(0);
  await eventually(async () => (await value(metrics, 'ocirelay_s3_writes_total', { result: 'exists' })) === 1, 'exists counted', 15_000);
  await wb.close();
  health.stop();
  bucket.destroy();
});

test('the journal keeps pending writes across a stop: redone at the next start, evicted ones dropped', async () => {
  const metrics = new Metrics({ defaultMetrics: false });
  const logger = createLogger({ level: 'silent' });
  const root = path.join(dir, 'journal-case');
  const disk = new DiskBlobStore(new CacheLayout(root), logger);
  await disk.init();
  const file = path.join(root, 's3', 'write-behind.jsonl');
  const bucket = new S3Bucket({ bucket: BUCKET, prefix: 'wb/', client: motoClient(moto.endpoint) });
  const health = new S3Health(bucket, { metrics, logger, clustered: false });
  const blobs: Digest[] = [];
  for (let i = 0; i < 3; i++) {
    const data = randomBytes(2000);
    blobs.push(digestOf(data));
    await disk.put(digestOf(data), data);
  }
  // First run: three commits, no worker ever runs (as if killed right after).
  const first = await WriteBehindJournal.open(file, logger);
  assert.equal(first.pending.length, 0);
  const wb1 = new WriteBehind({ bucket, disk, health, metrics, logger, journal: first.journal, staleUploadAgeMs: 3_600_000 });
  for (const d of blobs) wb1.contentCommitted({ kind: 'blob', registry: 'docker.io', repository: 'library/j', digest: d, size: 2000, via: 'upstream' });
  await first.journal.close();
  // One of them is evicted before the restart.
  await disk.delete(blobs[1]!);

  const second = await WriteBehindJournal.open(file, logger);
  assert.deepEqual(second.pending.map((w) => w.digest), blobs);
  const wb2 = new WriteBehind({ bucket, disk, health, metrics, logger, journal: second.journal, staleUploadAgeMs: 3_600_000 });
  assert.equal(wb2.restore(second.pending), 2);
  wb2.start();
  await eventually(async () => (await exists(blobs[0]!)) && (await exists(blobs[2]!)), 'the pending writes redone', 15_000);
  await eventually(() => wb2.pendingJobs === 0, 'drained');
  await wb2.close();
  assert.equal(await exists(blobs[1]!), false);
  // Everything done: a third start has nothing pending.
  const third = await WriteBehindJournal.open(file, logger);
  assert.equal(third.pending.length, 0);
  await third.journal.close();
  health.stop();
  bucket.destroy();
});
