// Unit tests of the upstream client's pure parts: token lifetimes, the breaker's state
// machine on a fake clock, and retry timing. The client-level behaviour is tested against
// real sockets in upstream-client.test.ts.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CircuitBreaker } from '../src/upstream/circuit-breaker.ts';
import { backoffDelay, parseRetryAfter } from '../src/upstream/retry-timing.ts';
import { TokenCache, tokenRefreshAt } from '../src/upstream/token-cache.ts';

describe('token lifetimes', () => {
  const now = 1_700_000_000_000;
  it('refreshes 10% (at least 5 s) before expiry, 60 s when expires_in is absent', () => {
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 300 }, now), now + 270_000);
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 0 }, now), now + 54_000);
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 20 }, now), now + 15_000);
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 2 }, now), now + 1_000);
  });
  it('counts from issued_at when it is close to our clock, else from now', () => {
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 300, issuedAtMs: now - 10_000 }, now), now + 260_000);
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 300, issuedAtMs: now - 3_600_000 }, now), now + 270_000);
    assert.equal(tokenRefreshAt({ token: 't', expiresInS: 300, issuedAtMs: now + 30_000 }, now), now + 270_000);
  });
  it('caches per scope, shares a fetch, and replaces a rejected token', async () => {
    let clock = now;
    const cache = new TokenCache({ now: () => clock });
    let fetches = 0;
    const fetch = async () => ({ token: `t${++fetches}`, expiresInS: 60 });
    const [a, b] = await Promise.all([cache.obtain('s', undefined, fetch), cache.obtain('s', undefined, fetch)]);
    assert.equal(a, 't1');
    assert.equal(b, 't1');
    assert.equal(cache.peek('s'), 't1');
    assert.equal(cache.peek('other'), undefined);
    assert.equal(await cache.obtain('s', 't1', fetch), 't2');
    clock += 54_000;
    assert.equal(cache.peek('s'), undefined);
    assert.equal(fetches, 2);
  });
  it('does not cache a failed fetch', async () => {
    const cache = new TokenCache();
    await assert.rejects(cache.obtain('s', undefined, () => Promise.reject(new Error('down'))));
    assert.equal(await cache.obtain('s', undefined, async () => ({ token: 'ok', expiresInS: 60 })), 'ok');
  });
});

describe('CircuitBreaker', () => {
  it('opens after maxFails consecutive failures, trials once, closes or re-opens', () => {
    let clock = 0;
    const changes: string[] = [];
    const b = new CircuitBreaker({ maxFails: 2, resetMs: 100, now: () => clock, onChange: (s) => changes.push(s) });
    b.enter()?.settle('failure');
    b.enter()?.settle('success'); // resets the run
    b.enter()?.settle('failure');
    assert.equal(b.state(), 'closed');
    b.enter()?.settle('failure');
    assert.equal(b.state(), 'open');
    assert.equal(b.enter(), undefined);
    assert.equal(b.retryAfterMs(), 100);
    clock = 100;
    assert.equal(b.state(), 'half-open');
    const trial = b.enter();
    assert.ok(trial);
    assert.equal(b.enter(), undefined, 'one trial at a time');
    trial.settle('failure');
    assert.equal(b.state(), 'open');
    clock = 200;
    const neutral = b.enter();
    neutral?.settle('neutral'); // an aborted trial frees the slot without a verdict
    assert.equal(b.state(), 'half-open');
    b.enter()?.settle('success');
    assert.equal(b.state(), 'closed');
    assert.deepEqual(changes, ['open', 'open', 'closed']);
  });
});

describe('retry timing', () => {
  it('backs off exponentially with jitter', () => {
    assert.equal(backoffDelay(0, 200, () => 0), 100);
    assert.equal(backoffDelay(0, 200, () => 1), 200);
    assert.equal(backoffDelay(2, 200, () => 1), 800);
    assert.equal(backoffDelay(20, 200, () => 1), 10_000);
  });
  it('parses Retry-After seconds and HTTP dates', () => {
    const now = Date.parse('2024-01-01T00:00:00Z');
    assert.equal(parseRetryAfter('3', now), 3000);
    assert.equal(parseRetryAfter(' 0 ', now), 0);
    assert.equal(parseRetryAfter('Mon, 01 Jan 2024 00:00:02 GMT', now), 2000);
    assert.equal(parseRetryAfter('Sun, 31 Dec 2023 23:00:00 GMT', now), 0);
    assert.equal(parseRetryAfter('soon', now), undefined);
    assert.equal(parseRetryAfter(undefined, now), undefined);
  });
});
