// Pushes what this region caches to its replicating peers. As a CacheListener it turns every
// committed blob and manifest, every tag that resolved to a new digest, and every pin and
// freeze into one job per peer in that peer's Outbox (on disk before the commit is
// acknowledged). Workers (replication.concurrency over all peers, taking the peers in turn)
// hand them to the JobSender (job-sender.ts: HEAD first, mount or upload, what a job needs
// before it); a peer that is down backs off as a whole, a job it refuses on its own alone.
// Content that came from a peer (via push or failover) is never queued:
// with a full mesh that would loop.
import path from 'node:path';
import type { CacheListener, ContentCommitted, FreezeChanged, PinChanged, TagResolved } from '../cache-events.ts';
import { globMatcher, type PeerConfig, type ReplicationConfig } from '../config-replication.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { Digest } from '../oci/digest.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import { Outbox, type Job, type JobSpec } from './outbox.ts';
import { PeerClient, PeerError } from './peer-client.ts';
import { JobSender, type PeerLink } from './job-sender.ts';
import { backoffMs } from './backoff.ts';
import { ReplicationMetrics } from './replication-metrics.ts';
import type { PeerStatus, ReplicationStatus } from './status.ts';

/** Pending jobs per peer; beyond, new ones are dropped and counted (reason outbox_full). */
export const MAX_PENDING_PER_PEER = 100_000;
/** A job the peer keeps refusing (a 4xx) is dropped after this many attempts (about an hour). */
const MAX_JOB_ATTEMPTS = 20;

export interface ReplicatorDeps {
  config: ReplicationConfig & { dataDir: string; version: string };
  disk: DiskBlobStore;
  index: CacheIndex;
  /** Pulls an image (or an index's child) into the cache through the normal path. */
  pull(registry: string, repository: string, reference: string): Promise<unknown>;
  /** This region's cached images (for DR readiness). */
  images(): Array<{ digest: Digest; size: number }>;
  metrics: Metrics;
  logger: Logger;
}

interface PeerState extends PeerLink {
  outbox: Outbox;
  /** Consecutive peer-wide failures, and no job is started before backoffUntil. */
  failures: number;
  backoffUntil: number;
  lastSuccess: number | undefined;
  lastError: { at: number; message: string } | undefined;
}

export class Replicator implements CacheListener {
  private readonly peers: PeerState[] = [];
  private readonly matches: (subject: string) => boolean;
  private running = 0;
  private rr = 0;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private readonly inflight = new Set<Promise<void>>();
  private readonly m: ReplicationMetrics;
  private readonly sender: JobSender;

  constructor(private readonly d: ReplicatorDeps) {
    const include = globMatcher(d.config.replication.include);
    const exclude = globMatcher(d.config.replication.exclude);
    this.matches = (s) => include(s) && !exclude(s);
    this.m = ReplicationMetrics.of(d.metrics);
    this.sender = new JobSender({ disk: d.disk, index: d.index, pull: d.pull, metrics: this.m });
  }

  /** Open every replicating peer's outbox (replaying what a crash left) and start the workers. */
  async start(): Promise<void> {
    for (const peer of this.d.config.peers.values()) {
      if (!peer.replicate) continue;
      const file = path.join(this.d.config.dataDir, 'replication', `${peer.name}.jsonl`);
      const { outbox, replayed, skipped } = await Outbox.open(file, { maxPending: MAX_PENDING_PER_PEER });
      if (replayed > 0 || skipped > 0) this.d.logger.info({ peer: peer.name, replayed, skipped }, 'replication outbox replayed');
      this.peers.push({
        peer,
        client: new PeerClient(peer, `ocirelay/${this.d.config.version}`),
        outbox,
        failures: 0,
        backoffUntil: 0,
        lastSuccess: undefined,
        lastError: undefined,
        confirmed: new Set(),
        blobHome: new Map(),
        pushing: new Map(),
      });
    }
    this.m.outboxes = () => {
      const now = Date.now();
      return this.peers.map((st) => {
        const oldest = st.outbox.oldestAddedAt();
        return { peer: st.peer.name, pending: st.outbox.pending, lagSeconds: oldest === undefined ? 0 : Math.max(0, (now - oldest) / 1000) };
      });
    };
    this.m.readinessOf = () => this.status().peers.map((p) => ({ peer: p.name, images: p.readiness.images }));
    this.kick();
  }

  get peerCount(): number {
    return this.peers.length;
  }

