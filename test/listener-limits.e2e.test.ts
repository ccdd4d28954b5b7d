// Listener limits (config `server:`) against a running ocirelay with a real Distribution
// upstream: slow-header clients are cut off by the headers timeout without slowing a pull,
// a client that reads nothing is dropped and its open blob file released, oversized headers
// get 431, oversized admin bodies 413, and the connection limit holds.
import assert from 'node:assert/strict';
import { readdir, readlink, stat } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const TOKEN = 'admin-token-for-limits';
const SLOW_CLIENTS = 500;
const HEADERS_TIMEOUT_MS = 3000;
const STALL_MS = 2000;
const BIG = 32 * 1024 * 1024;

let upstream: RegistryFixture;
let proxy: OcirelayProcess;
let small: OcirelayProcess;
let bigImage: RandomImage;
let smallImages: RandomImage[];

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  bigImage = await pushRandomImage(upstream.url, 'limits/big', 'v1', [BIG]);
  smallImages = [];
  for (const t of ['a', 'b']) smallImages.push(await pushRandomImage(upstream.url, 'limits/small', t, [64 * 1024]));
  const registries = { 'docker.io': { url: upstream.url } };
  [proxy, small] = await Promise.all([
    startOcirelay({
      registries,
      // A tiny memory tier: the big blob is served from its disk file (an OpenFile reader).
      cache: { memoryBytes: '1MiB' },
      server: { headersTimeout: `${HEADERS_TIMEOUT_MS}ms`, sendStallTimeout: `${STALL_MS}ms`, maxHeaderSize: '8KiB', adminBodyLimit: '4KiB', maxConnections: 2000 },
      admin: { token: TOKEN },
      log: { level: 'info' },
    }),
    startOcirelay({ registries, server: { maxConnections: 4 }, log: { level: 'info' } }),
  ]);
});

after(async () => {
  await proxy?.cleanup();
  await small?.cleanup();
  await upstream?.stop();
});

/** Does any process hold `file` open? (Only the proxy can: the data dir is this test's own.) */
async function heldOpen(file: string): Promise<boolean> {
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    let fds: string[];
    try {
      fds = await readdir(`/proc/${pid}/fd`);
    } catch {
      continue; // gone, or not ours
    }
    for (const fd of fds) {
      const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
      if (target === file) return true;
    }
  }
  return false;
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => resolve(s));
    s.once('error', reject);
  });
}

/** One raw HTTP/1.1 exchange on an open socket; resolves with the status line's code. */
function rawStatus(s: net.Socket, req: string): Promise<number> {
  return new Promise((resolve, reject) => {
    let got = '';
    const onData = (b: Buffer) => {
      got += b.toString('latin1');
      const m = /^HTTP\/1\.1 (\d{3})/.exec(got);
      if (m && got.includes('\r\n\r\n')) {
        s.off('data', onData);
        resolve(Number(m[1]));
      }
    };
    s.on('data', onData);
    s.once('close', () => reject(new Error(`closed before a response (got ${JSON.stringify(got.slice(0, 100))})`)));
    s.write(req);
  });
}

