// The members of this instance's cluster and which of them are live. Members come from the
// config's list or from a DNS name (a headless Service: one address per instance), looked up
// again every few seconds so members that come and go are followed. Each other member's
// /readyz is polled every ~2 s with a short timeout: a member that does not answer 200 (down,
// or shutting down: its /readyz says 503 then) is not live, and the keys it owned move to their
// runner-up among the live members (rendezvous hashing); when it answers again they move back.
// A read from a member that fails marks it down at once, until its next good health check.
// This instance (`self`) is always live.
import { lookup as dnsLookup } from 'node:dns/promises';
import type { ClusterConfig } from '../config-cluster.ts';
import type { Logger } from '../logger.ts';
import type { ClusterMetrics } from './cluster-metrics.ts';
import { ownerOf } from './rendezvous.ts';

export interface ClusterMembersOptions {
  config: Pick<ClusterConfig, 'dns' | 'members' | 'port' | 'self'>;
  logger: Logger;
  metrics: ClusterMetrics;
  healthIntervalMs?: number;
  healthTimeoutMs?: number;
  dnsIntervalMs?: number;
  /** The addresses of a name (default: dns.promises.lookup with all: true, as the OS resolves it). */
  lookup?: (name: string) => Promise<string[]>;
  /** Whether a member answers (default: GET <member>/readyz answers 200 within the timeout). */
  check?: (member: string, timeoutMs: number) => Promise<boolean>;
}

async function readyz(member: string, timeoutMs: number): Promise<boolean> {
  try {
    const res = await fetch(`${member}/readyz`, { signal: AbortSignal.timeout(timeoutMs) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** A lookup bounded to 2 s (getaddrinfo can hang on a broken resolver; start-up awaits the first one). */
async function lookupAll(name: string): Promise<string[]> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`lookup of ${name} took more than 2 s`)), 2000);
  });
  try {
    const addrs = await Promise.race([dnsLookup(name, { all: true }), timeout]);
    return addrs.map((a) => (a.family === 6 ? `[${a.address}]` : a.address));
  } finally {
    clearTimeout(timer);
  }
}

export class ClusterMembers {
  readonly self: string;
  #known: ReadonlySet<string> = new Set();
  readonly #live = new Set<string>();
  #timers: NodeJS.Timeout[] = [];
  #closed = false;
  #warnedSelf = false;
  readonly #o: Required<Omit<ClusterMembersOptions, 'config'>> & { config: ClusterMembersOptions['config'] };

  constructor(o: ClusterMembersOptions) {
    this.#o = {
      healthIntervalMs: 2000,
      healthTimeoutMs: 1000,
      dnsIntervalMs: 5000,
      lookup: lookupAll,
      check: readyz,
      ...o,
    };
    this.self = o.config.self;
    if (o.config.members) this.#setKnown(o.config.members);
  }

  /** Resolves the DNS name once (when there is one) and starts the health checks; never throws. */
  async start(): Promise<void> {
    if (this.#o.config.dns !== undefined) {
      await this.#resolve();
      this.#every(this.#o.dnsIntervalMs, () => this.#resolve());
    }
    await this.#checkAll();
    this.#every(this.#o.healthIntervalMs, () => this.#checkAll());
  }

  /** Every member known now (config or DNS), live or not. */
  known(): string[] {
    return [...this.#known];
  }

  /**
   * The live members and this instance. Self always takes part in the hashing, even when the
   * list lacks it (a wrong cluster.self): a member then only ever hands a key to a member that
   * weighs more for it than itself, so members that disagree about who is live can never hand
   * a read around in a circle.
   */
  live(): string[] {
    return [...new Set([this.self, ...[...this.#known].filter((m) => this.#live.has(m))])];
  }

  /** The live member that owns `key` (rendezvous hashing). */
  owner(key: string): string | undefined {
    return ownerOf(key, this.live());
  }

  /** A read from `member` failed: it is not live until it answers a health check again. */
  markDown(member: string, reason: string): void {
    if (!this.#live.delete(member)) return;
    this.#o.logger.warn({ member, reason }, 'cluster member marked down: its digests and tags move to the other members');
    this.#gauge();
  }

  close(): void {
    this.#closed = true;
    for (const t of this.#timers) clearTimeout(t);
    this.#timers = [];
  }

  /** Runs `fn` every `ms` after the previous run ended (never two at once). */
  #every(ms: number, fn: () => Promise<void>): void {
    const loop = (): void => {
      const t = setTimeout(() => {
        this.#timers = this.#timers.filter((x) => x !== t);
        void fn().finally(() => {
          if (!this.#closed) loop();
        });
      }, ms);
      t.unref();
      this.#timers.push(t);
    };
    loop();
  }

  async #resolve(): Promise<void> {
    const name = this.#o.config.dns!;
    let addrs: string[];
    try {
      addrs = await this.#o.lookup(name);
    } catch (e) {
      // Keep the members we had: a resolver hiccup is not every member leaving.
      this.#o.logger.warn({ dns: name, err: (e as Error).message }, 'cluster DNS lookup failed; keeping the members known');
      return;
    }
    this.#setKnown(addrs.map((a) => new URL(`http://${a}:${this.#o.config.port}`).origin));
  }

  #setKnown(members: readonly string[]): void {
    const next = new Set(members);
    const added = [...next].filter((m) => !this.#known.has(m));
    const removed = [...this.#known].filter((m) => !next.has(m));
    if (added.length === 0 && removed.length === 0) return;
    this.#known = next;
    for (const m of removed) this.#live.delete(m);
    this.#o.logger.info({ added, removed, members: [...next] }, 'cluster members changed');
    if (!next.has(this.self) && !this.#warnedSelf) {
      this.#warnedSelf = true;
      this.#o.logger.warn({ self: this.self, members: [...next] }, 'this instance is not among the cluster members (set cluster.self): the others never read from it, so its own fetches are not shared');
    }
    this.#gauge();
  }

  async #checkAll(): Promise<void> {
    const others = [...this.#known].filter((m) => m !== this.self);
    const results = await Promise.all(others.map(async (m) => [m, await this.#o.check(m, this.#o.healthTimeoutMs)] as const));
    for (const [m, ok] of results) {
      if (!this.#known.has(m)) continue; // left while being checked
      const was = this.#live.has(m);
      if (ok && !was) {
        this.#live.add(m);
        this.#o.logger.info({ member: m }, 'cluster member live');
      } else if (!ok && was) {
        this.#live.delete(m);
        this.#o.logger.warn({ member: m }, 'cluster member failed its health check: its digests and tags move to the other members');
      }
    }
    this.#gauge();
  }

  #gauge(): void {
    const live = [...this.#known].filter((m) => m === this.self || this.#live.has(m)).length;
    this.#o.metrics.members.set({ state: 'live' }, live);
    this.#o.metrics.members.set({ state: 'down' }, this.#known.size - live);
  }
}
