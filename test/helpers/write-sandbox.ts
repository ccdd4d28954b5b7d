// A place to run ocirelay where any write outside its data dir shows: the process dir is nested
// a few levels inside a fresh root (so `../../..` from data/tmp still lands inside the root),
// TMPDIR points at an empty sentinel dir, and traversal attempts carry a marker name that is
// looked for in every ancestor of the root as well.
import { mkdir, mkdtemp, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';

export interface WriteSandbox {
  root: string;
  /** Where ocirelay's config (and its data dir, `<procDir>/data`) live. */
  procDir: string;
  dataDir: string;
  /** Give this to ocirelay as TMPDIR: nothing should ever appear in it. */
  sentinelTmp: string;
  /** Every path under root that is not the data dir, its contents, or the files ocirelay was given. */
  strayPaths(expected: string[]): Promise<string[]>;
  /** Entries named with `marker` in the root's tree or directly in any of its ancestors. */
  markerHits(marker: string): Promise<string[]>;
  remove(): Promise<void>;
}

const DEPTH = ['l1', 'l2', 'l3', 'l4'];

async function listTree(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    const parent = e.parentPath ?? (e as unknown as { path: string }).path;
    out.push(path.join(parent, e.name));
  }
  return out;
}

export async function makeWriteSandbox(prefix: string): Promise<WriteSandbox> {
  const root = await mkdtemp(path.join(os.tmpdir(), prefix));
  const procDir = path.join(root, ...DEPTH, 'proc');
  const sentinelTmp = path.join(root, 'sentinel-tmp');
  await mkdir(procDir, { recursive: true });
  await mkdir(sentinelTmp);
  const dataDir = path.join(procDir, 'data');
  const scaffold = new Set([sentinelTmp, procDir, ...DEPTH.map((_, i) => path.join(root, ...DEPTH.slice(0, i + 1)))]);
  return {
    root,
    procDir,
    dataDir,
    sentinelTmp,
    strayPaths: async (expected) => {
      const allowed = new Set([...scaffold, ...expected.map((f) => path.join(procDir, f))]);
      return (await listTree(root)).filter((p) => !allowed.has(p) && p !== dataDir && !p.startsWith(dataDir + path.sep));
    },
    markerHits: async (marker) => {
      const hits = (await listTree(root)).filter((p) => path.basename(p).includes(marker));
      for (let d = path.dirname(root); ; d = path.dirname(d)) {
        const names = await readdir(d).catch(() => [] as string[]);
        hits.push(...names.filter((n) => n.includes(marker)).map((n) => path.join(d, n)));
        if (d === path.dirname(d)) break;
      }
      return hits;
    },
    remove: () => rm(root, { recursive: true, force: true }),
  };
}
