// Bearer tokens of one upstream registry, by scope (`repository:<name>:pull`).
//
// A token is kept until shortly before it expires, so that a warm request sends it
// pre-emptively and costs one round trip. Requests that need a token for the same scope at
// the same time share one fetch.
import { LRUCache } from 'lru-cache';

export interface IssuedToken {
  token: string;
  /** Lifetime in seconds from issue; 60 when the endpoint did not say. */
  expiresInS: number;
  /** `issued_at` from the endpoint, epoch ms, when present and parseable. */
  issuedAtMs?: number;
}

const DEFAULT_LIFETIME_S = 60;
// issued_at is the token server's clock. Trust it only when it is close to ours (the fetch
// itself takes a moment); otherwise a server clock running behind would make every token
// look expired on arrival and cost a token fetch per request.
const MAX_ISSUED_AT_SKEW_MS = 60_000;

/** When to stop using a token: 10% (at least 5 s, at most half the lifetime) before expiry. */
export function tokenRefreshAt(t: IssuedToken, now: number): number {
  const lifetimeMs = (t.expiresInS > 0 ? t.expiresInS : DEFAULT_LIFETIME_S) * 1000;
  const issued = t.issuedAtMs;
  const base = issued !== undefined && now - issued >= 0 && now - issued <= MAX_ISSUED_AT_SKEW_MS ? issued : now;
  const margin = Math.min(Math.max(lifetimeMs * 0.1, 5_000), lifetimeMs / 2);
  return base + lifetimeMs - margin;
}

export class TokenCache {
  readonly #entries: LRUCache<string, { token: string; refreshAt: number }>;
  readonly #inflight = new Map<string, Promise<string>>();
  readonly #now: () => number;

  constructor(opts: { maxEntries?: number; now?: () => number } = {}) {
    this.#entries = new LRUCache({ max: opts.maxEntries ?? 10_000 });
    this.#now = opts.now ?? Date.now;
  }

  /** A token for the scope that is still good to send, if any. */
  peek(scope: string): string | undefined {
    const e = this.#entries.get(scope);
    if (e === undefined) return undefined;
    if (this.#now() >= e.refreshAt) {
      this.#entries.delete(scope);
      return undefined;
    }
    return e.token;
  }

  /**
   * A token for the scope: the cached one unless it is `rejected` (the upstream just
   * answered 401 to it), else the result of the fetch in flight for the scope, else a new
   * fetch. The fetch runs without any caller's signal, since other callers may share it.
   */
  obtain(scope: string, rejected: string | undefined, fetch: () => Promise<IssuedToken>): Promise<string> {
    const cached = this.peek(scope);
    if (cached !== undefined) {
      if (cached !== rejected) return Promise.resolve(cached);
      this.#entries.delete(scope);
    }
    const inflight = this.#inflight.get(scope);
    if (inflight !== undefined) return inflight;
    const p = fetch()
      .then((t) => {
        this.#entries.set(scope, { token: t.token, refreshAt: tokenRefreshAt(t, this.#now()) });
        return t.token;
      })
      .finally(() => this.#inflight.delete(scope));
    this.#inflight.set(scope, p);
    return p;
  }
}
