// The owner of the cache's metadata: which repository may see which digest, each cached
// manifest's media type and references, tag -> digest records, tag history, pins and frozen
// tags. Held in memory, persisted as an append-only journal (index/journal.jsonl, file side in
// journal.ts) that is replayed and compacted at start-up and compacted again online when it has
// grown. A torn last line (crash mid-append) is skipped; a link whose blob is missing is
// harmless (the blob is simply filled again). Admin operations (pin, freeze, untag, ...) return
// a promise that rejects when their journal write failed; pull-path writes (link, tag, manifest)
// are fire-and-forget, logged and counted in `journalFailures` when they fail.
import fs from 'node:fs/promises';
import type { Logger } from '../logger.ts';
import type { Digest } from '../oci/digest.ts';
import type { FreezeRecord, HistoryRecord, ManifestMeta, PinRecord, TagRecord } from './index-records.ts';
import { Journal, type JournalRecord } from './journal.ts';
import type { CacheLayout } from './layout.ts';

export type { FreezeRecord, HistoryRecord, ManifestMeta, PinRecord, TagRecord } from './index-records.ts';

const repoKey = (registry: string, name: string) => `${registry}/${name}`;
const splitKey = (key: string): [string, string] => {
  const slash = key.indexOf('/');
  return [key.slice(0, slash), key.slice(slash + 1)];
};
const MAX_HISTORY_PER_REPO = 1000;
/**
 * A revalidation that confirms a tag's digest only moves checkedAt in memory; it is written
 * when the persisted check is older than this (and by every compaction). After a restart a tag
 * whose last confirmation was not persisted is just revalidated once more.
 */
const PERSIST_CHECK_EVERY_MS = 60 * 60 * 1000;

export class CacheIndex {
  private readonly links = new Map<string, Set<Digest>>();
  private readonly manifests = new Map<Digest, ManifestMeta>();
  /** How many cached manifests reference each digest. */
  private readonly refCounts = new Map<Digest, number>();
  private readonly tags = new Map<string, Map<string, TagRecord>>();
  private readonly history = new Map<string, HistoryRecord[]>();
  private readonly pins = new Map<string, PinRecord>();
  private readonly pinCounts = new Map<Digest, number>();
  private readonly freezes = new Map<string, Map<string, FreezeRecord>>();
  /** checkedAt of each tag as last written to the journal, keyed like `tags` plus the tag. */
  private readonly persistedCheck = new Map<string, number>();
  private readonly journal: Journal;
  /** Journal writes that failed (pull-path ones are only logged: this counts them). */
  journalFailures = 0;
  /** Called on each failed journal write (the metrics counter). */
  onJournalFailure: () => void = () => undefined;
  /** Called when a repository is newly linked to a digest (the region's shared metadata writes it to the bucket). */
  onLinked: (registry: string, name: string, digest: Digest) => void = () => undefined;
  /** Called when a tag's digest is confirmed again with a later checkedAt (the region's shared tag record is refreshed). */
  onTagConfirmed: (registry: string, name: string, tag: string, rec: TagRecord) => void = () => undefined;

  constructor(
    private readonly layout: CacheLayout,
    private readonly logger: Logger,
  ) {
    this.journal = new Journal(layout.journalFile);
  }

  /** Replay the journal; `present(digest)` drops manifest records whose content is gone. */
  async init(present: (digest: Digest) => boolean = () => true): Promise<{ records: number; skipped: number }> {
    await fs.mkdir(this.layout.indexDir, { recursive: true });
    const result = await this.journal.replay((rec) => this.apply(rec));
    if (result.skipped > 0) this.logger.warn({ skipped: result.skipped }, 'skipped unreadable index journal lines');
    for (const d of [...this.manifests.keys()]) if (!present(d)) this.apply({ t: 'unmanifest', d });
    await this.compact();
    return result;
  }

  /** Rewrite the journal with only the live records (see Journal.compact). */
  compact(): Promise<void> {
    return this.journal.compact(() => this.liveLines());
  }

  /** The journal's size in bytes (for tests and stats). */
  get journalBytes(): number {
    return this.journal.size;
  }

