// RegistryClient against real sockets: fake registries on 127.0.0.1 port 0 that count what
// reaches them, a token endpoint, a "CDN" on 127.0.0.2 (another origin), and servers that
// hang, stall, reset or fail. Timeouts and delays are tiny so the file runs in seconds.
import assert from 'node:assert/strict';
import http, { type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { text } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import {
  RegistryClient,
  UpstreamError,
  type UpstreamClientOptions,
  type UpstreamErrorKind,
} from '../src/upstream/registry-client.ts';

// ---------------------------------------------------------------------------------------
// Harness

interface Seen {
  method: string;
  url: string;
  headers: IncomingHttpHeaders;
}

interface TestServer {
  url: string;
  host: string;
  seen: Seen[];
  close(): Promise<void>;
}

const servers: TestServer[] = [];
const clients: RegistryClient[] = [];
after(async () => {
  await Promise.all(clients.map((c) => c.close()));
  await Promise.all(servers.map((s) => s.close()));
});

type Handler = (req: IncomingMessage, res: ServerResponse, n: number) => void;

async function serve(handler: Handler, host = '127.0.0.1'): Promise<TestServer> {
  const seen: Seen[] = [];
  const server = http.createServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    handler(req, res, seen.length);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  const s: TestServer = {
    url: `http://${host}:${port}`,
    host,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  servers.push(s);
  return s;
}

/** A raw TCP server on 127.0.0.1 (closed after the file); returns its port. */
async function serveRaw(onSocket: (s: net.Socket) => void): Promise<number> {
  const sockets: net.Socket[] = [];
  const raw = net.createServer((s) => {
    sockets.push(s);
    s.on('error', () => undefined);
    onSocket(s);
  });
  await new Promise<void>((resolve) => raw.listen(0, '127.0.0.1', resolve));
  servers.push({
    url: '',
    host: '',
    seen: [],
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        raw.close(() => resolve());
      }),
  });
  return (raw.address() as AddressInfo).port;
}

function send(res: ServerResponse, status: number, body = '', headers: Record<string, string | string[]> = {}): void {
  res.writeHead(status, { 'content-length': String(Buffer.byteLength(body)), ...headers });
  res.end(body);
}

interface Made {
  client: RegistryClient;
  metrics: Metrics;
  logs: string[];
}

function makeClient(
  url: string,
  opts: Partial<UpstreamClientOptions> & { username?: string; password?: string; trustedHosts?: string[] } = {},
): Made {
  const { username, password, trustedHosts, ...rest } = opts;
  const metrics = new Metrics({ defaultMetrics: false });
  const logs: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (line: string) => void logs.push(line) } });
  const client = new RegistryClient(
    {
      name: 'test.io',
      url,
      ...(username === undefined ? {} : { username }),
      ...(password === undefined ? {} : { password }),
      ...(trustedHosts === undefined ? {} : { trustedHosts }),
    },
    {
      metrics,
      logger,
      timeouts: { connectMs: 300, headersMs: 300, idleMs: 300 },
      retry: { attempts: 2, baseDelayMs: 5 },
      breaker: { maxFails: 5, resetMs: 150 },
      maxRetryAfterMs: 200,
      ...rest,
    },
  );
  clients.push(client);
  return { client, metrics, logs };
}

interface MetricLike {
  get(): Promise<{ values: Array<{ labels: object; value: number; metricName?: string }> }>;
}

async function metric(m: MetricLike, labels: Record<string, string>, metricName?: string): Promise<number> {
  const { values } = await m.get();
  return values
    .filter((v) => metricName === undefined || v.metricName === metricName)
    .filter((v) => Object.entries(labels).every(([k, x]) => (v.labels as Record<string, unknown>)[k] === x))
    .reduce((sum, v) => sum + v.value, 0);
}

async function rejectsWith(p: Promise<unknown>, kind: UpstreamErrorKind): Promise<UpstreamError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof UpstreamError, `expected UpstreamError, got ${String(err)}`);
    assert.equal(err.kind, kind, err.message);
    assert.equal(err.registry, 'test.io');
    return err;
  }
  assert.fail(`expected UpstreamError ${kind}`);
}

