// Redirects and token realms (SSRF): a registry may send us to its own origin, to public
// addresses, and to its trustedHosts; anything else is refused, logged, and answered with an
// OCI error. Tested on RegistryClient and through a running ocirelay.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { text } from 'node:stream/consumers';
import { after, describe, it } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { isPublicAddress } from '../src/upstream/address-policy.ts';
import { RegistryClient, UpstreamError, type UpstreamConfig } from '../src/upstream/registry-client.ts';
import { startOcirelay } from './helpers/ocirelay-process.ts';

interface Server {
  url: string;
  host: string;
  hits: IncomingMessage[];
}

const closers: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of closers.reverse()) await c();
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void, host = '127.0.0.1'): Promise<Server> {
  const hits: IncomingMessage[] = [];
  const server = http.createServer((req, res) => {
    hits.push(req);
    handler(req, res);
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return { url: `http://${host}:${port}`, host: `${host}:${port}`, hits };
}

function send(res: ServerResponse, status: number, body: string | Buffer = '', headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-length': String(Buffer.byteLength(body)), ...headers });
  res.end(body);
}

function client(cfg: Omit<UpstreamConfig, 'name'>): { client: RegistryClient; logs: string[] } {
  const logs: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (l: string) => void logs.push(l) } });
  const c = new RegistryClient({ name: 'test.io', ...cfg }, { metrics: new Metrics({ defaultMetrics: false }), logger, retry: { attempts: 1, baseDelayMs: 5 } });
  closers.push(() => c.close());
  return { client: c, logs };
}

