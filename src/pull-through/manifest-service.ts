// Serves manifests. By digest: immutable, served from cache once verified. By tag: cached for
// the registry's tagTTL, then revalidated with a HEAD upstream (HEAD does not count against
// Docker Hub's pull limit) and re-fetched with a GET only when the digest changed; served
// stale when the upstream cannot answer. Every manifest's sha256 is checked before caching.
// Misses are read through the SourceChain (upstream, failover peers): a tag a failover peer
// answered is served as stale and recorded with the resolution time the peer gave (if any), so
// the next request asks the upstream again.
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { CacheResult, Metrics } from '../metrics.ts';
import { MT, accepts, guessManifestMediaType, parseManifest } from '../oci/media-types.ts';
import { digestOf, isDigest, parseDigest, type Digest } from '../oci/digest.ts';
import type { CacheIndex, ManifestMeta } from '../storage/cache-index.ts';
import type { BlobStore } from '../storage/blob-store.ts';
import type { DiskHealth } from '../storage/disk-health.ts';
import type { Evictor } from '../storage/evictor.ts';
import type { MemoryCache } from '../storage/memory-cache.ts';
import type { RegistryClient } from '../upstream/registry-client.ts';
import { isOutage } from './upstream-errors.ts';
import { SourceChain, scopeOf } from '../sources/source-chain.ts';
import type { ContentSource, ManifestHead, RawManifest } from '../sources/content-source.ts';
import type { ContentVia } from '../cache-events.ts';
import type { NegativeCache } from './negative-cache.ts';
import type { CacheEvents } from '../cache-events.ts';

export interface ManifestRequest {
  registry: string;
  repository: string;
  /** A tag or a sha256 digest (validated by the route). */
  reference: string;
  accept: string[];
  /** A peer region's failover read: answered from this cache and the upstream only (no loops between regions). */
  forPeer?: boolean;
  /** A cluster member's read (cluster token): not passed to the region's shared tiers (BlobRequest.forMember). */
  forMember?: boolean;
}

export interface ManifestResponse {
  digest: Digest;
  mediaType: string;
  body: Buffer;
  cache: CacheResult;
  /** By tag: when the tag's digest was last confirmed upstream (sent to cluster members as Ocirelay-Resolved-At). */
  resolvedAt?: number;
}

export interface ManifestServiceDeps {
  disk: BlobStore;
  memory: MemoryCache;
  index: CacheIndex;
  /** Where misses are read from (upstream, failover peers). */
  sources?: SourceChain;
  /** Without `sources`: the upstreams alone. */
  upstreams?: ReadonlyMap<string, RegistryClient>;
  evictor: Evictor;
  health: DiskHealth;
  tagTtlMs: (registry: string) => number;
  /** Recent upstream 404s, answered without asking again; absent: every miss asks. */
  negative?: NegativeCache;
  /** Told of every stored manifest and every tag that resolved to a new digest (replication). */
  events?: CacheEvents;
  metrics: Metrics;
  logger: Logger;
  now?: () => number;
}

interface Fetched {
  digest: Digest;
  mediaType: string;
  body: Buffer;
  /** Which kind of source answered ('failover': a peer). */
  via: ContentVia;
  /** By tag: the resolution time recorded for it. */
  resolvedAt?: number;
}

/** A manifest a source sent, verified and parsed. */
interface Checked {
  raw: RawManifest;
  digest: Digest;
  mediaType: string;
  childRefs: Digest[];
}

const MANIFEST_TYPES: ReadonlySet<string> = new Set(Object.values(MT));

/**
 * The type a manifest is served with: what it says it is (its mediaType field), else the
 * upstream's Content-Type when that names a manifest type, else its shape. Never an arbitrary
 * upstream type (e.g. text/html), which would reach every client of the cache.
 */
function mediaTypeOf(contentType: string | undefined, body: Buffer): string {
  let declared: string | undefined;
  try {
    declared = parseManifest(body).mediaType;
  } catch {
    declared = undefined; // not a JSON object: judged by the rules below
  }
  if (declared !== undefined && MANIFEST_TYPES.has(declared)) return declared;
  const ct = contentType?.split(';')[0]?.trim().toLowerCase();
  if (ct && MANIFEST_TYPES.has(ct)) return ct;
  const guessed = guessManifestMediaType(body);
  return MANIFEST_TYPES.has(guessed) ? guessed : MT.ociManifest;
}

