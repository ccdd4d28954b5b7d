// What a crash test needs besides a running ocirelay: a start that is killed before it is
// ready (during journal replay and compaction), a check that every committed blob file is
// exactly its digest, the manifest records a journal holds, a journal grown the way a
// long-lived proxy's grows, and a seeded PRNG so that kill times are reproducible.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { appendFile, readFile, readdir } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/ocirelay.js', import.meta.url));

/** mulberry32: a small seeded PRNG; returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface StartupKill {
  /** The process said it was ready before the kill (the kill missed start-up). */
  wasReady: boolean;
  /** A file other than the journal appeared in index/ (compaction's temp file) before the kill. */
  sawCompaction: boolean;
  elapsedMs: number;
}

/**
 * Start `ocirelay serve --config <dir>/config.yaml` (as test/helpers/ocirelay-process.ts does)
 * and SIGKILL it as soon as index/ holds anything besides the journal (compaction writing its
 * new copy), or after `maxDelayMs`, whichever is first.
 */
export async function killDuringStartup(dir: string, dataDir: string, maxDelayMs: number, env: Record<string, string> = {}): Promise<StartupKill> {
  const indexDir = path.join(dataDir, 'index');
  const before = new Set(await readdir(indexDir).catch(() => [] as string[]));
  const t0 = Date.now();
  const child = spawn(process.execPath, [BIN, 'serve', '--config', path.join(dir, 'config.yaml')], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OCIRELAY_CONFIG: '', OCIRELAY_LISTEN: '', OCIRELAY_DATA_DIR: '', ...env },
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr.resume();
  const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let exited = false;
  void closed.then(() => (exited = true));
  let sawCompaction = false;
  while (!exited && Date.now() - t0 < maxDelayMs && !out.includes('"ocirelay ready"')) {
    const now = await readdir(indexDir).catch(() => [] as string[]);
    if (now.some((n) => n !== 'journal.jsonl' && !before.has(n))) {
      sawCompaction = true;
      break;
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  const wasReady = out.includes('"ocirelay ready"');
  if (exited) throw new Error(`ocirelay exited by itself during start-up: ${out.slice(-2000)}`);
  child.kill('SIGKILL');
  await closed;
  return { wasReady, sawCompaction, elapsedMs: Date.now() - t0 };
}

async function sha256File(file: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return h.digest('hex');
}

/** Problems with committed content: a file under blobs/sha256 that is not its digest, or misplaced. */
export async function blobFileProblems(dataDir: string): Promise<{ files: number; problems: string[] }> {
  const blobsDir = path.join(dataDir, 'blobs', 'sha256');
  const problems: string[] = [];
  let files = 0;
  for (const shard of await readdir(blobsDir).catch(() => [] as string[])) {
    for (const name of await readdir(path.join(blobsDir, shard))) {
      files++;
      const file = path.join(blobsDir, shard, name);
      if (!/^[0-9a-f]{64}$/.test(name) || name.slice(0, 2) !== shard) {
        problems.push(`unexpected file ${file}`);
        continue;
      }
      const got = await sha256File(file);
      if (got !== name) problems.push(`${file} hashes to ${got}`);
    }
  }
  return { files, problems };
}

export interface JournalLive {
  /** Digests with a manifest record (no later unmanifest). */
  manifests: Set<string>;
  /** Live tags (no later untag) per `registry/repository`. */
  tags: Map<string, Set<string>>;
}

/** The live records of the journal that a crash test checks against the disk. */
export async function journalLive(dataDir: string): Promise<JournalLive> {
  const text = await readFile(path.join(dataDir, 'index', 'journal.jsonl'), 'utf8');
  const manifests = new Set<string>();
  const tags = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    if (!line) continue;
    let rec: { t?: unknown; d?: unknown; r?: unknown; n?: unknown; tag?: unknown };
    try {
      rec = JSON.parse(line) as typeof rec;
    } catch {
      continue; // a torn last line
    }
    if (rec.t === 'manifest' && typeof rec.d === 'string') manifests.add(rec.d);
    else if (rec.t === 'unmanifest' && typeof rec.d === 'string') manifests.delete(rec.d);
    else if ((rec.t === 'tag' || rec.t === 'untag') && typeof rec.tag === 'string') {
      const key = `${String(rec.r)}/${String(rec.n)}`;
      let set = tags.get(key);
      if (!set) tags.set(key, (set = new Set()));
      if (rec.t === 'tag') set.add(rec.tag);
      else set.delete(rec.tag);
    }
  }
  return { manifests, tags };
}

/**
 * Append `count` tag records (the journal format of docs/architecture.md) for a filler
 * repository: what months of tag revalidations leave behind, so that replay and compaction
 * at start-up take long enough to be killed in the middle. Tag names repeat from call to call,
 * so the live set stays `count` records.
 */
export async function growJournal(dataDir: string, count: number, digest: string): Promise<void> {
  const at = Date.now();
  const lines: string[] = [];
  for (let i = 0; i < count; i++) {
    lines.push(JSON.stringify({ t: 'tag', r: 'docker.io', n: 'crash/filler', tag: `t${i}`, d: digest, mt: 'application/vnd.oci.image.manifest.v1+json', at: at + i }));
  }
  // The leading newline ends a torn last line that a kill may have left (it is then skipped).
  await appendFile(path.join(dataDir, 'index', 'journal.jsonl'), '\n' + lines.join('\n') + '\n');
}
