// The S3 tier's config (issue 11): storage.s3 with the names as given, sizes in the config's
// grammar, the advanced keys' defaults, and refusals that name the key.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../src/config.ts';

const load = (values: Record<string, unknown>) => loadConfig({ values, env: {}, cwd: '/tmp' });

test("the issue's example loads: bucket, prefix, endpoint, region, path style, maxBytes as a size", () => {
  const c = load({
    storage: { s3: { bucket: 'ocirelay-eu-west', prefix: 'cache/', endpoint: 'http://minio:9000', region: 'eu-west-1', forcePathStyle: true, maxBytes: '2TiB' } },
  });
  assert.deepEqual(c.storage.s3, {
    bucket: 'ocirelay-eu-west',
    prefix: 'cache/',
    endpoint: 'http://minio:9000',
    region: 'eu-west-1',
    forcePathStyle: true,
    maxBytes: 2 * 2 ** 40,
    multipartThreshold: 64 * 2 ** 20,
    staleUploadAgeMs: 3_600_000,
  });
});

test('without storage.s3 there is no S3 tier; the advanced keys parse', () => {
  assert.equal(load({}).storage.s3, undefined);
  const c = load({ storage: { s3: { bucket: 'b-1', multipartThreshold: '8MiB', staleUploadAge: '5s' } } });
  assert.equal(c.storage.s3?.prefix, '');
  assert.equal(c.storage.s3?.multipartThreshold, 8 * 2 ** 20);
  assert.equal(c.storage.s3?.staleUploadAgeMs, 5000);
});

test('refusals name the key', () => {
  assert.throws(() => load({ storage: { s3: {} } }), (e: unknown) => e instanceof ConfigError && /storage\.s3\.bucket/.test(e.message));
  assert.throws(() => load({ storage: { s3: { bucket: 'Bad_Bucket' } } }), /storage\.s3\.bucket/);
  assert.throws(() => load({ storage: { s3: { bucket: 'ok-bucket', maxBytes: '2 lots' } } }), /storage\.s3\.maxBytes/);
  assert.throws(() => load({ storage: { s3: { bucket: 'ok-bucket', endpoint: 'ftp://x' } } }), /storage\.s3\.endpoint/);
  assert.throws(() => load({ storage: { s3: { bucket: 'ok-bucket', multipartThreshold: '1MiB' } } }), /multipartThreshold/);
  assert.throws(() => load({ storage: { s3: { bucket: 'ok-bucket', typo: 1 } } }), /storage\.s3/);
  assert.throws(() => load({ storage: { disk: {} } }), /storage/);
});
