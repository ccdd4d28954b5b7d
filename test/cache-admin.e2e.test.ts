// The admin API against a real proxy and a real Distribution upstream: auth, listing, stats,
// pin/unpin, prefetch jobs, purge, tag history and freeze (rollback).
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { download } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

const TOKEN = 'admin-token-for-tests';
const ACCEPT = 'application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json';
let upstream: RegistryFixture;
let images: PushedImages;
let proxy: OcirelayProcess;

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, await buildImages({ bigLayerBytes: 2 * 1024 * 1024 }));
  proxy = await startOcirelay({ registries: { 'docker.io': { url: upstream.url, tagTTL: '1s' } }, admin: { token: TOKEN } });
});
after(async () => {
  await proxy?.cleanup();
  await upstream?.stop();
});

const blobFile = (digest: string) => path.join(proxy.dataDir, 'blobs', 'sha256', digest.slice(7, 9), digest.slice(7));

async function api<T = Record<string, unknown>>(method: 'GET' | 'POST', p: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; json: T }> {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(`${proxy.adminUrl}${p}`, { method, headers, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: res.status, json: (await res.json()) as T };
}
type Err = { errors: Array<{ code: string }> };

async function waitJob(id: string): Promise<Record<string, unknown>> {
  for (let i = 0; i < 300; i++) {
    const { json } = await api<{ job: Record<string, unknown> }>('GET', `/api/v1/prefetch/${id}`);
    if (json.job.state !== 'running') return json.job;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('prefetch job did not finish in 30 s');
}

describe('admin API', () => {
  test('needs the bearer token; answers OCI-style errors', async () => {
    assert.equal((await api('GET', '/api/v1/stats', undefined, null)).status, 401);
    const wrong = await api<Err>('GET', '/api/v1/stats', undefined, 'nope-nope-nope');
    assert.equal(wrong.status, 401);
    assert.equal(wrong.json.errors[0]?.code, 'UNAUTHORIZED');
    assert.equal((await api('GET', '/api/v1/stats')).status, 200);
    const bad = await api<Err>('POST', '/api/v1/pin', { image: 'Not A Ref' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.errors[0]?.code, 'NAME_INVALID');
    const unknownRegistry = await api<Err>('POST', '/api/v1/prefetch', { images: ['evil.example.com/x:1'] });
    assert.equal(unknownRegistry.status, 404);
    assert.equal(unknownRegistry.json.errors[0]?.code, 'NAME_UNKNOWN');
    assert.equal((await api<Err>('GET', '/api/v1/nothing')).status, 404);
  });

  test('prefetch pulls whole images into the cache, is idempotent, and reports failures', async () => {
    const refs = ['docker.io/library/single:1.0', 'library/multi:1.0', `docker.io/library/v2s2@${images.v2s2.manifestDigest}`];
    const start = await api<{ job: { id: string } }>('POST', '/api/v1/prefetch', { images: refs });
    assert.equal(start.status, 202);
    const again = await api<{ job: { id: string } }>('POST', '/api/v1/prefetch', { images: [...refs].reverse() });
    assert.equal(again.json.job.id, start.json.job.id, 'same images: same job');
    const job = await waitJob(start.json.job.id);
    assert.equal(job.state, 'done');
    assert.equal(job.done, 3);
    assert.ok((job.bytesDone as number) > 0);
    for (const l of [...images.single.layers, ...images.v2s2.layers, ...images.multi.platforms.flatMap((p) => p.layers)]) assert.ok(existsSync(blobFile(l.digest)), l.digest);
    // Served from cache now: the upstream is not asked for those blobs again.
    const before = await upstream.countRequests({ method: 'GET', pathIncludes: '/blobs/' });
    const out = await download(`${proxy.url}/v2/library/single/blobs/${images.single.layers[0]!.digest}`);
    assert.equal(out.sha256, images.single.layers[0]!.digest);
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: '/blobs/' }), before);

    const failing = await api<{ job: { id: string } }>('POST', '/api/v1/prefetch', { images: ['docker.io/library/nothere:1', 'docker.io/library/single:1.0'] });
    const fj = await waitJob(failing.json.job.id);
    assert.equal(fj.state, 'failed');
    assert.equal(fj.failed, 1);
    assert.equal(fj.done, 1);
    const failed = (fj.images as Array<{ image: string; state: string; error?: string }>).find((i) => i.state === 'failed');
    assert.equal(failed?.image, 'docker.io/library/nothere:1');
    assert.match(failed?.error ?? '', /MANIFEST_UNKNOWN|NAME_UNKNOWN/);
  });

  test('prefetch with a platform list pulls only those platforms', async () => {
    const { json } = await api<{ job: { id: string } }>('POST', '/api/v1/prefetch', { images: ['docker.io/library/multi:1.0'], platforms: ['linux/arm64'] });
    const job = await waitJob(json.job.id);
    assert.equal(job.state, 'done');
  });

  test('lists cached images with tags, digests, sizes and last access; stats', async () => {
    const { json } = await api<{ images: Array<Record<string, unknown>> }>('GET', '/api/v1/images?registry=docker.io');
    const single = json.images.find((i) => i.repository === 'library/single');
    assert.ok(single, JSON.stringify(json.images));
    assert.deepEqual(single.tags, ['1.0']);
    assert.equal(single.digest, images.single.manifestDigest);
    assert.equal(single.missingBlobs, 0);
    const expected = images.single.manifestSize + images.single.layers.reduce((a, l) => a + l.size, 0);
    assert.ok((single.size as number) >= expected, `${single.size} >= ${expected}`);
    assert.equal(typeof single.lastAccess, 'string');
    const multi = json.images.find((i) => i.repository === 'library/multi');
    assert.equal(multi?.digest, images.multi.manifestDigest);
    assert.ok(json.images.some((i) => i.repository === 'library/v2s2' && i.digest === images.v2s2.manifestDigest), 'pulled by digest: listed untagged');

    const stats = await api<Record<string, unknown> & { requests: Record<string, number>; disk: Record<string, unknown>; bytesServed: Record<string, number> }>('GET', '/api/v1/stats');
    assert.equal(stats.status, 200);
    assert.ok(stats.json.requests.hit! >= 0);
    assert.equal(typeof stats.json.hitRatio, 'number');
    assert.ok((stats.json.disk.bytes as number) > 0);
    assert.equal(stats.json.disk.writable, true);
    assert.ok(stats.json.bytesServed.cache! > 0);
    assert.ok((stats.json.upstreamBytes as number) > 0);
  });

  test('pin and unpin an image', async () => {
    const pin = await api<{ pinned: { digest: string; digests: string[] } }>('POST', '/api/v1/pin', { image: 'docker.io/library/big:1.0' });
    assert.equal(pin.status, 200);
    assert.equal(pin.json.pinned.digest, images.big.manifestDigest);
    assert.ok(pin.json.pinned.digests.includes(images.big.layers[0]!.digest));
    const listed = await api<{ images: Array<Record<string, unknown>> }>('GET', '/api/v1/images?repository=library/big');
    assert.equal(listed.json.images[0]?.pinned, true);
    const un = await api<{ unpinned: number }>('POST', '/api/v1/unpin', { image: 'docker.io/library/big:1.0' });
    assert.equal(un.json.unpinned, 1);
    assert.equal((await api('POST', '/api/v1/unpin', { image: 'docker.io/library/big:1.0' })).status, 404);
  });

  test('tag history records digest changes; freeze pins a tag to a digest until unfrozen (rollback)', async () => {
    const tagUrl = `${proxy.url}/v2/library/single/manifests/1.0`;
    const digestOf = async () => {
      const r = await fetch(tagUrl, { headers: { accept: ACCEPT } });
      await r.arrayBuffer();
      return r.headers.get('docker-content-digest');
    };
    assert.equal(await digestOf(), images.single.manifestDigest);
    // The tag moves upstream.
    await skopeoCopy(`docker://${upstream.host}/library/v2s2@${images.v2s2.manifestDigest}`, `docker://${upstream.host}/library/single:1.0`, {
      srcTlsVerify: false,
      destTlsVerify: false,
      preserveDigests: true,
      timeoutMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal(await digestOf(), images.v2s2.manifestDigest);
    const hist = await api<{ history: Array<{ oldDigest: string | null; newDigest: string; source: string; tag: string; time: string }> }>('GET', '/api/v1/history?image=docker.io/library/single:1.0');
    const moves = hist.json.history.filter((h) => h.source === 'upstream');
    assert.deepEqual(moves.map((h) => [h.oldDigest, h.newDigest]), [
      [null, images.single.manifestDigest],
      [images.single.manifestDigest, images.v2s2.manifestDigest],
    ]);
    assert.ok(!Number.isNaN(Date.parse(moves[1]!.time)));

    // Roll back: freeze the tag to the earlier digest.
    const fr = await api<{ frozen: { digest: string } }>('POST', '/api/v1/freeze', { image: 'docker.io/library/single:1.0', digest: images.single.manifestDigest });
    assert.equal(fr.status, 200);
    const headsBefore = await upstream.countRequests({ pathIncludes: '/library/single/manifests/1.0' });
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal(await digestOf(), images.single.manifestDigest, 'frozen: served whatever the upstream says');
    assert.equal(await upstream.countRequests({ pathIncludes: '/library/single/manifests/1.0' }), headsBefore, 'a frozen tag does not ask the upstream');
    const listed = await api<{ images: Array<Record<string, unknown>> }>('GET', '/api/v1/images?repository=library/single');
    assert.ok(listed.json.images.some((i) => (i.frozenTags as string[]).includes('1.0') && i.digest === images.single.manifestDigest));
    await api('POST', '/api/v1/unfreeze', { image: 'docker.io/library/single:1.0' });
    await new Promise((r) => setTimeout(r, 1100));
    assert.equal(await digestOf(), images.v2s2.manifestDigest, 'unfrozen: follows the upstream again');
    const after = await api<{ history: Array<{ source: string }> }>('GET', '/api/v1/history?image=docker.io/library/single:1.0');
    assert.deepEqual(after.json.history.map((h) => h.source), ['upstream', 'upstream', 'freeze', 'unfreeze']);
    // Restore the upstream tag for other tests.
    await skopeoCopy(`docker://${upstream.host}/library/single@${images.single.manifestDigest}`, `docker://${upstream.host}/library/single:1.0`, {
      srcTlsVerify: false,
      destTlsVerify: false,
      preserveDigests: true,
      timeoutMs: 60_000,
    });
  });

  test('history survives a restart', async () => {
    const restarted = await proxy.restart();
    proxy = restarted;
    const res = await fetch(`${proxy.adminUrl}/api/v1/history?image=docker.io/library/single:1.0`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const j = (await res.json()) as { history: unknown[] };
    assert.equal(j.history.length, 4);
  });

  test('purge an image, then a repository; pinned content is kept unless forced', async () => {
    const layer = images.big.layers[0]!.digest;
    assert.ok(existsSync(blobFile(layer)));
    await api('POST', '/api/v1/pin', { image: 'docker.io/library/big:1.0' });
    const kept = await api<Err>('POST', '/api/v1/purge', { image: 'docker.io/library/big:1.0' });
    assert.equal(kept.status, 403);
    assert.equal(kept.json.errors[0]?.code, 'DENIED');
    assert.ok(existsSync(blobFile(layer)), 'pinned: kept');
    const repoKept = await api<{ freedBytes: number }>('POST', '/api/v1/purge', { repository: 'docker.io/library/big' });
    assert.equal(repoKept.status, 200);
    assert.ok(existsSync(blobFile(layer)), 'pinned images survive a repository purge');
    const forced = await api<{ freedBytes: number; removedBlobs: number; removedManifests: number }>('POST', '/api/v1/purge', { image: 'docker.io/library/big:1.0', force: true });
    assert.ok(forced.json.freedBytes >= images.big.layers[0]!.size);
    assert.ok(forced.json.removedManifests >= 1);
    assert.equal(existsSync(blobFile(layer)), false);
    assert.equal(existsSync(blobFile(images.big.manifestDigest)), false);

    const repo = await api<{ freedBytes: number }>('POST', '/api/v1/purge', { repository: 'docker.io/library/multi' });
    assert.equal(repo.status, 200);
    for (const p of images.multi.platforms) for (const l of p.layers) assert.equal(existsSync(blobFile(l.digest)), false);
    const listed = await api<{ images: unknown[] }>('GET', '/api/v1/images?repository=library/multi');
    assert.deepEqual(listed.json.images, []);
    assert.equal((await api<Err>('POST', '/api/v1/purge', { repository: 'docker.io/library/multi' })).status, 404);
    // Purged content is fetched again on the next pull.
    const again = await download(`${proxy.url}/v2/library/big/blobs/${layer}`);
    assert.equal(again.sha256, layer);
  });
});
