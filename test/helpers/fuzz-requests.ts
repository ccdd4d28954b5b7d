// fast-check arbitraries for requests to the /v2 read API: mostly near-valid ones (a known
// repository, tag or digest with one thing wrong), so that most runs get past the first check
// and reach routing, the cache and the upstream, plus some that are plainly garbage.
// Traversal attempts carry MARKER in the name they would create, so a test can look for it
// anywhere on disk afterwards.
import http from 'node:http';
import fc from 'fast-check';
import type { RawRequest } from './raw-http.ts';

export const MARKER = 'fuzzmark';

export interface KnownContent {
  /** Repositories that exist upstream, e.g. 'library/single'. */
  repos: string[];
  tags: string[];
  /** Manifest, config and layer digests that exist upstream. */
  digests: string[];
  /** Registry keys configured on the proxy, e.g. 'docker.io'. */
  registries: string[];
  /** Registry keys whose upstream holds `images` (a request may rightly succeed there). */
  liveRegistries: string[];
  /** What each repository really holds upstream, so that well-formed requests can succeed. */
  images: Array<{ repo: string; tag: string; digests: string[] }>;
}

const HEX = '0123456789abcdef';
const hex = (min: number, max: number) => fc.string({ unit: fc.constantFrom(...HEX), minLength: min, maxLength: max });
const printable = (max: number) => fc.string({ unit: 'binary-ascii', maxLength: max }).map((s) => s.replace(/[^\x20-\x7e]/g, ''));
const upTo = <T>(arb: fc.Arbitrary<T>, weight: number) => ({ arbitrary: arb, weight });

function digestArb(k: KnownContent): fc.Arbitrary<string> {
  return fc.oneof(
    upTo(fc.constantFrom(...k.digests), 6),
    upTo(hex(64, 64).map((h) => `sha256:${h}`), 3),
    upTo(hex(0, 70).map((h) => `sha256:${h}`), 1),
    upTo(fc.constantFrom(...k.digests).map((d) => d.toUpperCase()), 1),
    upTo(fc.constantFrom(...k.digests).map((d) => d.replace('sha256:', 'sha512:')), 1),
    upTo(hex(128, 128).map((h) => `sha512:${h}`), 1),
    upTo(fc.constantFrom(...k.digests).map((d) => d.slice(7)), 1),
    upTo(fc.constantFrom(`sha256:../../../${MARKER}`, `sha256:..%2f..%2f${MARKER}`, `sha256:%2e%2e%2f${MARKER}`, 'sha256:', ':', 'sha256:-', `sha256+b64:${MARKER}`), 2),
    upTo(printable(80), 1),
  );
}

function tagArb(k: KnownContent): fc.Arbitrary<string> {
  return fc.oneof(
    upTo(fc.constantFrom(...k.tags), 5),
    upTo(fc.stringMatching(/^[A-Za-z0-9_][A-Za-z0-9._-]{0,20}$/), 3),
    upTo(fc.constantFrom('.INVALID_MANIFEST_NAME', '-lead', '..', '.', 'a'.repeat(129), 'a'.repeat(128), `..%2f${MARKER}`, 'latest%00', 'ta:g', 'ta@g'), 2),
    upTo(printable(40), 1),
  );
}

