import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseWwwAuthenticate } from '../src/upstream/www-authenticate.ts';

describe('parseWwwAuthenticate', () => {
  it('parses a Docker Hub bearer challenge', () => {
    const got = parseWwwAuthenticate(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull"',
    );
    assert.deepEqual(got, [
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.docker.io/token',
          service: 'registry.docker.io',
          scope: 'repository:library/alpine:pull',
        },
      },
    ]);
  });

  it('keeps commas inside quoted values', () => {
    const [c] = parseWwwAuthenticate('Bearer realm="https://a/token",scope="repository:a/b:pull,push",error="insufficient_scope"');
    assert.equal(c?.params.scope, 'repository:a/b:pull,push');
    assert.equal(c?.params.error, 'insufficient_scope');
  });

  it('splits several challenges, whitespace and case insensitive names', () => {
    const got = parseWwwAuthenticate('Basic realm="Registry Realm" , BEARER  Realm = "https://x/t" ,  Service=reg , Newauth');
    assert.deepEqual(got, [
      { scheme: 'basic', params: { realm: 'Registry Realm' } },
      { scheme: 'bearer', params: { realm: 'https://x/t', service: 'reg' } },
      { scheme: 'newauth', params: {} },
    ]);
  });

  it('unescapes quoted pairs and accepts bare values', () => {
    const [c] = parseWwwAuthenticate('Bearer realm="say \\"hi\\", \\\\ok",service=https://auth.example/token');
    assert.equal(c?.params.realm, 'say "hi", \\ok');
    assert.equal(c?.params.service, 'https://auth.example/token');
  });

  it('reads token68 challenges and bare schemes', () => {
    assert.deepEqual(parseWwwAuthenticate('Negotiate abc+/d==, Basic realm="r"'), [
      { scheme: 'negotiate', params: {}, token68: 'abc+/d==' },
      { scheme: 'basic', params: { realm: 'r' } },
    ]);
    assert.deepEqual(parseWwwAuthenticate('Basic'), [{ scheme: 'basic', params: {} }]);
  });

  it('survives empty, truncated and garbage input', () => {
    assert.deepEqual(parseWwwAuthenticate(undefined), []);
    assert.deepEqual(parseWwwAuthenticate(''), []);
    assert.deepEqual(parseWwwAuthenticate('Bearer realm="unterminated'), [{ scheme: 'bearer', params: { realm: 'unterminated' } }]);
    const got = parseWwwAuthenticate(',,"x" ;; Bearer realm="r"');
    assert.deepEqual(got.at(-1), { scheme: 'bearer', params: { realm: 'r' } });
  });
});
