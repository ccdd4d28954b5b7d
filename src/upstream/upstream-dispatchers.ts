// The undici dispatchers of one RegistryClient: its own connection pools, so its connector
// knows which origins may be at non-public addresses (its registry's and its trustedHosts).
//
// Two pools per route (direct, or through each forward proxy):
//   meta  manifests, tags, tokens, HEADs: short requests that must never wait behind...
//   bulk  ...blob body GETs, which may hold a connection for minutes.
// Each is bounded per origin (undici's `connections`); a request beyond waits in undici's
// queue, and RegistryClient bounds that wait with its own deadline.
import { lookup } from 'node:dns/promises';
import type { buildConnector as BuildConnector, Dispatcher } from 'undici';
import { isPublicAddress, TargetRefusedError, type TrustedHosts } from './address-policy.ts';
import { proxyFor, type ProxySettings } from './proxy-route.ts';
import { Agent, buildConnector, ProxyAgent } from './undici.ts';

export interface TlsSettings {
  /** The whole CA list (system roots + NODE_EXTRA_CA_CERTS + the registry's caFile); absent: Node's defaults. */
  readonly ca?: readonly string[];
  /** Client certificate and key (PEM) for registries that require mTLS. */
  readonly cert?: string;
  readonly key?: string;
}

export interface DispatcherOptions {
  trusted: TrustedHosts;
  connectMs: number;
  headersMs: number;
  idleMs: number;
  /** Connections per origin for meta requests. */
  metaConnections: number;
  /** Connections per origin for blob body GETs. */
  bulkConnections: number;
  tls?: TlsSettings;
  proxy?: ProxySettings;
}

export class UpstreamDispatchers {
  readonly #opts: DispatcherOptions;
  readonly #pools = new Map<string, Dispatcher>();
  #closed = false;

  constructor(opts: DispatcherOptions) {
    this.#opts = opts;
  }

  /**
   * The dispatcher for a request to `url`. Through a forward proxy the socket's remote address
   * is the proxy's, so the target's name is resolved and checked here, before sending.
   * Residual gaps, accepted: the proxy resolves the name again itself, and a DNS answer that
   * changes between our lookup and the proxy's (rebinding) is not seen; and a name we cannot
   * resolve at all is let through (behind an egress proxy hosts often have no outside DNS:
   * only the proxy can resolve registry names, and what it reaches is its own policy).
   * Direct connections have no such gap (the connector checks the connected address).
   */
  async dispatcherFor(url: URL, bulk: boolean, signal?: AbortSignal): Promise<Dispatcher> {
    if (this.#closed) throw new Error('upstream client is closed');
    const proxy = proxyFor(url, this.#opts.proxy);
    if (proxy !== undefined && !this.#opts.trusted.has(url)) await checkResolved(url, signal);
    const key = `${proxy ?? 'direct'} ${bulk ? 'bulk' : 'meta'}`;
    let d = this.#pools.get(key);
    if (d === undefined) {
      d = this.#create(proxy, bulk);
      this.#pools.set(key, d);
    }
    return d;
  }

  /** Whether `url` would go through a forward proxy (for logs). */
  proxied(url: URL): boolean {
    return proxyFor(url, this.#opts.proxy) !== undefined;
  }

  async close(): Promise<void> {
    this.#closed = true;
    const pools = [...this.#pools.values()];
    this.#pools.clear();
    // destroy, not close: close waits for in-flight bodies nobody may be reading any more.
    await Promise.all(pools.map((p) => p.destroy().catch(() => undefined)));
  }

  #create(proxy: string | undefined, bulk: boolean): Dispatcher {
    const o = this.#opts;
    const common = {
      connections: bulk ? o.bulkConnections : o.metaConnections,
      headersTimeout: o.headersMs,
      bodyTimeout: o.idleMs,
      // One request per connection at a time: pipelining would put a manifest behind a blob.
      pipelining: 1,
    };
    const tlsOpts = {
      timeout: o.connectMs,
      ...(o.tls?.ca !== undefined ? { ca: [...o.tls.ca] } : {}),
      ...(o.tls?.cert !== undefined ? { cert: o.tls.cert } : {}),
      ...(o.tls?.key !== undefined ? { key: o.tls.key } : {}),
    };
    if (proxy !== undefined) return new ProxyAgent({ uri: proxy, ...common, requestTls: tlsOpts, proxyTls: { timeout: o.connectMs } });
    return new Agent({ ...common, connect: checkedConnector(buildConnector(tlsOpts), o.trusted) });
  }
}

/** A connector that refuses a socket whose remote address is not public, unless its origin is trusted. */
function checkedConnector(base: BuildConnector.connector, trusted: TrustedHosts): BuildConnector.connector {
  return (opts, callback) => {
    base(opts, (...args) => {
      const [err, socket] = args;
      if (err !== null) {
        callback(err, null);
        return;
      }
      const address = socket.remoteAddress;
      if (address !== undefined && isPublicAddress(address)) {
        callback(null, socket);
        return;
      }
      if (trusted.hasHostPort(opts.hostname, opts.port, opts.protocol)) {
        callback(null, socket);
        return;
      }
      socket.destroy();
      const where = `${opts.hostname}${opts.port !== '' ? `:${opts.port}` : ''}`;
      callback(new TargetRefusedError(`${where} is at non-public address ${address ?? '(unknown)'} and not in trustedHosts`), null);
    });
  };
}

async function checkResolved(url: URL, signal: AbortSignal | undefined): Promise<void> {
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const resolved = lookup(host, { all: true, verbatim: true }).catch((err: unknown) => {
    const code = (err as { code?: unknown } | null)?.code;
    if (code === 'ENOTFOUND' || code === 'EAI_AGAIN' || code === 'ENODATA') return [];
    throw err;
  });
  const addresses =
    signal === undefined
      ? await resolved
      : await new Promise<Awaited<typeof resolved>>((resolve, reject) => {
          const onAbort = (): void => reject(signal.reason ?? new Error('aborted'));
          if (signal.aborted) onAbort();
          signal.addEventListener('abort', onAbort, { once: true });
          resolved.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
        });
  const bad = addresses.find((a) => !isPublicAddress(a.address));
  if (bad !== undefined) {
    throw new TargetRefusedError(`${url.host} resolves to non-public address ${bad.address} and is not in trustedHosts`);
  }
}
