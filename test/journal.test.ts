// The index journal stays small and loses nothing: revalidations that confirm a digest do not
// grow it, it is compacted online without losing appends made meanwhile, a huge journal is
// streamed at start-up, and a failed journal write fails the admin operation that needed it.
import assert from 'node:assert/strict';
import { createWriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { digestOf, type Digest } from '../src/oci/digest.ts';
import { CacheIndex } from '../src/storage/cache-index.ts';
import { CacheLayout } from '../src/storage/layout.ts';

const logger = createLogger({ level: 'silent' });
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await fs.rm(d, { recursive: true, force: true });
});

async function freshLayout(): Promise<CacheLayout> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'ocirelay-journal-'));
  dirs.push(dir);
  return new CacheLayout(dir);
}

const digests: Digest[] = Array.from({ length: 5000 }, (_, i) => digestOf(Buffer.from(`content ${i}`)));
const d = (i: number): Digest => digests[i % digests.length]!;
const MT = 'application/vnd.oci.image.manifest.v1+json';

test('100,000 revalidations over 1,000 tags leave the journal under 2 MiB', async () => {
  const layout = await freshLayout();
  const index = new CacheIndex(layout, logger);
  await index.init();
  const t0 = Date.UTC(2026, 0, 1);
  for (let i = 0; i < 1000; i++) index.setTag('docker.io', `repo${i % 100}`, `t${i}`, { digest: d(i), mediaType: MT, checkedAt: t0 }, t0);
  // Each tag is confirmed 100 times over ~28 hours (one check per second of simulated time
  // across all tags): the confirmations are persisted about hourly, and compaction runs online.
  for (let k = 0; k < 100_000; k++) {
    const i = k % 1000;
    const at = t0 + k * 1000;
    index.setTag('docker.io', `repo${i % 100}`, `t${i}`, { digest: d(i), mediaType: MT, checkedAt: at }, at);
    if (k % 5000 === 0) await new Promise((r) => setImmediate(r)); // let writes and compaction run
  }
  await index.close();
  const size = (await fs.stat(layout.journalFile)).size;
  assert.ok(size < 2 * 1024 * 1024, `journal is ${size} bytes`);
  assert.equal(index.journalFailures, 0);

  const again = new CacheIndex(layout, logger);
  await again.init();
  for (let i = 0; i < 1000; i++) {
    const rec = again.tag('docker.io', `repo${i % 100}`, `t${i}`);
    assert.equal(rec?.digest, d(i));
    // The last confirmations may be unpersisted, but never more than an hour's worth.
    assert.ok(rec.checkedAt >= t0 + 99_000 * 1000 - 3600_000, `t${i} checkedAt ${rec.checkedAt}`);
    assert.equal(again.historyOf('docker.io', `repo${i % 100}`, `t${i}`).length, 1, 'one history entry: the first sighting');
  }
  await again.close();
});

test('a 200 MB journal is streamed at start-up in under 10 s and yields the right state', async () => {
  const layout = await freshLayout();
  await fs.mkdir(layout.indexDir, { recursive: true });
  const out = createWriteStream(layout.journalFile);
  const links = new Map<string, Set<Digest>>();
  const tags = new Map<string, Digest>();
  let bytes = 0;
  let chunk: string[] = [];
  const pad = 'x'.repeat(40); // longer repository names make fewer, more realistic lines
  for (let i = 0; bytes < 200 * 1024 * 1024; i++) {
    const repo = `team${i % 1000}/service-${pad}`;
    const line =
      i % 3 === 2
        ? JSON.stringify({ t: 'tag', r: 'docker.io', n: repo, tag: `v${Math.floor(i / 1000) % 50}`, d: d(i * 7), mt: MT, at: i })
        : JSON.stringify({ t: 'link', r: 'docker.io', n: repo, d: d(i % 20) }); // repeated links
    if (i % 3 === 2) tags.set(`${repo}:v${Math.floor(i / 1000) % 50}`, d(i * 7));
    else {
      let s = links.get(repo);
      if (!s) links.set(repo, (s = new Set()));
      s.add(d(i % 20));
    }
    chunk.push(line);
    bytes += line.length + 1;
    if (chunk.length === 10_000) {
      if (!out.write(chunk.join('\n') + '\n')) await new Promise<void>((r) => out.once('drain', () => r()));
      chunk = [];
    }
  }
  chunk.push('{"t":"link","r":"docker.io","n":"bad","d":"sha256:../../etc"}', '{"t":"tag","r":"docker.io","n":"torn');
  await new Promise<void>((resolve) => out.end(chunk.join('\n'), () => resolve()));
  assert.ok((await fs.stat(layout.journalFile)).size >= 200 * 1024 * 1024);

  const index = new CacheIndex(layout, logger);
  const started = performance.now();
  const result = await index.init();
  const seconds = (performance.now() - started) / 1000;
  assert.ok(seconds < 10, `init took ${seconds.toFixed(1)} s`);
  assert.equal(result.skipped, 2);
  for (const [key, digest] of tags) {
    const [repo, tag] = key.split(':') as [string, string];
    assert.equal(index.tag('docker.io', repo, tag)?.digest, digest, key);
  }
  for (const [repo, set] of links) assert.deepEqual(new Set(index.linksOf('docker.io', repo)), set, repo);
  assert.ok(!index.repositories().some((r) => r.repository === 'bad'));
  // Compacted at start-up to the live records (50,000 tags and 20,000 links, about 12 MB).
  assert.ok(index.journalBytes < 20 * 1024 * 1024, `compacted to ${index.journalBytes} bytes`);
  assert.equal((await fs.stat(layout.journalFile)).size, index.journalBytes);
  console.log(`200 MB journal: init in ${seconds.toFixed(1)} s, ${result.records} records, compacted to ${index.journalBytes} bytes`);
  await index.close();
});