const GET = (path = '/v2/library/alpine/manifests/3.19', extra: { headers?: Record<string, string>; signal?: AbortSignal } = {}) =>
  ({ method: 'GET', path, repository: 'library/alpine', ...extra }) as const;

// A Docker-Hub-like pair: a registry answering 401 + Bearer challenge to anything without
// a token it issued, and a token endpoint issuing tokens (optionally behind Basic auth).
async function bearerRegistry(
  opts: {
    tokenBody?: (n: number) => Record<string, unknown>;
    tokenStatus?: number;
    tokenDelayMs?: number;
    basic?: string;
    route?: (req: IncomingMessage, res: ServerResponse) => void;
  } = {},
) {
  const issued = new Set<string>();
  const tokenServer = await serve((req, res, n) => {
    if (opts.basic !== undefined && req.headers.authorization !== opts.basic) return send(res, 401, '{}');
    if (opts.tokenStatus !== undefined) return send(res, opts.tokenStatus, '{"details":"nope"}');
    const body = opts.tokenBody?.(n) ?? { token: `tok-${n}`, expires_in: 300, issued_at: new Date().toISOString() };
    const token = (body.token ?? body.access_token) as string;
    issued.add(token);
    const reply = () => send(res, 200, JSON.stringify(body), { 'content-type': 'application/json' });
    if (opts.tokenDelayMs) setTimeout(reply, opts.tokenDelayMs);
    else reply();
  });
  const registry = await serve((req, res) => {
    const auth = req.headers.authorization ?? '';
    if (!auth.startsWith('Bearer ') || !issued.has(auth.slice('Bearer '.length))) {
      return send(res, 401, '{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}', {
        'content-type': 'application/json',
        'www-authenticate': `Bearer realm="${tokenServer.url}/token",service="test-registry",scope="repository:library/alpine:pull"`,
      });
    }
    if (opts.route) return opts.route(req, res);
    send(res, 200, 'the manifest', { 'content-type': 'application/vnd.oci.image.manifest.v1+json' });
  });
  // The token endpoint is another loopback origin: reachable (and given credentials) only as a trusted host.
  const trustedHosts = [new URL(tokenServer.url).host];
  return { registry, tokenServer, issued, trustedHosts };
}

// ---------------------------------------------------------------------------------------

