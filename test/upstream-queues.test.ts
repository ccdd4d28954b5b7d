// Bounded upstream queues and bodies: blob transfers never hold up manifests, a request
// waiting for a pooled connection gives up, a too slow body is aborted, and a body that fails
// while nobody listens never becomes an uncaught error.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { RegistryClient, UpstreamError, type UpstreamClientOptions } from '../src/upstream/registry-client.ts';
import { startOcirelay } from './helpers/ocirelay-process.ts';

const closers: Array<() => Promise<void>> = [];
after(async () => {
  for (const c of closers.reverse()) await c();
});

async function serve(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<{ url: string; hits: IncomingMessage[] }> {
  const hits: IncomingMessage[] = [];
  const server = http.createServer((req, res) => {
    hits.push(req);
    handler(req, res);
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, hits };
}

/** Raw TCP: for responses Node's server would not send (a body cut short of its Content-Length). */
async function serveRaw(onSocket: (s: net.Socket) => void): Promise<string> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('error', () => undefined);
    onSocket(s);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function makeClient(url: string, opts: Partial<UpstreamClientOptions> = {}): RegistryClient {
  const c = new RegistryClient(
    { name: 'test.io', url },
    { metrics: new Metrics({ defaultMetrics: false }), logger: createLogger({ level: 'silent' }), retry: { attempts: 0 }, ...opts },
  );
  closers.push(() => c.close());
  return c;
}

const blob = (n: number) => ({ method: 'GET', path: `/v2/library/app/blobs/sha256:${String(n).padStart(64, '0')}`, repository: 'library/app' }) as const;
const manifest = { method: 'GET', path: '/v2/library/app/manifests/1.0', repository: 'library/app' } as const;

/** Blob GETs answer headers and a few bytes, then stall; everything else answers at once. */
function stallingRegistry(res: ServerResponse, req: IncomingMessage): void {
  if (req.url?.includes('/blobs/')) {
    res.writeHead(200, { 'content-length': String(1024 * 1024) });
    res.write(Buffer.alloc(16, 1));
    return;
  }
  res.writeHead(200, { 'content-length': '2' });
  res.end('{}');
}

describe('connection queues', () => {
  it('a request waiting for a pooled connection gives up after the headers deadline; manifests do not wait behind blobs', async () => {
    const upstream = await serve((req, res) => stallingRegistry(res, req));
    const client = makeClient(upstream.url, { timeouts: { connectMs: 200, headersMs: 300, idleMs: 20_000 }, connections: { bulk: 2, meta: 2 } });
    const held = [await client.request(blob(1)), await client.request(blob(2))];
    for (const h of held) closers.push(async () => void h.body.destroy());

    const m0 = performance.now();
    const m = await client.request(manifest);
    assert.equal(m.status, 200);
    m.body.resume();
    assert.ok(performance.now() - m0 < 1000, 'the manifest used its own pool');

    const started = performance.now();
    const err = await client.request(blob(3)).then(
      () => assert.fail('expected a timeout'),
      (e: unknown) => e,
    );
    const ms = performance.now() - started;
    assert.ok(err instanceof UpstreamError, String(err));
    assert.equal(err.kind, 'timeout');
    assert.match(err.message, /waiting for a connection/);
    assert.ok(ms >= 450 && ms < 3000, `gave up after ${Math.round(ms)} ms (deadline 500 ms)`);
    assert.equal(upstream.hits.filter((h) => h.url?.includes('/blobs/')).length, 2, 'the third blob request never got a connection');
  });

  it('64 stalled blob fills through ocirelay: a manifest GET of that registry answers within 2 s', async () => {
    const config = Buffer.from('{}');
    const manifestBody = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: 'application/vnd.oci.image.manifest.v1+json',
        config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: `sha256:${createHash('sha256').update(config).digest('hex')}`, size: config.length },
        layers: [],
      }),
    );
    const manifestDigest = `sha256:${createHash('sha256').update(manifestBody).digest('hex')}`;
    const upstream = await serve((req, res) => {
      if (req.url?.includes('/blobs/')) return stallingRegistry(res, req);
      if (req.url?.includes('/manifests/')) {
        res.writeHead(200, {
          'content-type': 'application/vnd.oci.image.manifest.v1+json',
          'content-length': String(manifestBody.length),
          'docker-content-digest': manifestDigest,
        });
        return res.end(req.method === 'HEAD' ? undefined : manifestBody);
      }
      res.writeHead(200, { 'content-length': '2' });
      res.end('{}');
    });
    const proxy = await startOcirelay({ registries: { 'r.test': { url: upstream.url } }, defaultRegistry: 'r.test' });
    closers.push(() => proxy.cleanup());

    const clients = new AbortController();
    closers.push(async () => clients.abort());
    for (let i = 0; i < 64; i++) {
      const digest = `sha256:${createHash('sha256').update(`blob ${i}`).digest('hex')}`;
      fetch(`${proxy.url}/v2/library/app/blobs/${digest}`, { signal: clients.signal }).then(
        (r) => r.body?.cancel().catch(() => undefined),
        () => undefined,
      );
    }
    for (let i = 0; i < 200 && upstream.hits.filter((h) => h.url?.includes('/blobs/')).length < 64; i++) await sleep(50);
    assert.equal(upstream.hits.filter((h) => h.url?.includes('/blobs/')).length, 64, 'all 64 fills reached the upstream and stalled');

    const started = performance.now();
    const r = await fetch(`${proxy.url}/v2/library/app/manifests/${manifestDigest}`, { signal: AbortSignal.timeout(10_000) });
    const ms = performance.now() - started;
    assert.equal(r.status, 200);
    assert.deepEqual(Buffer.from(await r.arrayBuffer()), manifestBody);
    assert.ok(ms < 2000, `manifest answered in ${Math.round(ms)} ms`);
  });
});

