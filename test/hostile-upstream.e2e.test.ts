// A hostile upstream cannot crash, hang or poison ocirelay (issue 9, items 1 and 8). A raw TCP
// server (node:net, so it can break HTTP in ways no HTTP library would) is the registry of a
// running ocirelay process. Each misbehaviour runs twice in a row, each time concurrently with a
// good pull of a fresh blob from the same server; after each: the client got an error status or
// an aborted transfer (never a clean end with wrong bytes), nothing was cached (no blob file, the
// next request goes upstream again), the process is alive, /readyz is 200, a good pull works,
// and the process's RSS stayed under 300 MB.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const MiB = 1024 * 1024;
const RSS_LIMIT = 300 * MiB;
const REPO = 'acme/hostile';
const sha256 = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Behaviour =
  | 'truncated'
  | 'reset-before-headers'
  | 'reset-mid-headers'
  | 'garbage-status'
  | 'broken-chunks'
  | 'endless-chunked'
  | 'more-than-length'
  | 'stall-after-headers'
  | 'stall-mid-body'
  | 'trickle'
  | 'redirect-loop';

/** The hostile registry: blobs by digest, each with its behaviour; good blobs served correctly. */
class HostileRegistry {
  readonly good = new Map<string, Buffer>();
  readonly hostile = new Map<string, { behaviour: Behaviour; bytes: Buffer }>();
  /** Upstream requests seen, by path (query stripped). */
  readonly hits = new Map<string, number>();
  /** Body bytes each endless/huge response wrote before the peer went away, by request path. */
  readonly sentBeforeClose: Array<{ path: string; sent: number }> = [];
  private readonly sockets = new Set<net.Socket>();
  private readonly server = net.createServer((s) => this.onSocket(s));
  port = 0;

  async start(): Promise<void> {
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as net.AddressInfo).port;
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  count(path: string): number {
    return this.hits.get(path) ?? 0;
  }

