// Writes an ocirelay data dir as a long-running cache would leave it: N committed small
// blobs in blobs/sha256/<2 hex>/<64 hex> (real content, named by its real sha256) and an
// index journal linking them to repositories, plus manifests and tags, in the layout that
// src/storage/layout.ts and docs/architecture.md describe.
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';

export interface GeneratedCache {
  dataDir: string;
  blobs: number;
  bytes: number;
  journalLines: number;
  seconds: number;
}

const BLOBS_PER_REPO = 1_000;
/** Files written at once: enough to keep the disk busy, few enough for the fd limit. */
const CONCURRENCY = 64;

export async function generateCacheDir(dataDir: string, count: number, opts: { blobBytes?: number } = {}): Promise<GeneratedCache> {
  const t0 = performance.now();
  const blobBytes = opts.blobBytes ?? 1024;
  const blobsDir = path.join(dataDir, 'blobs', 'sha256');
  await mkdir(path.join(dataDir, 'index'), { recursive: true });
  await mkdir(path.join(dataDir, 'tmp'), { recursive: true });
  for (let i = 0; i < 256; i++) await mkdir(path.join(blobsDir, i.toString(16).padStart(2, '0')), { recursive: true });

  const journal: string[] = [];
  const seed = randomBytes(blobBytes);
  let bytes = 0;
  let next = 0;
  const writeOne = async (i: number): Promise<void> => {
    // Distinct content per blob without generating 100k random buffers: a counter in a random block.
    const data = Buffer.from(seed);
    data.writeUInt32BE(i, 0);
    const hex = createHash('sha256').update(data).digest('hex');
    await writeFile(path.join(blobsDir, hex.slice(0, 2), hex), data);
    bytes += data.length;
    const repo = `bench/repo-${Math.floor(i / BLOBS_PER_REPO)}`;
    journal.push(JSON.stringify({ t: 'link', r: 'docker.io', n: repo, d: `sha256:${hex}` }));
    // Every thousandth blob stands for a manifest with a tag, so the journal has all record kinds.
    if (i % BLOBS_PER_REPO === 0) {
      journal.push(JSON.stringify({ t: 'manifest', d: `sha256:${hex}`, mt: 'application/vnd.oci.image.manifest.v1+json', size: data.length }));
      journal.push(JSON.stringify({ t: 'tag', r: 'docker.io', n: repo, tag: 'latest', d: `sha256:${hex}`, mt: 'application/vnd.oci.image.manifest.v1+json', at: Date.now() }));
    }
  };
  // Bounded workers pulling indexes off a shared counter.
  await Promise.all(
    Array.from({ length: Math.min(CONCURRENCY, count) }, async () => {
      for (let i = next++; i < count; i = next++) await writeOne(i);
    }),
  );
  await writeFile(path.join(dataDir, 'index', 'journal.jsonl'), journal.join('\n') + '\n');
  return { dataDir, blobs: count, bytes, journalLines: journal.length, seconds: (performance.now() - t0) / 1000 };
}
