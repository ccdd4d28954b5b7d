// A ContentSource that speaks the OCI Distribution pull API through a transport: the upstream
// registry (its RegistryClient: auth, redirects, retries, timeouts, minRate, breaker) or a peer
// (peer-source.ts), whose repositories live under a path prefix. HTTP answers become the OCI
// errors clients see (upstream-errors.ts); outages are marked so the chain may ask elsewhere.
import type { ContentVia } from '../cache-events.ts';
import { RegistryError } from '../errors.ts';
import { isDigest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES, upstreamAccept } from '../oci/media-types.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';
import { errorFromTransport, errorFromUpstream, isOutage } from '../pull-through/upstream-errors.ts';
import type { UpstreamRequest, UpstreamResponse } from '../upstream/registry-client.ts';
import { markOutage, type BlobHead, type BlobRef, type ContentSource, type ManifestHead, type ManifestRef, type RawManifest } from './content-source.ts';

/** What a RegistrySource sends its requests through (RegistryClient, PeerHttp). */
export interface Transport {
  request(req: UpstreamRequest): Promise<UpstreamResponse>;
  close(): Promise<void>;
}

export interface RegistrySourceOptions {
  name: string;
  via: ContentVia;
  transport: Transport;
  /** The repository path at this source for a (registry, repository) of ours. */
  pathOf: (registry: string, repository: string) => string;
  /** Names the source in error messages, e.g. `docker.io` or `peer us-east`. */
  label: string;
}

export function contentLength(res: UpstreamResponse): number | undefined {
  const cl = res.headers['content-length'];
  return cl !== undefined && /^\d+$/.test(cl) ? Number(cl) : undefined;
}

/** An ocirelay source's Ocirelay-Resolved-At (when it resolved the tag), ms since epoch. */
function resolvedAtOf(res: UpstreamResponse): number | undefined {
  const t = Date.parse(res.headers['ocirelay-resolved-at'] ?? '');
  return Number.isFinite(t) ? t : undefined;
}

async function readCapped(res: UpstreamResponse, cap: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const c of res.body as AsyncIterable<Buffer>) {
    n += c.length;
    if (n > cap) {
      res.body.destroy();
      throw new RegistryError('MANIFEST_INVALID', `manifest exceeds ${cap} bytes`, { status: 502 });
    }
    chunks.push(c);
  }
  return Buffer.concat(chunks);
}

export class RegistrySource implements ContentSource {
  readonly name: string;
  readonly via: ContentVia;
  readonly transport: Transport;

  constructor(private readonly o: RegistrySourceOptions) {
    this.name = o.name;
    this.via = o.via;
    this.transport = o.transport;
  }

  async openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number): Promise<FillSource> {
    const res = await this.send(ref, { method: 'GET', kind: 'blobs', reference: ref.digest, signal });
    if (res.status !== 200) throw await this.answerError(res, 'BLOB_UNKNOWN');
    const cl = contentLength(res);
    if (expectedSize !== undefined && Number.isSafeInteger(expectedSize) && expectedSize >= 0) {
      return { body: res.body, size: expectedSize, sizeFrom: 'descriptor', ...(cl !== undefined ? { contentLength: cl } : {}) };
    }
    return { body: res.body, size: cl, sizeFrom: 'content-length' };
  }

  async headBlob(ref: BlobRef): Promise<BlobHead> {
    const res = await this.send(ref, { method: 'HEAD', kind: 'blobs', reference: ref.digest });
    if (res.status !== 200) throw await this.answerError(res, 'BLOB_UNKNOWN');
    res.body.destroy();
    return { size: contentLength(res) };
  }

  async getManifest(ref: ManifestRef, accept: readonly string[]): Promise<RawManifest> {
    const res = await this.send(ref, { method: 'GET', kind: 'manifests', reference: ref.reference, accept });
    if (res.status !== 200) throw await this.answerError(res, 'MANIFEST_UNKNOWN');
    const cl = Number(res.headers['content-length']);
    if (Number.isFinite(cl) && cl > MAX_MANIFEST_BYTES) {
      res.body.destroy();
      throw new RegistryError('MANIFEST_INVALID', `manifest of ${cl} bytes exceeds the ${MAX_MANIFEST_BYTES}-byte limit`, { status: 502 });
    }
    const body = await readCapped(res, MAX_MANIFEST_BYTES);
    const resolvedAt = resolvedAtOf(res);
    return {
      body,
      contentType: res.headers['content-type'],
      claimedDigest: res.headers['docker-content-digest'],
      ...(resolvedAt !== undefined ? { resolvedAt } : {}),
    };
  }

  async headManifest(ref: ManifestRef, accept: readonly string[]): Promise<ManifestHead> {
    const res = await this.send(ref, { method: 'HEAD', kind: 'manifests', reference: ref.reference, accept });
    res.body.destroy();
    const resolvedAt = resolvedAtOf(res);
    return {
      status: res.status,
      digest: res.headers['docker-content-digest'],
      ...(resolvedAt !== undefined ? { resolvedAt } : {}),
      error: () => this.answerError(res, 'MANIFEST_UNKNOWN'),
    };
  }

  private async send(
    ref: { registry: string; repository: string },
    r: { method: 'GET' | 'HEAD'; kind: 'blobs' | 'manifests'; reference: string; accept?: readonly string[]; signal?: AbortSignal },
  ): Promise<UpstreamResponse> {
    const repository = this.o.pathOf(ref.registry, ref.repository);
    try {
      return await this.transport.request({
        method: r.method,
        path: `/v2/${repository}/${r.kind}/${r.reference}`,
        repository,
        ...(r.accept !== undefined ? { headers: { accept: upstreamAccept([...r.accept]) } } : {}),
        ...(r.signal !== undefined ? { signal: r.signal } : {}),
        // A 500 to a manifest request by digest may be about the digest a client chose, not the
        // source's health (Distribution answers 500 for a layer's digest): not a breaker failure.
        ...(r.kind === 'manifests' ? { contentSpecific500: isDigest(r.reference) } : {}),
      });
    } catch (e) {
      const mapped = errorFromTransport(e, this.o.label);
      return Promise.reject(isOutage(e) ? markOutage(mapped) : mapped);
    }
  }

  private async answerError(res: UpstreamResponse, notFound: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN'): Promise<RegistryError> {
    const e = await errorFromUpstream(res, this.o.label, notFound);
    return isOutage(undefined, res.status) ? markOutage(e) : e;
  }
}
