// Rendezvous hashing (src/cluster/rendezvous.ts): the owner of a key is stable, keys spread over
// the members, and when a member leaves only its own keys move.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { ownerOf } from '../src/cluster/rendezvous.ts';

const MEMBERS = ['http://10.0.3.7:5000', 'http://10.0.3.8:5000', 'http://10.0.3.9:5000'];
const keys = Array.from({ length: 3000 }, (_, i) => `sha256:${createHash('sha256').update(`blob ${i}`).digest('hex')}`);

test('the owner is stable and does not depend on the order of the list', () => {
  for (const k of keys.slice(0, 200)) {
    const o = ownerOf(k, MEMBERS);
    assert.ok(o !== undefined && MEMBERS.includes(o));
    assert.equal(ownerOf(k, [...MEMBERS].reverse()), o);
    assert.equal(ownerOf(k, [MEMBERS[1]!, MEMBERS[2]!, MEMBERS[0]!]), o);
    assert.equal(ownerOf(k, MEMBERS), o, 'same answer twice');
  }
  assert.equal(ownerOf('x', []), undefined);
  assert.equal(ownerOf('x', ['http://only:5000']), 'http://only:5000');
});

test('keys spread over the members (each within 25% of a third)', () => {
  const counts = new Map<string, number>();
  for (const k of keys) {
    const o = ownerOf(k, MEMBERS)!;
    counts.set(o, (counts.get(o) ?? 0) + 1);
  }
  for (const m of MEMBERS) {
    const n = counts.get(m) ?? 0;
    assert.ok(n > 750 && n < 1250, `${m} owns ${n} of 3000`);
  }
});

test('a member leaving moves only its own keys; one joining takes only keys it now owns', () => {
  const gone = MEMBERS[1]!;
  const rest = MEMBERS.filter((m) => m !== gone);
  let moved = 0;
  for (const k of keys) {
    const before = ownerOf(k, MEMBERS)!;
    const after = ownerOf(k, rest)!;
    if (before !== gone) assert.equal(after, before, 'a key of a remaining member stays');
    else moved++;
  }
  assert.ok(moved > 750 && moved < 1250, `moved ${moved}`);
  const joined = [...MEMBERS, 'http://10.0.3.10:5000'];
  let taken = 0;
  for (const k of keys) {
    const before = ownerOf(k, MEMBERS)!;
    const after = ownerOf(k, joined)!;
    if (after !== before) {
      assert.equal(after, 'http://10.0.3.10:5000', 'keys only move to the new member');
      taken++;
    }
  }
  assert.ok(taken > 550 && taken < 950, `the new member took ${taken} of 3000 (about a quarter)`);
});