  // ---- the CacheListener side: one job per peer, on disk before the commit is acknowledged ----

  private wanted(via: string, registry: string, repository: string): boolean {
    return (via === 'upstream' || via === 'admin') && this.matches(`${registry}/${repository}`);
  }

  async contentCommitted(e: ContentCommitted): Promise<void> {
    if (!this.wanted(e.via, e.registry, e.repository)) return;
    await this.enqueue(this.peers, { k: e.kind, r: e.registry, n: e.repository, d: e.digest });
  }

  async tagResolved(e: TagResolved): Promise<void> {
    if (!this.wanted(e.via, e.registry, e.repository)) return;
    await this.enqueue(this.peers, { k: 'tag', r: e.registry, n: e.repository, tag: e.tag, d: e.digest, at: e.resolvedAt });
  }

  /** Pins go to ocirelay peers (a registry has no pins). Admin actions: never received from a peer. */
  async pinChanged(e: PinChanged): Promise<void> {
    if (!this.matches(`${e.registry}/${e.repository}`)) return;
    const ocirelays = this.peers.filter((p) => p.peer.kind === 'ocirelay');
    await this.enqueue(ocirelays, { k: 'pin', r: e.registry, n: e.repository, ref: e.ref, ds: e.digests, pinned: e.pinned, at: Date.now() });
  }

  /** Freezes go to ocirelay peers as freezes, to registry peers as the tag pointing at the frozen digest. */
  async freezeChanged(e: FreezeChanged): Promise<void> {
    if (!this.matches(`${e.registry}/${e.repository}`)) return;
    const ocirelays = this.peers.filter((p) => p.peer.kind === 'ocirelay');
    await this.enqueue(ocirelays, { k: 'freeze', r: e.registry, n: e.repository, tag: e.tag, d: e.digest ?? null, at: e.at });
    if (e.digest !== undefined) {
      const registries = this.peers.filter((p) => p.peer.kind === 'registry');
      await this.enqueue(registries, { k: 'tag', r: e.registry, n: e.repository, tag: e.tag, d: e.digest, at: e.at });
    }
  }

  /** Queue jobs for a backfill (`ocirelay replicate`); answers how many were queued per peer. */
  async backfill(peerName: string, specs: JobSpec[]): Promise<{ queued: number; duplicate: number; full: number }> {
    const st = this.peers.find((p) => p.peer.name === peerName);
    if (!st) throw new Error(`no replicating peer named ${peerName}`);
    const out = { queued: 0, duplicate: 0, full: 0 };
    for (const s of specs) {
      const r = await this.addOne(st, s);
      if (r === 'added') out.queued++;
      else if (r === 'duplicate') out.duplicate++;
      else out.full++;
    }
    this.kick();
    return out;
  }

  hasPeer(name: string): boolean {
    return this.peers.some((p) => p.peer.name === name);
  }

  peerKind(name: string): PeerConfig['kind'] | undefined {
    return this.peers.find((p) => p.peer.name === name)?.peer.kind;
  }

  private async enqueue(peers: PeerState[], spec: JobSpec): Promise<void> {
    if (this.closed || peers.length === 0) return;
    await Promise.all(peers.map((st) => this.addOne(st, spec)));
    this.kick();
  }

  private async addOne(st: PeerState, spec: JobSpec): Promise<'added' | 'duplicate' | 'full'> {
    try {
      const r = await st.outbox.add(spec);
      if (r === 'full') {
        this.m.failures.inc({ peer: st.peer.name, reason: 'outbox_full' });
        this.d.logger.warn({ peer: st.peer.name, job: spec }, 'replication outbox full: job dropped');
      }
      return r;
    } catch (err) {
      this.m.failures.inc({ peer: st.peer.name, reason: 'outbox_write' });
      throw err;
    }
  }

  // ---- the workers ------------------------------------------------------------------------

