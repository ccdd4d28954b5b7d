// The write-behind's pending writes on disk: <dataDir>/s3/write-behind.jsonl, an AppendLog of
// "add" and "done" lines, so the writes a kill -9 (or a shutdown with S3 down) leaves pending
// are done after the restart, not lost to the bucket. Only what was pending is kept: a restart
// never re-uploads the whole disk (which would fight the bucket budget's evictions).
//
// The listener does not wait for the line (clients never wait on the write-behind): a crash in
// the few milliseconds between a commit and its line being written loses that one write, as
// before; everything older survives. The file is rewritten with the pending writes only once
// done lines outnumber them.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../logger.ts';
import { isDigest, type Digest } from '../oci/digest.ts';
import { AppendLog } from '../storage/append-log.ts';

export interface PendingWrite {
  digest: Digest;
  size: number;
  contentType: string;
}

type Line = { t: 'add'; d: Digest; s: number; ct: string } | { t: 'done'; d: Digest };

/** Rewrite once done lines since the last rewrite outnumber both this and the pending writes. */
const MIN_DONE_LINES = 1000;

function checkedLine(v: unknown): Line {
  if (typeof v !== 'object' || v === null) throw new Error('not a line');
  const l = v as Record<string, unknown>;
  // Digests name local files: a corrupted line cannot smuggle in a path.
  if (typeof l.d !== 'string' || !isDigest(l.d)) throw new Error('bad digest');
  if (l.t === 'done') return { t: 'done', d: l.d };
  if (l.t !== 'add' || typeof l.s !== 'number' || !Number.isSafeInteger(l.s) || l.s < 0 || typeof l.ct !== 'string') throw new Error('bad line');
  return { t: 'add', d: l.d, s: l.s, ct: l.ct };
}

export class WriteBehindJournal {
  readonly #pending = new Map<Digest, PendingWrite>();
  #doneLines = 0;
  #failedLogged = false;

  private constructor(
    private readonly log: AppendLog<Line>,
    private readonly logger: Logger,
  ) {}

  /** Replays the file: the writes still pending, oldest first. */
  static async open(file: string, logger: Logger): Promise<{ journal: WriteBehindJournal; pending: PendingWrite[] }> {
    await fs.mkdir(path.dirname(file), { recursive: true });
    const log = new AppendLog<Line>(file, checkedLine, Number.MAX_SAFE_INTEGER);
    const j = new WriteBehindJournal(log, logger);
    await log.replay((l) => {
      if (l.t === 'done') j.#pending.delete(l.d);
      else j.#pending.set(l.d, { digest: l.d, size: l.s, contentType: l.ct });
    });
    // A file of mostly done lines (a crash before its rewrite): keep the pending ones only.
    await j.compact();
    return { journal: j, pending: [...j.#pending.values()] };
  }

  get pending(): number {
    return this.#pending.size;
  }

  add(w: PendingWrite): void {
    if (this.#pending.has(w.digest)) return;
    this.#pending.set(w.digest, w);
    this.#append({ t: 'add', d: w.digest, s: w.size, ct: w.contentType });
  }

  done(digest: Digest): void {
    if (!this.#pending.delete(digest)) return;
    this.#doneLines++;
    this.#append({ t: 'done', d: digest });
    if (this.#doneLines > Math.max(MIN_DONE_LINES, this.#pending.size)) void this.compact().catch(() => undefined);
  }

  compact(): Promise<void> {
    this.#doneLines = 0;
    return this.log.compact(() => [...this.#pending.values()].map((w) => JSON.stringify({ t: 'add', d: w.digest, s: w.size, ct: w.contentType })));
  }

  async close(): Promise<void> {
    await this.log.flush();
  }

  #append(l: Line): void {
    // Not awaited: a failed line only means that write is not redone after a crash.
    this.log.append(l).catch((e: unknown) => {
      if (this.#failedLogged) return;
      this.#failedLogged = true;
      this.logger.warn({ err: (e as Error).message, file: this.log.file }, 'S3 write-behind journal not writable: pending writes are lost at a crash');
    });
  }
}
