// Serves blobs: memory tier -> disk tier -> the one in-flight fill for the digest -> a new fill.
// A blob is served under a repository only once the upstream confirmed that this repository
// may read it (a GET or HEAD of the blob under that registry/repository, with our credentials,
// answered 200; recorded as a link). A manifest listing the digest is no such proof: anyone
// can push a manifest naming someone else's private layer. So content fetched with
// credentials never leaks across repositories or registries, even though the cache is shared.
// A failover peer's answer counts the same way: it answered for that registry/repository under
// its own authorization rule. Where the bytes come from is the SourceChain's business (upstream,
// failover peers); every source's body goes through the same BlobFill.
import { Readable } from 'node:stream';
import type { Digest } from '../oci/digest.ts';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { CacheResult, Metrics } from '../metrics.ts';
import { parseRange, isRangeSyntaxValid, type ByteRange } from '../oci/range.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { BlobStore } from '../storage/blob-store.ts';
import type { MemoryCache } from '../storage/memory-cache.ts';
import type { RegistryClient } from '../upstream/registry-client.ts';
import type { DiskHealth } from '../storage/disk-health.ts';
import type { BodySource } from '../storage/body-source.ts';
import type { Evictor } from '../storage/evictor.ts';
import { FillError, NoRoomError, type BlobFill, type FillSource } from './blob-fill.ts';
import type { BlobFills } from './blob-fills.ts';
import { verifiedStream } from './verified-stream.ts';
import { SourceChain, scopeOf } from '../sources/source-chain.ts';
import type { BlobHead, ContentSource } from '../sources/content-source.ts';
import type { NegativeCache } from './negative-cache.ts';
import type { CacheEvents } from '../cache-events.ts';

export interface BlobRequest {
  registry: string;
  repository: string;
  digest: Digest;
  method: 'GET' | 'HEAD';
  range: string | undefined;
  /**
   * The size a descriptor gives for the digest, when the caller has one (prefetch, pin): a fill
   * it starts expects exactly that many bytes (whatever the upstream's Content-Length says) and
   * is aborted at the first byte beyond it. Ignored unless a non-negative safe integer.
   */
  expectedSize?: number;
  /**
   * A peer region's failover read (header Ocirelay-Failover): answered from this cache and
   * the upstream only, never from this region's own peers (no loops between regions).
   */
  forPeer?: boolean;
  /**
   * Another member of this instance's cluster asks (it sent the cluster token): answered from
   * this cache, a fill, the upstream or the peers, never from the region's shared tiers (the
   * member asked is the digest's owner: it fetches, and two members that disagree about
   * ownership do not ask each other in a loop).
   */
  forMember?: boolean;
}

export interface BlobResponse {
  status: 200 | 206;
  headers: Record<string, string>;
  /** Absent for HEAD (and when `file` is set). */
  body?: Readable;
  /** A committed file or an in-flight fill: sent by the caller with sendTo (or toReadable). */
  file?: BodySource;
  source: 'memory' | 'disk' | 'fill' | 'upstream' | 's3';
  cache: CacheResult;
}

export interface BlobServiceDeps {
  disk: BlobStore;
  memory: MemoryCache;
  index: CacheIndex;
  fills: BlobFills;
  /** Where misses are read from (upstream, failover peers). */
  sources?: SourceChain;
  /** Without `sources`: the upstreams alone. */
  upstreams?: ReadonlyMap<string, RegistryClient>;
  evictor: Evictor;
  health: DiskHealth;
  metrics: Metrics;
  logger: Logger;
  /** Recent upstream 404s, answered without asking again; absent: every miss asks. */
  negative?: NegativeCache;
  /** Told of every committed blob (replication outbox), awaited before the commit is acknowledged. */
  events?: CacheEvents;
  /**
   * A byte range of a blob from the region's S3 bucket (S3Source.openRange), for a ranged GET
   * that misses locally: answered straight from S3 while the whole blob is promoted in the
   * background through a normal, verified fill. Undefined when the bucket cannot answer it.
   */
  regionRange?: (req: BlobRequest) => Promise<{ body: Readable; range: ByteRange; size: number } | undefined>;
}

