// Http1Client against real sockets on 127.0.0.1: node http/https servers and raw TCP
// servers that misbehave on purpose. What RegistryClient builds on top (auth, redirects,
// retries, error kinds) is covered by upstream-client.test.ts; this file covers what is the
// client's own: slabs, HEAD, connection reuse and limits, timeouts, backpressure, TLS.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { buffer as readAll } from 'node:stream/consumers';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, describe, it } from 'node:test';
import { Http1Client, HttpTimeoutError } from '../src/upstream/http1-client.ts';

const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const c of closers.reverse()) await c();
});

interface Served {
  url: string;
  /** TCP connections accepted so far. */
  connections: () => number;
}

async function listen(server: net.Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const sockets = new Set<net.Socket>();
  server.on(server instanceof https.Server ? 'secureConnection' : 'connection', (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  closers.push(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  );
  return (server.address() as AddressInfo).port;
}

async function serveHttp(handler: http.RequestListener): Promise<Served> {
  let connections = 0;
  const server = http.createServer(handler);
  server.on('connection', () => connections++);
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, connections: () => connections };
}

/** A raw TCP server: `onConnection` gets each socket and its ordinal. */
async function serveRaw(onConnection: (s: net.Socket, n: number) => void): Promise<Served> {
  let connections = 0;
  const server = net.createServer((s) => onConnection(s, ++connections));
  const port = await listen(server);
  return { url: `http://127.0.0.1:${port}`, connections: () => connections };
}

function client(opts: ConstructorParameters<typeof Http1Client>[0] = {}): Http1Client {
  const c = new Http1Client({ connectMs: 1000, headersMs: 1000, idleMs: 1000, ...opts });
  closers.push(() => c.close());
  return c;
}

async function errorOf(body: Readable): Promise<Error> {
  try {
    await readAll(body);
  } catch (e) {
    return e as Error;
  }
  assert.fail('the body ended cleanly');
}

describe('Http1Client', () => {
  it('reads a large body into 1 MiB slabs, handing chunks on without copies', async () => {
    const blob = randomBytes(8 * 1024 * 1024 + 123);
    const srv = await serveHttp((_req, res) => {
      res.writeHead(200, { 'content-length': String(blob.length) });
      res.end(blob);
    });
    const res = await client().request('GET', new URL(`${srv.url}/v2/a/blobs/x`), {});
    assert.equal(res.statusCode, 200);
    assert.equal(res.headers['content-length'], String(blob.length));
    const chunks: Buffer[] = [];
    for await (const c of res.body as AsyncIterable<Buffer>) chunks.push(c);
    assert.ok(Buffer.concat(chunks).equals(blob));
    const slabs = new Set(chunks.map((c) => c.buffer));
    // The read that brought the headers went into a connection's small slab; the body's into 1 MiB ones.
    assert.equal(chunks[0]!.buffer.byteLength, 64 * 1024);
    assert.ok(chunks.slice(1).every((c) => c.buffer.byteLength === 1024 * 1024), 'every later chunk is a view of a 1 MiB slab');
    assert.ok(slabs.size >= 9 && slabs.size <= 11, `8 MiB in ${slabs.size} slabs`);
  });

  it('sends the request line, Host and the given headers', async () => {
    let seen: http.IncomingHttpHeaders = {};
    let url = '';
    const srv = await serveHttp((req, res) => {
      seen = req.headers;
      url = req.url ?? '';
      res.end('ok');
    });
    const res = await client().request('GET', new URL(`${srv.url}/v2/a/blobs/x?sig=1`), { accept: '*/*', authorization: 'Bearer t' });
    assert.equal((await readAll(res.body)).toString(), 'ok');
    assert.equal(url, '/v2/a/blobs/x?sig=1');
    assert.equal(seen.host, new URL(srv.url).host);
    assert.equal(seen.authorization, 'Bearer t');
    assert.equal(seen.accept, '*/*');
    await assert.rejects(client().request('GET', new URL(`${srv.url}/x`), { 'x-evil': 'a\r\nInjected: 1' }), TypeError);
  });

  it('decodes a chunked body', async () => {
    const parts = [randomBytes(1000), randomBytes(300 * 1024), randomBytes(7)];
    const srv = await serveHttp(async (_req, res) => {
      res.writeHead(200);
      for (const p of parts) {
        res.write(p);
        await sleep(5);
      }
      res.end();
    });
    const res = await client().request('GET', new URL(`${srv.url}/b`), {});
    assert.equal(res.headers['transfer-encoding'], 'chunked');
    assert.ok((await readAll(res.body)).equals(Buffer.concat(parts)));
  });

  it('keeps a finished connection for the next request to the same origin, then lets it go', async () => {
    const srv = await serveHttp((_req, res) => res.end('x'.repeat(100)));
    const c = client({ keepIdleMs: 200 });
    for (let i = 0; i < 3; i++) {
      const res = await c.request('GET', new URL(`${srv.url}/r${i}`), {});
      assert.equal((await readAll(res.body)).length, 100);
      assert.equal(c.connections(srv.url).idle, 1);
    }
    assert.equal(srv.connections(), 1, 'three requests on one connection');
    await sleep(400);
    assert.equal(c.connections(srv.url).idle, 0, 'dropped after keepIdleMs');
  });

  it('does not keep a connection whose body was dropped half-way or that said close', async () => {
    const srv = await serveHttp((req, res) => {
      if (req.url === '/close') res.setHeader('connection', 'close');
      res.end(Buffer.alloc(4 * 1024 * 1024));
    });
    const c = client();
    const res = await c.request('GET', new URL(`${srv.url}/big`), {});
    await new Promise<void>((resolve) => res.body.once('data', () => resolve()));
    res.body.destroy();
    await sleep(50);
    assert.equal(c.connections(srv.url).idle, 0);
    const closing = await c.request('GET', new URL(`${srv.url}/close`), {});
    await readAll(closing.body);
    assert.equal(c.connections(srv.url).idle, 0);
    assert.equal(srv.connections(), 2);
  });

  it('ends a HEAD response at its headers, and reuses the connection', async () => {
    const srv = await serveHttp((req, res) => {
      res.writeHead(200, { 'content-length': '1048576', 'docker-content-digest': 'sha256:x' });
      res.end(req.method === 'HEAD' ? undefined : Buffer.alloc(1048576));
    });
    const c = client();
    const head = await c.request('HEAD', new URL(`${srv.url}/h`), {});
    assert.equal(head.headers['content-length'], '1048576');
    assert.equal((await readAll(head.body)).length, 0);
    const get = await c.request('GET', new URL(`${srv.url}/h`), {});
    assert.equal((await readAll(get.body)).length, 1048576);
    assert.equal(srv.connections(), 1);
  });

  it('opens at most maxConnectionsPerOrigin; further requests wait their turn, or give up on abort', async () => {
    let open = 0;
    let most = 0;
    const srv = await serveHttp((_req, res) => {
      open++;
      most = Math.max(most, open);
      setTimeout(() => {
        open--;
        res.end('done');
      }, 30);
    });
    const c = client({ maxConnectionsPerOrigin: 2 });
    const bodies = await Promise.all(
      Array.from({ length: 7 }, async (_, i) => (await readAll((await c.request('GET', new URL(`${srv.url}/${i}`), {})).body)).toString()),
    );
    assert.deepEqual(bodies, Array(7).fill('done'));
    assert.equal(most, 2);
    assert.equal(srv.connections(), 2);
    assert.deepEqual(c.connections(srv.url), { open: 2, idle: 2 });

    // Both connections busy: a third request waits, and its abort takes it out of the queue.
    const busy = await Promise.all([0, 1].map(() => c.request('GET', new URL(`${srv.url}/busy`), {})));
    const ac = new AbortController();
    const waiting = c.request('GET', new URL(`${srv.url}/waits`), {}, ac.signal);
    ac.abort();
    await assert.rejects(waiting, { name: 'AbortError' });
    for (const r of busy) await readAll(r.body);
    assert.equal(srv.connections(), 2);
  });

  it("keeps an idle connection no longer than the server's Keep-Alive timeout allows", async () => {
    const srv = await serveHttp((_req, res) => {
      res.setHeader('keep-alive', 'timeout=1');
      res.end('x');
    });
    const c = client();
    await readAll((await c.request('GET', new URL(`${srv.url}/k`), {})).body);
    assert.deepEqual(c.connections(srv.url), { open: 0, idle: 0 }, 'timeout=1 leaves no safe idle time');
  });

  it('sends a request again on a fresh connection when a reused one turns out closed', async () => {
    // Answers the first request of each connection, then drops the connection silently at
    // the next one: what a server closing an idle keep-alive connection looks like.
    const srv = await serveRaw((s) => {
      let requests = 0;
      s.on('data', (d) => {
        if (!d.includes('\r\n\r\n')) return;
        if (++requests === 1) s.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
        else s.destroy();
      });
    });
    const c = client();
    for (let i = 0; i < 3; i++) {
      const res = await c.request('GET', new URL(`${srv.url}/r`), {});
      assert.equal((await readAll(res.body)).toString(), 'ok');
    }
    assert.equal(srv.connections(), 3);
  });

  it('fails a fresh connection that closes before answering (no silent retry)', async () => {
    const srv = await serveRaw((s) => s.once('data', () => s.destroy()));
    await assert.rejects(client().request('GET', new URL(`${srv.url}/r`), {}));
    assert.equal(srv.connections(), 1);
  });

  it('errors, never ends, a body cut short or malformed', async () => {
    const cut = await serveRaw((s) => s.once('data', () => s.end('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')));
    const res = await client().request('GET', new URL(`${cut.url}/r`), {});
    assert.match((await errorOf(res.body)).message, /before the body ended/);

    const garbled = await serveRaw((s) => s.once('data', () => s.write('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXYZ')));
    const res2 = await client().request('GET', new URL(`${garbled.url}/r`), {});
    assert.match((await errorOf(res2.body)).message, /longer than its size/);

    const nonsense = await serveRaw((s) => s.once('data', () => s.write('SSH-2.0-OpenSSH\r\n\r\n')));
    await assert.rejects(client().request('GET', new URL(`${nonsense.url}/r`), {}), /status line/);
  });

  it('times out the connect, the headers, and an idle body, naming which', async () => {
    const silent = await serveRaw(() => undefined);
    const c = client({ headersMs: 100, idleMs: 100 });
    const headers = await c.request('GET', new URL(`${silent.url}/r`), {}).then(
      () => assert.fail('no headers came'),
      (e: unknown) => e,
    );
    assert.ok(headers instanceof HttpTimeoutError && headers.phase === 'headers');

    const stall = await serveRaw((s) => s.once('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')));
    const res = await c.request('GET', new URL(`${stall.url}/r`), {});
    const idle = await errorOf(res.body);
    assert.ok(idle instanceof HttpTimeoutError && idle.phase === 'body');

    // A TLS handshake the server never answers: the connect timeout covers it.
    const connect = await client({ connectMs: 100 })
      .request('GET', new URL(silent.url.replace('http:', 'https:')), {})
      .then(
        () => assert.fail('connected'),
        (e: unknown) => e,
      );
    assert.ok(connect instanceof HttpTimeoutError && connect.phase === 'connect');
  });

  it('does not time out while the consumer holds the body back', async () => {
    const blob = randomBytes(6 * 1024 * 1024);
    const srv = await serveHttp((_req, res) => {
      res.writeHead(200, { 'content-length': String(blob.length) });
      res.end(blob);
    });
    const res = await client({ idleMs: 150 }).request('GET', new URL(`${srv.url}/b`), {});
    const hash = createHash('sha256');
    let pauses = 0;
    for await (const c of res.body as AsyncIterable<Buffer>) {
      hash.update(c);
      if (pauses < 2) {
        pauses++;
        await sleep(400); // well past idleMs: the upstream is waiting on us, not idle
      }
    }
    assert.equal(hash.digest('hex'), createHash('sha256').update(blob).digest('hex'));
  });

  it('aborts waiting for headers and mid-body', async () => {
    const hang = await serveRaw(() => undefined);
    const c = client();
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 50);
    await assert.rejects(c.request('GET', new URL(`${hang.url}/r`), {}, ac.signal), { name: 'AbortError' });

    const slow = await serveRaw((s) => s.once('data', () => s.write('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc')));
    const ac2 = new AbortController();
    const res = await c.request('GET', new URL(`${slow.url}/r`), {}, ac2.signal);
    setTimeout(() => ac2.abort(), 50);
    assert.equal((await errorOf(res.body)).name, 'AbortError');
    await assert.rejects(c.request('GET', new URL(`${slow.url}/r`), {}, AbortSignal.abort()), { name: 'AbortError' });
  });

  it('speaks TLS, verifying the certificate', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bulk-tls-'));
    closers.push(() => fs.rmSync(dir, { recursive: true, force: true }));
    const key = path.join(dir, 'key.pem');
    const cert = path.join(dir, 'cert.pem');
    execFileSync('openssl', [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1', '-keyout', key, '-out', cert,
    ], { stdio: 'ignore' });
    const blob = randomBytes(3 * 1024 * 1024);
    const server = https.createServer({ key: fs.readFileSync(key), cert: fs.readFileSync(cert) }, (_req, res) => {
      res.writeHead(200, { 'content-length': String(blob.length) });
      res.end(blob);
    });
    const port = await listen(server);
    const trusting = client({ ca: fs.readFileSync(cert) });
    for (const host of ['127.0.0.1', 'localhost']) {
      const res = await trusting.request('GET', new URL(`https://${host}:${port}/b`), {});
      assert.ok((await readAll(res.body)).equals(blob), host);
    }
    await assert.rejects(client().request('GET', new URL(`https://127.0.0.1:${port}/b`), {}), /self[- ]signed|certificate/i);
  });
});
