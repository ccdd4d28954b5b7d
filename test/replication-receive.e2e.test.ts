// Receiving replication pushes (issue 10, items 2 and 3), against a real ocirelay process whose
// only registry points at a real Distribution registry that is stopped before anything is
// pushed: whatever the process serves afterwards can only have come from the pushes. Pushes are
// made by hand over HTTP, as the replicator's peer client makes them (skopeo 1.9 only sends a
// Bearer token after a 401 to its /v2/ ping, which a pull-through mirror open for pulls never
// answers); pulls back are made with skopeo. A second process without replication.accept
// shows that writes stay 405 there. Last, two regions in a full mesh with the real replicator:
// what one pulls (and pins, and freezes) reaches the other, and nothing comes back.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { freePort } from './fixtures/ports.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy, skopeoInspectRaw } from './fixtures/skopeo.ts';
import { eventually } from './helpers/eventually.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage } from './helpers/random-image.ts';
import { UploadSessions } from '../src/replication/upload-sessions.ts';

const REG = 'reg.example';
const TOKEN = 'peer-a-token-0123456789';
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const AUTH = { authorization: `Bearer ${TOKEN}` };

let upstream: RegistryFixture;
let recv: OcirelayProcess;
let plain: OcirelayProcess;

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

interface Image {
  manifest: Buffer;
  digest: string;
  blobs: Array<{ digest: string; bytes: Buffer }>;
}

function makeImage(layerSizes: number[]): Image {
  const layers = layerSizes.map((n) => randomBytes(n));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha) }, id: randomBytes(8).toString('hex') }));
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: sha(config), size: config.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(l), size: l.length })),
    }),
  );
  return { manifest, digest: sha(manifest), blobs: [config, ...layers].map((b) => ({ digest: sha(b), bytes: b })) };
}

const body = (b: Buffer) => new Uint8Array(b) as Uint8Array<ArrayBuffer>;

