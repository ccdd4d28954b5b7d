// Tag lists and referrers: passed through to the upstream (they change all the time), with
// the last good answer kept in memory and served stale when the upstream is down.
import { LRUCache } from 'lru-cache';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { CacheResult, Metrics } from '../metrics.ts';
import { MT } from '../oci/media-types.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { RegistryClient, UpstreamResponse } from '../upstream/registry-client.ts';
import { errorFromTransport, errorFromUpstream, isOutage } from './upstream-errors.ts';

const MAX_LISTING_BYTES = 4 * 1024 * 1024;

export interface ListingResponse {
  body: Buffer;
  contentType: string;
  /** The upstream's pagination Link, already rewritten to the client's path. */
  link?: string;
  headers: Record<string, string>;
  cache: CacheResult;
}

export interface ListingDeps {
  upstreams: ReadonlyMap<string, RegistryClient>;
  index: CacheIndex;
  metrics: Metrics;
  logger: Logger;
}

async function readAll(res: UpstreamResponse): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > MAX_LISTING_BYTES) {
      res.body.destroy();
      throw new RegistryError('UNAVAILABLE', 'upstream listing too large', { status: 502 });
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

export class ListingService {
  private readonly lastGood = new LRUCache<string, ListingResponse>({ maxSize: 64 * 1024 * 1024, sizeCalculation: (r) => Math.max(1, r.body.length) });

  constructor(private readonly d: ListingDeps) {}

  async tags(registry: string, repository: string, query: { n?: string; last?: string }, clientPathPrefix: string): Promise<ListingResponse> {
    const qs = new URLSearchParams();
    if (query.n !== undefined) qs.set('n', query.n);
    if (query.last !== undefined) qs.set('last', query.last);
    const q = qs.toString();
    const upstreamPath = `/v2/${repository}/tags/list${q ? `?${q}` : ''}`;
    try {
      return await this.passThrough(registry, repository, upstreamPath, clientPathPrefix, 'NAME_UNKNOWN');
    } catch (e) {
      const fallback = this.lastGood.get(`${registry}${upstreamPath}`);
      if (fallback && this.outage(e)) return this.staleOf(fallback, registry, 'tags');
      if (this.outage(e) && !q) {
        // Never listed before, but we hold tags of this repository: list those.
        const tags = this.d.index.tagsOf(registry, repository);
        if (tags.length > 0) {
          const body = Buffer.from(JSON.stringify({ name: repository, tags }));
          return this.staleOf({ body, contentType: 'application/json', headers: {}, cache: 'stale' }, registry, 'tags');
        }
      }
      throw e;
    }
  }

  async referrers(registry: string, repository: string, digest: string, artifactType: string | undefined, clientPathPrefix: string): Promise<ListingResponse> {
    const q = artifactType !== undefined ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
    const upstreamPath = `/v2/${repository}/referrers/${digest}${q}`;
    let res: ListingResponse;
    try {
      res = await this.passThrough(registry, repository, upstreamPath, clientPathPrefix, 'MANIFEST_UNKNOWN');
    } catch (e) {
      const fallback = this.lastGood.get(`${registry}${upstreamPath}`);
      if (fallback && this.outage(e)) return this.staleOf(fallback, registry, 'referrers');
      throw e;
    }
    if (artifactType !== undefined && !/artifactType/i.test(res.headers['OCI-Filters-Applied'] ?? '')) {
      // The upstream ignored the filter: apply it here, and say so.
      try {
        const idx = JSON.parse(res.body.toString('utf8')) as { manifests?: Array<{ artifactType?: string }> };
        idx.manifests = (idx.manifests ?? []).filter((m) => m.artifactType === artifactType);
        res = { ...res, body: Buffer.from(JSON.stringify(idx)), headers: { ...res.headers, 'OCI-Filters-Applied': 'artifactType' } };
      } catch {
        throw new RegistryError('UNAVAILABLE', 'upstream referrers answer is not JSON', { status: 502 });
      }
    }
    return res;
  }

  private outage(e: unknown): boolean {
    if (e instanceof RegistryError) return e.status >= 500 || e.status === 429;
    return isOutage(e);
  }

  private staleOf(r: ListingResponse, registry: string, what: string): ListingResponse {
    this.d.metrics.staleServed.inc({ registry, reason: `${what}_unavailable` });
    this.d.logger.warn({ registry, what }, 'upstream unavailable: serving last known listing');
    return { ...r, cache: 'stale' };
  }

  private async passThrough(registry: string, repository: string, upstreamPath: string, clientPathPrefix: string, notFound: 'NAME_UNKNOWN' | 'MANIFEST_UNKNOWN'): Promise<ListingResponse> {
    const up = this.d.upstreams.get(registry);
    if (!up) throw new RegistryError('NAME_UNKNOWN', `registry ${registry} is not configured`);
    let res: UpstreamResponse;
    try {
      res = await up.request({ method: 'GET', path: upstreamPath, repository, headers: { accept: `application/json, ${MT.ociIndex}` } });
    } catch (e) {
      throw errorFromTransport(e, registry);
    }
    if (res.status !== 200) throw await errorFromUpstream(res, registry, notFound);
    const body = await readAll(res);
    const headers: Record<string, string> = {};
    const filters = res.headers['oci-filters-applied'];
    if (filters) headers['OCI-Filters-Applied'] = filters;
    const out: ListingResponse = {
      body,
      contentType: res.headers['content-type'] ?? 'application/json',
      headers,
      cache: 'bypass',
    };
    const link = res.headers['link'];
    if (link) {
      // `</v2/<repo>/tags/list?last=x&n=5>; rel="next"` -> the same query on the client's own path.
      const m = /<([^>]*)>(.*)/.exec(link);
      const target = m?.[1];
      if (target) {
        const qi = target.indexOf('?');
        out.link = `<${clientPathPrefix}${qi >= 0 ? target.slice(qi) : ''}>${m?.[2] ?? ''}`;
        headers['Link'] = out.link;
      }
    }
    this.lastGood.set(`${registry}${upstreamPath}`, out);
    return out;
  }
}