  private kick(): void {
    if (this.closed) return;
    const limit = this.d.config.replication.concurrency;
    while (this.running < limit) {
      const next = this.pick();
      if (!next) break;
      this.running++;
      const p = this.run(next.st, next.job).finally(() => {
        this.running--;
        this.inflight.delete(p);
        this.kick();
      });
      this.inflight.add(p);
    }
    // Jobs waiting for their retry time or a peer's backoff: look again soon.
    if (!this.timer && this.peers.some((p) => p.outbox.pending > 0)) {
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.kick();
      }, 250);
      this.timer.unref();
    }
  }

  /** The next job to run, taking peers in turn so that one peer's backlog does not starve another. */
  private pick(): { st: PeerState; job: Job } | undefined {
    const now = Date.now();
    for (let i = 0; i < this.peers.length; i++) {
      const st = this.peers[(this.rr + i) % this.peers.length]!;
      if (st.backoffUntil > now) continue;
      const job = st.outbox.take(now);
      if (job) {
        this.rr = (this.rr + i + 1) % this.peers.length;
        return { st, job };
      }
    }
    return undefined;
  }

  private async run(st: PeerState, job: Job): Promise<void> {
    const peer = st.peer.name;
    try {
      const outcome = await this.sender.send(st, job.spec);
      if (outcome === 'evicted') {
        this.m.failures.inc({ peer, reason: 'evicted' });
        this.d.logger.warn({ peer, job: job.spec }, 'replication job dropped: its content was evicted locally before it left');
      } else {
        st.lastSuccess = Date.now();
        this.d.logger.debug({ peer, job: job.spec, outcome }, 'replicated');
      }
      st.failures = 0;
      await st.outbox.done(job);
    } catch (err) {
      if (this.closed) {
        st.outbox.release(job);
        return;
      }
      const message = (err as Error).message;
      st.lastError = { at: Date.now(), message };
      if (err instanceof PeerError && err.peerWide) {
        this.m.failures.inc({ peer, reason: err.reason });
        // The peer as a whole is down or refusing us: every job of it waits, this one untried.
        st.outbox.release(job);
        const now = Date.now();
        if (st.backoffUntil <= now) {
          st.failures++;
          const wait = backoffMs(st.failures);
          st.backoffUntil = now + wait;
          this.d.logger.warn({ peer, err: message, retryInMs: wait, pending: st.outbox.pending }, 'replication peer unavailable: backing off');
        }
        return;
      }
      const reason = err instanceof PeerError ? err.reason : 'local';
      this.m.failures.inc({ peer, reason });
      if (job.attempts + 1 >= MAX_JOB_ATTEMPTS) {
        this.d.logger.error({ peer, job: job.spec, err: message, attempts: job.attempts + 1 }, 'replication job dropped after repeated failures');
        await st.outbox.done(job).catch(() => undefined);
        return;
      }
      const wait = backoffMs(job.attempts + 1);
      this.d.logger.warn({ peer, job: job.spec, err: message, retryInMs: wait }, 'replication job failed: will retry');
      st.outbox.retryAt(job, Date.now() + wait);
    }
  }

  // ---- what it reports ---------------------------------------------------------------------

  status(): ReplicationStatus {
    const now = Date.now();
    const images = this.d.images();
    const totalBytes = images.reduce((a, i) => a + i.size, 0);
    const peers: PeerStatus[] = this.peers.map((st) => {
      const oldest = st.outbox.oldestAddedAt();
      const there = images.filter((i) => st.confirmed.has(i.digest));
      const thereBytes = there.reduce((a, i) => a + i.size, 0);
      const images_ = images.length === 0 ? 1 : there.length / images.length;
      const bytes = totalBytes === 0 ? 1 : thereBytes / totalBytes;
      return {
        name: st.peer.name,
        kind: st.peer.kind,
        url: st.peer.url,
        pending: st.outbox.pending,
        lagSeconds: oldest === undefined ? 0 : Math.round((now - oldest) / 100) / 10,
        lastSuccess: st.lastSuccess === undefined ? null : new Date(st.lastSuccess).toISOString(),
        lastError: st.lastError === undefined ? null : { at: new Date(st.lastError.at).toISOString(), message: st.lastError.message },
        backingOff: st.backoffUntil > now,
        readiness: { images: round3(images_), bytes: round3(bytes) },
      };
    });
    return { region: this.d.config.region, peers };
  }

  /** Stop the workers (jobs in flight are aborted and stay queued), write what is pending. */
  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    for (const st of this.peers) await st.client.close();
    // Requests to peers are aborted; a job pulling through the normal path (bounded by the
    // upstream's timeouts) is not waited for long: its job stays queued and runs after restart.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.allSettled([...this.inflight]), new Promise<void>((r) => (timer = setTimeout(r, 5000)))]);
    clearTimeout(timer);
    for (const st of this.peers) await st.outbox.flush();
  }
}

const round3 = (x: number) => Math.round(x * 1000) / 1000;