export class ManifestService {
  private readonly inFlight = new Map<string, Promise<Fetched>>();
  /** Manifests being written to disk (served from memory meanwhile). */
  private readonly storing = new Map<string, ManifestMeta>();
  private readonly writes = new Set<Promise<void>>();
  private readonly now: () => number;
  private readonly sources: SourceChain;

  constructor(private readonly d: ManifestServiceDeps) {
    this.now = d.now ?? Date.now;
    this.sources = d.sources ?? SourceChain.ofClients(d.upstreams ?? new Map(), d.metrics, d.logger);
  }

  /** The cached bytes of a manifest, if held and readable. */
  private async cached(digest: Digest): Promise<Buffer | undefined> {
    const mem = this.d.memory.get(digest);
    if (mem) {
      this.d.disk.touch(digest);
      return mem;
    }
    const b = await this.d.disk.read(digest);
    if (b) this.d.memory.set(digest, b);
    return b;
  }

  /** Wait for manifest writes in progress (shutdown). */
  async flush(): Promise<void> {
    await Promise.all([...this.writes]);
  }

  async get(req: ManifestRequest): Promise<ManifestResponse> {
    const digest = parseDigest(req.reference);
    return digest !== undefined ? this.byDigest(req, digest) : this.byTag(req);
  }

  private async byDigest(req: ManifestRequest, digest: Digest): Promise<ManifestResponse> {
    const { index } = this.d;
    const meta = index.manifestMeta(digest) ?? this.storing.get(digest);
    let linked = index.isLinked(req.registry, req.repository, digest);
    if (meta && !linked) {
      // Cached through another repository (or registry): served here only once the upstream
      // says this repository may read it. A HEAD, so the bytes are not fetched again; any
      // refusal, absence or outage is answered as such, never with the cached bytes.
      await this.confirm(req);
      index.link(req.registry, req.repository, digest);
      linked = true;
    }
    if (meta && linked) {
      const body = await this.cached(digest);
      if (body && accepts(req.accept, meta.mediaType)) {
        return { digest, mediaType: meta.mediaType, body, cache: 'hit' };
      }
      if (body) {
        // Cached, but in a media type this client did not ask for: ask again with its Accept.
        try {
          return this.answer(req, await this.fetch(req));
        } catch (e) {
          if (!isOutage(e, e instanceof RegistryError ? e.status : undefined)) throw e;
          this.stale(req, 'unavailable');
          return { digest, mediaType: meta.mediaType, body, cache: 'stale' };
        }
      }
    }
    return this.answer(req, await this.fetch(req));
  }

  /** A fetched manifest as served: a tag a failover peer answered is stale (the upstream did not confirm it). */
  private answer(req: ManifestRequest, f: Fetched): ManifestResponse {
    const { via, ...m } = f;
    if (via === 'failover' && !isDigest(req.reference)) {
      this.stale(req, 'failover');
      return { ...m, cache: 'stale' };
    }
    return { ...m, cache: 'miss' };
  }

  private async byTag(req: ManifestRequest): Promise<ManifestResponse> {
    const { index } = this.d;
    const frozen = index.frozen(req.registry, req.repository, req.reference);
    // A frozen tag serves its digest whatever the upstream says, without asking it.
    if (frozen) return this.byDigest({ ...req, reference: frozen.digest }, frozen.digest);
    const rec = index.tag(req.registry, req.repository, req.reference);
    const body = rec ? await this.cached(rec.digest) : undefined;
    if (!rec || !body) return this.answer(req, await this.fetch(req));
    const acceptable = accepts(req.accept, rec.mediaType);
    const fresh = this.now() - rec.checkedAt < this.d.tagTtlMs(req.registry);
    if (fresh && acceptable) return { digest: rec.digest, mediaType: rec.mediaType, body, cache: 'hit', resolvedAt: rec.checkedAt };

    const served = { digest: rec.digest, mediaType: rec.mediaType, body, resolvedAt: rec.checkedAt };
    try {
      if (acceptable) {
        const { value: head, from } = await this.revalidate(req);
        if (head.status === 200 && head.digest === rec.digest) {
          // The tag's owner in the cluster confirmed it from its cache: its resolution time is
          // kept, so the region's TTL runs from the one upstream HEAD (one per TTL per region).
          const checkedAt = from.via === 'region' && head.resolvedAt !== undefined ? Math.min(head.resolvedAt, this.now()) : this.now();
          index.setTag(req.registry, req.repository, req.reference, { ...rec, checkedAt });
          return { ...served, cache: 'hit', resolvedAt: checkedAt };
        }
        if (head.status !== 200 && head.status !== 404 && isOutage(undefined, head.status)) {
          this.stale(req, head.status === 429 ? 'rate_limited' : `http_${head.status}`);
          return { ...served, cache: 'stale' };
        }
        if (head.status !== 200) throw await head.error();
      }
      return this.answer(req, await this.fetch(req));
    } catch (e) {
      const status = e instanceof RegistryError ? e.status : undefined;
      if (e instanceof RegistryError ? status !== undefined && (status >= 500 || status === 429) : isOutage(e)) {
        this.stale(req, e instanceof RegistryError ? e.code.toLowerCase() : 'unreachable');
        return { ...served, cache: 'stale' };
      }
      throw e;
    }
  }