async function refused(p: Promise<unknown>): Promise<UpstreamError> {
  const err = await p.then(
    () => assert.fail('expected a refusal'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof UpstreamError, String(err));
  assert.equal(err.kind, 'target_refused', err.message);
  return err;
}

const BLOB = { method: 'GET', path: '/v2/library/app/blobs/sha256:abc', repository: 'library/app' } as const;

describe('redirects', () => {
  it('refuses a redirect to a loopback port other than the registry’s, and follows it once that host:port is trusted', async () => {
    const internal = await serve((_req, res) => send(res, 200, 'internal secret'));
    const registry = await serve((_req, res) => send(res, 307, '', { location: `${internal.url}/admin` }));
    const { client: plain, logs } = client({ url: registry.url });
    const err = await refused(plain.request(BLOB));
    assert.match(err.message, /not a public address|non-public/);
    assert.equal(internal.hits.length, 0, 'the internal server was never contacted');
    assert.ok(logs.some((l) => l.includes('"level":40') && l.includes('target_refused')), 'refusal logged as a warning with its reason');

    const { client: trusting } = client({ url: registry.url, trustedHosts: [internal.host] });
    const res = await trusting.request(BLOB);
    assert.equal(res.status, 200);
    assert.equal(await text(res.body), 'internal secret');
  });

  it('checks every hop: a trusted hop that redirects on to an untrusted loopback port is refused', async () => {
    const internal = await serve((_req, res) => send(res, 200, 'internal'));
    const trustedCdn = await serve((_req, res) => send(res, 302, '', { location: `${internal.url}/x` }), '127.0.0.2');
    const registry = await serve((_req, res) => send(res, 307, '', { location: `${trustedCdn.url}/blob` }));
    const { client: c } = client({ url: registry.url, trustedHosts: [trustedCdn.host] });
    await refused(c.request(BLOB));
    assert.equal(trustedCdn.hits.length, 1);
    assert.equal(internal.hits.length, 0);
  });

  it('refuses decimal, hex and mapped spellings of loopback before connecting', async () => {
    const internal = await serve((_req, res) => send(res, 200, 'internal'));
    const port = new URL(internal.url).port;
    for (const host of ['2130706433', '0x7f000001', '[::ffff:127.0.0.1]', 'localhost']) {
      const registry = await serve((_req, res) => send(res, 302, '', { location: `http://${host}:${port}/x` }));
      await refused(client({ url: registry.url }).client.request(BLOB));
    }
    assert.equal(internal.hits.length, 0);
  });

  it('checks the address actually connected to: a name resolving to a non-public address is refused by the connector', async () => {
    const name = os.hostname();
    const addresses = await lookup(name, { all: true });
    assert.ok(addresses.length > 0 && addresses.every((a) => !isPublicAddress(a.address)), `${name} must resolve to a non-public address for this test`);
    const internal = await serve((_req, res) => send(res, 200, 'internal'), addresses[0]?.family === 6 ? '::' : '0.0.0.0');
    const port = new URL(internal.url.replace('::', '[::]')).port;
    const registry = await serve((_req, res) => send(res, 302, '', { location: `http://${name}:${port}/x` }));
    const err = await refused(client({ url: registry.url }).client.request(BLOB));
    assert.match(err.message, /non-public address/);
    assert.equal(internal.hits.length, 0, 'the socket was closed before a request was written');
  });
});

describe('token realms', () => {
  const challenge = (realm: string) => (req: IncomingMessage, res: ServerResponse) => {
    if (req.headers.authorization?.startsWith('Bearer ')) return send(res, 200, 'ok');
    send(res, 401, '{}', { 'www-authenticate': `Bearer realm="${realm}",service="s"` });
  };

  it('sends no credentials to a plain-http realm at another host: the token request is refused', async () => {
    const realm = await serve((_req, res) => send(res, 200, JSON.stringify({ token: 'tok' })), '127.0.0.2');
    const registry = await serve(challenge(`${realm.url}/token`));
    const { client: c, logs } = client({ url: registry.url, username: 'robot', password: 'pw-secret' });
    const err = await refused(c.request({ method: 'GET', path: '/v2/library/app/manifests/1', repository: 'library/app' }));
    assert.match(err.message, /token realm .* refused/);
    assert.equal(realm.hits.length, 0, 'the realm received nothing, so no credentials');
    assert.ok(!logs.join('').includes('pw-secret'));
  });

  it('gives credentials to a realm listed in trustedHosts', async () => {
    const realm = await serve((_req, res) => send(res, 200, JSON.stringify({ token: 'tok' })), '127.0.0.2');
    const registry = await serve(challenge(`${realm.url}/token`));
    const { client: c } = client({ url: registry.url, username: 'robot', password: 'pw', trustedHosts: [realm.host] });
    const res = await c.request({ method: 'GET', path: '/v2/library/app/manifests/1', repository: 'library/app' });
    assert.equal(res.status, 200);
    res.body.resume();
    assert.equal(realm.hits[0]?.headers.authorization, `Basic ${Buffer.from('robot:pw').toString('base64')}`);
  });

  it('asks an untrusted non-public realm nothing, even without credentials (the connector refuses it)', async () => {
    const realm = await serve((_req, res) => send(res, 200, JSON.stringify({ token: 'tok' })), '127.0.0.2');
    const registry = await serve(challenge(`${realm.url}/token`));
    await refused(client({ url: registry.url }).client.request({ method: 'GET', path: '/v2/library/app/manifests/1', repository: 'library/app' }));
    assert.equal(realm.hits.length, 0);
  });
});

describe('through a running ocirelay', () => {
  it('answers a refused blob redirect with an OCI error (502, not 500), and serves it once the host is trusted', async () => {
    const bytes = Buffer.from('blob bytes held on an internal server');
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const internal = await serve((_req, res) => send(res, 200, bytes, { 'content-type': 'application/octet-stream' }));
    const registry = await serve((req, res) => {
      if (req.url === '/v2/') return send(res, 200, '{}');
      if (req.url?.includes('/blobs/')) return send(res, 307, '', { location: `${internal.url}/data/${digest}` });
      send(res, 404, '{"errors":[{"code":"NOT_FOUND"}]}');
    });

    const refusing = await startOcirelay({ registries: { 'r.test': { url: registry.url } }, defaultRegistry: 'r.test' });
    closers.push(() => refusing.cleanup());
    const r = await fetch(`${refusing.url}/v2/library/app/blobs/${digest}`);
    assert.equal(r.status, 502);
    const body = (await r.json()) as { errors: Array<{ code: string; message: string }> };
    assert.equal(body.errors[0]?.code, 'UNAVAILABLE');
    assert.equal(internal.hits.length, 0);
    const line = await refusing.waitForLog((l) => l.err === 'target_refused');
    assert.match(String(line.reason), /not a public address|non-public/);

    const trusting = await startOcirelay({ registries: { 'r.test': { url: registry.url, trustedHosts: [internal.host] } }, defaultRegistry: 'r.test' });
    closers.push(() => trusting.cleanup());
    const ok = await fetch(`${trusting.url}/v2/library/app/blobs/${digest}`);
    assert.equal(ok.status, 200);
    assert.deepEqual(Buffer.from(await ok.arrayBuffer()), bytes);
    assert.ok(internal.hits.length >= 1);
    assert.match(String(internal.hits[0]?.headers['user-agent']), /^ocirelay\/\d+\.\d+\.\d+/);
  });
});
