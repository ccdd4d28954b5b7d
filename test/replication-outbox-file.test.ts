// The replication outbox file on its own (real files in a temp dir): idempotent jobs, newer tag
// jobs replacing older ones, the bound, replay after a crash (torn last line included) and
// compaction once done lines dominate.
import assert from 'node:assert/strict';
import { appendFile, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { digestOf, type Digest } from '../src/oci/digest.ts';
import { Outbox } from '../src/replication/outbox.ts';
import { backoffMs, BACKOFF_CAP_MS } from '../src/replication/backoff.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-outbox-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const d = (i: number): Digest => digestOf(Buffer.from(`blob ${i}`));

test('jobs are idempotent by key; a newer tag job replaces a pending older one; the bound drops the rest', async () => {
  const file = path.join(dir, 'a', 'peer.jsonl');
  const { outbox } = await Outbox.open(file, { maxPending: 3 });
  assert.equal(await outbox.add({ k: 'blob', r: 'docker.io', n: 'library/x', d: d(1) }), 'added');
  assert.equal(await outbox.add({ k: 'blob', r: 'docker.io', n: 'library/x', d: d(1) }), 'duplicate');
  assert.equal(await outbox.add({ k: 'tag', r: 'docker.io', n: 'library/x', tag: '1', d: d(2), at: 1000 }), 'added');
  assert.equal(await outbox.add({ k: 'tag', r: 'docker.io', n: 'library/x', tag: '1', d: d(3), at: 2000 }), 'added');
  assert.equal(outbox.pending, 2);
  assert.equal(await outbox.add({ k: 'manifest', r: 'docker.io', n: 'library/x', d: d(4) }), 'added');
  assert.equal(await outbox.add({ k: 'manifest', r: 'docker.io', n: 'library/x', d: d(5) }), 'full');
  assert.equal(outbox.pending, 3);

  // Replayed as it was: the older tag job is gone, the newer one stays.
  const again = await Outbox.open(file, { maxPending: 3 });
  assert.equal(again.replayed, 3);
  const specs = [];
  for (let j = again.outbox.take(); j; j = again.outbox.take()) specs.push(j.spec);
  assert.deepEqual(
    specs.map((s) => s.k),
    ['blob', 'tag', 'manifest'],
  );
  const tag = specs.find((s) => s.k === 'tag');
  assert.equal(tag?.k === 'tag' ? tag.d : undefined, d(3));
});

test('a job taken is not handed out twice; retryAt holds it back; done removes it for good', async () => {
  const file = path.join(dir, 'b.jsonl');
  const { outbox } = await Outbox.open(file, { maxPending: 100 });
  await outbox.add({ k: 'blob', r: 'r', n: 'n', d: d(1) });
  await outbox.add({ k: 'blob', r: 'r', n: 'n', d: d(2) });
  const j1 = outbox.take()!;
  const j2 = outbox.take()!;
  assert.notEqual(j1.id, j2.id);
  assert.equal(outbox.take(), undefined);
  outbox.retryAt(j1, Date.now() + 60_000);
  assert.equal(outbox.take(), undefined, 'held back until its retry time');
  await outbox.done(j2);
  assert.equal(outbox.pending, 1);
  const again = await Outbox.open(file, { maxPending: 100 });
  assert.equal(again.replayed, 1);
  const left = again.outbox.take();
  assert.equal(left?.spec.k === 'blob' ? left.spec.d : undefined, d(1), 'the job that was retried, not the one done');
  assert.equal(again.outbox.take(), undefined);
});

test('a torn last line (kill -9 mid-append) is skipped; done lines are compacted away', async () => {
  const file = path.join(dir, 'c.jsonl');
  const { outbox } = await Outbox.open(file, { maxPending: 100_000 });
  for (let i = 0; i < 3000; i++) await outbox.add({ k: 'blob', r: 'docker.io', n: 'library/many', d: d(i) });
  for (let j = outbox.take(); j; j = outbox.take()) {
    if (j.spec.k === 'blob' && j.spec.d === d(7)) continue; // one stays pending
    await outbox.done(j);
  }
  await outbox.flush();
  assert.equal(outbox.pending, 1);
  // Compacted while running: far below the ~300 KiB the add and done lines took.
  assert.ok((await stat(file)).size < 100_000, `outbox file is ${(await stat(file)).size} bytes`);
  await appendFile(file, '{"t":"add","id":99999,"at":1,"job":{"k":"blob","r":"docker.io","n":"x","d":"sha256:00');
  const again = await Outbox.open(file, { maxPending: 100_000 });
  assert.equal(again.replayed, 1);
  assert.equal(again.skipped, 1);
  const text = await readFile(file, 'utf8');
  assert.equal(text.trim().split('\n').length, 1, 'rewritten with the pending job only');
});

test('backoff doubles from 1 s with jitter and is capped at 5 minutes', () => {
  assert.equal(backoffMs(1, () => 1), 1000);
  assert.equal(backoffMs(2, () => 1), 2000);
  assert.equal(backoffMs(4, () => 0), 4000);
  assert.equal(backoffMs(40, () => 1), BACKOFF_CAP_MS);
  assert.ok(backoffMs(40, () => 0) >= BACKOFF_CAP_MS / 2);
});
