// Progress lines on stderr, stamped with seconds since the run started (stdout carries the report).
const t0 = performance.now();

export function progress(line: string): void {
  process.stderr.write(`[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${line}\n`);
}