describe('listener limits', () => {
  test(`${SLOW_CLIENTS} clients sending headers a byte a second: a pull completes within 2 s, the headers timeout closes them all`, async () => {
    const request = Buffer.from(`GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`);
    const t0 = Date.now();
    const closedAt: number[] = [];
    const answers: string[] = [];
    const sockets = await Promise.all(
      Array.from({ length: SLOW_CLIENTS }, async () => {
        const s = await connect(proxy.port);
        s.on('error', () => undefined); // a reset is one way of being closed
        s.on('data', (b: Buffer) => answers.push(b.toString('latin1').split('\r\n')[0] ?? ''));
        s.once('close', () => closedAt.push(Date.now() - t0));
        return s;
      }),
    );
    let sent = 0;
    const drip = setInterval(() => {
      if (sent >= request.length) return;
      const byte = request.subarray(sent, sent + 1);
      sent++;
      for (const s of sockets) if (!s.destroyed) s.write(byte);
    }, 1000);
    try {
      await new Promise((r) => setTimeout(r, 1000));
      assert.equal(closedAt.length, 0, 'the slow clients are connected while the pull runs');
      const p0 = Date.now();
      await pullVerified(proxy.url, smallImages[0]!);
      const pullMs = Date.now() - p0;
      assert.ok(pullMs < 2000, `a cold pull took ${pullMs} ms beside ${SLOW_CLIENTS} slow-header clients`);
      await eventually(() => closedAt.length === SLOW_CLIENTS, `all ${SLOW_CLIENTS} slow clients closed`, 15_000);
    } finally {
      clearInterval(drip);
      for (const s of sockets) s.destroy();
    }
    assert.ok(sent < request.length, 'no slow client ever finished its headers');
    const first = Math.min(...closedAt);
    const last = Math.max(...closedAt);
    assert.ok(first >= HEADERS_TIMEOUT_MS - 500, `closed after ${first} ms: not before the headers timeout`);
    assert.ok(last < HEADERS_TIMEOUT_MS + 6000, `the last closed after ${last} ms: within a few seconds of the timeout`);
    assert.ok(answers.every((a) => a === '' || a.startsWith('HTTP/1.1 408')), `only 408s were answered: ${[...new Set(answers)].join(' | ')}`);
    // And the proxy still serves.
    const res = await fetch(`${proxy.url}/v2/`);
    assert.equal(res.status, 200);
  });

  test('a client that reads slowly but steadily is not dropped', async () => {
    await pullVerified(proxy.url, bigImage); // warm
    const digest = bigImage.layers[0]!.digest;
    const want = 4 * 1024 * 1024;
    // 4 MiB at 1 MiB a second: twice the stall timeout in all, but never a pause that long.
    const res = await new Promise<{ status: number; bytes: number; aborted: boolean }>((resolve, reject) => {
      const req = http.get(`${proxy.url}/v2/limits/big/blobs/${digest}`, { agent: false, headers: { range: `bytes=0-${want - 1}` } }, (r) => {
        let bytes = 0;
        r.on('data', (c: Buffer) => {
          bytes += c.length;
          r.pause();
          setTimeout(() => r.resume(), Math.ceil((c.length / (1024 * 1024)) * 1000));
        });
        r.on('end', () => resolve({ status: r.statusCode ?? 0, bytes, aborted: false }));
        r.on('error', () => resolve({ status: r.statusCode ?? 0, bytes, aborted: true }));
      });
      req.on('error', reject);
    });
    assert.equal(res.status, 206);
    assert.equal(res.aborted, false);
    assert.equal(res.bytes, want);
  });

  test('a client that reads nothing is dropped after the send-stall timeout, and its blob file is released', async () => {
    const digest = bigImage.layers[0]!.digest;
    const blobFile = path.join(proxy.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));
    // Warm: the blob is committed to disk first.
    await pullVerified(proxy.url, bigImage);
    await eventually(async () => (await stat(blobFile).catch(() => undefined))?.size === BIG, 'the big blob on disk');

    const s = await connect(proxy.port);
    s.pause(); // takes nothing
    let received = 0;
    let reset = false;
    s.on('data', (b: Buffer) => (received += b.length));
    s.on('error', () => (reset = true));
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(`GET /v2/limits/big/blobs/${digest} HTTP/1.1\r\nHost: x\r\n\r\n`);
    await eventually(() => heldOpen(blobFile), 'the proxy has the blob file open for the stalled client', 5000);
    const t0 = Date.now();
    await proxy.waitForLog((l) => l.msg === 'client took no bytes for the send-stall timeout: connection dropped', STALL_MS + 8000);
    // Released: the file is closed, so eviction and purge may take it.
    await eventually(async () => !(await heldOpen(blobFile)), 'the blob file closed after the drop', 5000);
    assert.ok(Date.now() - t0 < STALL_MS + 8000);
    s.resume();
    await closed;
    assert.ok(received < BIG, `the stalled client got an aborted transfer (${received} of ${BIG} bytes, reset=${reset})`);

    const purge = await fetch(`${proxy.adminUrl}/api/v1/purge`, {
      method: 'POST',
      headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ image: `docker.io/limits/big:v1` }),
    });
    assert.equal(purge.status, 200);
    const freed = (await purge.json()) as { removedBlobs: number; freedBytes: number };
    assert.ok(freed.freedBytes >= BIG, `purge freed ${freed.freedBytes} bytes: the blob was not held`);
    assert.equal(await stat(blobFile).catch(() => undefined), undefined, 'the blob file is gone');
  });

  test('headers over maxHeaderSize are answered 431', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      http
        .get(`${proxy.url}/v2/`, { agent: false, headers: { 'x-big': 'a'.repeat(10 * 1024) } }, (r) => {
          r.resume();
          resolve(r.statusCode ?? 0);
        })
        .on('error', reject);
    });
    assert.equal(status, 431);
    const ok = await fetch(`${proxy.url}/v2/`, { headers: { 'x-fits': 'a'.repeat(4 * 1024) } });
    assert.equal(ok.status, 200);
  });

  test('admin request bodies over adminBodyLimit are answered 413, with or without Content-Length', async () => {
    const big = JSON.stringify({ image: 'docker.io/limits/small:a', pad: 'x'.repeat(8 * 1024) });
    const headers = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };
    const sized = await fetch(`${proxy.adminUrl}/api/v1/unpin`, { method: 'POST', headers, body: big });
    assert.equal(sized.status, 413);
    assert.equal(((await sized.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'BAD_REQUEST');
    const chunks = [Buffer.from(big.slice(0, 4000)), Buffer.from(big.slice(4000))];
    const chunked = await fetch(`${proxy.adminUrl}/api/v1/unpin`, {
      method: 'POST',
      headers,
      body: new ReadableStream<Uint8Array>({
        pull(c) {
          const next = chunks.shift();
          if (next) c.enqueue(new Uint8Array(next));
          else c.close();
        },
      }),
      duplex: 'half',
    } as RequestInit);
    assert.equal(chunked.status, 413);
    await chunked.arrayBuffer();
    // Under the limit, the same request is read and handled (nothing is pinned: its own 404).
    const fine = await fetch(`${proxy.adminUrl}/api/v1/unpin`, { method: 'POST', headers, body: JSON.stringify({ image: 'docker.io/limits/small:a' }) });
    assert.equal(fine.status, 404);
    assert.match(((await fine.json()) as { errors: Array<{ message: string }> }).errors[0]?.message ?? '', /is not pinned/);
  });

  test('maxConnections: a connection beyond the limit is refused, one freed slot is usable again', async () => {
    const held: net.Socket[] = [];
    try {
      for (let i = 0; i < 4; i++) {
        const s = await connect(small.port);
        held.push(s);
        // Answered, so the server has accepted and counts it (keep-alive keeps it open).
        assert.equal(await rawStatus(s, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n'), 200);
      }
      const extra = await connect(small.port);
      extra.on('error', () => undefined);
      await assert.rejects(rawStatus(extra, 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n'), /closed before a response/);
      held.pop()!.destroy();
      await eventually(async () => {
        const s = await connect(small.port);
        s.on('error', () => undefined);
        const ok = await rawStatus(s, 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n').catch(() => 0);
        s.destroy();
        return ok === 200;
      }, 'a new connection served once a slot is free', 5000);
      await small.waitForLog((l) => l.msg === 'connection limit reached: refusing new connections');
    } finally {
      for (const s of held) s.destroy();
    }
  });
});
