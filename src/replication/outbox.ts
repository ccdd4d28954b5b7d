// The durable job queue of one replicating peer: <dataDir>/replication/<peer>.jsonl, an
// AppendLog of "job added" and "job done" lines. A job is in the file before the commit it
// reports is acknowledged (CacheEvents awaits the listener, the listener awaits add()), so a
// kill -9 loses none: start-up replays the file and every job not marked done runs again
// (at-least-once; every job is idempotent at the peer). The file is rewritten with only the
// pending jobs once done lines dominate it.
import fs from 'node:fs/promises';
import path from 'node:path';
import { AppendLog } from '../storage/append-log.ts';
import { isDigest, type Digest } from '../oci/digest.ts';

/** What to send to the peer. Field names are short: there may be 100,000 of these in the file. */
export type JobSpec =
  | { k: 'blob'; r: string; n: string; d: Digest }
  | { k: 'manifest'; r: string; n: string; d: Digest }
  /** A tag resolved to `d` at `at` (ms since epoch) with manifest media type `mt`. */
  | { k: 'tag'; r: string; n: string; tag: string; d: Digest; at: number }
  /** A pin (`pinned`) or its removal; `ds[0]` is the pinned root manifest. */
  | { k: 'pin'; r: string; n: string; ref: string; ds: Digest[]; pinned: boolean; at: number }
  /** A freeze of `tag` at `d`, or its removal (`d` null). */
  | { k: 'freeze'; r: string; n: string; tag: string; d: Digest | null; at: number };

type Line = { t: 'add'; id: number; at: number; job: JobSpec } | { t: 'done'; id: number };

export interface Job {
  readonly id: number;
  readonly spec: JobSpec;
  /** The idempotency key: (kind, registry, repository, digest / tag / pin ref). */
  readonly key: string;
  /** When it was added (ms): the lag is the age of the oldest pending job. */
  readonly addedAt: number;
  attempts: number;
  /** Not to be tried before this (ms), after a failure. */
  notBefore: number;
  running: boolean;
}

export type AddResult = 'added' | 'duplicate' | 'full';

/** Rewrite once done lines since the last rewrite outnumber both this and the pending jobs. */
const MIN_DONE_LINES = 1000;

export function jobKey(s: JobSpec): string {
  const what = s.k === 'blob' || s.k === 'manifest' ? s.d : s.k === 'pin' ? s.ref : s.tag;
  return `${s.k} ${s.r}/${s.n} ${what}`;
}

/** Kinds where a newer job replaces a pending older one for the same key (a tag moved again). */
const SUPERSEDES = new Set<JobSpec['k']>(['tag', 'pin', 'freeze']);

function checkedLine(v: unknown): Line {
  if (typeof v !== 'object' || v === null) throw new Error('not a line');
  const l = v as Record<string, unknown>;
  if (typeof l.id !== 'number') throw new Error('no id');
  if (l.t === 'done') return l as unknown as Line;
  if (l.t !== 'add' || typeof l.at !== 'number' || typeof l.job !== 'object' || l.job === null) throw new Error('bad line');
  const j = l.job as Record<string, unknown>;
  if (!['blob', 'manifest', 'tag', 'pin', 'freeze'].includes(String(j.k)) || typeof j.r !== 'string' || typeof j.n !== 'string') throw new Error('bad job');
  // Digests name local files: a corrupted line cannot smuggle in a path.
  if (j.d !== undefined && j.d !== null && !(typeof j.d === 'string' && isDigest(j.d))) throw new Error('bad digest');
  if (j.ds !== undefined && !(Array.isArray(j.ds) && j.ds.every((x) => typeof x === 'string' && isDigest(x)))) throw new Error('bad digests');
  return l as unknown as Line;
}

export class Outbox {
  /** Pending jobs by id; Map order is the order they are tried in. */
  private readonly jobs = new Map<number, Job>();
  private readonly byKey = new Map<string, Job>();
  /** Keys of running jobs: a second job of the same key waits for the first. */
  private readonly runningKeys = new Set<string>();
  private nextId = 1;
  /** Done lines written since the file was last rewritten. */
  private doneLines = 0;

  private constructor(
    private readonly log: AppendLog<Line>,
    readonly maxPending: number,
  ) {}