function nameArb(k: KnownContent): fc.Arbitrary<string> {
  return fc.oneof(
    upTo(fc.constantFrom(...k.repos), 6),
    upTo(fc.constantFrom(...k.repos).map((r) => r.replace(/^library\//, '')), 2),
    upTo(fc.stringMatching(/^[a-z0-9]+([._-][a-z0-9]+)*(\/[a-z0-9]+([._-][a-z0-9]+)*){0,3}$/), 3),
    upTo(fc.constantFrom(...k.repos).map((r) => r.toUpperCase()), 1),
    upTo(
      fc.constantFrom('', '/', 'a//b', 'a/', '-a', 'a__b', 'a___b', 'a..b', `../${MARKER}`, `../../../${MARKER}`, '%2e%2e', 'a%2Fb', 'x'.repeat(256), 'x/'.repeat(120) + 'x', 'ünï', '_catalog'),
      2,
    ),
    upTo(printable(60), 1),
  );
}

function prefixArb(k: KnownContent): fc.Arbitrary<string> {
  return fc.oneof(
    upTo(fc.constant(''), 5),
    upTo(fc.constantFrom(...k.registries).map((r) => `${r}/`), 4),
    upTo(fc.constantFrom(...k.registries).map((r) => `${r.toUpperCase()}/`), 1),
    upTo(fc.constantFrom('unknown.example/', 'localhost/', 'localhost:5000/', '127.0.0.1:1/', '169.254.169.254/', '[::1]:80/', 'docker.io./', 'docker.io:443/'), 2),
  );
}

function tailArb(k: KnownContent): fc.Arbitrary<string> {
  return fc.oneof(
    upTo(fc.oneof(tagArb(k), digestArb(k)).map((r) => `manifests/${r}`), 5),
    upTo(digestArb(k).map((d) => `blobs/${d}`), 5),
    upTo(fc.constant('tags/list'), 2),
    upTo(digestArb(k).map((d) => `referrers/${d}`), 1),
    upTo(fc.constantFrom('blobs/uploads/', 'blobs/uploads/abc', 'manifests/', 'blobs/', 'tags/', 'tags/list/', 'referrers/', 'manifest/1.0', 'tags/list/../list'), 2),
  );
}

function queryArb(k: KnownContent): fc.Arbitrary<string> {
  const nsValue = fc.oneof(
    fc.constantFrom(...k.registries),
    fc.constantFrom(...k.registries).map((r) => r.toUpperCase()),
    fc.constantFrom('', 'unknown.example', '127.0.0.1:1', 'http://127.0.0.1:1', `../${MARKER}`, 'docker.io/library'),
    printable(30).map(encodeURIComponent),
  );
  const param = fc.oneof(
    nsValue.map((v) => `ns=${v}`),
    fc.oneof(fc.nat({ max: 100_000 }).map(String), fc.constantFrom('-1', 'abc', '1e9', '')).map((n) => `n=${n}`),
    tagArb(k).map((t) => `last=${encodeURIComponent(t)}`),
    printable(40).map((t) => `artifactType=${encodeURIComponent(t)}`),
    fc.tuple(fc.stringMatching(/^[a-z]{1,8}$/), printable(20)).map(([a, b]) => `${a}=${encodeURIComponent(b)}`),
  );
  return fc.oneof(upTo(fc.constant(''), 5), upTo(fc.array(param, { minLength: 1, maxLength: 3 }).map((ps) => `?${ps.join('&')}`), 2));
}

/** Damage a path the ways a hostile client would: dot segments, escapes, doubled or lost slashes. */
function mutate(path: string): fc.Arbitrary<string> {
  const at = fc.nat({ max: Math.max(0, path.length - 1) });
  return fc.oneof(
    upTo(fc.constant(path), 10),
    upTo(fc.tuple(at, fc.constantFrom('/.', '/..', '/%2e', '/%2E%2E', '/.%2e', '//')).map(([i, seg]) => insertAtSlash(path, i, seg)), 2),
    upTo(fc.array(at, { minLength: 1, maxLength: 4 }).map((is) => percentEncodeAt(path, is)), 2),
    upTo(at.map((i) => path.slice(0, i)), 1),
    upTo(fc.constantFrom(path.replace('/v2/', '/v2//'), path.replace('/v2/', '//v2/'), path.replace('/v2/', '/V2/'), path.replace(/\//g, '%2F').replace('%2Fv2%2F', '/v2/')), 1),
  );
}

function insertAtSlash(path: string, i: number, seg: string): string {
  const slash = path.indexOf('/', Math.max(4, i));
  return slash < 0 ? path + seg : path.slice(0, slash) + seg + path.slice(slash);
}

function percentEncodeAt(path: string, indexes: number[]): string {
  const chars = [...path];
  for (const i of indexes) {
    const c = chars[i];
    if (c === undefined || c.startsWith('%')) continue;
    const code = c.charCodeAt(0);
    chars[i] = code < 128 ? `%${code.toString(16).padStart(2, '0')}` : encodeURIComponent(c);
  }
  return chars.join('');
}

/** Only what node's client can put on a request line: escape controls, spaces and non-ASCII. */
function sendable(path: string): string {
  return path.replace(/[^\x21-\x7e]/g, (c) => encodeURIComponent(c));
}

/** A request that should succeed: a live registry, a repository and something it holds. */
function coherentArb(k: KnownContent): fc.Arbitrary<string> {
  return fc
    .tuple(fc.constantFrom(...k.images), fc.constantFrom('', ...k.liveRegistries.map((r) => `${r}/`)), fc.boolean())
    .chain(([img, prefix, short]) => {
      // Docker Hub's short form: library/ is implied only there (the default registry here).
      const name = short && (prefix === '' || prefix === 'docker.io/') ? img.repo.replace(/^library\//, '') : img.repo;
      const tail = fc.oneof(
        fc.constant(`manifests/${img.tag}`),
        fc.constantFrom(...img.digests).map((d) => `manifests/${d}`),
        upTo(fc.constantFrom(...img.digests).map((d) => `blobs/${d}`), 3),
        fc.constant('tags/list'),
        fc.constantFrom(...img.digests).map((d) => `referrers/${d}`),
      );
      return tail.map((t) => `/v2/${prefix}${name}/${t}`);
    });
}

function pathArb(k: KnownContent): fc.Arbitrary<string> {
  const api = fc
    .oneof(upTo(coherentArb(k), 1), upTo(fc.tuple(prefixArb(k), nameArb(k), tailArb(k)).map(([p, n, t]) => `/v2/${p}${n}/${t}`), 1))
    .chain(mutate);
  const odd = fc.constantFrom('/v2/', '/v2', '/', '/v2/_catalog', '/v3/library/single/tags/list', '/healthz', '/readyz', '/v2/../admin', '/v2/%2e%2e/', '/v2/./', '*', '/v2/library\\single/tags/list');
  return fc
    .tuple(
      fc.oneof(
        upTo(api, 12),
        upTo(odd, 1),
        upTo(printable(80).map((s) => `/v2/${s}`), 1),
        // Absolute-form targets (as sent to a forward proxy): the host in them must not matter.
        upTo(fc.tuple(fc.constantFrom('http://evil.example', 'http://127.0.0.1:1', 'https://docker.io'), api).map(([origin, p]) => origin + p), 1),
      ),
      queryArb(k),
    )
    .map(([p, q]) => sendable(p) + (p.includes('?') ? q.replace('?', '&') : q));
}

const RANGES = ['bytes=0-0', 'bytes=0-9', 'bytes=5-3', 'bytes=-5', 'bytes=10-', 'bytes=0-', 'bytes=99999999-', 'bytes=0-1,3-4', 'bytes=', 'items=0-1', 'bytes=-0', 'bytes=a-b', 'bytes=0-18446744073709551616'];
const DOCKER_V2 = 'application/vnd.docker.distribution.manifest.v2+json';
const OTHER_ACCEPTS = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
  '*/*',
  'text/html',
  'application/json;q=0.1',
];

/**
 * Accept headers always include the Docker schema2 type: one without it makes the Distribution
 * registry convert a schema2 manifest to schema1, which ocirelay answers with 502 DIGEST_INVALID
 * (a known defect with its own TODO test; kept out of the fuzz so that it can find the next one).
 */
const acceptArb = fc
  .tuple(fc.subarray(OTHER_ACCEPTS), fc.option(printable(40).map((s) => s.replace(/,/g, '')), { freq: 4 }))
  .chain(([types, junk]) => fc.shuffledSubarray([DOCKER_V2, ...types, ...(junk ? [junk] : [])], { minLength: types.length + (junk ? 1 : 0) + 1 }))
  .map((list) => list.join(', '));

function headersArb(): fc.Arbitrary<Record<string, string>> {
  const value = (arb: fc.Arbitrary<string>) => fc.oneof(upTo(arb, 4), upTo(printable(100), 1));
  return fc
    .record(
      {
        range: value(fc.constantFrom(...RANGES)),
        accept: acceptArb,
        authorization: value(fc.constantFrom('Bearer abc', 'Basic dGVzdDp0ZXN0', 'Basic !!!', 'Bearer ')),
        'if-none-match': value(fc.constantFrom('"sha256:0"', '*')),
        'if-modified-since': value(fc.constant('Thu, 01 Jan 1970 00:00:00 GMT')),
        // Mostly Host values that parse as an authority: the others are refused before routing.
        host: fc.oneof(upTo(fc.constantFrom('evil.example', 'localhost:1', '[::1]', 'a'.repeat(300), 'docker.io', '127.0.0.1:65535'), 8), upTo(fc.oneof(fc.constantFrom('|0z5z;', 'a b'), printable(30)), 1)),
        'accept-encoding': value(fc.constantFrom('gzip', 'br', 'identity;q=0')),
        'x-forwarded-proto': value(fc.constantFrom('https', 'gopher')),
        'content-type': value(fc.constantFrom('application/json', 'application/octet-stream')),
        'docker-distribution-api-version': value(fc.constant('registry/2.0')),
      },
      { requiredKeys: [] },
    )
    .chain((h) =>
      fc
        .option(fc.tuple(fc.stringMatching(/^x-[a-z0-9-]{1,20}$/), printable(200)), { freq: 3 })
        .map((extra) => (extra ? { ...h, [extra[0]]: extra[1] } : h)),
    );
}

/**
 * Every method node's HTTP parser knows except CONNECT (a tunnel request, see the test), and
 * tokens it does not know (answered by the listener before the application).
 */
const METHODS = [...http.METHODS.filter((m) => m !== 'GET' && m !== 'HEAD' && m !== 'CONNECT'), 'BREW', 'X-FUZZ'];

export function requestArb(k: KnownContent): fc.Arbitrary<RawRequest> {
  const method = fc.oneof(upTo(fc.constant('GET'), 8), upTo(fc.constant('HEAD'), 4), upTo(fc.constantFrom(...METHODS), 2));
  return fc.tuple(method, pathArb(k), headersArb(), fc.option(printable(200), { freq: 4 })).map(([m, path, headers, body]) => ({
    method: m,
    // A HEAD refused by node's parser (a target not in origin-form) gets an error body after
    // its headers: a known defect with its own TODO test, kept out of the fuzz so that it can
    // find the next one.
    path: m === 'HEAD' && !path.startsWith('/') ? `/${path}` : path,
    headers,
    // node's client sends no body with GET or HEAD.
    ...(body !== null && m !== 'GET' && m !== 'HEAD' ? { body } : {}),
  }));
}
