// An append-only file of JSON lines, one record each: streamed replay at start-up, batched
// appends whose failure reaches the caller, and compaction (tmp + fsync + rename) that may run
// while the process serves, without losing appends made meanwhile. The index journal
// (journal.ts) and the replication outbox (replication/outbox.ts) are both one of these.
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

export class AppendLog<R> {
  /** Lines not yet written, and who waits for them. */
  private pending: string[] = [];
  private waiters: Waiter[] = [];
  private writing: Promise<void> | undefined;
  private compacting = false;
  private compaction: Promise<void> | undefined;
  /** Bytes in the file now, and live bytes written by the last compaction. */
  private fileBytes = 0;
  private liveBytes = 0;

  constructor(
    readonly file: string,
    /** Checks one parsed line and returns it as a record; throws on a bad one (it is skipped). */
    private readonly check: (v: unknown) => R,
    /** The file grows to max(this, 2x its live size at the last compaction) before wantsCompaction. */
    private readonly minCompactBytes: number,
  ) {}

  /** Feed every line to `apply` (which throws on a bad one), streaming: the file may be huge. */
  async replay(apply: (rec: R) => void): Promise<{ records: number; skipped: number }> {
    let records = 0;
    let skipped = 0;
    const one = (line: string) => {
      if (!line) return;
      try {
        apply(this.check(JSON.parse(line)));
        records++;
      } catch {
        skipped++; // a torn last line (crash mid-append) or a corrupted one
      }
    };
    // Split by hand (readline costs about as much as everything else together on a big file);
    // the decoder keeps a UTF-8 sequence cut by a chunk boundary whole.
    const stream = createReadStream(this.file, { encoding: 'utf8', highWaterMark: 1024 * 1024 });
    let rest = '';
    try {
      for await (const chunk of stream as AsyncIterable<string>) {
        const text = rest + chunk;
        let from = 0;
        for (let nl = text.indexOf('\n'); nl >= 0; nl = text.indexOf('\n', from)) {
          one(text.slice(from, nl));
          from = nl + 1;
        }
        rest = text.slice(from);
      }
      one(rest);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    } finally {
      stream.destroy();
    }
    return { records, skipped };
  }

  /** Whether the file has grown enough that rewriting it with the live records pays. */
  get wantsCompaction(): boolean {
    return !this.compacting && this.fileBytes > Math.max(this.minCompactBytes, 2 * this.liveBytes);
  }

  get size(): number {
    return this.fileBytes;
  }

  /** Append one record; resolves once it is in the file, rejects when the write failed. */
  append(rec: R): Promise<void> {
    this.pending.push(JSON.stringify(rec) + '\n');
    const p = new Promise<void>((resolve, reject) => this.waiters.push({ resolve, reject }));
    this.kick();
    return p;
  }

  /** Wait until everything appended so far is written (or failed). */
  async flush(): Promise<void> {
    while (this.writing || this.compaction) {
      await (this.compaction ?? this.writing)?.catch(() => undefined);
    }
  }

  private kick(): void {
    if (this.writing || this.compacting || this.pending.length === 0) return;
    const lines = this.pending;
    const waiters = this.waiters;
    this.pending = [];
    this.waiters = [];
    this.writing = this.writeBatch(lines, waiters).finally(() => {
      this.writing = undefined;
      this.kick();
    });
  }

  // Opened per batch, not held: a descriptor that failed (ENOSPC, EIO) is never reused, and
  // after a compaction's rename the next batch lands in the new file with nothing to reopen.
  // Batching keeps this to one open/write/close per burst of appends.
  private async writeBatch(lines: string[], waiters: Waiter[]): Promise<void> {
    const data = lines.join('');
    try {
      const fh = await fs.open(this.file, 'a');
      try {
        await fh.writeFile(data);
      } finally {
        await fh.close();
      }
      this.fileBytes += Buffer.byteLength(data);
      for (const w of waiters) w.resolve();
    } catch (e) {
      for (const w of waiters) w.reject(e as Error);
    }
  }

  /**
   * Replace the file with `snapshot()`'s lines (tmp + fsync + rename, so a crash keeps the old
   * file). snapshot() is taken when no write is in flight and reflects every record appended
   * so far, so lines still pending then are covered by it and are not written again (a
   * duplicated history line would replay twice); appends made during the rewrite wait and go
   * to the new file after the rename. On failure they go to the old file instead.
   */
  compact(snapshot: () => string[]): Promise<void> {
    if (!this.compaction) {
      this.compaction = this.rewrite(snapshot).finally(() => {
        this.compaction = undefined;
        this.kick();
      });
    }
    return this.compaction;
  }

  private async rewrite(snapshot: () => string[]): Promise<void> {
    this.compacting = true;
    try {
      while (this.writing) await this.writing;
      const coveredLines = this.pending;
      const covered = this.waiters;
      this.pending = [];
      this.waiters = [];
      const lines = snapshot();
      const data = lines.length ? lines.join('\n') + '\n' : '';
      const tmp = `${this.file}.compact`;
      try {
        const fh = await fs.open(tmp, 'w');
        try {
          await fh.writeFile(data);
          await fh.sync();
        } finally {
          await fh.close();
        }
        await fs.rename(tmp, this.file);
        await syncDir(path.dirname(this.file));
      } catch (e) {
        // The snapshot did not land: what was pending before it still goes to the old file.
        this.pending = [...coveredLines, ...this.pending];
        this.waiters = [...covered, ...this.waiters];
        throw e;
      }
      this.fileBytes = Buffer.byteLength(data);
      this.liveBytes = this.fileBytes;
      for (const w of covered) w.resolve();
    } finally {
      this.compacting = false;
    }
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await fs.open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}