describe('token auth', () => {
  it('answers a Bearer challenge, then sends the cached token up front (one round trip warm)', async () => {
    const { registry, tokenServer, trustedHosts } = await bearerRegistry();
    const { client, metrics } = makeClient(registry.url, { trustedHosts });

    const res = await client.request(GET());
    assert.equal(res.status, 200);
    assert.equal(await text(res.body), 'the manifest');
    assert.equal(res.url, `${registry.url}/v2/library/alpine/manifests/3.19`);
    assert.equal(registry.seen.length, 2);
    assert.equal(registry.seen[0]?.headers.authorization, undefined);
    assert.equal(registry.seen[1]?.headers.authorization, 'Bearer tok-1');
    assert.equal(tokenServer.seen.length, 1);
    const tokenUrl = new URL(tokenServer.seen[0]?.url ?? '', tokenServer.url);
    assert.equal(tokenUrl.pathname, '/token');
    assert.equal(tokenUrl.searchParams.get('service'), 'test-registry');
    assert.equal(tokenUrl.searchParams.get('scope'), 'repository:library/alpine:pull');
    assert.equal(tokenServer.seen[0]?.headers.authorization, undefined, 'anonymous token fetch');

    const warm = await client.request(GET('/v2/library/alpine/blobs/sha256:abc'));
    assert.equal(warm.status, 200);
    warm.body.resume();
    assert.equal(registry.seen.length, 3, 'warm path: one upstream round trip');
    assert.equal(registry.seen[2]?.headers.authorization, 'Bearer tok-1');
    assert.equal(tokenServer.seen.length, 1);

    assert.equal(await metric(metrics.upstreamRequests, { method: 'TOKEN', status: '200' }), 1);
    assert.equal(await metric(metrics.upstreamRequests, { method: 'GET', status: '401' }), 1);
    assert.equal(await metric(metrics.upstreamRequests, { method: 'GET', status: '200' }), 2);
  });

  it('keys tokens by repository scope', async () => {
    const { registry, tokenServer, trustedHosts } = await bearerRegistry();
    const { client } = makeClient(registry.url, { trustedHosts });
    (await client.request(GET())).body.resume();
    (await client.request({ method: 'GET', path: '/v2/other/app/tags/list', repository: 'other/app' })).body.resume();
    assert.equal(tokenServer.seen.length, 2);
    assert.equal(new URL(tokenServer.seen[1]?.url ?? '', tokenServer.url).searchParams.get('scope'), 'repository:other/app:pull');
  });

  it('uses Basic credentials at the token endpoint, accepts access_token, and never logs secrets', async () => {
    const basic = `Basic ${Buffer.from('robot:s3cret-pw').toString('base64')}`;
    const { registry, tokenServer, trustedHosts } = await bearerRegistry({
      basic,
      tokenBody: (n) => ({ access_token: `secret-access-${n}`, expires_in: 300 }),
    });
    const { client, logs } = makeClient(registry.url, { username: 'robot', password: 's3cret-pw', trustedHosts });
    const res = await client.request(GET());
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(tokenServer.seen[0]?.headers.authorization, basic);
    assert.equal(registry.seen[1]?.headers.authorization, 'Bearer secret-access-1');
    assert.ok(!res.url.includes('s3cret'));
    const all = logs.join('');
    assert.ok(all.includes('"status":200'), 'per-request log lines carry the status');
    for (const secret of ['s3cret-pw', basic.slice(6), 'secret-access-1']) assert.ok(!all.includes(secret), `log leaks ${secret}`);
  });

  it('shares one token fetch among concurrent requests', async () => {
    const { registry, tokenServer, trustedHosts } = await bearerRegistry({ tokenDelayMs: 50 });
    const { client } = makeClient(registry.url, { trustedHosts });
    const all = await Promise.all(Array.from({ length: 6 }, () => client.request(GET())));
    for (const r of all) {
      assert.equal(r.status, 200);
      r.body.resume();
    }
    assert.equal(tokenServer.seen.length, 1);
    assert.equal(registry.seen.length, 12);
  });

  it('fetches a new token once the cached one is near expiry (issued_at, default 60 s)', async () => {
    const { registry, tokenServer, trustedHosts } = await bearerRegistry({
      // issued 55 s ago with no expires_in: 60 s lifetime, already inside the refresh margin
      tokenBody: (n) => ({ token: `old-${n}`, issued_at: new Date(Date.now() - 55_000).toISOString() }),
    });
    const { client } = makeClient(registry.url, { trustedHosts });
    (await client.request(GET())).body.resume();
    (await client.request(GET())).body.resume();
    assert.equal(tokenServer.seen.length, 2);
    assert.equal(registry.seen.length, 4, 'no stale token was sent up front');
    assert.equal(registry.seen[2]?.headers.authorization, undefined);
  });

  it('replaces a cached token the registry rejects, and returns a second 401 as is', async () => {
    const { registry, tokenServer, issued, trustedHosts } = await bearerRegistry();
    const { client } = makeClient(registry.url, { trustedHosts });
    (await client.request(GET())).body.resume();
    assert.equal(tokenServer.seen.length, 1);

    issued.delete('tok-1'); // revoked upstream: the cached token now draws a 401
    const res = await client.request(GET());
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(tokenServer.seen.length, 2);
    assert.deepEqual(
      registry.seen.slice(2).map((s) => s.headers.authorization),
      ['Bearer tok-1', 'Bearer tok-2'],
    );

    // A registry that refuses even a fresh token: one retry, then the 401 goes to the caller.
    const denying = await serve((_req, res) =>
      send(res, 401, '{"errors":[{"code":"DENIED"}]}', {
        'www-authenticate': `Bearer realm="${tokenServer.url}/token",service="test-registry"`,
      }),
    );
    const c2 = makeClient(denying.url, { trustedHosts }).client;
    const denied = await c2.request(GET());
    assert.equal(denied.status, 401);
    assert.match(await text(denied.body), /DENIED/);
    assert.equal(denying.seen.length, 2);
    assert.equal(tokenServer.seen.length, 3);
  });

  it('turns token endpoint failures into auth_failed without leaking credentials', async () => {
    const down = await bearerRegistry({ tokenStatus: 500 });
    const { client } = makeClient(down.registry.url, { username: 'robot', password: 'hunter2-pw', retry: { attempts: 0 }, trustedHosts: down.trustedHosts });
    const err = await rejectsWith(client.request(GET()), 'auth_failed');
    assert.equal(err.status, 500);
    assert.ok(!err.message.includes('hunter2'));
    assert.ok(!String(err.stack).includes(Buffer.from('robot:hunter2-pw').toString('base64')));

    const refused = await bearerRegistry({ basic: 'Basic nobody' });
    const c2 = makeClient(refused.registry.url, { username: 'robot', password: 'wrong-pw', trustedHosts: refused.trustedHosts }).client;
    const err2 = await rejectsWith(c2.request(GET()), 'auth_failed');
    assert.equal(err2.status, 401);
    assert.ok(!err2.message.includes('wrong-pw'));

    const garbled = await bearerRegistry({ tokenBody: () => ({ nothing: 'here' }) });
    await rejectsWith(makeClient(garbled.registry.url, { trustedHosts: garbled.trustedHosts }).client.request(GET()), 'auth_failed');
  });
});