  private liveLines(): string[] {
    const lines: string[] = [];
    const out = (r: JournalRecord) => lines.push(JSON.stringify(r));
    for (const [d, m] of this.manifests) out({ t: 'manifest', d, mt: m.mediaType, size: m.size, refs: m.refs });
    for (const [key, set] of this.links) {
      const [r, n] = splitKey(key);
      for (const d of set) out({ t: 'link', r, n, d });
    }
    for (const [key, tags] of this.tags) {
      const [r, n] = splitKey(key);
      for (const [tag, rec] of tags) {
        out({ t: 'tag', r, n, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt });
        this.persistedCheck.set(`${key}\0${tag}`, rec.checkedAt);
      }
    }
    for (const list of this.history.values()) {
      for (const h of list) out({ t: 'hist', r: h.registry, n: h.repository, tag: h.tag, from: h.oldDigest, to: h.newDigest, at: h.time, src: h.source });
    }
    for (const p of this.pins.values()) out({ t: 'pin', ref: p.ref, r: p.registry, n: p.repository, ds: p.digests, at: p.createdAt });
    for (const [key, m] of this.freezes) {
      const [r, n] = splitKey(key);
      for (const [tag, f] of m) out({ t: 'freeze', r, n, tag, d: f.digest, at: f.at });
    }
    return lines;
  }

  private apply(rec: JournalRecord): void {
    switch (rec.t) {
      case 'link': {
        const k = repoKey(rec.r, rec.n);
        let set = this.links.get(k);
        if (!set) this.links.set(k, (set = new Set()));
        set.add(rec.d);
        break;
      }
      case 'unlink': {
        const k = repoKey(rec.r, rec.n);
        if (rec.d === undefined) this.links.delete(k);
        else this.links.get(k)?.delete(rec.d);
        break;
      }
      case 'manifest': {
        const prev = this.manifests.get(rec.d);
        if (prev) this.countRefs(prev.refs, -1);
        const refs = rec.refs ?? [];
        this.manifests.set(rec.d, { mediaType: rec.mt, size: rec.size, refs });
        this.countRefs(refs, +1);
        break;
      }
      case 'unmanifest': {
        const prev = this.manifests.get(rec.d);
        if (prev) {
          this.countRefs(prev.refs, -1);
          this.manifests.delete(rec.d);
        }
        break;
      }
      case 'tag': {
        const k = repoKey(rec.r, rec.n);
        let m = this.tags.get(k);
        if (!m) this.tags.set(k, (m = new Map()));
        m.set(rec.tag, { digest: rec.d, mediaType: rec.mt, checkedAt: rec.at });
        break;
      }
      case 'untag': {
        const k = repoKey(rec.r, rec.n);
        this.tags.get(k)?.delete(rec.tag);
        break;
      }
      case 'hist': {
        const k = repoKey(rec.r, rec.n);
        let list = this.history.get(k);
        if (!list) this.history.set(k, (list = []));
        list.push({ time: rec.at, registry: rec.r, repository: rec.n, tag: rec.tag, oldDigest: rec.from, newDigest: rec.to, source: rec.src });
        if (list.length > MAX_HISTORY_PER_REPO) list.splice(0, list.length - MAX_HISTORY_PER_REPO);
        break;
      }
      case 'pin': {
        const prev = this.pins.get(rec.ref);
        if (prev) this.countPins(prev.digests, -1);
        this.pins.set(rec.ref, { ref: rec.ref, registry: rec.r, repository: rec.n, digests: rec.ds, createdAt: rec.at });
        this.countPins(rec.ds, +1);
        break;
      }
      case 'unpin': {
        const prev = this.pins.get(rec.ref);
        if (prev) {
          this.countPins(prev.digests, -1);
          this.pins.delete(rec.ref);
        }
        break;
      }
      case 'freeze': {
        const k = repoKey(rec.r, rec.n);
        let m = this.freezes.get(k);
        if (!m) this.freezes.set(k, (m = new Map()));
        m.set(rec.tag, { digest: rec.d, at: rec.at });
        break;
      }
      case 'unfreeze':
        this.freezes.get(repoKey(rec.r, rec.n))?.delete(rec.tag);
        break;
      default:
        throw new Error('unknown record');
    }
  }

  private countRefs(refs: Digest[], delta: 1 | -1): void {
    for (const d of refs) bump(this.refCounts, d, delta);
  }

  private countPins(digests: Digest[], delta: 1 | -1): void {
    for (const d of digests) bump(this.pinCounts, d, delta);
  }

  /** Apply a record and write it; the promise rejects when the write failed. */
  private append(rec: JournalRecord): Promise<void> {
    this.apply(rec);
    const written = this.journal.append(rec);
    if (this.journal.wantsCompaction) {
      this.compact().catch((err: unknown) => this.logger.error({ err }, 'online index journal compaction failed'));
    }
    return written.catch((err: unknown) => {
      this.journalFailures++;
      this.onJournalFailure();
      this.logger.error({ err, record: rec.t }, 'index journal write failed; metadata kept in memory only');
      throw err;
    });
  }

  /** For pull-path records: a failure is logged and counted by append(), nobody waits on it. */
  private appendQuietly(rec: JournalRecord): void {
    this.append(rec).catch(() => undefined);
  }