async function call(url: string, init: RequestInit & { headers?: Record<string, string> } = {}): Promise<{ status: number; headers: Headers; text: string; code: string | undefined }> {
  const res = await fetch(url, init);
  const text = await res.text();
  let code: string | undefined;
  try {
    code = (JSON.parse(text) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    code = undefined;
  }
  return { status: res.status, headers: res.headers, text, code };
}

async function pushBlob(base: string, repo: string, b: { digest: string; bytes: Buffer }): Promise<void> {
  const r = await call(`${base}/v2/${REG}/${repo}/blobs/uploads/?digest=${b.digest}`, { method: 'POST', headers: { ...AUTH, 'content-type': 'application/octet-stream' }, body: body(b.bytes) });
  assert.equal(r.status, 201, r.text);
}

async function pushManifest(base: string, repo: string, ref: string, manifest: Buffer, resolvedAt?: Date): Promise<void> {
  const headers: Record<string, string> = { ...AUTH, 'content-type': OCI_MANIFEST };
  if (resolvedAt) headers['Ocirelay-Resolved-At'] = resolvedAt.toISOString();
  const r = await call(`${base}/v2/${REG}/${repo}/manifests/${ref}`, { method: 'PUT', headers, body: body(manifest) });
  assert.equal(r.status, 201, r.text);
  assert.equal(r.headers.get('docker-content-digest'), sha(manifest));
}

async function pushImage(base: string, repo: string, tag: string, img: Image, resolvedAt = new Date()): Promise<void> {
  for (const b of img.blobs) await pushBlob(base, repo, b);
  await pushManifest(base, repo, tag, img.manifest, resolvedAt);
}

async function tagDigest(repo: string, tag: string): Promise<string> {
  const res = await fetch(`${recv.url}/v2/${REG}/${repo}/manifests/${tag}`, { headers: { accept: OCI_MANIFEST } });
  const b = Buffer.from(await res.arrayBuffer());
  assert.equal(res.status, 200, b.toString());
  return sha(b);
}

async function peerHead(repo: string, digest: string): Promise<number> {
  const res = await fetch(`${recv.url}/v2/${REG}/${repo}/blobs/${digest}`, { method: 'HEAD', headers: AUTH });
  return res.status;
}

async function uploadTemps(): Promise<string[]> {
  return (await readdir(path.join(recv.dataDir, 'tmp'))).filter((f) => f.startsWith('upload-'));
}

before(async () => {
  upstream = await startRegistry({ auth: 'none' });
  const registries = { [REG]: { url: upstream.url, negativeTTL: '0s' }, 'other.example': { url: upstream.url } };
  recv = await startOcirelay({ registries, defaultRegistry: REG, replication: { accept: [{ name: 'a', token: TOKEN }] }, log: { level: 'info' } });
  plain = await startOcirelay({ registries, defaultRegistry: REG, log: { level: 'info' } });
  // Nothing can come from the upstream from here on.
  await upstream.stop();
});

after(async () => {
  await recv?.cleanup();
  await plain?.cleanup();
  await upstream?.stop().catch(() => undefined);
});

describe('receiving pushes', { timeout: 300_000 }, () => {
  test('a pushed image is pulled back with skopeo, upstream stopped; a peer HEAD answers from the cache alone', async () => {
    const img = makeImage([300 * 1024, 1536 * 1024]);
    await pushImage(recv.url, 'team/app', 'v1', img);
    const ref = `docker://${recv.host}/${REG}/team/app:v1`;
    const raw = await skopeoInspectRaw(ref, { tlsVerify: false, timeoutMs: 60_000 });
    assert.equal(raw.digest, img.digest);
    const dir = await mkdtemp(path.join(os.tmpdir(), 'recv-pull-'));
    try {
      await skopeoCopy(ref, `dir:${dir}`, { srcTlsVerify: false, timeoutMs: 120_000 });
      assert.equal(sha(await readFile(path.join(dir, 'manifest.json'))), img.digest);
      for (const b of img.blobs) assert.equal(sha(await readFile(path.join(dir, b.digest.slice('sha256:'.length)))), b.digest);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
    // A peer's HEAD: 200 for what was pushed here, 404 (not an upstream error) for the rest.
    assert.equal(await peerHead('team/app', img.blobs[1]!.digest), 200);
    assert.equal(await peerHead('team/app', sha(randomBytes(16))), 404);
    assert.equal(await peerHead('team/other', img.blobs[1]!.digest), 404, 'held, but not linked to that repository');
    // Without the token the same HEAD is a read: it asks the (stopped) upstream.
    const anon = await fetch(`${recv.url}/v2/${REG}/team/app/blobs/${sha(randomBytes(16))}`, { method: 'HEAD' });
    assert.ok(anon.status >= 500, `anonymous HEAD of an unknown blob: ${anon.status}`);
    // So is a peer's failover read, token or not (it wants this region's upstream too).
    const failover = await fetch(`${recv.url}/v2/${REG}/team/app/blobs/${sha(randomBytes(16))}`, { method: 'HEAD', headers: { ...AUTH, 'ocirelay-failover': '1' } });
    assert.ok(failover.status >= 500, `failover HEAD of an unknown blob: ${failover.status}`);
    assert.equal(await recv.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'blob', result: 'stored' }), 3);
    assert.equal(await recv.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'tag', result: 'stored' }), 1);
  });

  test('a blob or manifest that does not match its digest: 400 DIGEST_INVALID and nothing stored', async () => {
    const bytes = randomBytes(200 * 1024);
    const claimed = sha(randomBytes(32));
    const r = await call(`${recv.url}/v2/${REG}/team/bad/blobs/uploads/?digest=${claimed}`, { method: 'POST', headers: AUTH, body: body(bytes) });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.code, 'DIGEST_INVALID');
    assert.equal(await peerHead('team/bad', claimed), 404);
    assert.equal(await peerHead('team/bad', sha(bytes)), 404);
    assert.deepEqual(await uploadTemps(), []);
    const blobFile = path.join(recv.dataDir, 'blobs', 'sha256', sha(bytes).slice(7, 9), sha(bytes).slice(7));
    await assert.rejects(readFile(blobFile), { code: 'ENOENT' });

    const img = makeImage([1024]);
    const m = await call(`${recv.url}/v2/${REG}/team/bad/manifests/${sha(randomBytes(8))}`, { method: 'PUT', headers: { ...AUTH, 'content-type': OCI_MANIFEST }, body: body(img.manifest) });
    assert.equal(m.status, 400, m.text);
    assert.equal(m.code, 'DIGEST_INVALID');
    assert.ok((await recv.metric('ocirelay_replication_received_total', { peer: 'a', result: 'digest_invalid' })) >= 2);
  });

  test('auth: no token is 401 with a challenge, a wrong one is refused, unconfigured registries are refused', async () => {
    const url = `${recv.url}/v2/${REG}/team/app/blobs/uploads/`;
    const none = await call(url, { method: 'POST' });
    assert.equal(none.status, 401);
    assert.equal(none.code, 'UNAUTHORIZED');
    assert.equal(none.headers.get('www-authenticate'), 'Bearer realm="ocirelay-replication"');
    const wrong = await call(url, { method: 'POST', headers: { authorization: 'Bearer not-the-token-at-all' } });
    assert.ok(wrong.status === 401 || wrong.status === 403, String(wrong.status));
    assert.ok(wrong.code === 'UNAUTHORIZED' || wrong.code === 'DENIED', wrong.code);
    const basic = await call(url, { method: 'POST', headers: { authorization: `Basic ${Buffer.from(`a:${TOKEN}`).toString('base64')}` } });
    assert.ok(basic.status === 401 || basic.status === 403, String(basic.status));
    const m = await call(`${recv.url}/v2/${REG}/team/app/manifests/v9`, { method: 'PUT', headers: { 'content-type': OCI_MANIFEST }, body: '{}' });
    assert.equal(m.status, 401);

    for (const p of ['unknown.example/team/app', 'team/app', '127.0.0.1:1/team/app']) {
      const r = await call(`${recv.url}/v2/${p}/blobs/uploads/`, { method: 'POST', headers: AUTH });
      assert.equal(r.status, 404, `${p}: ${r.text}`);
      assert.equal(r.code, 'NAME_UNKNOWN', p);
    }
    const other = await call(`${recv.url}/v2/other.example/team/app/blobs/uploads/`, { method: 'POST', headers: AUTH });
    assert.equal(other.status, 202, 'a second configured registry takes pushes too');
    await call(`${recv.url}${other.headers.get('location')}`, { method: 'DELETE', headers: AUTH });
  });

  test('without replication.accept every write stays 405 UNSUPPORTED', async () => {
    for (const method of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      for (const headers of [{}, AUTH]) {
        const r = await call(`${plain.url}/v2/${REG}/team/app/blobs/uploads/`, { method, headers, ...(method === 'DELETE' ? {} : { body: 'x' }) });
        assert.equal(r.status, 405, `${method}: ${r.text}`);
        assert.equal(r.code, 'UNSUPPORTED');
      }
    }
    const m = await call(`${plain.url}/v2/${REG}/team/app/manifests/v1`, { method: 'PUT', headers: { ...AUTH, 'content-type': OCI_MANIFEST }, body: '{}' });
    assert.equal(m.status, 405);
  });

  test('a tag keeps the newer resolution: an older push never overwrites it, a newer one does', async () => {
    const [a, b, c] = [makeImage([2048]), makeImage([2048]), makeImage([2048])];
    const now = Date.now();
    await pushImage(recv.url, 'team/race', 'latest', a, new Date(now - 1000));
    assert.equal(await tagDigest('team/race', 'latest'), a.digest);
    await pushImage(recv.url, 'team/race', 'latest', b, new Date(now - 60_000));
    assert.equal(await tagDigest('team/race', 'latest'), a.digest, 'an older resolution must not win');
    assert.equal(await recv.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'tag', result: 'skipped_older' }), 1);
    // The older image is still stored and served by digest.
    const byDigest = await fetch(`${recv.url}/v2/${REG}/team/race/manifests/${b.digest}`, { headers: { accept: OCI_MANIFEST } });
    assert.equal(byDigest.status, 200);
    await byDigest.arrayBuffer();
    await pushImage(recv.url, 'team/race', 'latest', c, new Date(now));
    assert.equal(await tagDigest('team/race', 'latest'), c.digest);
    // The tag history says who moved it.
    const h = await fetch(`${recv.adminUrl}/api/v1/history?image=${REG}/team/race:latest`);
    assert.equal(h.status, 200);
    const history = ((await h.json()) as { history: Array<{ oldDigest: string | null; newDigest: string; source: string }> }).history;
    assert.deepEqual(
      history.map((e) => [e.oldDigest, e.newDigest, e.source]),
      [
        [null, a.digest, 'replication'],
        [a.digest, c.digest, 'replication'],
      ],
    );
    const bad = await call(`${recv.url}/v2/${REG}/team/race/manifests/latest`, { method: 'PUT', headers: { ...AUTH, 'content-type': OCI_MANIFEST, 'Ocirelay-Resolved-At': 'yesterday' }, body: body(a.manifest) });
    assert.equal(bad.status, 400);
    assert.equal(await tagDigest('team/race', 'latest'), c.digest);
  });

  test('chunked upload: POST, PATCHes with Content-Range, PUT ?digest=; a PATCH at the wrong offset is 416', async () => {
    const bytes = randomBytes(3 * 1024 * 1024 + 17);
    const digest = sha(bytes);
    const start = await call(`${recv.url}/v2/${REG}/team/chunks/blobs/uploads/`, { method: 'POST', headers: AUTH });
    assert.equal(start.status, 202);
    let location = start.headers.get('location')!;
    assert.match(location, new RegExp(`^/v2/${REG}/team/chunks/blobs/uploads/[a-f0-9-]{36}$`));
    const cuts = [0, 1024 * 1024, 2 * 1024 * 1024 + 5, bytes.length];
    for (let i = 0; i + 1 < cuts.length; i++) {
      const part = bytes.subarray(cuts[i], cuts[i + 1]);
      const r = await call(`${recv.url}${location}`, {
        method: 'PATCH',
        headers: { ...AUTH, 'content-type': 'application/octet-stream', 'content-range': `${cuts[i]}-${cuts[i + 1]! - 1}` },
        body: body(part),
      });
      assert.equal(r.status, 202, r.text);
      assert.equal(r.headers.get('range'), `0-${cuts[i + 1]! - 1}`);
      location = r.headers.get('location')!;
      if (i === 0) {
        const wrong = await call(`${recv.url}${location}`, { method: 'PATCH', headers: { ...AUTH, 'content-range': '0-9' }, body: body(bytes.subarray(0, 10)) });
        assert.equal(wrong.status, 416, wrong.text);
      }
    }
    const status = await fetch(`${recv.url}${location}`, { headers: AUTH });
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), `0-${bytes.length - 1}`);
    const done = await call(`${recv.url}${location}?digest=${digest}`, { method: 'PUT', headers: AUTH });
    assert.equal(done.status, 201, done.text);
    assert.equal(done.headers.get('docker-content-digest'), digest);
    const got = await fetch(`${recv.url}/v2/${REG}/team/chunks/blobs/${digest}`);
    assert.equal(got.status, 200);
    assert.equal(sha(Buffer.from(await got.arrayBuffer())), digest);
    assert.deepEqual(await uploadTemps(), []);
    // The finished session is gone.
    const again = await call(`${recv.url}${location}`, { method: 'PATCH', headers: AUTH, body: 'x' });
    assert.equal(again.status, 404);
    assert.equal(again.code, 'BLOB_UPLOAD_UNKNOWN');
  });

  test('cross-repository mount succeeds only for a blob held here and linked to `from`', async () => {
    const blob = { bytes: randomBytes(64 * 1024), digest: '' };
    blob.digest = sha(blob.bytes);
    await pushBlob(recv.url, 'team/src', blob);
    const mounted = await call(`${recv.url}/v2/${REG}/team/dst/blobs/uploads/?mount=${blob.digest}&from=${REG}/team/src`, { method: 'POST', headers: AUTH });
    assert.equal(mounted.status, 201, mounted.text);
    assert.equal(mounted.headers.get('location'), `/v2/${REG}/team/dst/blobs/${blob.digest}`);
    const served = await fetch(`${recv.url}/v2/${REG}/team/dst/blobs/${blob.digest}`);
    assert.equal(served.status, 200);
    assert.equal(sha(Buffer.from(await served.arrayBuffer())), blob.digest);
    // Not linked to `from`, or not held at all: a session instead (202), never the blob.
    for (const [digest, from] of [
      [blob.digest, `${REG}/team/nowhere`],
      [blob.digest, `other.example/team/src`],
      [sha(randomBytes(8)), `${REG}/team/src`],
    ] as const) {
      const r = await call(`${recv.url}/v2/${REG}/team/dst2/blobs/uploads/?mount=${digest}&from=${from}`, { method: 'POST', headers: AUTH });
      assert.equal(r.status, 202, `${from}: ${r.text}`);
      assert.match(r.headers.get('location') ?? '', /\/blobs\/uploads\/[a-f0-9-]{36}$/);
      await call(`${recv.url}${r.headers.get('location')}`, { method: 'DELETE', headers: AUTH });
      assert.equal(await peerHead('team/dst2', digest), 404);
    }
  });

  test('a pushed freeze and pin show in the admin API; the frozen tag serves its digest; unfreeze removes it', async () => {
    const [cur, old] = [makeImage([4096]), makeImage([4096])];
    await pushImage(recv.url, 'team/frozen', 'v1', cur);
    for (const b of old.blobs) await pushBlob(recv.url, 'team/frozen', b);
    await pushManifest(recv.url, 'team/frozen', old.digest, old.manifest);
    const at = new Date().toISOString();
    const fr = await call(`${recv.url}/v2/${REG}/team/frozen/_ocirelay/freeze/v1`, { method: 'PUT', headers: { ...AUTH, 'content-type': 'application/json' }, body: JSON.stringify({ digest: old.digest, at }) });
    assert.equal(fr.status, 200, fr.text);
    assert.equal(await tagDigest('team/frozen', 'v1'), old.digest);
    const pin = await call(`${recv.url}/v2/${REG}/team/frozen/_ocirelay/pin`, {
      method: 'PUT',
      headers: { ...AUTH, 'content-type': 'application/json' },
      body: JSON.stringify({ ref: `${REG}/team/frozen:v1`, digests: [old.digest, ...old.blobs.map((b) => b.digest)], createdAt: at }),
    });
    assert.equal(pin.status, 200, pin.text);

    type Img = { digest: string; tags: string[]; frozenTags: string[]; pinned: boolean };
    const images = async (): Promise<Img[]> => {
      const res = await fetch(`${recv.adminUrl}/api/v1/images?registry=${REG}&repository=team/frozen`);
      assert.equal(res.status, 200);
      return ((await res.json()) as { images: Img[] }).images;
    };
    const frozen = (await images()).find((i) => i.digest === old.digest);
    assert.ok(frozen, 'the frozen image is listed');
    assert.deepEqual(frozen.frozenTags, ['v1']);
    assert.equal(frozen.pinned, true);
    // An older freeze from another peer does not replace it.
    const older = await call(`${recv.url}/v2/${REG}/team/frozen/_ocirelay/freeze/v1`, {
      method: 'PUT',
      headers: AUTH,
      body: JSON.stringify({ digest: cur.digest, at: new Date(Date.now() - 3_600_000).toISOString() }),
    });
    assert.equal(older.status, 200);
    assert.equal((JSON.parse(older.text) as { result: string }).result, 'skipped_older');
    assert.equal(await tagDigest('team/frozen', 'v1'), old.digest);

    const unfreeze = await call(`${recv.url}/v2/${REG}/team/frozen/_ocirelay/freeze/v1`, { method: 'DELETE', headers: AUTH, body: JSON.stringify({ at: new Date().toISOString() }) });
    assert.equal(unfreeze.status, 200, unfreeze.text);
    const unpin = await call(`${recv.url}/v2/${REG}/team/frozen/_ocirelay/pin`, { method: 'DELETE', headers: AUTH, body: JSON.stringify({ ref: `${REG}/team/frozen:v1` }) });
    assert.equal(unpin.status, 200, unpin.text);
    const after = await images();
    assert.ok(after.every((i) => i.frozenTags.length === 0 && !i.pinned), JSON.stringify(after));
    assert.equal(await tagDigest('team/frozen', 'v1'), cur.digest);
  });
});