describe('Basic auth upstreams', () => {
  const basic = `Basic ${Buffer.from('alice:pa55word').toString('base64')}`;
  const basicRegistry = () =>
    serve((req, res) => {
      if (req.headers.authorization !== basic) return send(res, 401, '', { 'www-authenticate': 'Basic realm="test"' });
      send(res, 200, 'ok');
    });

  it('retries a Basic challenge with credentials and sends them up front afterwards', async () => {
    const registry = await basicRegistry();
    const { client, logs } = makeClient(registry.url, { username: 'alice', password: 'pa55word' });
    const res = await client.request(GET());
    assert.equal(res.status, 200);
    assert.equal(await text(res.body), 'ok');
    assert.deepEqual(registry.seen.map((s) => s.headers.authorization), [undefined, basic]);
    (await client.request(GET('/v2/library/alpine/tags/list'))).body.resume();
    assert.equal(registry.seen.length, 3);
    assert.equal(registry.seen[2]?.headers.authorization, basic);
    const all = logs.join('');
    assert.ok(!all.includes('pa55word') && !all.includes(basic.slice(6)));
  });

  it('returns the 401 without credentials, or after one retry with wrong ones', async () => {
    const registry = await basicRegistry();
    const anon = await makeClient(registry.url).client.request(GET());
    assert.equal(anon.status, 401);
    anon.body.resume();
    assert.equal(registry.seen.length, 1);
    const wrong = await makeClient(registry.url, { username: 'alice', password: 'nope' }).client.request(GET());
    assert.equal(wrong.status, 401);
    wrong.body.resume();
    assert.equal(registry.seen.length, 3);
  });
});

