// A blob fill started with a descriptor's size (issue 9 item 8: prefetch and pin know it) expects
// exactly that many bytes, whatever the upstream frames: the first byte beyond it aborts the
// fill, a Content-Length that disagrees fails it before any byte is read, a short body fails it,
// and nothing is cached. In-process BlobService (wired as main.ts does) against a node:http upstream.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { after, before, test } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { parseDigest, type Digest } from '../src/oci/digest.ts';
import { BlobFills } from '../src/pull-through/blob-fills.ts';
import { BlobService, type BlobResponse } from '../src/pull-through/blob-service.ts';
import { CacheIndex } from '../src/storage/cache-index.ts';
import { DiskBlobStore } from '../src/storage/disk-blob-store.ts';
import { DiskHealth } from '../src/storage/disk-health.ts';
import { Evictor } from '../src/storage/evictor.ts';
import { CacheLayout } from '../src/storage/layout.ts';
import { MemoryCache } from '../src/storage/memory-cache.ts';
import { RegistryClient } from '../src/upstream/registry-client.ts';

const MiB = 1024 * 1024;
const REPO = 'acme/sized';

type Framing = 'chunked' | 'content-length';
/** What the upstream sends for a digest: these bytes, framed so (then, for 'chunked', it closes). */
const served = new Map<string, { bytes: Buffer; framing: Framing }>();
/** Body bytes the upstream wrote per digest before the response finished or the peer went away. */
const sent = new Map<string, number>();

let upstream: http.Server;
let dir: string;
let dataDir: string;
let disk: DiskBlobStore;
let fills: BlobFills;
let blobs: BlobService;
let client: RegistryClient;
const logLines: Array<Record<string, unknown>> = [];

before(async () => {
  upstream = http.createServer((req, res) => {
    const m = /\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? '');
    const s = m ? served.get(m[1]!) : undefined;
    if (!s) return void res.writeHead(404).end();
    res.writeHead(200, { 'Content-Type': 'application/octet-stream', ...(s.framing === 'content-length' ? { 'Content-Length': s.bytes.length } : {}) });
    // 64 KiB writes with backpressure: a reader that stops reading stops the sending.
    let at = 0;
    const next = () => {
      while (at < s.bytes.length && !res.destroyed) {
        const ok = res.write(s.bytes.subarray(at, at + 64 * 1024));
        at = Math.min(s.bytes.length, at + 64 * 1024);
        sent.set(m![1]!, at);
        if (!ok) return void res.once('drain', next);
      }
      if (!res.destroyed) res.end();
    };
    res.on('close', () => sent.set(m![1]!, at));
    next();
  });
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-descsize-'));
  dataDir = path.join(dir, 'data');
  const logger = createLogger({
    level: 'warn',
    destination: new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const line of chunk.toString('utf8').split('\n')) if (line) logLines.push(JSON.parse(line) as Record<string, unknown>);
        cb();
      },
    }),
  });
  const metrics = new Metrics();
  const layout = new CacheLayout(dataDir);
  disk = new DiskBlobStore(layout, logger);
  const index = new CacheIndex(layout, logger);
  await disk.init();
  await index.init((d) => disk.has(d));
  const memory = new MemoryCache(64 * MiB);
  client = new RegistryClient(
    { name: 'docker.io', url: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}` },
    { metrics, logger, retry: { attempts: 0 }, timeouts: { headersMs: 5000, idleMs: 5000 } },
  );
  fills = new BlobFills(metrics, logger, 64 * MiB);
  const evictor = new Evictor(disk, index, memory, metrics, logger, { maxBytes: 1024 * MiB, highWatermark: 0.9, lowWatermark: 0.8, inFlightBytes: () => fills.inFlightBytes() });
  const health = new DiskHealth(layout.tmpDir, metrics, logger, 5000);
  blobs = new BlobService({ disk, memory, index, fills, upstreams: new Map([['docker.io', client]]), evictor, health, metrics, logger });
});

after(async () => {
  await client?.close();
  await new Promise<void>((r) => upstream?.close(() => r()));
  upstream?.closeAllConnections();
  if (dir) await rm(dir, { recursive: true, force: true });
});

function blob(bytes: Buffer): Digest {
  return parseDigest(`sha256:${createHash('sha256').update(bytes).digest('hex')}`)!;
}

/** GET through the service with a descriptor size; reads the whole body. */
async function pull(digest: Digest, expectedSize: number | undefined): Promise<{ res: BlobResponse; received: number; error: Error | undefined }> {
  const res = await blobs.get({ registry: 'docker.io', repository: REPO, digest, method: 'GET', range: undefined, ...(expectedSize !== undefined ? { expectedSize } : {}) });
  let received = 0;
  let error: Error | undefined;
  await pipeline(
    res.body ?? res.file!.toReadable(),
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        cb();
      },
    }),
  ).catch((e: Error) => (error = e));
  await blobs.settled(digest);
  return { res, received, error };
}

const cached = (d: Digest) => existsSync(path.join(dataDir, 'blobs', 'sha256', d.slice(7, 9), d.slice(7)));
const failure = (d: Digest) => logLines.find((l) => l.msg === 'fill failed; nothing cached' && l.digest === d);

test('a chunked body longer than the descriptor size: aborted at the first byte beyond it, nothing cached', async () => {
  const bytes = randomBytes(MiB);
  const d = blob(bytes);
  // The blob, then 32 MiB the descriptor does not account for, with no Content-Length to tell.
  served.set(d, { bytes: Buffer.concat([bytes, randomBytes(32 * MiB)]), framing: 'chunked' });
  const { res, received, error } = await pull(d, bytes.length);
  assert.equal(res.headers['Content-Length'], String(bytes.length), 'the client was promised the descriptor size');
  assert.ok(error, 'the client stream failed');
  assert.ok(received < bytes.length, `the client never got the whole blob (${received} bytes)`);
  const f = failure(d);
  assert.equal(f?.outcome, 'size_mismatch');
  assert.match(String(f?.err), new RegExp(`more than the descriptor's size ${bytes.length}`));
  assert.ok(Number(f?.bytes) <= bytes.length, `no byte beyond the descriptor size was written (${String(f?.bytes)})`);
  assert.equal(cached(d), false);
  assert.ok((sent.get(d) ?? 0) < 16 * MiB, `the upstream was cut off early (${sent.get(d)} bytes sent of 33 MiB)`);
});

