// Progress of a prefetch job on stderr while the CLI polls it. On a terminal: one bar line
// redrawn in place, with a line printed above it whenever an image finishes. Elsewhere (CI
// logs, pipes): plain lines only when something changed, never a carriage return.
import type { PrefetchJob } from './admin-client.ts';
import { formatBytes, formatElapsed, shortDigest } from './human.ts';

export interface ProgressStream {
  write(chunk: string): unknown;
  /** Terminal width; absent when not a terminal. */
  columns?: number;
}

export interface JobProgress {
  update(job: PrefetchJob): void;
  /** Leaves the stream at the start of an empty line. */
  end(): void;
}

/** Plain mode repeats the byte count at most this often while no image finishes. */
const PLAIN_HEARTBEAT_MS = 10_000;

export function createJobProgress(out: ProgressStream, opts: { tty: boolean; now?: () => number }): JobProgress {
  const now = opts.now ?? Date.now;
  const started = now();
  const reported = new Map<string, string>();
  let barShown = false;
  let announced = false;
  let lastPlain = 0;
  let lastPlainBytes = -1;

  // Image names can repeat only if the job lists one twice; the index keeps them apart.
  const finishedLines = (job: PrefetchJob): string[] => {
    const lines: string[] = [];
    job.images.forEach((img, i) => {
      const key = `${i}:${img.image}`;
      if ((img.state === 'done' || img.state === 'failed') && reported.get(key) !== img.state) {
        reported.set(key, img.state);
        lines.push(
          img.state === 'done'
            ? `  done    ${img.image}  ${shortDigest(img.digest)}  ${formatBytes(img.bytes)}`
            : `  failed  ${img.image}: ${img.error ?? 'failed'}`,
        );
      }
    });
    return lines;
  };

  const counts = (job: PrefetchJob) => {
    const finished = (job.done ?? 0) + (job.failed ?? 0);
    const failed = job.failed ? `, ${job.failed} failed` : '';
    const bytes = job.bytesTotal > 0 ? `${formatBytes(job.bytesDone)} / ${formatBytes(job.bytesTotal)}` : formatBytes(job.bytesDone);
    return { finished, text: `${finished}/${job.total} images${failed}  ${bytes}` };
  };

  const barLine = (job: PrefetchJob): string => {
    const { finished, text } = counts(job);
    const fraction = job.bytesTotal > 0 ? job.bytesDone / job.bytesTotal : job.total > 0 ? finished / job.total : 0;
    const clamped = Math.min(1, Math.max(0, job.state === 'running' ? fraction : 1));
    const tail = `  ${String(Math.floor(clamped * 100)).padStart(3)}%  ${text}  ${formatElapsed(now() - started)}`;
    // A pseudo-terminal may report 0 columns; then assume the classic 80.
    const columns = out.columns !== undefined && out.columns >= 40 ? out.columns : 80;
    // A fixed bar width (not one that follows the text's length), so the bar does not jump.
    const width = Math.max(10, Math.min(30, columns - 55));
    const filled = Math.round(clamped * width);
    // Never wider than the terminal: a wrapped line could not be redrawn in place.
    return `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]${tail}`.slice(0, columns - 1);
  };

  return {
    update(job) {
      if (!announced) {
        announced = true;
        const line = `prefetch ${job.id}: ${job.total} image${job.total === 1 ? '' : 's'}\n`;
        out.write(line);
      }
      const lines = finishedLines(job);
      if (opts.tty) {
        const clear = barShown ? '\r\x1b[K' : '';
        out.write(`${clear}${lines.map((l) => `${l}\n`).join('')}${barLine(job)}`);
        barShown = true;
        return;
      }
      for (const l of lines) out.write(`${l}\n`);
      const t = now();
      if (lines.length > 0 || (t - lastPlain >= PLAIN_HEARTBEAT_MS && job.bytesDone !== lastPlainBytes)) {
        out.write(`  ${counts(job).text}  ${formatElapsed(t - started)}\n`);
        lastPlain = t;
        lastPlainBytes = job.bytesDone;
      }
    },
    end() {
      if (barShown) out.write('\r\x1b[K');
      barShown = false;
    },
  };
}