describe('redirects', () => {
  it('follows a 307 to a CDN on another origin without sending Authorization there', async () => {
    const cdn = await serve((req, res) => {
      const range = req.headers.range;
      if (range === 'bytes=4-') return send(res, 206, 'data', { 'content-range': 'bytes 4-7/8' });
      send(res, 200, 'blobdata');
    }, '127.0.0.2');
    const { registry, trustedHosts } = await bearerRegistry({
      route: (req, res) => send(res, 307, '', { location: `${cdn.url}/blobs/abc?sig=very-secret-signature` }),
    });
    // The "CDN" is at a loopback address: trusted explicitly, as a public CDN would not need.
    const { client, logs } = makeClient(registry.url, { trustedHosts: [...trustedHosts, new URL(cdn.url).host] });
    const res = await client.request(GET('/v2/library/alpine/blobs/sha256:abc', { headers: { Range: 'bytes=4-' } }));
    assert.equal(res.status, 206);
    assert.equal(await text(res.body), 'data');
    assert.equal(res.url, `${cdn.url}/blobs/abc?sig=very-secret-signature`);
    assert.equal(cdn.seen.length, 1);
    assert.equal(cdn.seen[0]?.headers.authorization, undefined, 'Authorization must not reach the CDN');
    assert.equal(cdn.seen[0]?.headers.range, 'bytes=4-');
    assert.equal(registry.seen.at(-1)?.headers.authorization, 'Bearer tok-1');
    assert.ok(!logs.join('').includes('very-secret-signature'), 'signed CDN queries stay out of logs');
  });

  it('resolves relative Locations and keeps Authorization on the same origin', async () => {
    const { registry, trustedHosts } = await bearerRegistry({
      route: (req, res) => {
        if (req.url === '/v2/library/alpine/blobs/sha256:abc') return send(res, 302, '', { location: 'moved?x=1' });
        send(res, 200, `at ${req.url}`);
      },
    });
    const { client } = makeClient(registry.url, { trustedHosts });
    const res = await client.request({ method: 'HEAD', path: '/v2/library/alpine/blobs/sha256:abc', repository: 'library/alpine' });
    assert.equal(res.status, 200);
    assert.equal(res.url, `${registry.url}/v2/library/alpine/blobs/moved?x=1`);
    assert.equal(registry.seen.at(-1)?.method, 'HEAD');
    assert.equal(registry.seen.at(-1)?.headers.authorization, 'Bearer tok-1');
  });

  it('gives up after 5 redirects with too_many_redirects', async () => {
    const loop = await serve((_req, res, n) => send(res, 301, '', { location: `/v2/loop/${n}` }));
    await rejectsWith(makeClient(loop.url).client.request(GET()), 'too_many_redirects');
    assert.equal(loop.seen.length, 6);
  });

  it('refuses redirects to non-http(s) URLs and URLs with credentials', async () => {
    for (const location of ['file:///etc/passwd', 'ftp://127.0.0.1/x', 'http://user:pw@127.0.0.2/x']) {
      const bad = await serve((_req, res) => send(res, 308, '', { location }));
      const err = await rejectsWith(makeClient(bad.url).client.request(GET()), 'bad_redirect');
      assert.ok(!err.message.includes('pw@'));
    }
  });
});

describe('timeouts', { concurrency: true }, () => {
  it('times out waiting for headers, and retries before giving up', async () => {
    const hang = await serve(() => {});
    const { client, metrics } = makeClient(hang.url, { timeouts: { headersMs: 100 }, retry: { attempts: 1, baseDelayMs: 5 } });
    const started = Date.now();
    await rejectsWith(client.request(GET()), 'timeout');
    assert.ok(Date.now() - started < 3000);
    assert.equal(hang.seen.length, 2);
    assert.equal(await metric(metrics.upstreamRequests, { method: 'GET', status: 'timeout' }), 2);
  });

  it('times out a connection that never completes (TLS handshake to a silent socket)', async () => {
    const port = await serveRaw(() => undefined);
    const { client } = makeClient(`https://127.0.0.1:${port}`, { timeouts: { connectMs: 100 }, retry: { attempts: 0 } });
    const started = Date.now();
    const err = await rejectsWith(client.request(GET()), 'timeout');
    assert.ok(Date.now() - started < 2000);
    assert.match(err.message, /connect timeout|UND_ERR_CONNECT_TIMEOUT/i);
  });

  it('errors the body stream (never ends it) when the body stalls mid-way, without retrying', async () => {
    const stall = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': '1000' });
      res.write(Buffer.alloc(100, 1));
    });
    const { client, metrics } = makeClient(stall.url, { timeouts: { idleMs: 150 } });
    const res = await client.request(GET());
    assert.equal(res.status, 200);
    let received = 0;
    let ended = false;
    res.body.on('data', (c: Buffer) => (received += c.length));
    res.body.on('end', () => (ended = true));
    const err = await new Promise<Error>((resolve) => res.body.on('error', resolve));
    assert.ok(err instanceof UpstreamError);
    assert.equal(err.kind, 'timeout');
    assert.equal(ended, false);
    assert.equal(received, 100);
    assert.equal(stall.seen.length, 1, 'no retry once the body flows');
    assert.equal(await metric(metrics.upstreamBytes, {}), 100);
  });

  it('errors the body stream when the upstream cuts the connection mid-body', async () => {
    const cut = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': '1000' });
      res.write(Buffer.alloc(100, 1), () => setTimeout(() => res.socket?.destroy(), 10));
    });
    const res = await makeClient(cut.url).client.request(GET());
    await assert.rejects(text(res.body), (e: unknown) => e instanceof UpstreamError && e.kind === 'unreachable');
  });

  it('errors the body when the upstream breaks its framing in the packet that carries the headers', async () => {
    // The body fails before the caller could attach to it: still an error, never a hang or a crash.
    const port = await serveRaw((s) => s.once('data', () => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXYZ')));
    const res = await makeClient(`http://127.0.0.1:${port}`).client.request(GET());
    assert.equal(res.status, 200);
    await assert.rejects(text(res.body), (e: unknown) => e instanceof UpstreamError && e.kind === 'unreachable');
  });
});

