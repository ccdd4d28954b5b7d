// The OCI push client of one peer, over undici. An ocirelay peer takes content in the
// path-prefix form /v2/<registry>/<repository>/... with `Authorization: Bearer <token>`; a
// registry peer under /v2/<prefix>/<registry>/<repository>/... with Basic credentials, or a
// bearer token from its realm when it answers with a token challenge (Distribution in token
// mode). Blobs are streamed from the local cache file, never buffered: monolithic (POST, then
// PUT ?digest=) up to CHUNKED_FROM bytes, chunked (PATCH with Content-Range) beyond.
import type { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import type { PeerConfig } from '../config-replication.ts';
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.ts';
import type { Digest } from '../oci/digest.ts';
import { Agent, request } from '../upstream/undici.ts';
import { parseWwwAuthenticate } from '../upstream/www-authenticate.ts';

/** Blobs from this size go up in chunks (a broken connection then costs one chunk, not the blob). */
export const CHUNKED_FROM = 64 * 1024 * 1024;
const CHUNK_BYTES = 16 * 1024 * 1024;

export type PeerFailure = 'unreachable' | 'http_5xx' | 'auth' | 'rejected';

/** A failed peer request. `peerWide`: the peer as a whole is unwell (back off all its jobs). */
export class PeerError extends Error {
  constructor(
    message: string,
    readonly reason: PeerFailure,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'PeerError';
  }

  get peerWide(): boolean {
    return this.reason !== 'rejected';
  }
}

type Response = Dispatcher.ResponseData;

export class PeerClient {
  private readonly agent: Dispatcher;
  private readonly base: URL;
  /** Bearer tokens from a registry peer's realm, by scope. */
  private readonly tokens = new Map<string, { token: string; until: number }>();
  private readonly closing = new AbortController();

  constructor(
    readonly peer: PeerConfig,
    private readonly userAgent: string,
  ) {
    this.base = new URL(peer.url);
    this.agent = new Agent({ connect: { timeout: 10_000 }, headersTimeout: 60_000, bodyTimeout: 120_000, connections: 16 });
  }

  /** The repository as the peer names it. */
  repoPath(registry: string, repository: string): string {
    const prefix = this.peer.kind === 'registry' && this.peer.prefix ? `${this.peer.prefix}/` : '';
    return `${prefix}${registry}/${repository}`;
  }

  async hasBlob(repo: string, digest: Digest): Promise<boolean> {
    const res = await this.send(repo, 'HEAD', `blobs/${digest}`);
    return this.presence(res, `HEAD blob ${digest}`);
  }

  async hasManifest(repo: string, reference: string): Promise<boolean> {
    const res = await this.send(repo, 'HEAD', `manifests/${reference}`, { headers: { accept: DEFAULT_MANIFEST_ACCEPT.join(', ') } });
    return this.presence(res, `HEAD manifest ${reference}`);
  }

  /**
   * Upload a blob: a cross-repository mount from `mountFrom` first if given (the peer may
   * refuse it and open an upload instead), then monolithic or chunked. `open(start, end)`
   * streams bytes [start, end] of the local file.
   */
  async uploadBlob(repo: string, digest: Digest, size: number, open: (start: number, end: number) => Promise<Readable>, mountFrom?: string): Promise<'mounted' | 'uploaded'> {
    const query = mountFrom ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(mountFrom)}` : '';
    const started = await this.send(repo, 'POST', `blobs/uploads/${query}`, { headers: { 'content-length': '0' } });
    await started.body.dump();
    if (started.statusCode === 201 && mountFrom) return 'mounted';
    if (started.statusCode !== 202) throw this.failure(started.statusCode, `POST blob upload for ${digest}`);
    let location = this.location(started, 'POST blob upload');
    if (size >= CHUNKED_FROM) {
      for (let start = 0; start < size; start += CHUNK_BYTES) {
        const end = Math.min(size, start + CHUNK_BYTES) - 1;
        const res = await this.sendUrl(location, repo, 'PATCH', {
          body: await open(start, end),
          headers: { 'content-type': 'application/octet-stream', 'content-length': String(end - start + 1), 'content-range': `${start}-${end}` },
        });
        await res.body.dump();
        if (res.statusCode !== 202) throw this.failure(res.statusCode, `PATCH ${start}-${end} of ${digest}`);
        location = this.location(res, 'PATCH blob upload');
      }
      const done = await this.sendUrl(withDigest(location, digest), repo, 'PUT', { headers: { 'content-length': '0' } });
      await done.body.dump();
      if (done.statusCode !== 201) throw this.failure(done.statusCode, `PUT (close) upload of ${digest}`);
      return 'uploaded';
    }
    const body = size > 0 ? await open(0, size - 1) : '';
    const res = await this.sendUrl(withDigest(location, digest), repo, 'PUT', {
      body,
      headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    });
    await res.body.dump();
    if (res.statusCode !== 201) throw this.failure(res.statusCode, `PUT blob ${digest}`);
    return 'uploaded';
  }

  async putManifest(repo: string, reference: string, body: Buffer, mediaType: string, headers: Record<string, string> = {}): Promise<void> {
    const res = await this.send(repo, 'PUT', `manifests/${reference}`, {
      body,
      headers: { ...headers, 'content-type': mediaType, 'content-length': String(body.length) },
    });
    const text = await res.body.text();
    if (res.statusCode !== 201 && res.statusCode !== 200) throw this.failure(res.statusCode, `PUT manifest ${reference}: ${text.slice(0, 300)}`);
  }

  /** The receiver's own endpoints (`/v2/<registry>/<repository>/_ocirelay/...`): pins, freezes. */
  async ocirelayCall(repo: string, method: 'PUT' | 'DELETE', sub: string, json: unknown): Promise<void> {
    const body = Buffer.from(JSON.stringify(json));
    const res = await this.send(repo, method, `_ocirelay/${sub}`, { body, headers: { 'content-type': 'application/json', 'content-length': String(body.length) } });
    const text = await res.body.text();
    // Removing what the peer does not have is done.
    if (method === 'DELETE' && res.statusCode === 404) return;
    if (res.statusCode < 200 || res.statusCode > 299) throw this.failure(res.statusCode, `${method} _ocirelay/${sub}: ${text.slice(0, 300)}`);
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.agent.close().catch(() => undefined);
  }

  private presence(res: Response, what: string): boolean {
    void res.body.dump();
    if (res.statusCode === 200) return true;
    if (res.statusCode === 404) return false;
    throw this.failure(res.statusCode, what);
  }

  private failure(status: number, what: string): PeerError {
    const reason: PeerFailure = status === 401 || status === 403 ? 'auth' : status >= 500 || status === 429 ? 'http_5xx' : 'rejected';
    return new PeerError(`peer ${this.peer.name}: ${what}: HTTP ${status}`, reason, status);
  }

  private location(res: Response, what: string): URL {
    const loc = res.headers.location;
    const v = Array.isArray(loc) ? loc[0] : loc;
    if (!v) throw new PeerError(`peer ${this.peer.name}: ${what}: no Location`, 'rejected', res.statusCode);
    return new URL(v, this.base);
  }

  private send(repo: string, method: Dispatcher.HttpMethod, sub: string, opts: { body?: Buffer | Readable | string; headers?: Record<string, string> } = {}): Promise<Response> {
    const basePath = this.base.pathname.replace(/\/+$/, '');
    return this.sendUrl(new URL(`${basePath}/v2/${repo}/${sub}`, this.base), repo, method, opts);
  }

  /**
   * One request with the peer's credentials; a registry's token challenge is answered once
   * (only for bodies that can be sent again: a streamed blob is retried by the job instead,
   * with the token obtained by the job's first HEAD by then).
   */
  private async sendUrl(url: URL, repo: string, method: Dispatcher.HttpMethod, opts: { body?: Buffer | Readable | string; headers?: Record<string, string> } = {}): Promise<Response> {
    const scope = `repository:${repo}:pull,push`;
    const headers: Record<string, string> = { 'user-agent': this.userAgent, ...opts.headers };
    // Credentials go to the peer's own origin only (a Location may point elsewhere).
    const sameOrigin = url.origin === this.base.origin;
    const auth = sameOrigin ? this.authorization(scope) : undefined;
    if (auth) headers.authorization = auth;
    let res: Response;
    try {
      res = await request(url, { dispatcher: this.agent, method, headers, body: opts.body ?? null, signal: this.closing.signal });
    } catch (e) {
      throw new PeerError(`peer ${this.peer.name}: ${method} ${url.pathname}: ${(e as Error).message}`, 'unreachable');
    }
    const replayable = opts.body === undefined || typeof opts.body === 'string' || Buffer.isBuffer(opts.body);
    if (res.statusCode === 401 && sameOrigin && this.peer.kind === 'registry' && replayable) {
      const challenge = parseWwwAuthenticate(headerOf(res, 'www-authenticate')).find((c) => c.scheme === 'bearer');
      if (challenge?.params.realm) {
        await res.body.dump();
        await this.fetchToken(challenge.params.realm, challenge.params.service, scope);
        headers.authorization = this.authorization(scope)!;
        try {
          res = await request(url, { dispatcher: this.agent, method, headers, body: opts.body ?? null, signal: this.closing.signal });
        } catch (e) {
          throw new PeerError(`peer ${this.peer.name}: ${method} ${url.pathname}: ${(e as Error).message}`, 'unreachable');
        }
      }
    }
    return res;
  }

  private authorization(scope: string): string | undefined {
    if (this.peer.kind === 'ocirelay') return this.peer.token !== undefined ? `Bearer ${this.peer.token}` : undefined;
    const t = this.tokens.get(scope);
    if (t && t.until > Date.now()) return `Bearer ${t.token}`;
    if (this.peer.username !== undefined) return `Basic ${Buffer.from(`${this.peer.username}:${this.peer.password ?? ''}`).toString('base64')}`;
    return undefined;
  }

  private async fetchToken(realm: string, service: string | undefined, scope: string): Promise<void> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw new PeerError(`peer ${this.peer.name}: token realm is not a URL`, 'auth');
    }
    // The peer's credentials go only over https or back to the peer's own host.
    if (url.protocol !== 'https:' && url.hostname !== this.base.hostname) throw new PeerError(`peer ${this.peer.name}: token realm ${url.origin} refused: credentials go over https only`, 'auth');
    if (service) url.searchParams.set('service', service);
    url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { 'user-agent': this.userAgent };
    if (this.peer.username !== undefined) headers.authorization = `Basic ${Buffer.from(`${this.peer.username}:${this.peer.password ?? ''}`).toString('base64')}`;
    let res: Response;
    try {
      res = await request(url, { dispatcher: this.agent, method: 'GET', headers, signal: this.closing.signal });
    } catch (e) {
      throw new PeerError(`peer ${this.peer.name}: token endpoint: ${(e as Error).message}`, 'unreachable');
    }
    const text = await res.body.text();
    if (res.statusCode !== 200) throw new PeerError(`peer ${this.peer.name}: token endpoint answered ${res.statusCode}`, 'auth', res.statusCode);
    let token: unknown;
    let expiresIn: unknown;
    try {
      const b = JSON.parse(text) as { token?: unknown; access_token?: unknown; expires_in?: unknown };
      token = b.token ?? b.access_token;
      expiresIn = b.expires_in;
    } catch {
      // handled below
    }
    if (typeof token !== 'string' || token === '') throw new PeerError(`peer ${this.peer.name}: token endpoint sent no token`, 'auth');
    const lifetimeS = typeof expiresIn === 'number' && expiresIn > 0 ? expiresIn : 60;
    this.tokens.set(scope, { token, until: Date.now() + lifetimeS * 900 });
    if (this.tokens.size > 1000) this.tokens.delete(this.tokens.keys().next().value!);
  }
}

function headerOf(res: Response, name: string): string | undefined {
  const v = res.headers[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

function withDigest(location: URL, digest: Digest): URL {
  const u = new URL(location.href);
  u.searchParams.set('digest', digest);
  return u;
}