test("a Content-Length other than the descriptor's size: failed before any byte, nothing cached", async () => {
  const bytes = randomBytes(MiB);
  const d = blob(bytes);
  served.set(d, { bytes: Buffer.concat([bytes, randomBytes(MiB)]), framing: 'content-length' });
  const { error } = await pull(d, bytes.length);
  assert.ok(error, 'the client stream failed');
  const f = failure(d);
  assert.equal(f?.outcome, 'size_mismatch');
  assert.match(String(f?.err), new RegExp(`Content-Length ${2 * MiB} differs from the descriptor's size ${MiB}`));
  assert.equal(f?.bytes, 0, 'not a byte written');
  assert.equal(cached(d), false);
});

test('a body shorter than the descriptor size: truncated, nothing cached', async () => {
  const bytes = randomBytes(MiB);
  const d = blob(bytes);
  served.set(d, { bytes, framing: 'chunked' });
  const { error } = await pull(d, bytes.length + 1);
  assert.ok(error, 'the client stream failed');
  const f = failure(d);
  assert.equal(f?.outcome, 'truncated');
  assert.match(String(f?.err), new RegExp(`ended after ${MiB} of ${MiB + 1} bytes \\(the descriptor's size\\)`));
  assert.equal(cached(d), false);
});

test('the right size (chunked, and with a matching Content-Length): committed', async () => {
  for (const framing of ['chunked', 'content-length'] as const) {
    const bytes = randomBytes(MiB);
    const d = blob(bytes);
    served.set(d, { bytes, framing });
    const { res, received, error } = await pull(d, bytes.length);
    assert.equal(error, undefined, `${framing}: no error`);
    assert.equal(res.headers['Content-Length'], String(MiB));
    assert.equal(received, MiB);
    assert.equal(failure(d), undefined);
    assert.equal(disk.sizeOf(d), MiB, `${framing}: committed with its size`);
  }
  assert.deepEqual(await readdir(path.join(dataDir, 'tmp')), [], 'no temp file left behind');
});