describe('retries', () => {
  it('retries 503 then succeeds, logging a warning', async () => {
    const flaky = await serve((_req, res, n) => (n === 1 ? send(res, 503, 'busy') : send(res, 200, 'fine')));
    const { client, metrics, logs } = makeClient(flaky.url);
    const res = await client.request(GET());
    assert.equal(res.status, 200);
    assert.equal(await text(res.body), 'fine');
    assert.equal(flaky.seen.length, 2);
    assert.equal(await metric(metrics.upstreamRequests, { status: '503' }), 1);
    assert.equal(await metric(metrics.upstreamRequests, { status: '200' }), 1);
    assert.ok(logs.some((l) => l.includes('"level":40') && l.includes('retrying')));
  });

  it('retries a refused connection, unless failover peers take over (retry.unreachable: false); 503 still retried then', async () => {
    // A port that was just listening and is closed now: connections are refused.
    const gone = await serve((_req, res) => send(res, 200, 'x'));
    await gone.close();
    const retried = makeClient(gone.url);
    await rejectsWith(retried.client.request(GET()), 'unreachable');
    assert.equal(retried.logs.filter((l) => l.includes('retrying')).length, 2, 'two retries by default');
    const direct = makeClient(gone.url, { retry: { attempts: 2, baseDelayMs: 5, unreachable: false } });
    await rejectsWith(direct.client.request(GET()), 'unreachable');
    assert.equal(direct.logs.filter((l) => l.includes('retrying')).length, 0, 'no retry: the peers are asked at once');
    const flaky = await serve((_req, res, n) => (n === 1 ? send(res, 503, 'busy') : send(res, 200, 'fine')));
    const res = await makeClient(flaky.url, { retry: { attempts: 2, baseDelayMs: 5, unreachable: false } }).client.request(GET());
    assert.equal(res.status, 200);
    assert.equal(flaky.seen.length, 2);
    await text(res.body);
  });

  it('returns the last 502/503/504 after `attempts` extra tries; does not retry 500', async () => {
    const down = await serve((_req, res) => send(res, 504, 'gateway timeout'));
    const res = await makeClient(down.url, { retry: { attempts: 2, baseDelayMs: 1 } }).client.request(GET());
    assert.equal(res.status, 504);
    assert.equal(await text(res.body), 'gateway timeout');
    assert.equal(down.seen.length, 3);

    const broken = await serve((_req, res) => send(res, 500, 'bug'));
    const r500 = await makeClient(broken.url).client.request(GET());
    assert.equal(r500.status, 500);
    r500.body.resume();
    assert.equal(broken.seen.length, 1);
  });

  it('retries a connection reset before headers', async () => {
    const reset = await serve((req, res, n) => (n === 1 ? req.socket.destroy() : send(res, 200, 'ok')));
    const res = await makeClient(reset.url).client.request(GET());
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(reset.seen.length, 2);
  });

  it('waits a short 429 Retry-After and retries once; returns a long one or a second 429', async () => {
    const brief = await serve((_req, res, n) => (n === 1 ? send(res, 429, '', { 'retry-after': '0' }) : send(res, 200, 'ok')));
    const r1 = await makeClient(brief.url).client.request(GET());
    assert.equal(r1.status, 200);
    r1.body.resume();
    assert.equal(brief.seen.length, 2);

    const dated = await serve((_req, res, n) =>
      n === 1 ? send(res, 429, '', { 'retry-after': new Date(Date.now() + 50).toUTCString() }) : send(res, 200, 'ok'),
    );
    const r2 = await makeClient(dated.url).client.request(GET());
    assert.equal(r2.status, 200);
    r2.body.resume();

    const long = await serve((_req, res) => send(res, 429, '{"errors":[{"code":"TOOMANYREQUESTS"}]}', { 'retry-after': '120' }));
    const r3 = await makeClient(long.url).client.request(GET());
    assert.equal(r3.status, 429);
    assert.equal(r3.headers['retry-after'], '120');
    r3.body.resume();
    assert.equal(long.seen.length, 1);

    const stubborn = await serve((_req, res) => send(res, 429, '', { 'retry-after': '0' }));
    const r4 = await makeClient(stubborn.url).client.request(GET());
    assert.equal(r4.status, 429);
    r4.body.resume();
    assert.equal(stubborn.seen.length, 2);
  });
});

