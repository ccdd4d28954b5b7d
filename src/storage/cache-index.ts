// The owner of the cache's metadata: which repository may see which digest, each cached
// manifest's media type and references, tag -> digest records, tag history, pins and frozen
// tags. Held in memory, persisted as an append-only journal (index/journal.jsonl) that is
// replayed and compacted at start-up. A torn last line (crash mid-append) is skipped; a
// link whose blob is missing is harmless (the blob is simply filled again).
import { createWriteStream, type WriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { Logger } from '../logger.ts';
import { isDigest, type Digest } from '../oci/digest.ts';
import type { CacheLayout } from './layout.ts';

export interface TagRecord {
  digest: Digest;
  mediaType: string;
  /** When the upstream last confirmed this digest for the tag (ms since epoch). */
  checkedAt: number;
}

export interface ManifestMeta {
  mediaType: string;
  size: number;
  /** Digests this manifest references: blobs, and child manifests for an index. */
  refs: Digest[];
}

export interface HistoryRecord {
  time: number;
  registry: string;
  repository: string;
  tag: string;
  oldDigest: Digest | null;
  newDigest: Digest;
  source: 'upstream' | 'freeze' | 'unfreeze';
}

export interface PinRecord {
  /** The image reference as given (normalised), e.g. docker.io/library/alpine:3.19. */
  ref: string;
  registry: string;
  repository: string;
  digests: Digest[];
  createdAt: number;
}

export interface FreezeRecord {
  digest: Digest;
  at: number;
}

type JournalRecord =
  | { t: 'link'; r: string; n: string; d: Digest }
  | { t: 'unlink'; r: string; n: string; d?: Digest }
  | { t: 'manifest'; d: Digest; mt: string; size: number; refs?: Digest[] }
  | { t: 'unmanifest'; d: Digest }
  | { t: 'tag'; r: string; n: string; tag: string; d: Digest; mt: string; at: number }
  | { t: 'untag'; r: string; n: string; tag: string }
  | { t: 'hist'; r: string; n: string; tag: string; from: Digest | null; to: Digest; at: number; src: HistoryRecord['source'] }
  | { t: 'pin'; ref: string; r: string; n: string; ds: Digest[]; at: number }
  | { t: 'unpin'; ref: string }
  | { t: 'freeze'; r: string; n: string; tag: string; d: Digest; at: number }
  | { t: 'unfreeze'; r: string; n: string; tag: string };

const repoKey = (registry: string, name: string) => `${registry}/${name}`;
const splitKey = (key: string): [string, string] => {
  const slash = key.indexOf('/');
  return [key.slice(0, slash), key.slice(slash + 1)];
};
const MAX_HISTORY_PER_REPO = 1000;

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
  private journal: WriteStream | undefined;
  private journalRetryAt = 0;
  private closed = false;

  constructor(
    private readonly layout: CacheLayout,
    private readonly logger: Logger,
  ) {}

  /** Replay the journal; `present(digest)` drops manifest records whose content is gone. */
  async init(present: (digest: Digest) => boolean = () => true): Promise<{ records: number; skipped: number }> {
    await fs.mkdir(this.layout.indexDir, { recursive: true });
    let text = '';
    try {
      text = await fs.readFile(this.layout.journalFile, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    let records = 0;
    let skipped = 0;
    for (const line of text.split('\n')) {
      if (!line) continue;
      try {
        this.apply(checkedRecord(JSON.parse(line)));
        records++;
      } catch {
        skipped++;
      }
    }
    if (skipped > 0) this.logger.warn({ skipped }, 'skipped unreadable index journal lines');
    for (const d of [...this.manifests.keys()]) if (!present(d)) this.apply({ t: 'unmanifest', d });
    await this.compact();
    this.openJournal();
    return { records, skipped };
  }

  /** Rewrite the journal with only the live records (tmp + rename, so a crash keeps the old one). */
  private async compact(): Promise<void> {
    const lines: string[] = [];
    const out = (r: JournalRecord) => lines.push(JSON.stringify(r));
    for (const [d, m] of this.manifests) out({ t: 'manifest', d, mt: m.mediaType, size: m.size, refs: m.refs });
    for (const [key, set] of this.links) {
      const [r, n] = splitKey(key);
      for (const d of set) out({ t: 'link', r, n, d });
    }
    for (const [key, tags] of this.tags) {
      const [r, n] = splitKey(key);
      for (const [tag, rec] of tags) out({ t: 'tag', r, n, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt });
    }
    for (const list of this.history.values()) {
      for (const h of list) out({ t: 'hist', r: h.registry, n: h.repository, tag: h.tag, from: h.oldDigest, to: h.newDigest, at: h.time, src: h.source });
    }
    for (const p of this.pins.values()) out({ t: 'pin', ref: p.ref, r: p.registry, n: p.repository, ds: p.digests, at: p.createdAt });
    for (const [key, m] of this.freezes) {
      const [r, n] = splitKey(key);
      for (const [tag, f] of m) out({ t: 'freeze', r, n, tag, d: f.digest, at: f.at });
    }
    const tmp = `${this.layout.journalFile}.compact`;
    await fs.writeFile(tmp, lines.length ? lines.join('\n') + '\n' : '');
    await fs.rename(tmp, this.layout.journalFile);
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

  private openJournal(): void {
    const j = createWriteStream(this.layout.journalFile, { flags: 'a' });
    j.on('error', (err) => {
      // ENOSPC and friends: keep serving from memory, retry the journal a little later.
      this.logger.error({ err }, 'index journal write failed; metadata kept in memory');
      if (this.journal === j) this.journal = undefined;
      this.journalRetryAt = Date.now() + 5000;
    });
    this.journal = j;
  }

  private append(rec: JournalRecord): void {
    this.apply(rec);
    if (!this.journal && !this.closed && Date.now() >= this.journalRetryAt) this.openJournal();
    this.journal?.write(JSON.stringify(rec) + '\n');
  }

  // ---- links -------------------------------------------------------------------------

  isLinked(registry: string, name: string, digest: Digest): boolean {
    return this.links.get(repoKey(registry, name))?.has(digest) ?? false;
  }

  link(registry: string, name: string, digest: Digest): void {
    if (!this.isLinked(registry, name, digest)) this.append({ t: 'link', r: registry, n: name, d: digest });
  }

  unlink(registry: string, name: string, digest?: Digest): void {
    this.append(digest === undefined ? { t: 'unlink', r: registry, n: name } : { t: 'unlink', r: registry, n: name, d: digest });
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

  recordManifest(digest: Digest, mediaType: string, size: number, refs: Digest[] = []): void {
    const cur = this.manifests.get(digest);
    if (!cur || cur.mediaType !== mediaType || cur.refs.length !== refs.length) this.append({ t: 'manifest', d: digest, mt: mediaType, size, refs });
  }

  /** The manifest's content is gone (evicted, purged): forget what it referenced. */
  forgetManifest(digest: Digest): void {
    if (this.manifests.has(digest)) this.append({ t: 'unmanifest', d: digest });
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

  /** Record what the upstream says a tag points to; a changed digest goes into the history. */
  setTag(registry: string, name: string, tag: string, rec: TagRecord, now = Date.now()): void {
    const prev = this.tag(registry, name, tag);
    if (!prev || prev.digest !== rec.digest) this.appendHistory(registry, name, tag, prev?.digest ?? null, rec.digest, 'upstream', now);
    this.append({ t: 'tag', r: registry, n: name, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt });
  }

  untag(registry: string, name: string, tag: string): void {
    this.append({ t: 'untag', r: registry, n: name, tag });
  }

  private appendHistory(registry: string, name: string, tag: string, from: Digest | null, to: Digest, src: HistoryRecord['source'], at: number): void {
    this.append({ t: 'hist', r: registry, n: name, tag, from, to, at, src });
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

  freeze(registry: string, name: string, tag: string, digest: Digest, now = Date.now()): void {
    const current = this.frozen(registry, name, tag)?.digest ?? this.tag(registry, name, tag)?.digest ?? null;
    this.append({ t: 'freeze', r: registry, n: name, tag, d: digest, at: now });
    if (current !== digest) this.appendHistory(registry, name, tag, current, digest, 'freeze', now);
  }

  unfreeze(registry: string, name: string, tag: string, now = Date.now()): boolean {
    const f = this.frozen(registry, name, tag);
    if (!f) return false;
    this.append({ t: 'unfreeze', r: registry, n: name, tag });
    const upstream = this.tag(registry, name, tag)?.digest;
    if (upstream && upstream !== f.digest) this.appendHistory(registry, name, tag, f.digest, upstream, 'unfreeze', now);
    return true;
  }

  // ---- pins --------------------------------------------------------------------------

  pin(rec: PinRecord): void {
    this.append({ t: 'pin', ref: rec.ref, r: rec.registry, n: rec.repository, ds: rec.digests, at: rec.createdAt });
  }

  unpin(ref: string): boolean {
    if (!this.pins.has(ref)) return false;
    this.append({ t: 'unpin', ref });
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

  async close(): Promise<void> {
    this.closed = true;
    const j = this.journal;
    this.journal = undefined;
    if (j) await new Promise<void>((resolve) => j.end(resolve));
  }
}

function bump(m: Map<Digest, number>, key: Digest, delta: 1 | -1): void {
  const n = (m.get(key) ?? 0) + delta;
  if (n <= 0) m.delete(key);
  else m.set(key, n);
}

/**
 * A journal line as parsed JSON, checked before it is applied: every digest field must be a
 * valid digest (a hand-edited or corrupted journal cannot put a path into a file name).
 */
function checkedRecord(v: unknown): JournalRecord {
  if (typeof v !== 'object' || v === null) throw new Error('not a record');
  const r = v as Record<string, unknown>;
  const digestField = (x: unknown) => x === undefined || x === null || (typeof x === 'string' && isDigest(x));
  const digestList = (x: unknown) => x === undefined || (Array.isArray(x) && x.every((e) => typeof e === 'string' && isDigest(e)));
  if (!digestField(r.d) || !digestField(r.from) || !digestField(r.to) || !digestList(r.refs) || !digestList(r.ds)) {
    throw new Error('record with an invalid digest');
  }
  return r as unknown as JournalRecord;
}