  private onSocket(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => undefined);
    let buf = '';
    const onData = (d: Buffer) => {
      buf += d.toString('latin1');
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      // One request per connection: a misbehaving answer leaves the connection unusable anyway.
      s.off('data', onData);
      const [method = '', target = ''] = buf.slice(0, buf.indexOf('\r\n')).split(' ');
      void this.answer(s, method, target).catch(() => s.destroy());
    };
    s.on('data', onData);
  }

  private async answer(s: net.Socket, method: string, target: string): Promise<void> {
    const path = target.split('?')[0]!;
    this.hits.set(path, this.count(path) + 1);
    const head = (status: string, headers: Record<string, string | number>) =>
      `HTTP/1.1 ${status}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}Connection: close\r\n\r\n`;
    const json = (status: string, body: string): void => void s.end(head(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) }) + body);

    if (path === '/v2/' || path === '/v2') return json('200 OK', '{}');
    if (path.startsWith('/loop/')) {
      // Each hop redirects to a new same-origin path, forever.
      const n = Number(path.slice(6)) + 1;
      s.end(head('307 Temporary Redirect', { Location: `/loop/${n}`, 'Content-Length': 0 }));
      return;
    }
    if (path.endsWith('/manifests/huge')) {
      // 50 MiB "manifest", chunked (no Content-Length to refuse it by).
      if (method === 'HEAD') return json('404 Not Found', '');
      s.write(head('200 OK', { 'Content-Type': 'application/vnd.oci.image.manifest.v1+json', 'Transfer-Encoding': 'chunked' }));
      return this.streamChunked(s, path, 50 * MiB, '{"schemaVersion":2,"x":"', 'a');
    }
    if (path.endsWith('/tags/list')) {
      s.write(head('200 OK', { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' }));
      return this.streamChunked(s, path, 100 * MiB, '{"name":"acme/hostile","tags":["', 't","');
    }
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(path);
    if (!m) return json('404 Not Found', '{"errors":[{"code":"NAME_UNKNOWN","message":"unknown"}]}');
    const digest = m[1]!;
    const good = this.good.get(digest);
    if (good) {
      s.write(head('200 OK', { 'Content-Type': 'application/octet-stream', 'Content-Length': good.length, 'Docker-Content-Digest': digest }));
      if (method === 'HEAD') return void s.end();
      return void s.end(good);
    }
    const h = this.hostile.get(digest);
    if (!h) return json('404 Not Found', '{"errors":[{"code":"BLOB_UNKNOWN","message":"unknown"}]}');
    const { bytes } = h;
    const blobHead = (extra: Record<string, string | number>) => head('200 OK', { 'Content-Type': 'application/octet-stream', 'Docker-Content-Digest': digest, ...extra });
    if (method === 'HEAD') return void s.end(blobHead({ 'Content-Length': bytes.length }));
    switch (h.behaviour) {
      case 'truncated':
        s.write(blobHead({ 'Content-Length': bytes.length }));
        s.end(bytes.subarray(0, bytes.length >> 1));
        return;
      case 'reset-before-headers':
        s.resetAndDestroy();
        return;
      case 'reset-mid-headers':
        s.write('HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Le');
        await sleep(50);
        s.resetAndDestroy();
        return;
      case 'garbage-status':
        s.end('HTTP/1.1 OK-ISH \x00\x01 whatever\r\nX: y\r\n\r\ngarbage');
        return;
      case 'broken-chunks':
        s.write(blobHead({ 'Transfer-Encoding': 'chunked' }));
        s.write(`10000\r\n`);
        s.write(bytes.subarray(0, 0x10000));
        s.end('\r\nzz-not-hex\r\nmore bytes\r\n');
        return;
      case 'endless-chunked':
        s.write(blobHead({ 'Transfer-Encoding': 'chunked' }));
        return this.streamChunked(s, path, 64 * MiB, '', 'x');
      case 'more-than-length': {
        // Content-Length claims the blob plus 1 MiB and sends that much: the excess is not the blob.
        const body = Buffer.concat([bytes, randomBytes(MiB)]);
        s.write(blobHead({ 'Content-Length': body.length }));
        s.end(body);
        return;
      }
      case 'stall-after-headers':
        s.write(blobHead({ 'Content-Length': bytes.length }));
        return; // and never another byte (the socket is destroyed by the peer or at stop()).
      case 'stall-mid-body':
        s.write(blobHead({ 'Content-Length': bytes.length }));
        s.write(bytes.subarray(0, bytes.length >> 1));
        return;
      case 'trickle':
        // 64 bytes every 250 ms: never idle long enough for idleTimeout, far below minRate (1 KiB/s).
        s.write(blobHead({ 'Content-Length': bytes.length }));
        for (let at = 0; at < bytes.length && !s.destroyed; at += 64) {
          s.write(bytes.subarray(at, at + 64));
          await sleep(250);
        }
        return;
      case 'redirect-loop':
        s.end(head('307 Temporary Redirect', { Location: '/loop/1', 'Content-Length': 0 }));
        return;
    }
  }

  /** Write up to `total` bytes of chunked body (with backpressure); stops when the peer goes away. */
  private async streamChunked(s: net.Socket, path: string, total: number, prefix: string, fill: string): Promise<void> {
    const chunk = Buffer.from(fill.repeat(Math.ceil(64 * 1024 / fill.length)).slice(0, 64 * 1024));
    let sent = 0;
    const frame = (b: Buffer) => Buffer.concat([Buffer.from(`${b.length.toString(16)}\r\n`), b, Buffer.from('\r\n')]);
    if (prefix) s.write(frame(Buffer.from(prefix)));
    while (sent < total && !s.destroyed) {
      const ok = s.write(frame(chunk));
      sent += chunk.length;
      if (!ok) {
        const closed = await new Promise<boolean>((r) => {
          const onDrain = () => (s.off('close', onClose), r(false));
          const onClose = () => (s.off('drain', onDrain), r(true));
          s.once('drain', onDrain);
          s.once('close', onClose);
        });
        if (closed) break;
      }
    }
    this.sentBeforeClose.push({ path, sent });
    // Stop from the test side: no terminating chunk, just close.
    s.destroy();
  }
}

interface Received {
  status: number;
  contentLength: number | undefined;
  length: number;
  digest: string;
  /** The connection ended before the body was complete (or errored). */
  aborted: boolean;
  /** Set when the request failed before any response. */
  error?: string;
}

/** GET `url`, hashing the body; an aborted transfer is reported, not thrown. */
function get(url: string, timeoutMs = 20_000): Promise<Received> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      const hash = createHash('sha256');
      let length = 0;
      let done = false;
      const finish = (aborted: boolean) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        const cl = res.headers['content-length'];
        resolve({ status: res.statusCode ?? 0, contentLength: cl === undefined ? undefined : Number(cl), length, digest: `sha256:${hash.digest('hex')}`, aborted });
      };
      res.on('data', (c: Buffer) => {
        length += c.length;
        hash.update(c);
      });
      res.on('end', () => finish(!res.complete));
      res.on('error', () => finish(true));
      res.on('aborted', () => finish(true));
      res.on('close', () => finish(!res.complete));
    });
    const timer = setTimeout(() => {
      req.destroy();
      reject(new Error(`GET ${url}: no complete answer within ${timeoutMs} ms (hang)`));
    }, timeoutMs);
    req.on('error', (e) => {
      clearTimeout(timer);
      // A connection reset before any response is an aborted transfer too.
      resolve({ status: 0, contentLength: undefined, length: 0, digest: '', aborted: true, error: e.message });
    });
  });
}

