// The push side of the pull listener, present only with replication.accept: OCI blob uploads
// (monolithic, chunked, cross-repository mount), manifest pushes (a tag push carries
// Ocirelay-Resolved-At), frozen tags and pins, and a peer's HEAD answered from this cache alone
// (a replication peer asks "do you have it", never "ask your upstream"). Every write needs one
// of the accepted Bearer tokens. v2-routes hands each request here first; what this does not
// take (reads without a peer token, methods it does not know) goes on to the read API.
import type { Context } from 'hono';
import { RegistryError } from '../errors.ts';
import type { AppEnv } from '../http/request-context.ts';
import { respond } from '../http/respond.ts';
import type { Logger } from '../logger.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { MAX_MANIFEST_BYTES } from '../oci/media-types.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import { ReceiveAuth } from './receive-auth.ts';
import { bodyOf, contentLength, readCapped } from './receive-body.ts';
import { ReceiveMetrics } from './receive-metrics.ts';
import { parsePushPath, parseTime, splitName, type PushTarget } from './receive-paths.ts';
import { PinRoutes } from './receive-pins.ts';
import { ReceiveStore, type ReceiveStoreDeps, type Repo, type StoreResult } from './receive-store.ts';
import { UploadSessions, rangeHeaders, type UploadSession } from './upload-sessions.ts';

export const RESOLVED_AT_HEADER = 'Ocirelay-Resolved-At';

export interface PushReceiverDeps {
  accept: ReadonlyArray<{ readonly name: string; readonly token: string }>;
  registries: ReadonlySet<string> | ReadonlyMap<string, unknown>;
  sessions: UploadSessions;
  store: ReceiveStore;
  index: CacheIndex;
  logger: Logger;
  /** Counts each received object (ocirelay_replication_received_total{peer,kind,result}). */
  onReceived?: (peer: string, kind: ReceivedKind, result: ReceivedResult) => void;
}

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };
const WRITES: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);
/** Uploads in progress at once, over all peers (the replicator pushes replication.concurrency at a time). */
const MAX_UPLOAD_SESSIONS = 256;
/** An upload untouched this long is abandoned: its temp file is deleted. */
const UPLOAD_IDLE_MS = 10 * 60_000;

export type ReceivedKind = 'blob' | 'mount' | 'manifest' | 'tag' | 'freeze' | 'pin' | 'upload';
export type ReceivedResult = StoreResult | 'mounted' | 'refused' | 'digest_invalid' | 'error' | 'unauthorized' | 'denied';


const basePath = (r: Repo) => `/v2/${r.registry}/${r.repository}`;

export class PushReceiver {
  private readonly auth: ReceiveAuth;
  private readonly pins: PinRoutes;

  constructor(private readonly d: PushReceiverDeps) {
    this.auth = new ReceiveAuth(d.accept);
    this.pins = new PinRoutes({ store: d.store, logger: d.logger, count: (peer, kind, result) => this.count(peer, kind, result) });
  }

  /** Shutdown: abandon uploads in progress (their temp files go). */
  close(): Promise<void> {
    return this.d.sessions.close();
  }

  /** Answer a request that is ours; undefined hands it on to the read API. */
  async handle(c: Context<AppEnv>, rest: string): Promise<Response | undefined> {
    const method = c.req.method;
    const authorization = c.req.header('authorization');
    if (method === 'GET' || method === 'HEAD') {
      // Reads are the pull API's, except a peer asking about this cache itself. A peer's
      // failover read (Ocirelay-Failover) carries the same token but is an ordinary read: this
      // region's cache, then its upstream (sources/peer-http.ts).
      if (c.req.header('ocirelay-failover') !== undefined) return undefined;
      const peer = this.auth.peerOf(authorization);
      if (peer === undefined) return undefined;
      let t: PushTarget | undefined;
      try {
        t = parsePushPath(rest, this.d.registries);
      } catch {
        return undefined;
      }
      if (t?.kind === 'upload' && t.session !== '') return this.uploadStatus(c, t);
      if (method === 'HEAD' && t?.kind === 'blob') return this.headBlob(c, t);
      if (method === 'HEAD' && t?.kind === 'manifest') return this.headManifest(c, t);
      return undefined;
    }
    if (!WRITES.has(method)) return undefined;
    const info = c.get('info');
    info.kind = 'push';
    let peer: string;
    try {
      peer = this.auth.require(authorization);
    } catch (e) {
      this.count('none', 'upload', e instanceof RegistryError && e.code === 'DENIED' ? 'denied' : 'unauthorized');
      throw e;
    }
    const t = parsePushPath(rest, this.d.registries);
    if (!t) throw new RegistryError('UNSUPPORTED', `${method} is not supported on this path`, { headers: { Allow: 'GET, HEAD' } });
    info.registry = t.registry;
    info.repository = t.repository;
    info.source = `peer:${peer}`;
    const kind: ReceivedKind = t.kind === 'upload' ? 'blob' : t.kind === 'blob' ? 'blob' : t.kind;
    try {
      switch (t.kind) {
        case 'upload':
          return await this.upload(c, peer, t);
        case 'manifest':
          if (method !== 'PUT') break;
          return await this.putManifest(c, peer, t);
        case 'freeze':
          if (method === 'PUT') return await this.pins.freeze(c, peer, t);
          if (method === 'DELETE') return await this.pins.unfreeze(c, peer, t);
          break;
        case 'pin':
          if (method === 'PUT') return await this.pins.pin(c, peer, t);
          if (method === 'DELETE') return await this.pins.unpin(c, peer, t);
          break;
        case 'blob':
          break;
      }
    } catch (e) {
      const code = e instanceof RegistryError ? e.code : 'UNKNOWN';
      const status = e instanceof RegistryError ? e.status : 500;
      this.count(peer, kind, code === 'DIGEST_INVALID' ? 'digest_invalid' : status < 500 ? 'refused' : 'error');
      throw e;
    }
    throw new RegistryError('UNSUPPORTED', `${method} is not supported on this path`);
  }