describe('a full disk', { timeout: 120_000 }, () => {
  test('an upload that does not fit answers 503 UNAVAILABLE, leaves no temp file, and pushes work again once the disk recovers', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'recv-full-'));
    const mnt = path.join(dir, 'tmpfs');
    await mkdir(mnt);
    // A real small filesystem (needs root, as the cache-lifecycle test).
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', mnt]);
    let p: OcirelayProcess | undefined;
    try {
      p = await startOcirelay({ registries: { [REG]: { url: 'http://127.0.0.1:9' } }, dataDir: path.join(mnt, 'data'), replication: { accept: [{ name: 'a', token: TOKEN }] }, log: { level: 'info' } });
      const bytes = randomBytes(8 * 1024 * 1024);
      const start = await call(`${p.url}/v2/${REG}/team/big/blobs/uploads/`, { method: 'POST', headers: AUTH });
      assert.equal(start.status, 202);
      let location = start.headers.get('location')!;
      const MiB = 1024 * 1024;
      let refused: Awaited<ReturnType<typeof call>> | undefined;
      for (let off = 0; off < bytes.length && !refused; off += MiB) {
        const r = await call(`${p.url}${location}`, { method: 'PATCH', headers: { ...AUTH, 'content-range': `${off}-${off + MiB - 1}` }, body: body(bytes.subarray(off, off + MiB)) });
        if (r.status === 202) location = r.headers.get('location')!;
        else refused = r;
      }
      assert.ok(refused, 'an 8 MiB upload cannot fit in 6 MiB');
      assert.equal(refused.status, 503, refused.text);
      assert.equal(refused.code, 'UNAVAILABLE');
      assert.deepEqual((await readdir(path.join(p.dataDir, 'tmp'))).filter((f) => f.startsWith('upload-')), []);
      const gone = await call(`${p.url}${location}`, { method: 'PATCH', headers: AUTH, body: 'x' });
      assert.equal(gone.status, 404, 'the upload was dropped');
      // The temp file is gone, so the disk probe finds room again and pushes are taken.
      await p.waitForLog((l) => l.msg === 'disk cache writable again: caching resumed', 20_000);
      const small = { bytes: randomBytes(4096), digest: '' };
      small.digest = sha(small.bytes);
      await pushBlob(p.url, 'team/big', small);
      assert.equal((await fetch(`${p.url}/v2/${REG}/team/big/blobs/${small.digest}`, { method: 'HEAD', headers: AUTH })).status, 200);
    } finally {
      await p?.cleanup();
      execFileSync('umount', [mnt]);
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('receiving from the real replicator, two regions in a full mesh', { timeout: 300_000 }, () => {
  test('what A pulls reaches B (whose upstream is down), including a chunked 70 MiB layer, and B pushes none of it back', async () => {
    const live = await startRegistry({ auth: 'none' });
    const dead = await startRegistry({ auth: 'none' });
    await dead.stop();
    const [portA, portB] = [await freePort(), await freePort()];
    const [toA, toB] = ['token-into-a-0123456789', 'token-into-b-0123456789'];
    let a: OcirelayProcess | undefined;
    let b: OcirelayProcess | undefined;
    try {
      b = await startOcirelay(
        { registries: { [REG]: { url: dead.url } }, peers: { a: { url: `http://127.0.0.1:${portA}`, token: toA } }, replication: { accept: [{ name: 'a', token: toB }] }, log: { level: 'info' } },
        { port: portB },
      );
      a = await startOcirelay(
        { registries: { [REG]: { url: live.url } }, peers: { b: { url: b.url, token: toB } }, replication: { accept: [{ name: 'b', token: toA }] }, log: { level: 'info' } },
        { port: portA },
      );
      const img = await pushRandomImage(live.url, 'team/mesh', 'v1', [1000, 70 * 1024 * 1024]);
      const viaPrefix = { ...img, repo: `${REG}/team/mesh` };
      await pullVerified(a.url, viaPrefix);
      const bb = b;
      await eventually(async () => (await bb.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'tag', result: 'stored' })) === 1, 'the tag reached B', 120_000);
      await pullVerified(b.url, viaPrefix);
      assert.equal(await b.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'blob', result: 'stored' }), 3);
      // Received content is not queued for A: nothing pending, nothing sent, nothing received there.
      await sleep(1000);
      assert.equal(await b.metric('ocirelay_replication_pending_jobs', { peer: 'a' }), 0);
      assert.equal(await b.metric('ocirelay_replication_bytes_total', { peer: 'a' }), 0);
      assert.equal(await a.metric('ocirelay_replication_received_total'), 0);

      // A pin with a freeze made on A shows in B's admin API as pinned and frozen, and comes back to A no more than content does.
      const pinned = await fetch(`${a.adminUrl}/api/v1/pin`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ image: `${REG}/team/mesh:v1`, freeze: true }) });
      assert.equal(pinned.status, 200, await pinned.text());
      await eventually(
        async () => {
          const res = await fetch(`${bb.adminUrl}/api/v1/images?registry=${REG}&repository=team/mesh`);
          const list = ((await res.json()) as { images: Array<{ digest: string; pinned: boolean; frozenTags: string[] }> }).images;
          return list.some((i) => i.digest === img.manifestDigest && i.pinned && i.frozenTags.includes('v1'));
        },
        'B shows the pin and the freeze',
        60_000,
      );
      // Counted once the journal write is done (the index shows it a moment before).
      await eventually(
        async () =>
          (await bb.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'freeze', result: 'stored' })) === 1 &&
          (await bb.metric('ocirelay_replication_received_total', { peer: 'a', kind: 'pin', result: 'stored' })) === 1,
        'the freeze and the pin counted once each',
        10_000,
      );
      await sleep(1000);
      assert.equal(await a.metric('ocirelay_replication_received_total'), 0);
    } finally {
      await a?.cleanup();
      await b?.cleanup();
      await live.stop();
    }
  });

  test('tag race: A and B resolve one tag to different digests at different times; both end with the newer, and it settles', async () => {
    // Each region's own upstream has a different image under the same name; tagTTL 0 makes
    // every pull resolve the tag again.
    const [upA, upB] = [await startRegistry({ auth: 'none' }), await startRegistry({ auth: 'none' })];
    const [portA, portB] = [await freePort(), await freePort()];
    const [toA, toB] = ['token-into-a-0123456789', 'token-into-b-0123456789'];
    let a: OcirelayProcess | undefined;
    let b: OcirelayProcess | undefined;
    try {
      const x = await pushRandomImage(upA.url, 'team/race', 'v1', [2048]);
      const y = await pushRandomImage(upB.url, 'team/race', 'v1', [2048]);
      const region = (up: RegistryFixture, peer: string, port: number, peerToken: string, ownToken: string) => ({
        registries: { [REG]: { url: up.url, tagTTL: '0s' } },
        peers: { [peer]: { url: `http://127.0.0.1:${port}`, token: peerToken } },
        replication: { accept: [{ name: peer, token: ownToken }] },
        log: { level: 'info' },
      });
      b = await startOcirelay(region(upB, 'a', portA, toA, toB), { port: portB });
      a = await startOcirelay(region(upA, 'b', portB, toB, toA), { port: portA });
      // What a region holds for the tag, asked as a peer asks (its own cache only, no upstream).
      const held = async (p: OcirelayProcess, token: string) =>
        (await fetch(`${p.url}/v2/${REG}/team/race/manifests/v1`, { method: 'HEAD', headers: { authorization: `Bearer ${token}` } })).headers.get('docker-content-digest');
      const [aa, bb] = [a, b];

      await pullVerified(b.url, { ...y, repo: `${REG}/team/race` }); // B resolves y first ...
      await eventually(async () => (await held(aa, toA)) === y.manifestDigest, 'y reached A', 60_000);
      await pullVerified(a.url, { ...x, repo: `${REG}/team/race` }); // ... then A resolves x, later
      await eventually(async () => (await held(bb, toB)) === x.manifestDigest, 'x (the newer) reached B', 60_000);
      assert.equal(await held(a, toA), x.manifestDigest);
      // It settles: each region took one tag from the other, and nothing bounces back and forth.
      await sleep(1500);
      assert.equal(await a.metric('ocirelay_replication_received_total', { kind: 'tag' }), 1);
      assert.equal(await b.metric('ocirelay_replication_received_total', { kind: 'tag' }), 1);
      assert.equal(await held(a, toA), x.manifestDigest);
      assert.equal(await held(b, toB), x.manifestDigest);
    } finally {
      await a?.cleanup();
      await b?.cleanup();
      await upA.stop();
      await upB.stop();
    }
  });
});

