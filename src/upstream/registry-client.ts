// Client for one upstream registry (Docker Hub, ghcr.io, quay.io, a private one).
//
// request() does one logical GET or HEAD (each hop one undici request on this client's own
// dispatchers, upstream-dispatchers.ts) and hides the protocol around it:
//   circuit breaker -> auth (cached bearer token, or Basic once the registry asked for it)
//   -> redirects (followed by hand, Authorization only to the registry's own origin; another
//      host only over https, or http when the registry itself is http, and only at a public
//      address unless listed in trustedHosts; every hop checked)
//   -> retries (transport errors and 502/503/504 before any body byte reached the caller;
//      one short 429 Retry-After) -> on 401 a token fetch (shared per scope) and one retry.
// Every HTTP status comes back as a response; UpstreamError means none usable arrived.
import type { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { isNonPublicHostname, TrustedHosts } from './address-policy.ts';
import { CircuitBreaker, type CircuitState } from './circuit-breaker.ts';
import { discard, elapsed, flattenHeaders, headerValue, leadingNumber, nonEmptyString, readCapped, requestHeaders } from './http-messages.ts';
import { MeteredBody, SlowBodyError, emptyBody, type MinRate } from './metered-body.ts';
import type { ProxySettings } from './proxy-route.ts';
import { backoffDelay, parseRetryAfter } from './retry-timing.ts';
import { TokenCache, type IssuedToken } from './token-cache.ts';
import { request } from './undici.ts';
import { UpstreamDispatchers, type TlsSettings } from './upstream-dispatchers.ts';
import { causeText, classify, HeadersDeadlineError, outcomeOf, untilAborted } from './upstream-failures.ts';
import { UpstreamError, type UpstreamErrorKind } from './upstream-error.ts';
import { parseWwwAuthenticate } from './www-authenticate.ts';

export type { ProxySettings } from './proxy-route.ts';
export type { TlsSettings } from './upstream-dispatchers.ts';

export { UpstreamError, isUpstreamError, type UpstreamErrorKind } from './upstream-error.ts';

export interface UpstreamConfig {
  /** Registry key, e.g. 'docker.io'. */
  name: string;
  /** Base URL, e.g. https://registry-1.docker.io or http://127.0.0.1:5001. */
  url: string;
  username?: string;
  password?: string;
  /**
   * `host` or `host:port` entries that may be reached at non-public addresses (redirect
   * targets, token realms) and may receive credentials as token realms.
   */
  trustedHosts?: readonly string[];
  /** CA list and client certificate for this registry's TLS connections (read by config.ts). */
  tls?: TlsSettings;
}

export interface UpstreamClientOptions {
  metrics: Metrics;
  logger: Logger;
  timeouts?: {
    /** Default 5000: TCP connect and TLS handshake. */
    connectMs?: number;
    /**
     * Default 30000: from request sent to response headers. Also bounds the wait for a pooled
     * connection: a hop with no headers connectMs + headersMs after it was dispatched gives up.
     */
    headersMs?: number;
    /** Default 30000: longest pause between two body chunks. */
    idleMs?: number;
  };
  retry?: {
    /** Extra attempts, default 2. */
    attempts?: number;
    /** Default 200, exponential with jitter. */
    baseDelayMs?: number;
    /**
     * Default true. False when failover peers can answer instead: a connection the upstream
     * refused or dropped before answering goes to the peers at once rather than after the
     * retries' backoff (5xx answers are still retried).
     */
    unreachable?: boolean;
  };
  breaker?: {
    /** Consecutive failures that open the circuit, default 5. */
    maxFails?: number;
    /** How long it stays open, default 30000. */
    resetMs?: number;
  };
  /** Default 5000: a 429 whose Retry-After is at most this is waited for and retried once. */
  maxRetryAfterMs?: number;
  /** Sent as User-Agent on every request, e.g. `ocirelay/1.2.3`. */
  userAgent?: string;
  /** Forward proxies (HTTPS_PROXY, HTTP_PROXY, NO_PROXY or upstream.proxy, read by config.ts). */
  proxy?: ProxySettings;
  /** A body slower than this (while its consumer wants more) is aborted with a 'timeout' error. */
  minRate?: MinRate;
  /** Connections per origin: `meta` (manifests, tokens, HEADs; default 16) and `bulk` (blob GETs; default 64). */
  connections?: { meta?: number; bulk?: number };
}

export interface UpstreamRequest {
  method: 'GET' | 'HEAD';
  /** Starts with /v2/, may carry a query. */
  path: string;
  /** Token scope: repository:<repository>:pull. */
  repository: string;
  /** E.g. accept, range. Authorization and hop-by-hop headers are the client's own and dropped. */
  headers?: Record<string, string>;
  signal?: AbortSignal;
  /**
   * A blob body fetch: it goes to the bulk pools so it never holds a connection a manifest,
   * token or HEAD request waits for. Default: true for a GET of /v2/<name>/blobs/<digest>.
   */
  bulk?: boolean;
  /**
   * A 500 answer may be about the content asked for, not the registry's health (a manifest
   * request for a digest a client chose: Distribution answers 500 for a layer's digest), so it
   * does not count against the circuit breaker; otherwise any client could open it.
   */
  contentSpecific500?: boolean;
}

export interface UpstreamResponse {
  status: number;
  /** Lower-case names; repeated headers joined with ', '. */
  headers: Record<string, string>;
  /** Caller must consume or destroy it; empty and ended for HEAD. */
  body: Readable;
  /** Final URL after redirects (never holds credentials). */
  url: string;
}

const MAX_REDIRECTS = 5;
const REDIRECT_STATUSES = new Set([301, 302, 303, 307, 308]);
const RETRY_STATUSES = new Set([502, 503, 504]);
const TOKEN_BODY_LIMIT = 1024 * 1024;

type Method = UpstreamRequest['method'];
/** One HTTP round trip's answer. */
interface Exchange {
  statusCode: number;
  headers: Record<string, string | string[] | undefined>;
  body: Readable;
}

/** What a request sends as Authorization; `bearer` is set when it is a cached token. */
interface Credential {
  header: string;
  bearer?: string;
}

/** Retry budget shared by every hop and auth round of one request(). */
interface Budget {
  retriesLeft: number;
  retriesUsed: number;
  waited429: boolean;
}

export class RegistryClient {
  readonly name: string;
  readonly #origin: string;
  readonly #prefix: string;
  readonly #basic: string | undefined;
  readonly #metrics: Metrics;
  readonly #log: Logger;
  readonly #httpRegistry: boolean;
  readonly #trusted: TrustedHosts;
  readonly #dispatchers: UpstreamDispatchers;
  readonly #userAgent: string | undefined;
  readonly #minRate: MinRate | undefined;
  readonly #connectMs: number;
  readonly #headersMs: number;
  readonly #idleMs: number;
  readonly #attempts: number;
  readonly #retryUnreachable: boolean;
  readonly #baseDelayMs: number;
  readonly #maxRetryAfterMs: number;
  readonly #breaker: CircuitBreaker;
  readonly #tokens = new TokenCache();
  /** Set once the registry answered a Basic challenge: later requests send Basic up front. */
  #usesBasic = false;

  constructor(cfg: UpstreamConfig, opts: UpstreamClientOptions) {
    this.name = cfg.name;
    let base: URL;
    try {
      base = new URL(cfg.url);
    } catch {
      throw new TypeError(`upstream ${cfg.name}: url is not a valid URL`);
    }
    if (base.username !== '' || base.password !== '') {
      // Not echoing the URL: it holds the credentials.
      throw new TypeError(`upstream ${cfg.name}: url must not contain credentials; set username and password instead`);
    }
    if (base.protocol !== 'http:' && base.protocol !== 'https:') {
      throw new TypeError(`upstream ${cfg.name}: url must be http or https, got ${base.protocol}`);
    }
    if (base.search !== '' || base.hash !== '') {
      throw new TypeError(`upstream ${cfg.name}: url must not have a query or fragment`);
    }
    this.#origin = base.origin;
    this.#httpRegistry = base.protocol === 'http:';
    this.#trusted = new TrustedHosts(base, cfg.trustedHosts ?? []);
    this.#prefix = base.pathname.replace(/\/+$/, '');
    this.#basic =
      cfg.username !== undefined && cfg.username !== ''
        ? `Basic ${Buffer.from(`${cfg.username}:${cfg.password ?? ''}`).toString('base64')}`
        : undefined;

    this.#metrics = opts.metrics;
    this.#log = opts.logger.child({ component: 'upstream', registry: cfg.name });
    this.#connectMs = opts.timeouts?.connectMs ?? 5_000;
    this.#headersMs = opts.timeouts?.headersMs ?? 30_000;
    this.#idleMs = opts.timeouts?.idleMs ?? 30_000;
    this.#userAgent = opts.userAgent;
    this.#minRate = opts.minRate;
    this.#attempts = Math.max(0, opts.retry?.attempts ?? 2);
    this.#retryUnreachable = opts.retry?.unreachable ?? true;
    this.#baseDelayMs = opts.retry?.baseDelayMs ?? 200;
    this.#maxRetryAfterMs = opts.maxRetryAfterMs ?? 5_000;
    this.#dispatchers = new UpstreamDispatchers({
      trusted: this.#trusted,
      connectMs: this.#connectMs,
      headersMs: this.#headersMs,
      idleMs: this.#idleMs,
      metaConnections: Math.max(1, opts.connections?.meta ?? 16),
      bulkConnections: Math.max(1, opts.connections?.bulk ?? 64),
      ...(cfg.tls !== undefined ? { tls: cfg.tls } : {}),
      ...(opts.proxy !== undefined ? { proxy: opts.proxy } : {}),
    });

    const registry = this.name;
    this.#metrics.circuitOpen.set({ registry }, 0);
    this.#breaker = new CircuitBreaker({
      maxFails: opts.breaker?.maxFails ?? 5,
      resetMs: opts.breaker?.resetMs ?? 30_000,
      onChange: (state, info) => {
        this.#metrics.circuitOpen.set({ registry }, state === 'open' ? 1 : 0);
        if (state === 'open') this.#log.warn({ fails: info.fails, resetMs: info.resetMs }, 'upstream circuit opened');
        else this.#log.warn('upstream circuit closed');
      },
    });
  }

  circuitState(): CircuitState {
    return this.#breaker.state();
  }

  async close(): Promise<void> {
    await this.#dispatchers.close();
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    this.#checkRequest(req);
    if (req.signal?.aborted) throw this.#error('aborted', `${req.method} ${req.path} aborted before it started`);
    const ticket = this.#breaker.enter();
    if (ticket === undefined) {
      const retryAfterMs = this.#breaker.retryAfterMs();
      throw this.#error('circuit_open', `circuit open, upstream not contacted (next trial in ${retryAfterMs} ms)`, {
        retryAfterMs,
      });
    }
    const started = performance.now();
    try {
      const res = await this.#run(req);
      ticket.settle(res.status === 500 && req.contentSpecific500 === true ? 'neutral' : res.status >= 500 ? 'failure' : 'success');
      this.#log.info({ method: req.method, path: req.path, status: res.status, ms: elapsed(started) }, 'upstream request');
      return res;
    } catch (err) {
      ticket.settle(outcomeOf(err));
      const kind = err instanceof UpstreamError ? err.kind : 'unexpected';
      // The message names the cause (e.g. a certificate the CA store does not vouch for); it is
      // built from origins, paths and error codes only, never from credentials or tokens.
      const reason = err instanceof UpstreamError ? err.message : undefined;
      // A refused target is a policy decision an operator may need to act on (trustedHosts).
      this.#log[kind === 'target_refused' ? 'warn' : 'info']({ method: req.method, path: req.path, err: kind, reason, ms: elapsed(started) }, 'upstream request failed');
      throw err;
    }
  }

  async #run(req: UpstreamRequest): Promise<UpstreamResponse> {
    const scope = req.repository === '' ? '' : `repository:${req.repository}:pull`;
    const headers = requestHeaders(req.headers);
    const budget: Budget = { retriesLeft: this.#attempts, retriesUsed: 0, waited429: false };
    let cred = this.#credentialFor(scope);
    let challenged = false;
    for (;;) {
      const { res, url } = await this.#follow(req, headers, cred, budget);
      if (res.statusCode === 401 && !challenged && url.origin === this.#origin) {
        const next = await this.#answerChallenge(res, scope, cred, req.signal);
        if (next !== undefined) {
          cred = next;
          challenged = true; // a second 401 goes back to the caller
          continue;
        }
      }
      return this.#toResponse(res, url, req);
    }
  }

  #credentialFor(scope: string): Credential | undefined {
    const token = this.#tokens.peek(scope);
    if (token !== undefined) return { header: `Bearer ${token}`, bearer: token };
    if (this.#usesBasic && this.#basic !== undefined) return { header: this.#basic };
    return undefined;
  }

  /** The credential to retry a 401 with, or undefined when there is nothing better to send. */
  async #answerChallenge(
    res: Exchange,
    scope: string,
    sent: Credential | undefined,
    signal: AbortSignal | undefined,
  ): Promise<Credential | undefined> {
    const challenges = parseWwwAuthenticate(headerValue(res.headers['www-authenticate']));
    const bearer = challenges.find((c) => c.scheme === 'bearer' && c.params.realm !== undefined);
    if (bearer !== undefined) {
      await discard(res.body);
      const realm = bearer.params.realm ?? '';
      const service = bearer.params.service;
      const token = await this.#abortable(
        this.#tokens.obtain(scope, sent?.bearer, () => this.#fetchToken(realm, service, scope)),
        signal,
      );
      return { header: `Bearer ${token}`, bearer: token };
    }
    if (challenges.some((c) => c.scheme === 'basic') && this.#basic !== undefined && sent?.header !== this.#basic) {
      await discard(res.body);
      if (!this.#usesBasic) {
        this.#usesBasic = true;
        this.#log.info('upstream uses Basic auth; sending credentials up front from now on');
      }
      return { header: this.#basic };
    }
    return undefined;
  }

  async #fetchToken(realm: string, service: string | undefined, scope: string): Promise<IssuedToken> {
    let url: URL;
    try {
      url = new URL(realm);
    } catch {
      throw this.#error('auth_failed', 'token realm in WWW-Authenticate is not a URL');
    }
    if ((url.protocol !== 'http:' && url.protocol !== 'https:') || url.username !== '' || url.password !== '') {
      throw this.#error('auth_failed', 'token realm must be an http(s) URL without credentials');
    }
    if (service !== undefined && service !== '') url.searchParams.set('service', service);
    if (scope !== '') url.searchParams.set('scope', scope);
    const where = `${url.origin}${url.pathname}`;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.#basic !== undefined) {
      // Credentials go to the registry's own origin, a trustedHosts entry, or over https (the
      // connector then makes sure the address is public). A realm anywhere else is refused
      // rather than asked anonymously: a quiet anonymous token would turn into confusing 401s,
      // a refusal names the cause. Without credentials there is nothing to leak: it is asked.
      if (url.origin !== this.#origin && !this.#trusted.has(url) && url.protocol !== 'https:') {
        throw this.#error(
          'target_refused',
          `token realm ${where} refused: credentials go only over https, to the registry's own origin, or to a trustedHosts entry`,
        );
      }
      headers.authorization = this.#basic;
    }

    let res: Exchange;
    try {
      const budget: Budget = { retriesLeft: this.#attempts, retriesUsed: 0, waited429: false };
      res = await this.#attempt(budget, 'GET', url, headers, undefined, 'TOKEN', false);
    } catch (err) {
      const kind = err instanceof UpstreamError ? err.kind : 'unreachable';
      if (kind === 'target_refused' || kind === 'aborted') throw err;
      throw this.#error('auth_failed', `token endpoint ${where} failed: ${kind}`, { cause: err });
    }
    if (res.statusCode < 200 || res.statusCode > 299) {
      await discard(res.body);
      throw this.#error('auth_failed', `token endpoint ${where} answered ${res.statusCode}`, { status: res.statusCode });
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(await readCapped(res.body, TOKEN_BODY_LIMIT));
    } catch (err) {
      throw this.#error('auth_failed', `token endpoint ${where} sent an unreadable reply`, {
        status: res.statusCode,
        cause: err instanceof UpstreamError ? err : undefined,
      });
    }
    const body = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<string, unknown>;
    const token = nonEmptyString(body.token) ?? nonEmptyString(body.access_token);
    if (token === undefined) {
      throw this.#error('auth_failed', `token endpoint ${where} sent no token`, { status: res.statusCode });
    }
    const expiresIn = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    const issuedAt = typeof body.issued_at === 'string' ? Date.parse(body.issued_at) : Number.NaN;
    this.#log.debug({ scope, expiresIn }, 'upstream token issued');
    return { token, expiresInS: expiresIn, ...(Number.isNaN(issuedAt) ? {} : { issuedAtMs: issuedAt }) };
  }

  /** One hop chain: sends the request and follows redirects by hand. */
  async #follow(
    req: UpstreamRequest,
    headers: Record<string, string>,
    cred: Credential | undefined,
    budget: Budget,
  ): Promise<{ res: Exchange; url: URL }> {
    let url = this.#urlFor(req.path);
    const bulk = req.bulk ?? (req.method === 'GET' && /\/blobs\/[^/]+$/.test(req.path));
    for (let hops = 0; ; hops++) {
      // Authorization goes to the registry's own origin only: a CDN (or anyone a
      // registry redirects to) never sees it.
      const sent = cred !== undefined && url.origin === this.#origin ? { ...headers, authorization: cred.header } : headers;
      const res = await this.#attempt(budget, req.method, url, sent, req.signal, req.method, bulk);
      if (!REDIRECT_STATUSES.has(res.statusCode)) return { res, url };
      const location = headerValue(res.headers.location);
      if (location === undefined) return { res, url };
      await discard(res.body);
      if (hops >= MAX_REDIRECTS) {
        throw this.#error('too_many_redirects', `${req.method} ${req.path}: more than ${MAX_REDIRECTS} redirects`);
      }
      url = this.#redirectTarget(location, url, req);
    }
  }

  #redirectTarget(location: string, from: URL, req: UpstreamRequest): URL {
    let next: URL;
    try {
      next = new URL(location, from);
    } catch {
      throw this.#error('bad_redirect', `${req.method} ${req.path}: redirect Location is not a URL`);
    }
    if (next.protocol !== 'http:' && next.protocol !== 'https:') {
      throw this.#error('bad_redirect', `${req.method} ${req.path}: redirect to a ${next.protocol} URL refused`);
    }
    if (next.username !== '' || next.password !== '') {
      throw this.#error('bad_redirect', `${req.method} ${req.path}: redirect to a URL with credentials refused`);
    }
    next.hash = '';
    if (next.origin === this.#origin || this.#trusted.has(next)) return next;
    if (next.protocol !== 'https:' && !this.#httpRegistry) {
      throw this.#error('target_refused', `${req.method} ${req.path}: redirect to ${next.origin} refused: another host only over https`);
    }
    // Names and literals that are plainly not public are refused here with a clear reason; for
    // every other name the connector checks the address actually connected to.
    if (isNonPublicHostname(next.hostname)) {
      throw this.#error('target_refused', `${req.method} ${req.path}: redirect to ${next.origin} refused: not a public address and not in trustedHosts`);
    }
    return next;
  }

  /** One hop with retries: transport errors and 502/503/504 with backoff, one short 429 wait. */
  async #attempt(
    budget: Budget,
    method: Method,
    url: URL,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    label: string,
    bulk: boolean,
  ): Promise<Exchange> {
    for (;;) {
      let res: Exchange;
      try {
        res = await this.#exchange(method, url, headers, signal, label, bulk);
      } catch (err) {
        if (!(err instanceof UpstreamError) || err.kind === 'aborted' || err.kind === 'target_refused' || budget.retriesLeft <= 0) throw err;
        if (err.kind === 'unreachable' && !this.#retryUnreachable && isConnectFailure(err)) throw err;
        await this.#backoff(budget, label, url, err.kind, signal);
        continue;
      }
      if (RETRY_STATUSES.has(res.statusCode) && budget.retriesLeft > 0) {
        await discard(res.body);
        await this.#backoff(budget, label, url, String(res.statusCode), signal);
        continue;
      }
      if (res.statusCode === 429 && !budget.waited429) {
        const waitMs = parseRetryAfter(headerValue(res.headers['retry-after']));
        if (waitMs !== undefined && waitMs <= this.#maxRetryAfterMs) {
          budget.waited429 = true;
          await discard(res.body);
          this.#log.warn({ method: label, url: this.#describe(url), waitMs }, 'upstream rate limited (429); waiting Retry-After');
          await this.#sleep(waitMs, signal);
          continue;
        }
      }
      return res;
    }
  }

  async #backoff(budget: Budget, label: string, url: URL, reason: string, signal: AbortSignal | undefined): Promise<void> {
    const delayMs = backoffDelay(budget.retriesUsed, this.#baseDelayMs);
    budget.retriesLeft--;
    budget.retriesUsed++;
    this.#log.warn(
      { method: label, url: this.#describe(url), reason, retry: budget.retriesUsed, delayMs },
      'upstream request failed; retrying',
    );
    await this.#sleep(delayMs, signal);
  }

  /** One HTTP round trip, measured and logged. */
  async #exchange(
    method: Method,
    url: URL,
    headers: Record<string, string>,
    signal: AbortSignal | undefined,
    label: string,
    bulk: boolean,
  ): Promise<Exchange> {
    const registry = this.name;
    const started = performance.now();
    // undici's headersTimeout starts when the request is written: a request queued for a
    // pooled connection would wait without bound. This deadline covers the queue, the connect
    // and the headers; it is cleared once headers arrive (the body has bodyTimeout and minRate).
    const deadlineMs = this.#connectMs + this.#headersMs;
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new HeadersDeadlineError(deadlineMs)), deadlineMs);
    const combined = signal === undefined ? deadline.signal : AbortSignal.any([signal, deadline.signal]);
    try {
      const dispatcher = await this.#dispatchers.dispatcherFor(url, bulk, combined);
      const sent = this.#userAgent === undefined ? headers : { ...headers, 'user-agent': this.#userAgent };
      const res = await untilAborted(request(url, { dispatcher, method, headers: sent, signal: combined }), combined);
      const exchange: Exchange = { statusCode: res.statusCode, headers: res.headers, body: res.body };
      const ms = elapsed(started);
      this.#metrics.upstreamRequests.inc({ registry, method: label, status: String(res.statusCode) });
      this.#metrics.upstreamDuration.observe({ registry, method: label }, ms / 1000);
      this.#noteRateLimit(res.headers);
      this.#log.debug({ method: label, url: this.#describe(url), status: res.statusCode, ms }, 'upstream response');
      return exchange;
    } catch (err) {
      const cause = deadline.signal.aborted && !(signal?.aborted ?? false) ? (deadline.signal.reason as Error) : err;
      const kind = classify(cause, signal);
      this.#metrics.upstreamRequests.inc({ registry, method: label, status: kind });
      this.#log.debug({ method: label, url: this.#describe(url), err: kind, ms: elapsed(started) }, 'upstream request error');
      throw this.#error(kind, `${label} ${this.#describe(url)}: ${causeText(cause, kind)}`, { cause });
    } finally {
      clearTimeout(timer);
    }
  }

  #toResponse(res: Exchange, url: URL, req: UpstreamRequest): UpstreamResponse {
    let body: Readable;
    if (req.method === 'HEAD') {
      void discard(res.body);
      body = emptyBody();
    } else {
      const registry = this.name;
      body = new MeteredBody(
        res.body,
        (n) => this.#metrics.upstreamBytes.inc({ registry }, n),
        (err) => this.#bodyError(err, req),
        this.#minRate,
      );
    }
    return { status: res.statusCode, headers: flattenHeaders(res.headers), body, url: url.href };
  }

  #bodyError(err: Error, req: UpstreamRequest): Error {
    if (err instanceof UpstreamError) return err;
    const kind = classify(err, req.signal);
    const what =
      err instanceof SlowBodyError
        ? err.message
        : kind === 'timeout'
          ? `body idle for more than ${this.#idleMs} ms`
          : kind === 'aborted'
            ? 'aborted'
            : `connection lost or body malformed mid-body (${causeText(err, kind)})`;
    return this.#error(kind, `${req.method} ${req.path}: ${what}`, { cause: err });
  }

  #noteRateLimit(headers: Exchange['headers']): void {
    const remaining = leadingNumber(headerValue(headers['ratelimit-remaining']));
    if (remaining !== undefined) this.#metrics.upstreamRateLimitRemaining.set({ registry: this.name }, remaining);
    const limit = leadingNumber(headerValue(headers['ratelimit-limit']));
    if (limit !== undefined) this.#metrics.upstreamRateLimitLimit.set({ registry: this.name }, limit);
  }

  #checkRequest(req: UpstreamRequest): void {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new TypeError(`upstream ${this.name}: method must be GET or HEAD`);
    if (!req.path.startsWith('/v2/')) throw new TypeError(`upstream ${this.name}: path must start with /v2/`);
    this.#urlFor(req.path);
  }

  #urlFor(path: string): URL {
    const url = new URL(`${this.#origin}${this.#prefix}${path}`);
    // Dot segments would otherwise walk out of /v2/ on the upstream.
    if (!url.pathname.startsWith(`${this.#prefix}/v2/`)) throw new TypeError(`upstream ${this.name}: path escapes /v2/`);
    return url;
  }

  /** For logs and messages: the query is kept on the registry's origin only (CDN queries are signatures). */
  #describe(url: URL): string {
    return url.origin === this.#origin ? `${url.pathname}${url.search}` : `${url.origin}${url.pathname}`;
  }

  async #sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
    try {
      await sleep(ms, undefined, { signal });
    } catch {
      throw this.#error('aborted', 'aborted while waiting to retry');
    }
  }

  #abortable<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
    if (signal === undefined) return p;
    if (signal.aborted) return Promise.reject(this.#error('aborted', 'aborted while waiting for a token'));
    return new Promise<T>((resolve, reject) => {
      const onAbort = (): void => reject(this.#error('aborted', 'aborted while waiting for a token'));
      signal.addEventListener('abort', onAbort, { once: true });
      p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  #error(
    kind: UpstreamErrorKind,
    what: string,
    opts: { cause?: unknown; status?: number; retryAfterMs?: number } = {},
  ): UpstreamError {
    return new UpstreamError(kind, this.name, `upstream ${this.name}: ${what}`, opts);
  }
}

/** The connection itself failed (refused, no route, no such host): not a stale pooled socket that a retry would mend. */
function isConnectFailure(err: Error): boolean {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = (e as { code?: unknown }).code;
    if (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH' || code === 'ENETUNREACH' || code === 'ENOTFOUND' || code === 'EAI_AGAIN') return true;
  }
  return false;
}