describe('circuit breaker', () => {
  it('opens after maxFails, refuses without contacting the upstream, then trials half-open', async () => {
    let healthy = false;
    const upstream = await serve((_req, res) => {
      if (healthy) setTimeout(() => send(res, 200, 'ok'), 30);
      else send(res, 500, 'down');
    });
    const { client, metrics, logs } = makeClient(upstream.url, { breaker: { maxFails: 3, resetMs: 150 }, retry: { attempts: 0 } });
    const get = async () => {
      const r = await client.request(GET());
      r.body.resume();
      return r.status;
    };
    assert.equal(await get(), 500);
    assert.equal(await get(), 500);
    assert.equal(client.circuitState(), 'closed');
    assert.equal(await get(), 500);
    assert.equal(client.circuitState(), 'open');
    assert.equal(await metric(metrics.circuitOpen, { registry: 'test.io' }), 1);
    const refused = await rejectsWith(client.request(GET()), 'circuit_open');
    assert.ok((refused.retryAfterMs ?? 0) > 0);
    assert.equal(upstream.seen.length, 3, 'open circuit: upstream not contacted');

    await sleep(160);
    assert.equal(client.circuitState(), 'half-open');
    assert.equal(await get(), 500, 'failed trial');
    assert.equal(client.circuitState(), 'open');
    assert.equal(upstream.seen.length, 4);

    await sleep(160);
    healthy = true;
    const trial = client.request(GET());
    await rejectsWith(client.request(GET()), 'circuit_open'); // only one trial at a time
    const ok = await trial;
    assert.equal(ok.status, 200);
    ok.body.resume();
    assert.equal(client.circuitState(), 'closed');
    assert.equal(await metric(metrics.circuitOpen, { registry: 'test.io' }), 0);
    assert.equal(upstream.seen.length, 5);
    assert.ok(logs.some((l) => l.includes('"level":40') && l.includes('circuit opened')));
    assert.ok(logs.some((l) => l.includes('"level":40') && l.includes('circuit closed')));
  });

  it('counts transport errors as failures and 4xx as successes', async () => {
    const gone = await serve(() => {});
    const url = gone.url;
    await gone.close();
    const { client } = makeClient(url, { breaker: { maxFails: 2, resetMs: 1000 }, retry: { attempts: 0 } });
    await rejectsWith(client.request(GET()), 'unreachable');
    await rejectsWith(client.request(GET()), 'unreachable');
    await rejectsWith(client.request(GET()), 'circuit_open');

    let n = 0;
    const mixed = await serve((_req, res) => send(res, ++n % 2 === 0 ? 404 : 503, ''));
    const c2 = makeClient(mixed.url, { breaker: { maxFails: 2, resetMs: 1000 }, retry: { attempts: 0 } }).client;
    for (let i = 0; i < 6; i++) (await c2.request(GET())).body.resume();
    assert.equal(c2.circuitState(), 'closed');
  });
});

