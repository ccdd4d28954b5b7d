// Retry delays of replication: exponential from 1 s, capped at 5 minutes, with jitter so that
// the jobs of a peer that comes back do not all knock at the same instant.
export const BACKOFF_BASE_MS = 1000;
export const BACKOFF_CAP_MS = 5 * 60_000;

/** The wait before try number `failures + 1`: half to all of min(cap, base * 2^(failures-1)). */
export function backoffMs(failures: number, random: () => number = Math.random): number {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** Math.max(0, Math.min(failures - 1, 30)));
  return Math.round(ceiling * (0.5 + random() * 0.5));
}