let registry: HostileRegistry;
let proxy: OcirelayProcess;
let maxRss = 0;
let rssTimer: NodeJS.Timeout;

function rss(): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${proxy.pid}/status`, 'utf8'));
  assert.ok(m, 'VmRSS readable: the process is alive');
  return Number(m[1]) * 1024;
}

const blobFile = (digest: string) => `${proxy.dataDir}/blobs/sha256/${digest.slice(7, 9)}/${digest.slice(7)}`;
const blobUrl = (digest: string) => `${proxy.url}/v2/${REPO}/blobs/${digest}`;
const upstreamBlobPath = (digest: string) => `/v2/${REPO}/blobs/${digest}`;

function newGoodBlob(): string {
  const bytes = randomBytes(2 * MiB);
  const d = sha256(bytes);
  registry.good.set(d, bytes);
  return d;
}

async function goodPull(): Promise<void> {
  const d = newGoodBlob();
  const r = await get(blobUrl(d));
  assert.equal(r.status, 200, 'good pull: 200');
  assert.equal(r.aborted, false, 'good pull: complete');
  assert.equal(r.length, 2 * MiB, 'good pull: whole body');
  assert.equal(r.digest, d, 'good pull: right bytes');
}

/** Never a clean end with wrong bytes: an error status, an aborted transfer, or exactly the right bytes. */
function assertNoCleanWrongEnd(r: Received, expected: { digest?: string }, what: string): void {
  const clean = r.status >= 200 && r.status < 300 && !r.aborted && (r.contentLength === undefined || r.contentLength === r.length);
  if (!clean) return;
  assert.ok(expected.digest !== undefined && r.digest === expected.digest, `${what}: clean ${r.status} end with wrong bytes (${r.length} bytes, ${r.digest})`);
}

async function assertHealthy(what: string): Promise<void> {
  assert.doesNotThrow(() => process.kill(proxy.pid, 0), `${what}: process alive`);
  const ready = await fetch(`${proxy.url}/readyz`);
  await ready.arrayBuffer();
  assert.equal(ready.status, 200, `${what}: /readyz`);
  await goodPull();
  const now = rss();
  maxRss = Math.max(maxRss, now);
  assert.ok(maxRss < RSS_LIMIT, `${what}: RSS ${Math.round(maxRss / MiB)} MB stayed under 300 MB`);
}

before(async () => {
  registry = new HostileRegistry();
  await registry.start();
  proxy = await startOcirelay({
    registries: { 'docker.io': { url: `http://127.0.0.1:${registry.port}` } },
    cache: { maxBlobBytes: '8MiB' },
    upstream: { retries: 0, breakerMaxFails: 100_000, idleTimeout: '2s', headersTimeout: '2s', minRate: '1KiB', minRateWindow: '2s' },
  });
  rssTimer = setInterval(() => {
    try {
      maxRss = Math.max(maxRss, rss());
    } catch {
      // The process is gone: assertHealthy reports it.
    }
  }, 100);
});
after(async () => {
  clearInterval(rssTimer);
  await proxy?.cleanup();
  await registry?.stop();
});