describe('upload sessions', () => {
  test('an abandoned upload expires and its temp file is deleted; the size cap and a sender gone mid-body drop an upload', async () => {
    const tmpDir = await mkdtemp(path.join(os.tmpdir(), 'upload-sessions-'));
    const sessions = new UploadSessions({ tmpDir, maxSessions: 2, maxBytes: 1000, idleMs: 200 });
    try {
      const s = await sessions.start(REG, 'team/app');
      const { Readable } = await import('node:stream');
      await sessions.append(s, Readable.from([randomBytes(100)]), 0, 100);
      assert.equal((await readdir(tmpDir)).length, 1);
      await sessions.start(REG, 'team/app');
      await assert.rejects(sessions.start(REG, 'team/app'), { code: 'TOOMANYREQUESTS' });
      for (let i = 0; i < 100 && (await readdir(tmpDir)).length > 0; i++) await sleep(50);
      assert.deepEqual(await readdir(tmpDir), [], 'idle sessions swept with their files');
      assert.throws(() => sessions.get(s.id, REG, 'team/app'), { code: 'BLOB_UPLOAD_UNKNOWN' });
      const big = await sessions.start(REG, 'team/app');
      await assert.rejects(sessions.append(big, Readable.from([randomBytes(600), randomBytes(600)]), undefined, undefined), { code: 'SIZE_INVALID' });
      assert.deepEqual(await readdir(tmpDir), []);
      // A sender that goes away mid-body: the upload is dropped with its file.
      const cut = await sessions.start(REG, 'team/app');
      const broken = new Readable({ read() {} });
      broken.push(randomBytes(300));
      setImmediate(() => broken.destroy(Object.assign(new Error('aborted'), { code: 'ECONNRESET' })));
      await assert.rejects(sessions.append(cut, broken, 0, 1000), { code: 'SIZE_INVALID' });
      assert.deepEqual(await readdir(tmpDir), []);
      assert.equal(sessions.count, 0);
    } finally {
      await sessions.close();
      await rm(tmpDir, { recursive: true, force: true });
    }
  });
});
