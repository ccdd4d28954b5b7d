// The owner of the cache's metadata: which repository may see which digest, the media type
// of each cached manifest, and tag -> digest records. Held in memory, persisted as an
// append-only journal (index/journal.jsonl) that is replayed and compacted at start-up.
// A torn last line (crash mid-append) is skipped; a link whose blob is missing is harmless
// (the blob is simply filled again).
import { createWriteStream, type WriteStream } from 'node:fs';
import fs from 'node:fs/promises';
import type { Logger } from '../logger.ts';
import type { CacheLayout } from './layout.ts';

export interface TagRecord {
  digest: string;
  mediaType: string;
  /** When the upstream last confirmed this digest for the tag (ms since epoch). */
  checkedAt: number;
}

export interface ManifestMeta {
  mediaType: string;
  size: number;
}

type JournalRecord =
  | { t: 'link'; r: string; n: string; d: string }
  | { t: 'manifest'; d: string; mt: string; size: number }
  | { t: 'tag'; r: string; n: string; tag: string; d: string; mt: string; at: number };

const repoKey = (registry: string, name: string) => `${registry}/${name}`;

export class CacheIndex {
  private readonly links = new Map<string, Set<string>>();
  private readonly manifests = new Map<string, ManifestMeta>();
  private readonly tags = new Map<string, Map<string, TagRecord>>();
  private journal: WriteStream | undefined;

  constructor(
    private readonly layout: CacheLayout,
    private readonly logger: Logger,
  ) {}

  async init(): Promise<{ records: number; skipped: number }> {
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
        this.apply(JSON.parse(line) as JournalRecord);
        records++;
      } catch {
        skipped++;
      }
    }
    if (skipped > 0) this.logger.warn({ skipped }, 'skipped unreadable index journal lines');
    await this.compact();
    this.journal = createWriteStream(this.layout.journalFile, { flags: 'a' });
    this.journal.on('error', (err) => this.logger.error({ err }, 'index journal write failed'));
    return { records, skipped };
  }

  /** Rewrite the journal with only the live records (tmp + rename, so a crash keeps the old one). */
  private async compact(): Promise<void> {
    const lines: string[] = [];
    for (const [d, m] of this.manifests) lines.push(JSON.stringify({ t: 'manifest', d, mt: m.mediaType, size: m.size }));
    for (const [key, set] of this.links) {
      const slash = key.indexOf('/');
      const r = key.slice(0, slash);
      const n = key.slice(slash + 1);
      for (const d of set) lines.push(JSON.stringify({ t: 'link', r, n, d }));
    }
    for (const [key, tags] of this.tags) {
      const slash = key.indexOf('/');
      const r = key.slice(0, slash);
      const n = key.slice(slash + 1);
      for (const [tag, rec] of tags) lines.push(JSON.stringify({ t: 'tag', r, n, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt }));
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
      case 'manifest':
        this.manifests.set(rec.d, { mediaType: rec.mt, size: rec.size });
        break;
      case 'tag': {
        const k = repoKey(rec.r, rec.n);
        let m = this.tags.get(k);
        if (!m) this.tags.set(k, (m = new Map()));
        m.set(rec.tag, { digest: rec.d, mediaType: rec.mt, checkedAt: rec.at });
        break;
      }
      default:
        throw new Error('unknown record');
    }
  }

  private append(rec: JournalRecord): void {
    this.apply(rec);
    this.journal?.write(JSON.stringify(rec) + '\n');
  }

  isLinked(registry: string, name: string, digest: string): boolean {
    return this.links.get(repoKey(registry, name))?.has(digest) ?? false;
  }

  link(registry: string, name: string, digest: string): void {
    if (!this.isLinked(registry, name, digest)) this.append({ t: 'link', r: registry, n: name, d: digest });
  }

  manifestMeta(digest: string): ManifestMeta | undefined {
    return this.manifests.get(digest);
  }

  recordManifest(digest: string, mediaType: string, size: number): void {
    const cur = this.manifests.get(digest);
    if (!cur || cur.mediaType !== mediaType) this.append({ t: 'manifest', d: digest, mt: mediaType, size });
  }

  tag(registry: string, name: string, tag: string): TagRecord | undefined {
    return this.tags.get(repoKey(registry, name))?.get(tag);
  }

  tagsOf(registry: string, name: string): string[] {
    return [...(this.tags.get(repoKey(registry, name))?.keys() ?? [])].sort();
  }

  setTag(registry: string, name: string, tag: string, rec: TagRecord): void {
    this.append({ t: 'tag', r: registry, n: name, tag, d: rec.digest, mt: rec.mediaType, at: rec.checkedAt });
  }

  async close(): Promise<void> {
    const j = this.journal;
    this.journal = undefined;
    if (j) await new Promise<void>((resolve) => j.end(resolve));
  }
}