const OCTET = 'application/octet-stream';

function rangeFor(header: string | undefined, size: number): ByteRange | undefined {
  const r = parseRange(header, size);
  switch (r.kind) {
    case 'none':
      return undefined;
    case 'range':
      return r.range;
    case 'unsatisfiable':
      throw new RegistryError('RANGE_INVALID', `range ${header} not satisfiable for ${size} bytes`, {
        headers: { 'Content-Range': `bytes */${size}` },
      });
    case 'invalid':
      throw new RegistryError('RANGE_INVALID', `malformed Range header`);
  }
}

function headersFor(digest: Digest, size: number, range: ByteRange | undefined): { status: 200 | 206; headers: Record<string, string> } {
  const headers: Record<string, string> = {
    'Content-Type': OCTET,
    'Docker-Content-Digest': digest,
    ETag: `"${digest}"`,
    'Accept-Ranges': 'bytes',
    'Cache-Control': 'max-age=31536000, immutable',
  };
  if (range) {
    headers['Content-Range'] = `bytes ${range.start}-${range.end}/${size}`;
    headers['Content-Length'] = String(range.end - range.start + 1);
    return { status: 206, headers };
  }
  headers['Content-Length'] = String(size);
  return { status: 200, headers };
}

export class BlobService {
  private readonly sources: SourceChain;

  constructor(private readonly d: BlobServiceDeps) {
    this.sources = d.sources ?? SourceChain.ofClients(d.upstreams ?? new Map(), d.metrics, d.logger);
  }

  /** Resolves once no fill of `digest` is in flight (it committed or failed). */
  async settled(digest: Digest): Promise<void> {
    await this.d.fills.get(digest)?.settled;
  }

  async get(req: BlobRequest): Promise<BlobResponse> {
    if (req.range !== undefined && !isRangeSyntaxValid(req.range)) throw new RegistryError('RANGE_INVALID', 'malformed Range header');
    const { disk, memory, index, fills } = this.d;

    // Memory and disk tiers.
    const size = disk.sizeOf(req.digest);
    if (size !== undefined) {
      await this.authorize(req);
      const range = rangeFor(req.range, size);
      const { status, headers } = headersFor(req.digest, size, range);
      if (req.method === 'HEAD') return { status, headers, source: 'disk', cache: 'hit' };
      const mem = memory.get(req.digest);
      if (mem) {
        disk.touch(req.digest);
        const bytes = range ? mem.subarray(range.start, range.end + 1) : mem;
        return { status, headers, body: Readable.from([bytes]), source: 'memory', cache: 'hit' };
      }
      const file = await disk.openFile(req.digest, range);
      if (file) return { status, headers, file, source: 'disk', cache: 'hit' };
      // Deleted under us (eviction): fall through to a fill.
    }

    // A blob the upstream recently said it lacks: 404 without a fill (and its log line).
    this.d.negative?.check(req.registry, req.repository, 'blob', req.digest);
    if (req.method === 'HEAD') return this.headUpstream(req);
    // A range the bucket has: a partial answer straight from S3 (an object the write-behind
    // wrote from a verified, committed file; a range is partial by definition, and a range
    // covering the whole blob is not taken here), the whole blob promoted through a fill.
    if (req.range !== undefined && this.d.regionRange && req.forMember !== true && !fills.get(req.digest)) {
      const part = await this.d.regionRange(req);
      if (part) {
        this.promote(req);
        const { status, headers } = headersFor(req.digest, part.size, part.range);
        return { status, headers, body: part.body, source: 's3', cache: 'miss' };
      }
    }
    if (!this.d.health.writable && !fills.get(req.digest)) return this.streamThrough(req);

    const origin = `${req.registry}/${req.repository}`;
    let fill = fills.get(req.digest);
    let joined = true;
    if (fill && fill.origin !== origin && !index.isLinked(req.registry, req.repository, req.digest)) {
      // Another repository's fill: this one must prove access on its own first.
      await this.authorize(req);
    }
    if (!fill) {
      // The source that delivered this fill's body: its `via` goes with the commit.
      let from: ContentSource | undefined;
      const started = fills.joinOrStart(req.digest, origin, disk.tempPathFor(req.digest), {
        smallCopyMax: memory.maxObjectBytes,
        openUpstream: async (signal) => {
          const got = await this.open(req, signal);
          from = got.from;
          return got.value;
        },
        onDiskError: (e) => this.d.health.failed(e, 'filling a blob'),
        // Room for what every fill in flight, this one included (its size is known by now), has yet to write.
        reserve: () => this.d.health.ensureRoom(fills.inFlightRemaining()),
        commit: async (tmp, sz, small) => {
          const admitted = await this.d.evictor.admit(sz, () => disk.commitTemp(tmp, req.digest, sz));
          if (!admitted) throw new NoRoomError();
          index.link(req.registry, req.repository, req.digest);
          if (small) memory.set(req.digest, small);
          await this.announce(req, sz, from);
          this.d.metrics.cacheBytes.set({ tier: 'disk' }, disk.bytes);
          this.d.metrics.cacheEntries.set({ tier: 'disk' }, disk.count);
          // After this fill has left the in-flight set, so its bytes are not counted twice.
          setImmediate(() => void this.d.evictor.check());
        },
      });
      fill = started.fill;
      joined = started.joined;
      if (!joined) {
        const f = fill;
        void f.settled.then((outcome) => {
          // A peer whose bytes failed verification is not asked again for a while.
          if (from && (outcome === 'digest_mismatch' || outcome === 'size_mismatch')) this.sources.deliveredBad(from, outcome);
        });
      }
    } else {
      this.d.metrics.coalescedWaiters.inc();
    }
    return this.serveFill(req, fill, joined);
  }