  private stale(req: ManifestRequest, reason: string): void {
    this.d.metrics.staleServed.inc({ registry: req.registry, reason });
    this.d.logger.warn({ registry: req.registry, repository: req.repository, reference: req.reference, reason }, 'upstream unavailable: serving cached manifest stale');
  }

  /** Tell the listeners (replication); their failure is logged, what was stored stays. */
  private async announce(emit: () => Promise<void> | undefined): Promise<void> {
    try {
      await emit();
    } catch (err) {
      this.d.logger.error({ err }, 'a cache listener failed on a stored manifest or tag');
    }
  }

  /** Remembers an upstream 404 for this manifest (or NAME_UNKNOWN for its repository); returns the error. */
  private notFound(req: ManifestRequest, e: RegistryError): RegistryError {
    this.d.negative?.remember(req.registry, req.repository, 'manifest', req.reference, e);
    return e;
  }

  /**
   * A tag's revalidation: the upstream's HEAD, or the tag's owner in the cluster, which answers
   * from its cache within its tagTTL (only the upstream, or a member that asked it, can confirm a tag).
   */
  private async revalidate(req: ManifestRequest): Promise<{ value: ManifestHead; from: ContentSource }> {
    this.d.negative?.check(req.registry, req.repository, 'manifest', req.reference);
    const { value: head, from } = await this.sources.revalidateTag(req, req.accept, scopeOf(req));
    if (head.status === 200) this.d.negative?.forget(req.registry, req.repository, 'manifest', req.reference);
    return { value: { ...head, error: async () => this.notFound(req, await head.error()) }, from };
  }

  /** This repository may read the manifest: a source answers a HEAD under it with 200. */
  private async confirm(req: ManifestRequest): Promise<void> {
    this.d.negative?.check(req.registry, req.repository, 'manifest', req.reference);
    try {
      await this.sources.confirmManifest(req, req.accept, scopeOf(req));
    } catch (e) {
      throw e instanceof RegistryError ? this.notFound(req, e) : e;
    }
    this.d.negative?.forget(req.registry, req.repository, 'manifest', req.reference);
  }

  /** GET from upstream, verify, store; concurrent identical requests share one fetch. */
  private fetch(req: ManifestRequest): Promise<Fetched> {
    const key = `${req.registry}/${req.repository}@${req.reference}#${req.accept.join(',')}${req.forPeer === true ? '#peer' : ''}`;
    let p = this.inFlight.get(key);
    if (!p) {
      p = this.fetchOnce(req).finally(() => this.inFlight.delete(key));
      this.inFlight.set(key, p);
    }
    return p;
  }