/**
 * What each behaviour must lead to: the client sees an error status (the upstream failed before
 * its headers) or an aborted transfer (it failed after them), and the fill fails with this outcome and error.
 * The stalls are cut by whichever of idleTimeout and minRate (both 2 s here) fires first; the
 * trickle is never idle, so only minRate can cut it.
 */
const BLOB_BEHAVIOURS: Record<Behaviour, { client: 'error-status' | 'aborted'; outcome: string; err: RegExp }> = {
  truncated: { client: 'aborted', outcome: 'truncated', err: /connection lost|ended after/ },
  'reset-before-headers': { client: 'error-status', outcome: 'upstream_error', err: /unavailable/ },
  'reset-mid-headers': { client: 'error-status', outcome: 'upstream_error', err: /unavailable/ },
  'garbage-status': { client: 'error-status', outcome: 'upstream_error', err: /unavailable/ },
  'broken-chunks': { client: 'aborted', outcome: 'truncated', err: /connection lost|malformed/ },
  'endless-chunked': { client: 'aborted', outcome: 'size_mismatch', err: /maxBlobBytes \(8388608\)/ },
  'more-than-length': { client: 'aborted', outcome: 'digest_mismatch', err: /upstream content has digest/ },
  'stall-after-headers': { client: 'aborted', outcome: 'truncated', err: /body slower than 1024 B\/s|body idle for more than 2000 ms/ },
  'stall-mid-body': { client: 'aborted', outcome: 'truncated', err: /body slower than 1024 B\/s|body idle for more than 2000 ms/ },
  trickle: { client: 'aborted', outcome: 'truncated', err: /body slower than 1024 B\/s over 2000 ms/ },
  'redirect-loop': { client: 'error-status', outcome: 'upstream_error', err: /too_many_redirects/ },
};

/** The "fill failed; nothing cached" log lines of `digest`, once there are `n` of them (bounded wait). */
async function fillFailures(digest: string, n: number): Promise<Array<Record<string, unknown>>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const lines = proxy.logs().filter((l) => l.msg === 'fill failed; nothing cached' && l.digest === digest);
    if (lines.length >= n || Date.now() > deadline) return lines;
    await sleep(20);
  }
}