  /** Fills the whole blob in the background (no client reads it: a fill runs on without readers). */
  private promote(req: BlobRequest): void {
    if (!this.d.health.writable || this.d.fills.get(req.digest)) return;
    void this.get({ ...req, range: undefined, method: 'GET' })
      .then(async (r) => {
        r.body?.destroy();
        await r.file?.release();
      })
      .catch((err: unknown) => this.d.logger.warn({ digest: req.digest, err: (err as Error).message }, 'promoting a blob from S3 failed'));
  }

  /** Tell the listeners (replication) of a committed blob; their failure is logged, the blob stays committed. */
  private async announce(req: BlobRequest, size: number, from: ContentSource | undefined): Promise<void> {
    try {
      await this.d.events?.contentCommitted({ kind: 'blob', registry: req.registry, repository: req.repository, digest: req.digest, size, via: from?.via ?? 'upstream' });
    } catch (err) {
      this.d.logger.error({ err, digest: req.digest }, 'a cache listener failed on a committed blob');
    }
  }

  private async serveFill(req: BlobRequest, fill: BlobFill, joined: boolean): Promise<BlobResponse> {
    try {
      await fill.ready;
    } catch (e) {
      // No temp file could be made: serve this client straight through, uncached.
      if (e instanceof FillError && e.reason === 'disk_error') return this.streamThrough(req);
      throw e;
    }
    // The fill's bytes will land on disk: make room before they do.
    if (!joined) void this.d.evictor.check();
    if (fill.state === 'committed') {
      // Finished while we waited: it is on disk now (its fd may already be closed).
      this.d.index.link(req.registry, req.repository, req.digest);
      if (this.d.disk.has(req.digest)) return this.get(req);
    }
    if (fill.state === 'failed' || fill.state === 'committed') {
      throw new RegistryError('UNAVAILABLE', `upstream transfer of ${req.digest} failed`);
    }
    const size = fill.size;
    if (size === undefined) {
      // The upstream sent no length: stream the whole blob, chunked.
      const headers: Record<string, string> = { 'Content-Type': OCTET, 'Docker-Content-Digest': req.digest, ETag: `"${req.digest}"` };
      return { status: 200, headers, file: fill.createSender(), source: 'fill', cache: joined ? 'coalesced' : 'miss' };
    }
    const range = rangeFor(req.range, size);
    const { status, headers } = headersFor(req.digest, size, range);
    return { status, headers, file: fill.createSender(range), source: 'fill', cache: joined ? 'coalesced' : 'miss' };
  }

