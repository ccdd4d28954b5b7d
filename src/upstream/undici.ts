// The parts of the undici package (7.x) that ocirelay uses: Agent, ProxyAgent, buildConnector
// and the request API. Loaded part by part rather than through the package's index, which
// also loads fetch, WebSocket, EventSource, the cache and mock layers, and installs a global
// dispatcher: the index costs about 0.25 s of start-up and 8 MiB of RSS more (measured with
// `node -e "require('undici')"` against these four requires). Not loading the index also
// means Node's own fetch keeps its own dispatcher (the index would install undici 7's Agent as
// the process-wide one when none is set, and Node 20's fetch, undici 6 inside, then fails
// requests with an explicit Content-Length).
import { createRequire } from 'node:module';
import type * as Undici from 'undici';

const load = createRequire(import.meta.url);
const api = load('undici/lib/api/index.js') as { request: (this: Undici.Dispatcher, opts: Undici.Dispatcher.RequestOptions) => Promise<Undici.Dispatcher.ResponseData> };
const dispatcherBase = load('undici/lib/dispatcher/dispatcher.js') as typeof Undici.Dispatcher;
// What the package's index does: the request/stream/... API as methods of every dispatcher.
Object.assign(dispatcherBase.prototype, api);

export const Agent = load('undici/lib/dispatcher/agent.js') as typeof Undici.Agent;
export const ProxyAgent = load('undici/lib/dispatcher/proxy-agent.js') as typeof Undici.ProxyAgent;
export const buildConnector = load('undici/lib/core/connect.js') as typeof Undici.buildConnector;

export type RequestOptions = Omit<Undici.Dispatcher.RequestOptions, 'origin' | 'path' | 'method'> & { dispatcher: Undici.Dispatcher; method?: Undici.Dispatcher.HttpMethod };

/** undici's `request(url, {dispatcher, ...})`, as the package's index defines it, for an explicit dispatcher. */
export function request(url: string | URL, opts: RequestOptions): Promise<Undici.Dispatcher.ResponseData> {
  const u = typeof url === 'string' ? new URL(url) : url;
  const { dispatcher, ...rest } = opts;
  return api.request.call(dispatcher, {
    ...rest,
    origin: u.origin,
    path: u.search ? `${u.pathname}${u.search}` : u.pathname,
    method: opts.method ?? (opts.body !== undefined && opts.body !== null ? 'PUT' : 'GET'),
  });
}
