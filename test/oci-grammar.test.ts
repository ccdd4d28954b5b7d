import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RegistryError } from '../src/errors.ts';
import { parseRange } from '../src/oci/range.ts';
import { accepts, parseAccept } from '../src/oci/media-types.ts';
import { isValidName, isValidTag } from '../src/oci/reference.ts';
import { RegistryRouter } from '../src/registry-router.ts';

const D = `sha256:${'a'.repeat(64)}`;
const router = new RegistryRouter(new Set(['docker.io', 'ghcr.io', '127.0.0.1:5001', 'localhost']), 'docker.io');

test('repository names and tags follow the distribution grammar', () => {
  for (const ok of ['alpine', 'library/alpine', 'a/b/c', 'my-org/app_1', 'a.b/c__d', 'x--y']) assert.ok(isValidName(ok), ok);
  for (const bad of ['', 'Alpine', '../etc', 'a//b', '/a', 'a/', 'a..b', '-a', 'a_', 'a'.repeat(256), 'a%2fb']) assert.ok(!isValidName(bad), bad);
  for (const ok of ['latest', '3.19', 'v1.0.0-rc_1', '_x', 'A'.repeat(128)]) assert.ok(isValidTag(ok), ok);
  for (const bad of ['', '.x', '-x', 'a/b', 'A'.repeat(129), 'a:b']) assert.ok(!isValidTag(bad), bad);
});

test('the three client forms route to the right registry; docker.io gets library/', () => {
  assert.deepEqual(
    { ...router.resolve('alpine/manifests/3.19', 'docker.io') },
    { kind: 'manifests', registry: 'docker.io', repository: 'library/alpine', reference: '3.19', digest: undefined, clientPath: '/v2/alpine/manifests' },
  );
  const prefixed = router.resolve('ghcr.io/org/app/blobs/' + D, undefined);
  assert.equal(prefixed.registry, 'ghcr.io');
  assert.equal(prefixed.repository, 'org/app');
  assert.equal(prefixed.kind, 'blobs');
  assert.equal(prefixed.digest, D);
  const bare = router.resolve('library/alpine/tags/list', undefined);
  assert.equal(bare.registry, 'docker.io');
  assert.equal(bare.repository, 'library/alpine');
  assert.equal(bare.kind, 'tags');
  assert.equal(router.resolve('docker.io/alpine/manifests/latest', undefined).repository, 'library/alpine');
  assert.equal(router.resolve('127.0.0.1:5001/team/x/manifests/' + D, undefined).registry, '127.0.0.1:5001');
  assert.equal(router.resolve('org/app/referrers/' + D, 'ghcr.io').repository, 'org/app');
  // ghcr.io names keep a single segment as is
  assert.equal(router.resolve('app/manifests/1', 'ghcr.io').repository, 'app');
});

test('unknown registries are refused; bad names, tags and digests are OCI errors', () => {
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      assert.ok(e instanceof RegistryError);
      return `${e.code}/${e.status}`;
    }
    return 'no error';
  };
  assert.equal(code(() => router.resolve('x/manifests/1', 'evil.example.com')), 'NAME_UNKNOWN/404');
  assert.equal(code(() => router.resolve('evil.example.com/x/manifests/1', undefined)), 'NAME_UNKNOWN/404');
  assert.equal(code(() => router.resolve('127.0.0.1:9/x/manifests/1', undefined)), 'NAME_UNKNOWN/404');
  assert.equal(code(() => router.resolve('UPPER/manifests/1', undefined)), 'NAME_INVALID/400');
  assert.equal(code(() => router.resolve('a/../b/manifests/1', undefined)), 'NAME_INVALID/400');
  assert.equal(code(() => router.resolve('a/manifests/sha256:xyz', undefined)), 'DIGEST_INVALID/400');
  assert.equal(code(() => router.resolve('a/manifests/.bad', undefined)), 'TAG_INVALID/400');
  assert.equal(code(() => router.resolve('a/blobs/latest', undefined)), 'DIGEST_INVALID/400');
  assert.equal(code(() => router.resolve('a/blobs/sha256:abc', undefined)), 'DIGEST_INVALID/400');
  assert.equal(code(() => router.resolve(`a/blobs/sha512:${'a'.repeat(128)}`, undefined)), 'DIGEST_INVALID/400');
  assert.equal(code(() => router.resolve('a/nothing/here', undefined)), 'NAME_INVALID/404');
});

test('single byte ranges', () => {
  assert.deepEqual(parseRange('bytes=0-', 10), { kind: 'range', range: { start: 0, end: 9 } });
  assert.deepEqual(parseRange('bytes=4-', 10), { kind: 'range', range: { start: 4, end: 9 } });
  assert.deepEqual(parseRange('bytes=2-5', 10), { kind: 'range', range: { start: 2, end: 5 } });
  assert.deepEqual(parseRange('bytes=2-50', 10), { kind: 'range', range: { start: 2, end: 9 } });
  assert.deepEqual(parseRange('bytes=-3', 10), { kind: 'range', range: { start: 7, end: 9 } });
  assert.deepEqual(parseRange('bytes=10-', 10), { kind: 'unsatisfiable' });
  assert.deepEqual(parseRange('bytes=5-2', 10), { kind: 'invalid' });
  assert.deepEqual(parseRange('bytes=0-1,3-4', 10), { kind: 'invalid' });
  assert.deepEqual(parseRange('items=0-1', 10), { kind: 'invalid' });
  assert.deepEqual(parseRange(undefined, 10), { kind: 'none' });
});

test('Accept parsing merges repeated headers and honours wildcards', () => {
  const a = parseAccept(['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json; q=0.5']);
  assert.deepEqual(a, ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.v2+json']);
  assert.ok(accepts(a, 'application/vnd.oci.image.index.v1+json'));
  assert.ok(!accepts(a, 'application/vnd.oci.image.manifest.v1+json'));
  assert.ok(accepts(parseAccept('*/*'), 'anything/x'));
  assert.ok(accepts([], 'anything/x'));
});