  /** Opens the blob from the first source of the chain that has it; a 404 from the upstream is remembered. */
  private async open(req: BlobRequest, signal: AbortSignal): Promise<{ value: FillSource; from: ContentSource }> {
    const ref = { registry: req.registry, repository: req.repository, digest: req.digest };
    try {
      const got = await this.sources.openBlob(ref, signal, req.expectedSize, scopeOf(req));
      this.d.negative?.forget(req.registry, req.repository, 'blob', req.digest);
      return got;
    } catch (e) {
      throw this.notFound(req, e);
    }
  }

  /** The disk cache is unwritable: one upstream GET per client, verified on the way, nothing stored. */
  private async streamThrough(req: BlobRequest): Promise<BlobResponse> {
    const ac = new AbortController();
    const { body, size, sizeFrom, contentLength: cl } = (await this.open(req, ac.signal)).value;
    if (sizeFrom === 'descriptor' && cl !== undefined && cl !== size) {
      body.destroy();
      this.d.metrics.fillResults.inc({ result: 'size_mismatch' });
      this.d.metrics.digestMismatches.inc({ kind: 'blob' });
      throw new RegistryError('UNAVAILABLE', `upstream Content-Length ${cl} of ${req.digest} differs from the descriptor's size ${size}`, { status: 502 });
    }
    this.d.index.link(req.registry, req.repository, req.digest);
    const headers: Record<string, string> = { 'Content-Type': OCTET, 'Docker-Content-Digest': req.digest, ETag: `"${req.digest}"` };
    if (size !== undefined) headers['Content-Length'] = String(size);
    const stream = verifiedStream(body, req.digest, size, (outcome) => {
      if (outcome === 'ok') return;
      this.d.metrics.fillResults.inc({ result: outcome.reason });
      if (outcome.reason === 'digest_mismatch' || outcome.reason === 'size_mismatch') this.d.metrics.digestMismatches.inc({ kind: 'blob' });
      this.d.logger.warn({ digest: req.digest, err: outcome.message }, 'pass-through failed verification; client stream aborted');
    }, this.d.fills.maxBlobBytes);
    // A Range cannot be verified on its own: the whole blob is sent (clients accept a 200).
    return { status: 200, headers, body: stream, source: 'upstream', cache: 'bypass' };
  }

  /** Make sure the repository may see this digest: a known link, or the upstream says so. */
  private async authorize(req: BlobRequest): Promise<void> {
    if (!this.d.index.isLinked(req.registry, req.repository, req.digest)) await this.confirm(req);
  }

  /** HEAD the blob at the sources under this repository (with our credentials); link it when it is there. */
  private async confirm(req: BlobRequest): Promise<BlobHead> {
    this.d.negative?.check(req.registry, req.repository, 'blob', req.digest);
    let head: BlobHead;
    try {
      head = (await this.sources.headBlob({ registry: req.registry, repository: req.repository, digest: req.digest }, scopeOf(req))).value;
    } catch (e) {
      throw this.notFound(req, e);
    }
    this.d.negative?.forget(req.registry, req.repository, 'blob', req.digest);
    this.d.index.link(req.registry, req.repository, req.digest);
    return head;
  }

  /** Remembers an upstream 404 for this blob (or NAME_UNKNOWN for its repository); returns the error. */
  private notFound(req: BlobRequest, e: unknown): unknown {
    this.d.negative?.remember(req.registry, req.repository, 'blob', req.digest, e);
    return e;
  }

  /** HEAD of a blob we do not hold: ask the upstream, fill nothing. */
  private async headUpstream(req: BlobRequest): Promise<BlobResponse> {
    const { size } = await this.confirm(req);
    const headers: Record<string, string> = { 'Content-Type': OCTET, 'Docker-Content-Digest': req.digest, ETag: `"${req.digest}"`, 'Accept-Ranges': 'bytes' };
    if (size !== undefined) headers['Content-Length'] = String(size);
    return { status: 200, headers, source: 'upstream', cache: 'miss' };
  }
}
