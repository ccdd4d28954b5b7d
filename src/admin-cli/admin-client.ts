// The HTTP client of the admin API (docs/admin-api.md): one method per endpoint, typed
// answers, and three kinds of failure the commands turn into exit codes: the API answered
// with an OCI error (AdminApiError), it could not be reached (AdminUnreachableError), or it
// answered something that is not the admin API's JSON (AdminProtocolError).

// The server's own type (a type-only import: no server code is loaded by the CLI).
import type { CachedImage } from '../admin/cache-admin.ts';
import type { HistoryRecord } from '../storage/cache-index.ts';
import type { ReplicationStatus, PeerStatus } from '../replication/status.ts';
import type { BackfillAnswer } from '../replication/replication-admin.ts';
export type { CachedImage, ReplicationStatus, PeerStatus, BackfillAnswer };

export interface Stats {
  requests: { hit: number; miss: number; coalesced: number; stale: number };
  hitRatio: number;
  bytesServed: { cache: number; upstream: number };
  upstreamBytes: number;
  egressSavedBytes: number;
  disk: { bytes: number; maxBytes: number; entries: number; pinnedBytes: number; writable: boolean };
  memory: { bytes: number; maxBytes: number; entries: number };
  evictions: { unreferenced: number; lru: number };
  rateLimits: Record<string, { remaining: number; limit: number }>;
}

export interface PinAnswer {
  pinned: { image: string; digest: string; digests: string[]; bytes: number };
  frozen: { tag: string; digest: string } | null;
}

export interface UnpinAnswer {
  unpinned: number;
  unfrozen: boolean;
}

export interface FreezeAnswer {
  frozen: { registry: string; repository: string; tag: string; digest: string };
}

export interface UnfreezeAnswer {
  unfrozen: boolean;
}

export type JobState = 'running' | 'done' | 'failed';
export type JobImageState = 'pending' | 'running' | 'done' | 'failed';

export interface PrefetchJob {
  id: string;
  state: JobState;
  total: number;
  done: number;
  failed: number;
  bytesTotal: number;
  bytesDone: number;
  images: Array<{ image: string; state: JobImageState; digest?: string; bytes?: number; error?: string }>;
  createdAt: string;
  finishedAt: string | null;
}

export interface JobAnswer {
  job: PrefetchJob;
}

export interface PurgeAnswer {
  removedManifests: number;
  removedBlobs: number;
  freedBytes: number;
}

/** The server's history record, with the time as ISO text (as the API sends it). */
export type HistoryEntry = Omit<HistoryRecord, 'time'> & { time: string };

export interface OciError {
  code: string;
  message: string;
}

/** The admin API answered with an error status; `errors` are its OCI errors. */
export class AdminApiError extends Error {
  readonly status: number;
  readonly errors: OciError[];
  constructor(status: number, errors: OciError[]) {
    super(errors.map((e) => `${e.code}: ${e.message}`).join('; '));
    this.name = 'AdminApiError';
    this.status = status;
    this.errors = errors;
  }
}

/** No HTTP answer at all: connection refused, unknown host, connection lost. */
export class AdminUnreachableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AdminUnreachableError';
  }
}

/** An answer that is not the admin API's JSON (a proxy's HTML page, another server, a bad shape). */
export class AdminProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AdminProtocolError';
  }
}

/** The request got no answer within the command's deadline. */
export class AdminTimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'AdminTimeoutError';
  }
}

export interface AdminClientOptions {
  /** `http(s)://host:port[/prefix]`, already validated by parseAdminUrl. */
  baseUrl: URL;
  token?: string;
  /** Aborts every request: the command's deadline or the user's Ctrl-C. */
  signal?: AbortSignal;
}

/**
 * The admin API's address -> URL; a bare `host:port` means http. Throws a plain Error naming
 * the problem and where the value came from (`source`: `--admin` or `OCIRELAY_ADMIN`).
 */
export function parseAdminUrl(value: string, source = '--admin'): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(value) ? value : `http://${value}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new Error(`${source}: "${value}" is not a URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new Error(`${source}: "${value}" is not an http:// or https:// URL`);
  if (url.username || url.password) throw new Error(`${source}: the URL must not carry credentials (use --token)`);
  if (url.search || url.hash) throw new Error(`${source}: "${value}" must not have a query or fragment`);
  return url;
}

type Query = Record<string, string | undefined>;

export class AdminClient {
  readonly baseUrl: URL;
  readonly #token: string | undefined;
  readonly #signal: AbortSignal | undefined;

  constructor(opts: AdminClientOptions) {
    this.baseUrl = opts.baseUrl;
    this.#token = opts.token;
    this.#signal = opts.signal;
  }

  listImages(filter: { registry?: string; repository?: string }): Promise<{ images: CachedImage[] }> {
    return this.#request('GET', '/api/v1/images', { query: filter, expect: (b) => Array.isArray(b.images) });
  }

  stats(): Promise<Stats> {
    return this.#request('GET', '/api/v1/stats', { expect: (b) => typeof b.requests === 'object' && b.requests !== null });
  }

  pin(body: { image: string; platforms?: string[]; freeze: boolean }): Promise<PinAnswer> {
    return this.#request('POST', '/api/v1/pin', { body, expect: (b) => isObject(b.pinned) });
  }