  /** What a source sent must hash to the digest asked for (or the one it claims) and parse. */
  private check(req: ManifestRequest, raw: RawManifest, from: ContentSource): Checked {
    const { body } = raw;
    const digest = digestOf(body);
    const mediaType = mediaTypeOf(raw.contentType, body);
    // A signed schema1 manifest's Docker-Content-Digest covers its payload without the
    // signatures, never the body: only a digest the client asked for is checked against it.
    const claimedApplies = mediaType !== MT.dockerSchema1Signed;
    const claimed = raw.claimedDigest;
    const expected = parseDigest(req.reference) ?? (claimed !== undefined && claimedApplies ? parseDigest(claimed) : undefined);
    if (expected && expected !== digest) {
      this.d.metrics.digestMismatches.inc({ kind: 'manifest' });
      this.d.logger.warn({ registry: req.registry, repository: req.repository, reference: req.reference, source: from.name, expected, actual: digest }, 'manifest digest mismatch; not cached');
      throw new RegistryError('DIGEST_INVALID', `upstream manifest does not match digest ${expected}`, { status: 502 });
    }
    let refs;
    try {
      refs = parseManifest(body);
    } catch {
      throw new RegistryError('MANIFEST_INVALID', 'upstream manifest is not valid JSON', { status: 502 });
    }
    return { raw, digest, mediaType, childRefs: [...refs.blobs, ...refs.manifests].filter(isDigest) };
  }

  private async fetchOnce(req: ManifestRequest): Promise<Fetched> {
    this.d.negative?.check(req.registry, req.repository, 'manifest', req.reference);
    let got;
    try {
      got = await this.sources.getManifest(req, req.accept, (raw, from) => this.check(req, raw, from), scopeOf(req));
    } catch (e) {
      throw e instanceof RegistryError ? this.notFound(req, e) : e;
    }
    this.d.negative?.forget(req.registry, req.repository, 'manifest', req.reference);
    const { raw, digest, mediaType, childRefs } = got.value;
    const { body } = raw;
    const via = got.from.via;
    this.d.memory.set(digest, body);
    const { index } = this.d;
    let stored: Promise<void> | undefined;
    if (this.d.health.writable && !this.storing.has(digest)) {
      // Written to disk after the answer: the memory copy serves meanwhile, and only content
      // on disk is recorded as cached.
      this.storing.set(digest, { mediaType, size: body.length, refs: childRefs });
      // The journal record first, then the file (see CacheIndex.recordManifest).
      const p = index
        .recordManifest(digest, mediaType, body.length, childRefs)
        .then(() => this.d.disk.put(digest, body))
        .then(
          async () => {
            void this.d.evictor.check();
            await this.announce(() =>
              this.d.events?.contentCommitted({ kind: 'manifest', registry: req.registry, repository: req.repository, digest, size: body.length, mediaType, via }),
            );
          },
          (e: unknown) => this.d.health.failed(e, 'storing a manifest'),
        )
        .finally(() => {
          this.storing.delete(digest);
          this.writes.delete(p);
        });
      this.writes.add(p);
      stored = p;
    }

    // Only what this repository itself answered is linked to it: a digest a manifest lists
    // is not proof that the repository may read it (see byDigest and BlobService.authorize).
    index.link(req.registry, req.repository, digest);
    if (!isDigest(req.reference)) {
      const prev = index.tag(req.registry, req.repository, req.reference);
      // A peer's answer is not the upstream's confirmation: recorded with the time the peer
      // resolved the tag (0 when it does not say), so it is revalidated once the upstream is back.
      // A cluster member's answer carries the time the tag was confirmed upstream (its owner's).
      const resolvedAt = via === 'failover' ? (raw.resolvedAt ?? 0) : via === 'region' ? Math.min(raw.resolvedAt ?? this.now(), this.now()) : this.now();
      index.setTag(req.registry, req.repository, req.reference, { digest, mediaType, checkedAt: resolvedAt });
      if (prev && prev.digest !== digest) {
        this.d.logger.info({ registry: req.registry, repository: req.repository, tag: req.reference, from: prev.digest, to: digest }, 'tag moved');
      }
      if (!prev || prev.digest !== digest) {
        // After the manifest's own write (a receiver needs the manifest before the tag).
        const tag = req.reference;
        void Promise.resolve(stored).then(() =>
          this.announce(() => this.d.events?.tagResolved({ registry: req.registry, repository: req.repository, tag, digest, mediaType, resolvedAt: resolvedAt || this.now(), via })),
        );
      }
    }
    const resolvedAt = isDigest(req.reference) ? undefined : index.tag(req.registry, req.repository, req.reference)?.checkedAt;
    return { digest, mediaType, body, via, ...(resolvedAt !== undefined ? { resolvedAt } : {}) };
  }
}