describe('hostile upstream blobs', () => {
  for (const [behaviour, expected] of Object.entries(BLOB_BEHAVIOURS) as Array<[Behaviour, (typeof BLOB_BEHAVIOURS)[Behaviour]]>) {
    test(`${behaviour}: twice, beside good pulls: error or aborted transfer, nothing cached, process healthy`, async () => {
      const bytes = randomBytes(MiB);
      const digest = sha256(bytes);
      registry.hostile.set(digest, { behaviour, bytes });
      const hopsBefore = [...registry.hits].filter(([p]) => p.startsWith('/loop/')).reduce((n, [, c]) => n + c, 0);
      for (let round = 1; round <= 2; round++) {
        const t0 = Date.now();
        const [r] = await Promise.all([get(blobUrl(digest)), goodPull()]);
        const what = `${behaviour} round ${round}`;
        if (expected.client === 'error-status') {
          assert.ok(r.status >= 500 && r.status <= 504, `${what}: an error status (got ${r.status}${r.error ? `, ${r.error}` : ''})`);
        } else {
          // A 200 whose body is cut, or (nothing was sent yet: the headers go out with the first
          // body bytes) a connection closed before any response.
          assert.ok(r.status === 200 || r.status === 0, `${what}: a cut 200 or no response (got ${r.status})`);
          assert.equal(r.aborted, true, `${what}: aborted transfer, not a clean end (${r.length} bytes)`);
          assert.notEqual(r.digest, digest, `${what}: the client did not get the whole blob`);
        }
        assertNoCleanWrongEnd(r, {}, what);
        // The stalls: cut within idleTimeout / minRateWindow (2 s) plus slack, not hung.
        assert.ok(Date.now() - t0 < 10_000, `${what}: answered within 10 s (${Date.now() - t0} ms)`);
        const failures = await fillFailures(digest, round);
        assert.equal(failures.length, round, `${what}: one failed fill per round`);
        const f = failures[round - 1]!;
        assert.equal(f.outcome, expected.outcome, `${what}: fill outcome (${String(f.err)})`);
        assert.match(String(f.err), expected.err, `${what}: fill error`);
        assert.equal(existsSync(blobFile(digest)), false, `${what}: nothing cached`);
        assert.equal(registry.count(upstreamBlobPath(digest)), round, `${what}: went upstream again`);
        await assertHealthy(what);
      }
      if (behaviour === 'redirect-loop') {
        const hops = [...registry.hits].filter(([p]) => p.startsWith('/loop/')).reduce((n, [, c]) => n + c, 0) - hopsBefore;
        assert.ok(hops > 0 && hops <= 2 * 10, `the redirect chain was followed a bounded number of hops (${hops} over two rounds)`);
      }
      if (behaviour === 'endless-chunked') {
        const sent = registry.sentBeforeClose.filter((x) => x.path === upstreamBlobPath(digest));
        assert.equal(sent.length, 2, 'both endless bodies were streamed');
        for (const { sent: n } of sent) assert.ok(n < 32 * MiB, `ocirelay stopped reading the endless body near cache.maxBlobBytes (8 MiB), not at ${Math.round(n / MiB)} MiB`);
      }
    });
  }
});

describe('hostile upstream manifests and listings', () => {
  const cases = [
    { name: 'a 50 MiB manifest is refused without buffering it', path: `/v2/${REPO}/manifests/huge`, size: 50 * MiB },
    { name: 'a 100 MiB tag list is refused (capped at 4 MiB)', path: `/v2/${REPO}/tags/list`, size: 100 * MiB },
  ];
  for (const c of cases) {
    test(`${c.name}, twice, beside good pulls`, async () => {
      for (let round = 1; round <= 2; round++) {
        const before = registry.count(c.path);
        const [r] = await Promise.all([get(`${proxy.url}${c.path}`), goodPull()]);
        assert.equal(r.status, 502, `round ${round}: refused with an OCI error (got ${r.status})`);
        assert.equal(registry.count(c.path), before + 1, `round ${round}: went upstream again (nothing cached)`);
        await assertHealthy(`${c.path} round ${round}`);
      }
      const sent = registry.sentBeforeClose.filter((x) => x.path === c.path);
      assert.equal(sent.length, 2, 'both huge bodies were streamed');
      // 4 MiB cap plus what the two sockets' buffers held when ocirelay stopped reading.
      for (const { sent: n } of sent) assert.ok(n < 24 * MiB, `ocirelay stopped reading near the 4 MiB cap, not at ${Math.round(n / MiB)} of ${c.size / MiB} MiB`);
    });
  }

  test('RSS peak over the whole run stayed under 300 MB', (t) => {
    t.diagnostic(`peak RSS ${Math.round(maxRss / MiB)} MB`);
    assert.ok(maxRss > 0 && maxRss < RSS_LIMIT);
  });
});
