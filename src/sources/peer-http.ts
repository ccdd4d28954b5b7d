// The transport to an ocirelay peer: one undici request per read, `Authorization: Bearer
// <token>` when the peer config has one. A RegistryClient cannot send a fixed bearer token (it
// sends only what a challenge got it), and an ocirelay peer needs none of its protocol: the
// peer serves the bytes itself (a redirect comes back as an answer and is refused as such), it
// never asks for a token flow, and its health is tracked per peer (peer-source.ts), not by a
// breaker. Bounded like an upstream: connect, headers and idle timeouts, minRate on bodies.
import type { Readable } from 'node:stream';
import type { PeerConfig } from '../config-replication.ts';
import { flattenHeaders, requestHeaders, discard } from '../upstream/http-messages.ts';
import { MeteredBody, emptyBody, type MinRate } from '../upstream/metered-body.ts';
import type { UpstreamRequest, UpstreamResponse } from '../upstream/registry-client.ts';
import { Agent, request } from '../upstream/undici.ts';
import { UpstreamError } from '../upstream/upstream-error.ts';
import { causeText, classify, HeadersDeadlineError, untilAborted } from '../upstream/upstream-failures.ts';
import type { Transport } from './registry-source.ts';

export interface PeerHttpOptions {
  connectMs: number;
  headersMs: number;
  idleMs: number;
  minRate?: MinRate;
  userAgent?: string;
  /**
   * The headers every request carries instead of a failover read's (`Authorization: Bearer
   * <token>` and Ocirelay-Failover): a cluster member's read sends its cluster token instead.
   */
  headers?: Readonly<Record<string, string>>;
  /** Names the transport in errors and logs (default `peer:<name>`). */
  label?: string;
}

export class PeerHttp implements Transport {
  readonly #base: URL;
  readonly #label: string;
  readonly #fixed: Readonly<Record<string, string>>;
  readonly #agent: InstanceType<typeof Agent>;
  readonly #o: PeerHttpOptions;

  constructor(peer: Pick<PeerConfig, 'name' | 'url' | 'token'>, o: PeerHttpOptions) {
    this.#base = new URL(peer.url);
    this.#label = o.label ?? `peer:${peer.name}`;
    // A failover read tells the peer so: it answers from its cache and its upstream, never
    // from its own peers (regions that are each other's failover would loop).
    this.#fixed = o.headers ?? { 'ocirelay-failover': '1', ...(peer.token !== undefined ? { authorization: `Bearer ${peer.token}` } : {}) };
    this.#o = o;
    this.#agent = new Agent({ connect: { timeout: o.connectMs }, headersTimeout: o.headersMs, bodyTimeout: o.idleMs, connections: 64 });
  }

  async request(req: UpstreamRequest): Promise<UpstreamResponse> {
    const prefix = this.#base.pathname.replace(/\/+$/, '');
    const url = new URL(`${this.#base.origin}${prefix}${req.path}`);
    // Dot segments would otherwise walk out of /v2/ on the peer.
    if (!req.path.startsWith('/v2/') || !url.pathname.startsWith(`${prefix}/v2/`)) throw new TypeError(`${this.#label}: path escapes /v2/`);
    const headers = { ...requestHeaders(req.headers), ...this.#fixed };
    if (this.#o.userAgent !== undefined) headers['user-agent'] = this.#o.userAgent;
    // Covers the wait for a pooled connection too (undici's headersTimeout starts once sent).
    const deadlineMs = this.#o.connectMs + this.#o.headersMs;
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new HeadersDeadlineError(deadlineMs)), deadlineMs);
    const signal = req.signal === undefined ? deadline.signal : AbortSignal.any([req.signal, deadline.signal]);
    try {
      const res = await untilAborted(request(url, { dispatcher: this.#agent, method: req.method, headers, signal }), signal);
      let body: Readable;
      if (req.method === 'HEAD') {
        void discard(res.body);
        body = emptyBody();
      } else {
        body = new MeteredBody(res.body, () => undefined, (err) => this.#error(err, req, 'mid-body'), this.#o.minRate);
      }
      return { status: res.statusCode, headers: flattenHeaders(res.headers), body, url: url.href };
    } catch (err) {
      const cause = deadline.signal.aborted && !(req.signal?.aborted ?? false) ? (deadline.signal.reason as Error) : err;
      throw this.#error(cause, req, 'request');
    } finally {
      clearTimeout(timer);
    }
  }

  #error(err: unknown, req: UpstreamRequest, when: string): UpstreamError {
    if (err instanceof UpstreamError) return err;
    const kind = classify(err, req.signal);
    return new UpstreamError(kind, this.#label, `${this.#label}: ${req.method} ${req.path} (${when}): ${causeText(err, kind)}`, { cause: err });
  }

  async close(): Promise<void> {
    await this.#agent.close();
  }
}