  private count(peer: string, kind: ReceivedKind, result: ReceivedResult): void {
    this.d.onReceived?.(peer, kind, result);
  }

  // ---- blobs -------------------------------------------------------------------------

  private async upload(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'upload' }): Promise<Response> {
    const method = c.req.method;
    const q = new URL(c.req.url).searchParams;
    if (t.session === '') {
      if (method !== 'POST') throw new RegistryError('UNSUPPORTED', `${method} needs an upload session`);
      const mount = q.get('mount');
      const from = q.get('from');
      const mountDigest = mount === null ? undefined : parseDigest(mount);
      if (mountDigest && from !== null && this.mountable(t, from, mountDigest)) {
        this.count(peer, 'mount', 'mounted');
        return respond(c, 201, { ...API_VERSION, Location: `${basePath(t)}/blobs/${mountDigest}`, 'Docker-Content-Digest': mountDigest, 'Content-Length': '0' }, undefined);
      }
      const digestParam = q.get('digest');
      const s = await this.d.sessions.start(t.registry, t.repository);
      if (digestParam !== null && mount === null) {
        // Monolithic: the whole blob in this request.
        const digest = this.digestParam(digestParam, s);
        await this.d.sessions.append(s, bodyOf(c), undefined, contentLength(c));
        return this.finish(c, peer, t, s, digest);
      }
      return respond(c, 202, { ...API_VERSION, Location: `${basePath(t)}/blobs/uploads/${s.id}`, ...rangeHeaders(s), 'Content-Length': '0' }, undefined);
    }
    const s = this.d.sessions.get(t.session, t.registry, t.repository);
    switch (method) {
      case 'PATCH': {
        const start = this.contentRangeStart(c, s);
        await this.d.sessions.append(s, bodyOf(c), start, contentLength(c));
        return respond(c, 202, { ...API_VERSION, Location: `${basePath(t)}/blobs/uploads/${s.id}`, ...rangeHeaders(s), 'Content-Length': '0' }, undefined);
      }
      case 'PUT': {
        const digest = this.digestParam(q.get('digest') ?? '', s);
        await this.d.sessions.append(s, bodyOf(c), undefined, contentLength(c));
        return this.finish(c, peer, t, s, digest);
      }
      case 'DELETE':
        await this.d.sessions.abort(s);
        return respond(c, 204, { ...API_VERSION }, undefined);
      default:
        throw new RegistryError('UNSUPPORTED', `${method} is not supported on an upload`);
    }
  }

  /** `from` as the URL names repositories (`<registry>/<repository>`), or a bare repository of the same registry. */
  private mountable(t: Repo, from: string, digest: Digest): boolean {
    let repo: string;
    try {
      const f = splitName(from, this.d.registries);
      if (f.registry !== t.registry) return false;
      repo = f.repository;
    } catch {
      repo = from;
    }
    return this.d.store.mount(t, repo, digest);
  }

  private digestParam(v: string, s: UploadSession): Digest {
    const d = parseDigest(v);
    if (d) return d;
    void this.d.sessions.abort(s);
    throw new RegistryError('DIGEST_INVALID', v === '' ? 'finishing an upload needs ?digest=' : `unsupported or malformed digest "${v.slice(0, 200)}"`);
  }

  private contentRangeStart(c: Context<AppEnv>, s: UploadSession): number | undefined {
    const v = c.req.header('content-range');
    if (v === undefined) return undefined;
    const m = /^(?:bytes[ =])?(\d+)-(\d+)$/.exec(v.trim());
    const len = contentLength(c);
    if (!m || Number(m[2]) < Number(m[1]) || (len !== undefined && Number(m[2]) - Number(m[1]) + 1 !== len)) {
      throw new RegistryError('RANGE_INVALID', `unusable Content-Range "${v.slice(0, 100)}"`, { headers: rangeHeaders(s) });
    }
    return Number(m[1]);
  }

  private async finish(c: Context<AppEnv>, peer: string, t: Repo, s: UploadSession, digest: Digest): Promise<Response> {
    const up = await this.d.sessions.finish(s);
    const result = await this.d.store.commitBlob(peer, t, up, digest);
    this.count(peer, 'blob', result);
    this.d.logger.debug({ peer, ...t, digest, size: up.size, result }, 'received blob');
    return respond(c, 201, { ...API_VERSION, Location: `${basePath(t)}/blobs/${digest}`, 'Docker-Content-Digest': digest, 'Content-Length': '0' }, undefined);
  }

  private uploadStatus(c: Context<AppEnv>, t: PushTarget & { kind: 'upload' }): Response {
    const s = this.d.sessions.get(t.session, t.registry, t.repository);
    return respond(c, 204, { ...API_VERSION, Location: `${basePath(t)}/blobs/uploads/${s.id}`, ...rangeHeaders(s) }, undefined);
  }

  private headBlob(c: Context<AppEnv>, t: PushTarget & { kind: 'blob' }): Response {
    const info = c.get('info');
    info.kind = 'peer_head';
    info.registry = t.registry;
    info.repository = t.repository;
    const size = this.d.store.blobHere(t, t.digest);
    if (size === undefined) throw new RegistryError('BLOB_UNKNOWN', 'blob not held here');
    return respond(c, 200, { ...API_VERSION, 'Content-Type': 'application/octet-stream', 'Content-Length': String(size), 'Docker-Content-Digest': t.digest }, undefined);
  }

  private headManifest(c: Context<AppEnv>, t: PushTarget & { kind: 'manifest' }): Response {
    const { index } = this.d;
    const info = c.get('info');
    info.kind = 'peer_head';
    info.registry = t.registry;
    info.repository = t.repository;
    const byDigest = parseDigest(t.reference);
    const tag = byDigest ? undefined : index.tag(t.registry, t.repository, t.reference);
    const digest = byDigest ?? index.frozen(t.registry, t.repository, t.reference)?.digest ?? tag?.digest;
    const meta = digest ? index.manifestMeta(digest) : undefined;
    if (!digest || !meta || this.d.store.blobHere(t, digest) === undefined) throw new RegistryError('MANIFEST_UNKNOWN', 'manifest not held here');
    const headers: Record<string, string> = { ...API_VERSION, 'Content-Type': meta.mediaType, 'Content-Length': String(meta.size), 'Docker-Content-Digest': digest };
    if (tag && tag.digest === digest) headers[RESOLVED_AT_HEADER] = new Date(tag.checkedAt).toISOString();
    return respond(c, 200, headers, undefined);
  }

  // ---- manifests ---------------------------------------------------------------------

  private async putManifest(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'manifest' }): Promise<Response> {
    const header = c.req.header(RESOLVED_AT_HEADER);
    const resolvedAt = header === undefined ? undefined : parseTime(header);
    if (header !== undefined && resolvedAt === undefined) throw new RegistryError('MANIFEST_INVALID', `${RESOLVED_AT_HEADER} is not an RFC 3339 time`);
    const body = await readCapped(c, MAX_MANIFEST_BYTES);
    const r = await this.d.store.putManifest({ peer, registry: t.registry, repository: t.repository, reference: t.reference, body, contentType: c.req.header('content-type'), resolvedAt });
    this.count(peer, 'manifest', r.result);
    if (r.tag) this.count(peer, 'tag', r.tag);
    this.d.logger.debug({ peer, ...t, digest: r.digest, result: r.result, tag: r.tag }, 'received manifest');
    return respond(c, 201, { ...API_VERSION, Location: `${basePath(t)}/manifests/${r.digest}`, 'Docker-Content-Digest': r.digest, 'Content-Length': '0' }, undefined);
  }

}

/** The receiver for a config: undefined without replication.accept (writes then stay 405). */
export function createPushReceiver(o: {
  accept: PushReceiverDeps['accept'];
  registries: PushReceiverDeps['registries'];
  tmpDir: string;
  maxBlobBytes: number;
  store: ReceiveStoreDeps;
}): PushReceiver | undefined {
  if (o.accept.length === 0) return undefined;
  const counter = ReceiveMetrics.of(o.store.metrics).received;
  const sessions = new UploadSessions({
    tmpDir: o.tmpDir,
    maxSessions: MAX_UPLOAD_SESSIONS,
    maxBytes: o.maxBlobBytes,
    idleMs: UPLOAD_IDLE_MS,
    health: o.store.health,
  });
  return new PushReceiver({
    accept: o.accept,
    registries: o.registries,
    sessions,
    store: new ReceiveStore(o.store),
    index: o.store.index,
    logger: o.store.logger,
    onReceived: (peer, kind, result) => counter.inc({ peer, kind, result }),
  });
}