  unpin(body: { image: string; unfreeze: boolean }): Promise<UnpinAnswer> {
    return this.#request('POST', '/api/v1/unpin', { body, expect: (b) => typeof b.unpinned === 'number' });
  }

  freeze(body: { image: string; digest?: string }): Promise<FreezeAnswer> {
    return this.#request('POST', '/api/v1/freeze', { body, expect: (b) => isObject(b.frozen) });
  }

  unfreeze(body: { image: string }): Promise<UnfreezeAnswer> {
    return this.#request('POST', '/api/v1/unfreeze', { body, expect: (b) => typeof b.unfrozen === 'boolean' });
  }

  startPrefetch(body: { images: string[]; platforms?: string[] }): Promise<JobAnswer> {
    return this.#request('POST', '/api/v1/prefetch', { body, expect: isJobAnswer });
  }

  prefetchJob(id: string): Promise<JobAnswer> {
    return this.#request('GET', `/api/v1/prefetch/${encodeURIComponent(id)}`, { expect: isJobAnswer });
  }

  purge(body: { image: string; force: boolean } | { repository: string; force: boolean }): Promise<PurgeAnswer> {
    return this.#request('POST', '/api/v1/purge', { body, expect: (b) => typeof b.removedManifests === 'number' });
  }

  replication(): Promise<ReplicationStatus> {
    return this.#request('GET', '/api/v1/replication', { expect: (b) => Array.isArray(b.peers) });
  }

  replicate(body: { peer: string; all: true } | { peer: string; images: string[] }): Promise<BackfillAnswer> {
    return this.#request('POST', '/api/v1/replicate', { body, expect: (b) => typeof b.queued === 'number' });
  }

  history(query: { image: string } | { repository: string }): Promise<{ history: HistoryEntry[] }> {
    return this.#request('GET', '/api/v1/history', { query, expect: (b) => Array.isArray(b.history) });
  }

  async #request<T>(method: 'GET' | 'POST', path: string, opts: { query?: Query; body?: unknown; expect: (b: Record<string, unknown>) => boolean }): Promise<T> {
    const url = new URL(this.baseUrl.href);
    url.pathname = `${this.baseUrl.pathname.replace(/\/+$/, '')}${path}`;
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.set(k, v);
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#token !== undefined) headers.authorization = `Bearer ${this.#token}`;
    if (opts.body !== undefined) headers['content-type'] = 'application/json';
    const where = `${method} ${url.pathname}`;

    let res: Response;
    let text: string;
    try {
      res = await fetch(url, {
        method,
        headers,
        ...(opts.body !== undefined ? { body: JSON.stringify(opts.body) } : {}),
        ...(this.#signal ? { signal: this.#signal } : {}),
        redirect: 'manual',
      });
      text = await res.text();
    } catch (e) {
      if (this.#signal?.aborted) throw abortReason(this.#signal, where);
      throw new AdminUnreachableError(`admin API unreachable at ${this.baseUrl.origin}: ${describeNetworkError(e)}`);
    }

    let body: unknown;
    try {
      body = text === '' ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (res.status >= 400) throw new AdminApiError(res.status, ociErrors(body) ?? [{ code: `HTTP ${res.status}`, message: snippet(text) || res.statusText }]);
    if (!isObject(body) || !opts.expect(body)) {
      throw new AdminProtocolError(`unexpected answer to ${where} (HTTP ${res.status}${res.headers.get('content-type') ? `, ${res.headers.get('content-type')}` : ''}): ${snippet(text) || '(empty body)'}`);
    }
    return body as T;
  }
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isJobAnswer(b: Record<string, unknown>): boolean {
  const job = b.job;
  return isObject(job) && typeof job.id === 'string' && typeof job.state === 'string' && Array.isArray(job.images);
}

function ociErrors(body: unknown): OciError[] | undefined {
  if (!isObject(body) || !Array.isArray(body.errors) || body.errors.length === 0) return undefined;
  return body.errors.map((e: unknown) => ({
    code: isObject(e) && typeof e.code === 'string' ? e.code : 'UNKNOWN',
    message: isObject(e) && typeof e.message === 'string' ? e.message : '',
  }));
}

function snippet(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length > 200 ? `${flat.slice(0, 200)}...` : flat;
}

function abortReason(signal: AbortSignal, where: string): Error {
  const reason: unknown = signal.reason;
  if (reason instanceof AdminTimeoutError) return new AdminTimeoutError(`${where}: ${reason.message}`);
  return reason instanceof Error ? reason : new Error(`${where}: aborted`);
}

// undici's "fetch failed" hides the useful part (ECONNREFUSED 127.0.0.1:5050) in `cause`.
function describeNetworkError(e: unknown): string {
  const parts: string[] = [];
  let cur: unknown = e;
  for (let depth = 0; cur instanceof Error && depth < 4; depth++) {
    const code = (cur as NodeJS.ErrnoException).code;
    parts.push(code && !cur.message.includes(code) ? `${cur.message} (${code})` : cur.message);
    cur = cur.cause;
  }
  const useful = parts.filter((p) => p !== 'fetch failed');
  return (useful.length > 0 ? useful : parts).join(': ') || String(e);
}