  // ---- links -------------------------------------------------------------------------

  isLinked(registry: string, name: string, digest: Digest): boolean {
    return this.links.get(repoKey(registry, name))?.has(digest) ?? false;
  }

  link(registry: string, name: string, digest: Digest): void {
    if (this.isLinked(registry, name, digest)) return;
    this.appendQuietly({ t: 'link', r: registry, n: name, d: digest });
    this.onLinked(registry, name, digest);
  }

  unlink(registry: string, name: string, digest?: Digest): Promise<void> {
    return this.append(digest === undefined ? { t: 'unlink', r: registry, n: name } : { t: 'unlink', r: registry, n: name, d: digest });
  }

  /** Whether any repository other than (registry, name) links the digest. */
  linkedElsewhere(digest: Digest, registry: string, name: string): boolean {
    const own = repoKey(registry, name);
    for (const [k, set] of this.links) if (k !== own && set.has(digest)) return true;
    return false;
  }

  repositories(): Array<{ registry: string; repository: string }> {
    const keys = new Set([...this.links.keys(), ...this.tags.keys()]);
    return [...keys].sort().map((k) => {
      const [registry, repository] = splitKey(k);
      return { registry, repository };
    });
  }

  linksOf(registry: string, name: string): Digest[] {
    return [...(this.links.get(repoKey(registry, name)) ?? [])];
  }

  // ---- manifests ---------------------------------------------------------------------

  manifestMeta(digest: Digest): ManifestMeta | undefined {
    return this.manifests.get(digest);
  }

  /**
   * Resolves once the record is in the journal (or its write failed: counted, kept in memory).
   * Callers that commit the manifest's file await it first, so a kill -9 between the two never
   * leaves a manifest file the journal does not know (a record without its file is dropped at start).
   */
  recordManifest(digest: Digest, mediaType: string, size: number, refs: Digest[] = []): Promise<void> {
    const cur = this.manifests.get(digest);
    if (cur && cur.mediaType === mediaType && cur.refs.length === refs.length) return Promise.resolve();
    return this.append({ t: 'manifest', d: digest, mt: mediaType, size, refs }).catch(() => undefined);
  }

  /** The manifest's content is gone (evicted, purged): forget what it referenced. */
  forgetManifest(digest: Digest): void {
    if (this.manifests.has(digest)) this.appendQuietly({ t: 'unmanifest', d: digest });
  }

  isManifest(digest: Digest): boolean {
    return this.manifests.has(digest);
  }

  /** Referenced by some cached manifest, or the target of some tag. */
  isReferenced(digest: Digest): boolean {
    if ((this.refCounts.get(digest) ?? 0) > 0) return true;
    if (this.manifests.has(digest)) {
      for (const m of this.tags.values()) for (const t of m.values()) if (t.digest === digest) return true;
    }
    return false;
  }

  // ---- tags and history --------------------------------------------------------------

  tag(registry: string, name: string, tag: string): TagRecord | undefined {
    return this.tags.get(repoKey(registry, name))?.get(tag);
  }

  tagsOf(registry: string, name: string): string[] {
    return [...(this.tags.get(repoKey(registry, name))?.keys() ?? [])].sort();
  }

  tagRecordsOf(registry: string, name: string): Array<[string, TagRecord]> {
    return [...(this.tags.get(repoKey(registry, name)) ?? new Map<string, TagRecord>()).entries()];
  }

  /**
   * Record what the upstream says a tag points to; a changed digest goes into the history. A
   * revalidation confirming the same digest and media type only moves checkedAt in memory,
   * persisted at most once per PERSIST_CHECK_EVERY_MS (so the journal does not grow per check).
   */
  setTag(registry: string, name: string, tag: string, rec: TagRecord, now = Date.now()): void {
    this.recordTag(registry, name, tag, rec, now, 'upstream');
  }

  private recordTag(registry: string, name: string, tag: string, rec: TagRecord, now: number, src: 'upstream' | 'replication'): void {
    const prev = this.tag(registry, name, tag);
    const key = `${repoKey(registry, name)}\0${tag}`;
    if (prev && prev.digest === rec.digest && prev.mediaType === rec.mediaType) {
      const advanced = rec.checkedAt > prev.checkedAt;
      prev.checkedAt = Math.max(prev.checkedAt, rec.checkedAt);
      if (advanced) this.onTagConfirmed(registry, name, tag, { ...prev });
      if (prev.checkedAt - (this.persistedCheck.get(key) ?? 0) < PERSIST_CHECK_EVERY_MS) return;
    } else if (!prev || prev.digest !== rec.digest) {
      this.appendQuietly({ t: 'hist', r: registry, n: name, tag, from: prev?.digest ?? null, to: rec.digest, at: now, src });
    }
    this.persistedCheck.set(key, rec.checkedAt);
    this.appendQuietly({ t: 'tag', r: registry, n: name, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt });
  }