describe('metrics, headers and bodies', () => {
  it('counts body bytes as read, times headers, and records rate limits', async () => {
    const size = 5 * 1024 * 1024 + 123;
    const blob = Buffer.alloc(size, 7);
    const hub = await serve((_req, res) => {
      res.writeHead(200, {
        'content-length': String(size),
        'ratelimit-limit': '100;w=21600',
        'ratelimit-remaining': '76;w=21600',
        'docker-ratelimit-source': '192.0.2.2',
      });
      res.end(blob);
    });
    const { client, metrics } = makeClient(hub.url);
    const res = await client.request(GET('/v2/library/alpine/blobs/sha256:big'));
    let got = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) got += chunk.length;
    assert.equal(got, size);
    assert.equal(await metric(metrics.upstreamBytes, { registry: 'test.io' }), size);
    assert.equal(await metric(metrics.upstreamRateLimitRemaining, { registry: 'test.io' }), 76);
    assert.equal(await metric(metrics.upstreamRateLimitLimit, { registry: 'test.io' }), 100);
    assert.equal(
      await metric(metrics.upstreamDuration, { registry: 'test.io', method: 'GET' }, 'ocirelay_upstream_request_duration_seconds_count'),
      1,
    );
  });

  it('gives HEAD an empty ended body and joins repeated headers', async () => {
    const reg = await serve((_req, res) => {
      res.setHeader('docker-content-digest', 'sha256:abc');
      res.setHeader('x-multi', ['a', 'b']);
      res.setHeader('content-length', '1234');
      res.writeHead(200);
      res.end();
    });
    const res = await makeClient(reg.url).client.request({ method: 'HEAD', path: '/v2/library/alpine/manifests/3.19', repository: 'library/alpine' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-length'], '1234');
    assert.equal(res.headers['docker-content-digest'], 'sha256:abc');
    assert.equal(res.headers['x-multi'], 'a, b');
    assert.equal(await text(res.body), '');
  });

  it('forwards accept headers, drops caller Authorization, keeps query strings', async () => {
    const reg = await serve((_req, res) => send(res, 200, '{}'));
    const res = await makeClient(`${reg.url}/`).client.request(
      GET('/v2/library/alpine/tags/list?n=10', { headers: { Accept: 'application/json', authorization: 'Bearer forged' } }),
    );
    res.body.resume();
    assert.equal(reg.seen[0]?.url, '/v2/library/alpine/tags/list?n=10');
    assert.equal(reg.seen[0]?.headers.accept, 'application/json');
    assert.equal(reg.seen[0]?.headers.authorization, undefined);
  });
});

describe('abort and validation', () => {
  it('aborts a request waiting for headers without retrying', async () => {
    const hang = await serve(() => {});
    const { client } = makeClient(hang.url, { timeouts: { headersMs: 5000 } });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    const started = Date.now();
    await rejectsWith(client.request(GET(undefined, { signal: ac.signal })), 'aborted');
    assert.ok(Date.now() - started < 1000);
    assert.equal(hang.seen.length, 1);
    assert.equal(client.circuitState(), 'closed');
    await rejectsWith(client.request(GET(undefined, { signal: ac.signal })), 'aborted');
    assert.equal(hang.seen.length, 1, 'an already aborted signal never reaches the upstream');
  });

  it('aborting mid-body destroys the request and errors the stream', async () => {
    let closed = false;
    const slow = await serve((req, res) => {
      res.writeHead(200, { 'content-length': '100000' });
      res.write(Buffer.alloc(1000));
      req.socket.on('close', () => (closed = true));
    });
    const ac = new AbortController();
    const res = await makeClient(slow.url, { timeouts: { idleMs: 5000 } }).client.request(GET(undefined, { signal: ac.signal }));
    const done = text(res.body);
    ac.abort();
    await assert.rejects(done);
    await sleep(50);
    assert.equal(closed, true, 'upstream connection closed');
  });

  it('aborts while waiting for a shared token fetch', async () => {
    const { registry, trustedHosts } = await bearerRegistry({ tokenDelayMs: 300 });
    const { client } = makeClient(registry.url, { trustedHosts });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await rejectsWith(client.request(GET(undefined, { signal: ac.signal })), 'aborted');
  });

  it('rejects upstream URLs with credentials without echoing them, and paths outside /v2/', async () => {
    const metrics = new Metrics({ defaultMetrics: false });
    const logger = createLogger({ level: 'silent' });
    assert.throws(
      () => new RegistryClient({ name: 'x', url: 'https://user:topsecret@registry.example' }, { metrics, logger }),
      (e: unknown) => e instanceof TypeError && !e.message.includes('topsecret'),
    );
    assert.throws(() => new RegistryClient({ name: 'x', url: 'ftp://registry.example' }, { metrics, logger }), TypeError);
    const client = new RegistryClient({ name: 'x', url: 'http://127.0.0.1:9' }, { metrics, logger });
    clients.push(client);
    await assert.rejects(client.request({ method: 'GET', path: '/admin', repository: 'a' }), TypeError);
    await assert.rejects(client.request({ method: 'GET', path: '/v2/../admin', repository: 'a' }), TypeError);
  });
});
