// The S3 tier's start-up check (issue 11 item 6) with real components: a bucket that does not
// exist stops the start with a message naming it; an S3 that is not there at all (a closed port)
// starts the instance degraded: pulls come from the upstream, /readyz answers 200 degraded,
// ocirelay_s3_up is 0 and the write-behind holds its writes; a store that ignores If-None-Match
// (moto behind a pass-through that drops the header: moto does not check signatures) is
// reported loudly, and refused outright when a cluster would share the bucket.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startMoto, type MotoFixture } from './fixtures/moto.ts';
import { freePort } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage } from './helpers/random-image.ts';

let moto: MotoFixture;
let upstream: RegistryFixture;
const started: OcirelayProcess[] = [];

before(async () => {
  moto = await startMoto();
  upstream = await startRegistry({ auth: 'none' });
});

after(async () => {
  for (const p of started) await p.cleanup().catch(() => undefined);
  await upstream?.stop();
  await moto?.stop();
});

const config = (bucket: string, endpoint: string) => ({
  registries: { 'docker.io': { url: upstream.url } },
  upstream: { retries: 0, connectTimeout: '2s', headersTimeout: '3s' },
  storage: { s3: { bucket, endpoint, region: 'us-east-1', forcePathStyle: true } },
});

test('a bucket that does not exist stops the start, naming it', async () => {
  await assert.rejects(startOcirelay(config('no-such-bucket', moto.endpoint), { env: { ...moto.env } }), (e: Error) => {
    assert.match(e.message, /S3 bucket no-such-bucket unusable/);
    return true;
  });
});

test('S3 unreachable at start-up: the instance starts degraded, pulls come from the upstream, writes wait', async () => {
  const closed = `http://127.0.0.1:${await freePort()}`;
  const p = await startOcirelay(config('some-bucket', closed), { env: { ...moto.env } });
  started.push(p);
  assert.equal(await p.metric('ocirelay_s3_up'), 0);
  const ready = await fetch(`${p.url}/readyz`);
  const body = (await ready.json()) as { status: string; problems: string[] };
  assert.equal(ready.status, 200);
  assert.equal(body.status, 'degraded');
  assert.ok(body.problems.some((m) => m.includes('S3 bucket some-bucket unavailable')), JSON.stringify(body));
  const img = await pushRandomImage(upstream.url, 'library/s3-down-at-start', '1.0', [20_000]);
  await pullVerified(p.url, img);
  assert.ok((await p.metric('ocirelay_s3_pending_bytes')) > 0, 'the write-behind holds its writes');
  assert.equal(await p.metric('ocirelay_s3_reads_total', { result: 'error' }), 0, 'no read waited on S3');
});

/** A pass-through to moto that drops If-None-Match from every request: a store ignoring conditional creates. */
async function ignoringConditionalWrites(target: string): Promise<{ url: string; close(): Promise<void> }> {
  const t = new URL(target);
  const server = http.createServer((req, res) => {
    const headers = { ...req.headers };
    delete headers['if-none-match'];
    const up = http.request({ host: t.hostname, port: t.port, method: req.method, path: req.url, headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    });
    up.on('error', () => res.destroy());
    req.pipe(up);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

test('a store that ignores If-None-Match: refused at start-up with a cluster; alone, started with a loud error', async () => {
  await moto.createBucket('no-conditionals');
  const lax = await ignoringConditionalWrites(moto.endpoint);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-s3-lax-'));
  try {
    const tokenFile = path.join(dir, 'token');
    await writeFile(tokenFile, 'a-cluster-token-of-enough-length\n');
    const port = await freePort();
    const self = `http://127.0.0.1:${port}`;
    const clustered = { ...config('no-conditionals', lax.url), cluster: { members: [self, `http://127.0.0.1:${await freePort()}`], self, tokenFile } };
    await assert.rejects(startOcirelay(clustered, { port, env: { ...moto.env } }), (e: Error) => {
      assert.match(e.message, /ignores If-None-Match/);
      return true;
    });
    const alone = await startOcirelay(config('no-conditionals', lax.url), { env: { ...moto.env } });
    started.push(alone);
    const line = await alone.waitForLog((l) => typeof l.msg === 'string' && l.msg.includes('ignores If-None-Match'), 10_000);
    assert.equal(line.level, 50, 'logged as an error');
  } finally {
    await lax.close();
    await rm(dir, { recursive: true, force: true });
  }
});