test('online compaction keeps records written while it runs', async () => {
  const layout = await freshLayout();
  const index = new CacheIndex(layout, logger);
  await index.init();
  for (let i = 0; i < 2000; i++) index.link('docker.io', `repo${i % 50}`, d(i));
  index.setTag('docker.io', 'app', 'latest', { digest: d(1), mediaType: MT, checkedAt: 1 }, 1);
  const compaction = index.compact();
  // Written after the snapshot was taken: must reach the new file, not be lost by the rename.
  const pinned = index.pin({ ref: 'docker.io/app:latest', registry: 'docker.io', repository: 'app', digests: [d(1), d(2)], createdAt: 5 });
  index.setTag('docker.io', 'app', 'latest', { digest: d(3), mediaType: MT, checkedAt: 6 }, 6);
  const frozen = index.freeze('docker.io', 'app', 'stable', d(4), 7);
  await Promise.all([compaction, pinned, frozen]);
  index.link('docker.io', 'late', d(9));
  await index.close();

  const again = new CacheIndex(layout, logger);
  await again.init();
  assert.deepEqual(again.allPins().map((p) => p.ref), ['docker.io/app:latest']);
  assert.ok(again.isPinned(d(2)));
  assert.equal(again.tag('docker.io', 'app', 'latest')?.digest, d(3));
  assert.equal(again.frozen('docker.io', 'app', 'stable')?.digest, d(4));
  assert.ok(again.isLinked('docker.io', 'late', d(9)));
  for (let i = 0; i < 2000; i++) assert.ok(again.isLinked('docker.io', `repo${i % 50}`, d(i)));
  // No history line written twice (pending lines covered by the snapshot are not re-appended).
  assert.deepEqual(
    again.historyOf('docker.io', 'app').map((h) => [h.tag, h.newDigest, h.source]),
    [
      ['latest', d(1), 'upstream'],
      ['latest', d(3), 'upstream'],
      ['stable', d(4), 'freeze'],
    ],
  );
  await again.close();
});

test('a failed journal write makes pin, unpin, freeze and untag reject; pull-path failures are counted', async () => {
  const layout = await freshLayout();
  const index = new CacheIndex(layout, logger);
  await index.init();
  const pin = { ref: 'docker.io/app:1', registry: 'docker.io', repository: 'app', digests: [d(1)], createdAt: 1 };
  await index.pin(pin);
  index.setTag('docker.io', 'app', '1', { digest: d(1), mediaType: MT, checkedAt: 1 }, 1);
  await index.close();
  // The journal path becomes a directory: every append (open for append) fails with EISDIR.
  await fs.rm(layout.journalFile);
  await fs.mkdir(layout.journalFile);
  await assert.rejects(index.pin({ ...pin, ref: 'docker.io/app:2' }), /EISDIR/);
  await assert.rejects(index.unpin('docker.io/app:1'), /EISDIR/);
  await assert.rejects(index.freeze('docker.io', 'app', '1', d(2)), /EISDIR/);
  await assert.rejects(index.untag('docker.io', 'app', '1'), /EISDIR/);
  const before = index.journalFailures;
  index.link('docker.io', 'app', d(7));
  await index.close();
  assert.equal(index.journalFailures, before + 1);
});