  /**
   * A tag resolution received from a replication peer: applied only when it is newer than the
   * recorded one (an older resolution never overwrites a newer one; on equal times the larger
   * digest wins, so every region ends with the same). Returns whether it was applied.
   */
  setTagIfNewer(registry: string, name: string, tag: string, rec: TagRecord, now = Date.now()): boolean {
    const prev = this.tag(registry, name, tag);
    if (prev && (prev.checkedAt > rec.checkedAt || (prev.checkedAt === rec.checkedAt && prev.digest >= rec.digest))) return false;
    this.recordTag(registry, name, tag, rec, now, 'replication');
    return true;
  }

  untag(registry: string, name: string, tag: string): Promise<void> {
    this.persistedCheck.delete(`${repoKey(registry, name)}\0${tag}`);
    return this.append({ t: 'untag', r: registry, n: name, tag });
  }

  private appendHistory(registry: string, name: string, tag: string, from: Digest | null, to: Digest, src: HistoryRecord['source'], at: number): Promise<void> {
    return this.append({ t: 'hist', r: registry, n: name, tag, from, to, at, src });
  }

  historyOf(registry: string, name: string, tag?: string): HistoryRecord[] {
    const list = this.history.get(repoKey(registry, name)) ?? [];
    return tag === undefined ? [...list] : list.filter((h) => h.tag === tag);
  }

  // ---- freezes -----------------------------------------------------------------------

  frozen(registry: string, name: string, tag: string): FreezeRecord | undefined {
    return this.freezes.get(repoKey(registry, name))?.get(tag);
  }

  frozenTagsOf(registry: string, name: string): Array<[string, FreezeRecord]> {
    return [...(this.freezes.get(repoKey(registry, name)) ?? new Map<string, FreezeRecord>()).entries()];
  }

  /** Every frozen tag (the region's shared metadata syncs them with the bucket). */
  allFreezes(): Array<{ registry: string; repository: string; tag: string; rec: FreezeRecord }> {
    const out: Array<{ registry: string; repository: string; tag: string; rec: FreezeRecord }> = [];
    for (const [key, m] of this.freezes) {
      const [registry, repository] = splitKey(key);
      for (const [tag, rec] of m) out.push({ registry, repository, tag, rec });
    }
    return out;
  }

  /** Resolves once written; rejects when the journal write failed (the freeze would not survive a restart). */
  async freeze(registry: string, name: string, tag: string, digest: Digest, now = Date.now()): Promise<void> {
    const current = this.frozen(registry, name, tag)?.digest ?? this.tag(registry, name, tag)?.digest ?? null;
    const written = [this.append({ t: 'freeze', r: registry, n: name, tag, d: digest, at: now })];
    if (current !== digest) written.push(this.appendHistory(registry, name, tag, current, digest, 'freeze', now));
    await Promise.all(written);
  }

  async unfreeze(registry: string, name: string, tag: string, now = Date.now()): Promise<boolean> {
    const f = this.frozen(registry, name, tag);
    if (!f) return false;
    const written = [this.append({ t: 'unfreeze', r: registry, n: name, tag })];
    const upstream = this.tag(registry, name, tag)?.digest;
    if (upstream && upstream !== f.digest) written.push(this.appendHistory(registry, name, tag, f.digest, upstream, 'unfreeze', now));
    await Promise.all(written);
    return true;
  }

  // ---- pins --------------------------------------------------------------------------

  pin(rec: PinRecord): Promise<void> {
    return this.append({ t: 'pin', ref: rec.ref, r: rec.registry, n: rec.repository, ds: rec.digests, at: rec.createdAt });
  }

  async unpin(ref: string): Promise<boolean> {
    if (!this.pins.has(ref)) return false;
    await this.append({ t: 'unpin', ref });
    return true;
  }

  isPinned(digest: Digest): boolean {
    return (this.pinCounts.get(digest) ?? 0) > 0;
  }

  pinsOf(registry: string, name: string): PinRecord[] {
    return [...this.pins.values()].filter((p) => p.registry === registry && p.repository === name);
  }

  allPins(): PinRecord[] {
    return [...this.pins.values()];
  }

  /** Wait for pending journal writes (and a running compaction); appends after this still work. */
  async close(): Promise<void> {
    await this.journal.flush();
  }
}

function bump(m: Map<Digest, number>, key: Digest, delta: 1 | -1): void {
  const n = (m.get(key) ?? 0) + delta;
  if (n <= 0) m.delete(key);
  else m.set(key, n);
}