describe('bodies', () => {
  it('aborts a body slower than minRate over the window with a timeout error', async () => {
    const upstream = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': '100000' });
      const t = setInterval(() => res.write(Buffer.alloc(10, 1)), 50);
      res.on('close', () => clearInterval(t));
    });
    const client = makeClient(upstream.url, { minRate: { bytesPerSec: 1000, windowMs: 400 } });
    const res = await client.request(blob(1));
    const started = performance.now();
    const err = await pipeline(res.body, new PassThrough().resume()).then(
      () => assert.fail('a trickling body must not end cleanly'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof UpstreamError, String(err));
    assert.equal(err.kind, 'timeout');
    assert.match(err.message, /slower than 1000 B\/s/);
    assert.ok(performance.now() - started < 3000);
  });

  it('does not count time the consumer holds the body back (minRate and the idle timeout)', async () => {
    const upstream = await serve((_req, res) => {
      res.writeHead(200, { 'content-length': String(4 * 1024 * 1024) });
      res.end(Buffer.alloc(4 * 1024 * 1024, 2));
    });
    const client = makeClient(upstream.url, { timeouts: { idleMs: 300 }, minRate: { bytesPerSec: 1024 * 1024, windowMs: 200 } });
    const res = await client.request(blob(1));
    res.body.pause();
    await sleep(900); // longer than the window and the idle timeout, with the body unread
    let n = 0;
    for await (const chunk of res.body as AsyncIterable<Buffer>) n += chunk.length;
    assert.equal(n, 4 * 1024 * 1024);
  });

  it('a body cut short of its Content-Length, with nobody listening, is kept as an error, never thrown', async () => {
    const url = await serveRaw((s) => {
      s.once('data', () => {
        s.write('HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n');
        s.end(Buffer.alloc(500, 3));
      });
    });
    const uncaught: unknown[] = [];
    const onUncaught = (e: unknown): void => void uncaught.push(e);
    process.on('uncaughtException', onUncaught);
    try {
      const res = await makeClient(url).request(blob(1));
      await sleep(300); // the connection is gone; nobody has attached to the body yet
      assert.equal(uncaught.length, 0, String(uncaught[0]));
      assert.ok(res.body.errored instanceof UpstreamError, String(res.body.errored));
      await assert.rejects(pipeline(res.body, new PassThrough().resume()), (e: unknown) => e instanceof UpstreamError);
    } finally {
      process.off('uncaughtException', onUncaught);
    }
  });

  it('ocirelay survives a truncated upstream blob fetched twice, answering an aborted transfer or an error each time', async () => {
    const bytes = Buffer.alloc(256 * 1024, 7);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const url = await serveRaw((s) => {
      s.on('data', (d) => {
        if (!d.toString().includes('/blobs/')) return void s.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}');
        s.write(`HTTP/1.1 200 OK\r\nContent-Length: ${bytes.length}\r\n\r\n`);
        s.end(bytes.subarray(0, bytes.length / 2));
      });
    });
    const proxy = await startOcirelay({ registries: { 'r.test': { url } }, defaultRegistry: 'r.test', upstream: { retries: 0 } });
    closers.push(() => proxy.cleanup());
    for (let round = 0; round < 2; round++) {
      const got = await fetch(`${proxy.url}/v2/library/app/blobs/${digest}`)
        .then(async (r) => (r.status === 200 ? Buffer.from(await r.arrayBuffer()) : r.status))
        .catch((e: unknown) => e);
      // An error status or an aborted transfer (the body read rejects); never a clean end.
      assert.ok(!Buffer.isBuffer(got), `round ${round}: a clean 200 with ${Buffer.isBuffer(got) ? got.length : 0} of ${bytes.length} bytes`);
    }
    const ready = await fetch(`${proxy.url}/readyz`);
    assert.equal(ready.status, 200, 'the process is alive and ready');
    assert.ok(!proxy.stderr().includes("Emitted 'error' event"), proxy.stderr());
  });
});