  static async open(file: string, opts: { maxPending: number }): Promise<{ outbox: Outbox; replayed: number; skipped: number }> {
    await fs.mkdir(path.dirname(file), { recursive: true });
    // Compaction is judged by line counts here (see done()), not by AppendLog's size rule.
    const log = new AppendLog<Line>(file, checkedLine, Number.MAX_SAFE_INTEGER);
    const ob = new Outbox(log, opts.maxPending);
    const { skipped } = await log.replay((l) => ob.apply(l));
    // The replayed file may be mostly done lines (a crash before its compaction): rewrite it
    // with the pending jobs only, which also sets the size the next compaction is judged by.
    const st = await fs.stat(file).catch(() => undefined);
    if (st && st.size > 0) await ob.compact();
    return { outbox: ob, replayed: ob.jobs.size, skipped };
  }

  private apply(l: Line): void {
    if (l.id >= this.nextId) this.nextId = l.id + 1;
    if (l.t === 'done') {
      const j = this.jobs.get(l.id);
      if (j) this.forget(j);
      return;
    }
    const job: Job = { id: l.id, spec: l.job, key: jobKey(l.job), addedAt: l.at, attempts: 0, notBefore: 0, running: false };
    const old = this.byKey.get(job.key);
    if (old) this.forget(old);
    this.jobs.set(job.id, job);
    this.byKey.set(job.key, job);
  }

  private forget(j: Job): void {
    this.jobs.delete(j.id);
    if (this.byKey.get(j.key) === j) this.byKey.delete(j.key);
  }

  get pending(): number {
    return this.jobs.size;
  }

  /** Age basis of the lag: the earliest addedAt of any pending job. */
  oldestAddedAt(): number | undefined {
    let min: number | undefined;
    for (const j of this.jobs.values()) if (min === undefined || j.addedAt < min) min = j.addedAt;
    return min;
  }

  /**
   * Add a job; resolves once its line is in the file. A blob or manifest already pending is a
   * duplicate; a tag, pin or freeze replaces a pending older one for the same key (unless that
   * one is running: then both stay, and the worker runs them one after the other).
   */
  async add(spec: JobSpec, now = Date.now()): Promise<AddResult> {
    const key = jobKey(spec);
    const old = this.byKey.get(key);
    if (old && !SUPERSEDES.has(spec.k)) return 'duplicate';
    if (!old && this.jobs.size >= this.maxPending) return 'full';
    const id = this.nextId++;
    const writes: Array<Promise<void>> = [];
    if (old && !old.running) {
      this.forget(old);
      this.doneLines++;
      writes.push(this.log.append({ t: 'done', id: old.id }));
    }
    const job: Job = { id, spec, key, addedAt: now, attempts: 0, notBefore: 0, running: false };
    this.jobs.set(id, job);
    this.byKey.set(key, job);
    writes.push(this.log.append({ t: 'add', id, at: now, job: spec }));
    try {
      await Promise.all(writes);
    } catch (e) {
      // Not on disk: not acknowledged as queued either (the caller counts the failure).
      this.forget(job);
      throw e;
    }
    return 'added';
  }

  /**
   * The first job ready to run that no running job shares a key with; marks it running. Jobs
   * waiting for a retry are moved to the back (retryAt), so the scan usually stops early.
   */
  take(now = Date.now()): Job | undefined {
    for (const j of this.jobs.values()) {
      if (j.running || j.notBefore > now || this.runningKeys.has(j.key)) continue;
      this.setRunning(j, true);
      return j;
    }
    return undefined;
  }

  private setRunning(j: Job, running: boolean): void {
    if (j.running === running) return;
    j.running = running;
    if (running) this.runningKeys.add(j.key);
    else this.runningKeys.delete(j.key);
  }

  /** The job is finished (sent, or dropped for good): marked done in the file. */
  async done(job: Job): Promise<void> {
    this.setRunning(job, false);
    if (this.jobs.get(job.id) !== job) return;
    this.forget(job);
    this.doneLines++;
    await this.log.append({ t: 'done', id: job.id });
    if (this.doneLines > Math.max(MIN_DONE_LINES, this.jobs.size)) void this.compact().catch(() => undefined);
  }

  /** Try again at `at`; it goes to the back of the queue so others are not held up. */
  retryAt(job: Job, at: number): void {
    this.setRunning(job, false);
    job.attempts++;
    job.notBefore = at;
    if (this.jobs.get(job.id) !== job) return;
    this.jobs.delete(job.id);
    this.jobs.set(job.id, job);
  }

  /** Give a running job back untried (the peer is backing off as a whole). */
  release(job: Job): void {
    this.setRunning(job, false);
  }

  compact(): Promise<void> {
    this.doneLines = 0;
    return this.log.compact(() => [...this.jobs.values()].sort((a, b) => a.id - b.id).map((j) => JSON.stringify({ t: 'add', id: j.id, at: j.addedAt, job: j.spec })));
  }

  flush(): Promise<void> {
    return this.log.flush();
  }

  get fileBytes(): number {
    return this.log.size;
  }
}
