// How long to wait before retrying an upstream request.

const MAX_BACKOFF_MS = 10_000;

/**
 * Exponential backoff with jitter: retry n (0-based) waits between half and all of
 * baseMs * 2^n, so clients that failed together do not retry in lockstep.
 */
export function backoffDelay(retry: number, baseMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(MAX_BACKOFF_MS, baseMs * 2 ** retry);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** A Retry-After header (delay seconds or an HTTP date) in ms from now; undefined if absent or unparseable. */
export function parseRetryAfter(value: string | undefined, now: number = Date.now()): number | undefined {
  if (value === undefined) return undefined;
  const v = value.trim();
  if (v === '') return undefined;
  if (/^\d+$/.test(v)) return Number(v) * 1000;
  const at = Date.parse(v);
  if (Number.isNaN(at)) return undefined;
  return Math.max(0, at - now);
}
