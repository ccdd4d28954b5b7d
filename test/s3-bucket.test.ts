// S3Bucket against a real S3 server (moto_server): conditional creates, ranges, JSON records
// with compare-and-swap, multipart uploads, listing, and the bucket failing (stopped, or
// accepting connections and never answering) as S3Unavailable within the deadlines.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { S3Bucket, S3Unavailable } from '../src/s3/bucket.ts';
import { startMoto, type MotoFixture } from './fixtures/moto.ts';

let moto: MotoFixture;
let bucket: S3Bucket;

before(async () => {
  moto = await startMoto();
  await moto.createBucket('ocirelay-test');
  bucket = new S3Bucket({ bucket: 'ocirelay-test', prefix: 'cache/', endpoint: moto.endpoint, region: 'us-east-1', forcePathStyle: true, multipartThreshold: 6 * 2 ** 20, headersTimeoutMs: 2_000 });
  process.env['AWS_ACCESS_KEY_ID'] = moto.env.AWS_ACCESS_KEY_ID;
  process.env['AWS_SECRET_ACCESS_KEY'] = moto.env.AWS_SECRET_ACCESS_KEY;
});

after(async () => {
  bucket?.destroy();
  await moto?.stop();
});

async function readAll(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r as AsyncIterable<Buffer>) chunks.push(c);
  return Buffer.concat(chunks);
}

test('putIfAbsent creates once; the second writer gets exists; get returns the bytes and ranges', async () => {
  const data = randomBytes(300_000);
  assert.equal(await bucket.putIfAbsent('blobs/sha256/aa', () => data, data.length), 'created');
  assert.equal(await bucket.putIfAbsent('blobs/sha256/aa', () => randomBytes(10), 10), 'exists');
  const got = await bucket.get('blobs/sha256/aa');
  assert.ok(got);
  assert.deepEqual(await readAll(got.body), data);
  const part = await bucket.get('blobs/sha256/aa', { start: 1000, end: 1999 });
  assert.ok(part);
  assert.equal(part.size, 1000);
  assert.equal(part.totalSize, data.length);
  assert.deepEqual(await readAll(part.body), data.subarray(1000, 2000));
  assert.equal(await bucket.get('blobs/sha256/missing'), undefined);
  assert.equal(await bucket.head('blobs/sha256/missing'), undefined);
  assert.equal((await bucket.head('blobs/sha256/aa'))?.size, data.length);
});

test('a large stream goes up as a multipart upload, byte for byte', async () => {
  const data = randomBytes(13 * 2 ** 20);
  assert.equal(await bucket.putIfAbsent('blobs/sha256/big', () => Readable.from([data.subarray(0, 7e6), data.subarray(7e6)]), data.length), 'created');
  const got = await bucket.get('blobs/sha256/big');
  assert.ok(got);
  assert.equal(createHash('sha256').update(await readAll(got.body)).digest('hex'), createHash('sha256').update(data).digest('hex'));
});

test('JSON records: create-if-absent, compare-and-swap on the ETag', async () => {
  const e1 = await bucket.putJson('meta/t1.json', { v: 1 }, { ifNoneMatch: true });
  assert.notEqual(e1, 'conflict');
  assert.equal(await bucket.putJson('meta/t1.json', { v: 9 }, { ifNoneMatch: true }), 'conflict');
  const e2 = await bucket.putJson('meta/t1.json', { v: 2 }, { ifMatch: e1 });
  assert.notEqual(e2, 'conflict');
  assert.equal(await bucket.putJson('meta/t1.json', { v: 3 }, { ifMatch: e1 }), 'conflict', 'a stale ETag loses');
  const got = await bucket.getJson('meta/t1.json');
  assert.deepEqual(got?.value, { v: 2 });
  assert.equal(got?.etag, e2);
});

test('list and delete under the prefix', async () => {
  await bucket.putJson('list/a.json', 1);
  await bucket.putJson('list/b.json', 2);
  const keys: string[] = [];
  for await (const o of bucket.list('list/')) keys.push(o.key);
  assert.deepEqual(keys.sort(), ['list/a.json', 'list/b.json']);
  await bucket.delete('list/a.json');
  await bucket.delete('list/never-there.json');
  const left: string[] = [];
  for await (const o of bucket.list('list/')) left.push(o.key);
  assert.deepEqual(left, ['list/b.json']);
});

test('an S3 that accepts connections and never answers fails as S3Unavailable within the headers deadline; a stopped one too', async () => {
  moto.pause();
  try {
    const t0 = Date.now();
    await assert.rejects(bucket.head('blobs/sha256/aa'), (e: unknown) => e instanceof S3Unavailable && e.reason === 'timeout');
    assert.ok(Date.now() - t0 < 10_000, `gave up after ${Date.now() - t0} ms`);
  } finally {
    moto.resume();
  }
  assert.equal((await bucket.head('blobs/sha256/aa'))?.size, 300_000, 'answers again once resumed');
  const dead = new S3Bucket({ bucket: 'ocirelay-test', endpoint: 'http://127.0.0.1:1', region: 'us-east-1', forcePathStyle: true, headersTimeoutMs: 2_000 });
  await assert.rejects(dead.get('x'), (e: unknown) => e instanceof S3Unavailable);
  dead.destroy();
});
