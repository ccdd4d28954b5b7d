// The S3 tier as a read source (issue 11 item 3): first of the SourceChain's `region` sources,
// asked on a local miss before the cluster owner, the upstream and the peers. Its bodies are
// raw like any source's: a blob goes through the one fill machinery (BlobFill hashes it, checks
// the size and commits it to the local disk: the promotion, so the disk is an LRU in front of
// the bucket), a manifest through ManifestService's digest check; content committed from here
// is announced with via 'region' (not written back, not replicated again).
//
// Authorization (docs/architecture.md: content is served under a repository only once the
// upstream confirmed that this repository may read it): the bucket is shared by every
// repository and registry, so before handing out bytes this source requires the local
// CacheIndex link, or the region's shared link (RegionIndex, when configured), or else a HEAD
// of the blob (manifest) under this repository at the registry's upstream answering 200.
// Otherwise it answers 404 and the chain goes on to the upstream, whose answer is final.
//
// S3 down (S3Health): skipped at once with a 404 (no request waits on S3); a call failing with
// an outage marks it down and goes on. A miss in the bucket is a 404 too.
import type { Readable } from 'node:stream';
import type { ContentVia } from '../cache-events.ts';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { isDigest, parseDigest, type Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import { parseRange, type ByteRange } from '../oci/range.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';
import type { BlobHead, BlobRef, ContentSource, ManifestHead, ManifestRef, RawManifest } from '../sources/content-source.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import { blobKey } from './bucket-layout.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';
import type { RegionIndex } from './region-index.ts';
import type { S3Health } from './s3-health.ts';

export interface S3SourceOptions {
  bucket: S3Bucket;
  health: S3Health;
  /** The local links (what this instance's upstream confirmed). */
  index: Pick<CacheIndex, 'isLinked'>;
  /** The region's shared links and tags (the bucket's metadata), when there is one. */
  regionIndex?: RegionIndex;
  /** Each registry's upstream source: it confirms what the links do not. */
  upstream: (registry: string) => ContentSource;
  metrics: Metrics;
  logger: Logger;
}

/** A byte range of a blob read straight from the bucket (a partial response: never a whole body). */
export interface S3Range {
  body: Readable;
  range: ByteRange;
  /** The whole blob's size. */
  size: number;
}

type Kind = 'blob' | 'manifest';

export class S3Source implements ContentSource {
  readonly name = 's3';
  readonly via: ContentVia = 'region';
  readonly #o: S3SourceOptions;

  constructor(o: S3SourceOptions) {
    this.#o = o;
  }

  async openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number): Promise<FillSource> {
    this.#usable('blob', ref.digest);
    // The object first: a miss (the usual cold case) costs no authorization round trip upstream.
    const got = await this.#call('blob', () => this.#o.bucket.get(blobKey(ref.digest), undefined, signal));
    if (got === undefined) throw this.#miss('blob', ref.digest);
    try {
      // The body waits (paused) until the repository is confirmed; no byte is handed out before.
      await this.#authorize('blob', ref.registry, ref.repository, ref.digest);
    } catch (e) {
      got.body.destroy();
      throw e;
    }
    if (expectedSize !== undefined && got.size !== expectedSize) {
      // Not the blob the descriptor names: let the upstream answer instead of failing the fill.
      got.body.destroy();
      this.#o.logger.warn({ digest: ref.digest, s3Size: got.size, expectedSize }, 'S3 object size differs from the descriptor; reading elsewhere');
      throw this.#miss('blob', ref.digest);
    }
    this.#o.metrics.s3Reads.inc({ kind: 'blob', result: 'hit' });
    this.#watch(got.body, signal);
    return { body: got.body, size: got.size, sizeFrom: 'content-length' };
  }

  async headBlob(ref: BlobRef): Promise<BlobHead> {
    this.#usable('blob', ref.digest);
    const info = await this.#call('blob', () => this.#o.bucket.head(blobKey(ref.digest)));
    if (info === undefined) throw this.#miss('blob', ref.digest);
    await this.#authorize('blob', ref.registry, ref.repository, ref.digest);
    return { size: info.size };
  }

  /**
   * A byte range of a blob straight from the bucket, for a ranged GET that misses locally;
   * undefined when the bucket cannot answer it (down, absent, not authorized: the caller goes
   * the usual way). A range covering the whole blob is refused too: a whole body is only ever
   * served verified, i.e. through a fill.
   */
  async openRange(ref: BlobRef, rangeHeader: string, signal?: AbortSignal): Promise<S3Range | undefined> {
    try {
      this.#usable('blob', ref.digest);
      const info = await this.#call('blob', () => this.#o.bucket.head(blobKey(ref.digest)));
      if (info === undefined) return undefined;
      await this.#authorize('blob', ref.registry, ref.repository, ref.digest);
      const r = parseRange(rangeHeader, info.size);
      if (r.kind !== 'range' || (r.range.start === 0 && r.range.end === info.size - 1)) return undefined;
      const got = await this.#call('blob', () => this.#o.bucket.get(blobKey(ref.digest), r.range, signal));
      if (got === undefined) return undefined;
      if (got.totalSize !== info.size || got.size !== r.range.end - r.range.start + 1) {
        got.body.destroy();
        return undefined;
      }
      this.#o.metrics.s3Reads.inc({ kind: 'range', result: 'hit' });
      this.#watch(got.body, signal);
      return { body: got.body, range: r.range, size: info.size };
    } catch (e) {
      if (e instanceof RegistryError) return undefined;
      throw e;
    }
  }

  async getManifest(ref: ManifestRef, _accept: readonly string[]): Promise<RawManifest> {
    const { digest, resolvedAt, mediaType, authorize } = await this.#manifestDigest(ref);
    const got = await this.#call('manifest', () => this.#o.bucket.get(blobKey(digest)));
    if (got === undefined) throw this.#miss('manifest', digest);
    if (got.size > MAX_MANIFEST_BYTES) {
      got.body.destroy();
      throw this.#miss('manifest', digest);
    }
    try {
      await authorize();
    } catch (e) {
      got.body.destroy();
      throw e;
    }
    const chunks: Buffer[] = [];
    let n = 0;
    try {
      for await (const c of got.body as AsyncIterable<Buffer>) {
        n += c.length;
        if (n > MAX_MANIFEST_BYTES) {
          got.body.destroy();
          throw this.#miss('manifest', digest);
        }
        chunks.push(c);
      }
    } catch (e) {
      if (e instanceof RegistryError) throw e;
      throw this.#unavailable('manifest', new S3Unavailable('network', `reading manifest ${digest} from S3: ${(e as Error).message}`));
    }
    this.#o.metrics.s3Reads.inc({ kind: 'manifest', result: 'hit' });
    return {
      body: Buffer.concat(chunks),
      contentType: mediaType,
      // What ManifestService checks the body against (the digest asked for, or the tag's record).
      claimedDigest: digest,
      ...(resolvedAt !== undefined ? { resolvedAt } : {}),
    };
  }

  async headManifest(ref: ManifestRef, _accept: readonly string[]): Promise<ManifestHead> {
    const { digest, resolvedAt, authorize } = await this.#manifestDigest(ref);
    const info = await this.#call('manifest', () => this.#o.bucket.head(blobKey(digest)));
    if (info === undefined) throw this.#miss('manifest', digest);
    await authorize();
    const notAnError = new RegistryError('MANIFEST_UNKNOWN', 'not an error');
    return { status: 200, digest, ...(resolvedAt !== undefined ? { resolvedAt } : {}), error: () => Promise.resolve(notAnError) };
  }

  /**
   * A manifest reference as a digest, and how to check that this repository may read it (called
   * once the object is known to be there): by digest, the authorization rule; a tag of the
   * region's record needs none (the record is an upstream answer under this repository).
   */
  async #manifestDigest(ref: ManifestRef): Promise<{ digest: Digest; resolvedAt?: number; mediaType?: string; authorize: () => Promise<void> }> {
    const byDigest = isDigest(ref.reference) ? parseDigest(ref.reference) : undefined;
    this.#usable('manifest', ref.reference);
    if (byDigest !== undefined) {
      return { digest: byDigest, authorize: () => this.#authorize('manifest', ref.registry, ref.repository, byDigest) };
    }
    // A tag: only the region's shared record knows what another instance resolved it to
    // (that record came from an upstream answer under this repository: it is the authorization).
    const ri = this.#o.regionIndex;
    if (ri === undefined) throw this.#miss('manifest', ref.reference);
    const rec = await ri.tag(ref.registry, ref.repository, ref.reference).catch((e: unknown) => {
      throw this.#unavailable('manifest', e);
    });
    if (rec === undefined) throw this.#miss('manifest', ref.reference);
    return { digest: rec.digest, resolvedAt: rec.resolvedAt, mediaType: rec.mediaType, authorize: () => Promise.resolve() };
  }

  /**
   * A body that fails midway (S3 went away) fails its fill or response (the client sees an
   * aborted transfer, never a clean end); the bucket is then marked down, so the client's retry
   * goes straight to the upstream instead of S3 again.
   */
  #watch(body: Readable, signal?: AbortSignal): void {
    body.once('error', (e: NodeJS.ErrnoException) => {
      // Our side gave the body up (the fill was aborted, the client left: pipeline destroys the source).
      if (signal?.aborted === true || e.name === 'AbortError' || e.code === 'ERR_STREAM_PREMATURE_CLOSE') return;
      this.#o.health.failed(new S3Unavailable('network', `S3 body failed: ${e.message}`));
    });
  }

  /** Skipped at once while the bucket is down. */
  #usable(kind: Kind, what: string): void {
    if (this.#o.health.up) return;
    this.#o.metrics.s3Reads.inc({ kind, result: 'down' });
    throw new RegistryError(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', `S3 is down: ${what} not read from it`, { status: 404 });
  }

  /** The repository may read the digest: a local link, a region link, or the upstream's 200. */
  async #authorize(kind: Kind, registry: string, repository: string, digest: Digest): Promise<void> {
    if (this.#o.index.isLinked(registry, repository, digest)) return;
    const ri = this.#o.regionIndex;
    if (ri !== undefined) {
      try {
        if (await ri.isLinked(registry, repository, digest)) return;
      } catch (e) {
        this.#o.health.failed(e);
      }
    }
    const up = this.#o.upstream(registry);
    let ok = false;
    try {
      if (kind === 'blob') {
        await up.headBlob({ registry, repository, digest });
        ok = true;
      } else {
        ok = (await up.headManifest({ registry, repository, reference: digest }, [])).status === 200;
      }
    } catch {
      ok = false;
    }
    if (ok) return;
    this.#o.metrics.s3Reads.inc({ kind, result: 'unauthorized' });
    throw new RegistryError(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', `${registry}/${repository} is not confirmed to read ${digest}: not served from S3`, { status: 404 });
  }

  async #call<T>(kind: Kind, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (e) {
      throw this.#unavailable(kind, e);
    }
  }

  #unavailable(kind: Kind, e: unknown): RegistryError {
    this.#o.health.failed(e);
    this.#o.metrics.s3Reads.inc({ kind, result: 'error' });
    return new RegistryError('UNAVAILABLE', `S3: ${(e as Error).message}`);
  }

  #miss(kind: Kind, what: string): RegistryError {
    this.#o.metrics.s3Reads.inc({ kind, result: 'miss' });
    return new RegistryError(kind === 'blob' ? 'BLOB_UNKNOWN' : 'MANIFEST_UNKNOWN', `${what} is not in the S3 bucket`, { status: 404 });
  }
}
