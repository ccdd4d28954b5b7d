// Cross-repository reads: cached content is served under a repository only when the upstream
// confirmed that this repository may read it, never because a manifest or an index there lists
// its digest. An attacker pushes, to a repository it controls (in the same upstream, or in
// another configured registry), a manifest whose layers name a private layer's digest and an
// index whose subject names a private manifest's digest. Distribution 2.8 accepts a layer it
// does not hold when the descriptor carries `urls` (a "foreign" layer) and ignores `subject`,
// so both pushes are real. Once the private image is cached through its own repository, the
// attacker's repository must get 404 for GET and HEAD of both digests.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { eventually } from './helpers/eventually.ts';
import { pushBlob } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pushRandomImage, type RandomImage } from './helpers/random-image.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
const ACCEPT = `${OCI_MANIFEST}, ${OCI_INDEX}`;

function sha256(b: Buffer): string {
  return `sha256:${createHash('sha256').update(b).digest('hex')}`;
}

async function putManifest(registryUrl: string, repo: string, tag: string, mediaType: string, body: object, authorization: string | undefined): Promise<Buffer> {
  const bytes = Buffer.from(JSON.stringify(body));
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'content-type': mediaType, ...(authorization ? { authorization } : {}) },
    body: new Uint8Array(bytes) as Uint8Array<ArrayBuffer>,
  });
  const text = await res.text();
  if (res.status !== 201) throw new Error(`manifest push to ${repo}:${tag}: ${res.status} ${text}`);
  return bytes;
}

/**
 * Pushes to `repo` a manifest listing the private layer (as a non-distributable layer with `urls`, so the registry
 * does not require it in `repo`) and an index listing that manifest and, as its subject, the
 * private manifest. Only the config blob is really in `repo`.
 */
async function pushLure(registryUrl: string, repo: string, victim: RandomImage, authorization: string | undefined): Promise<void> {
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] }, id: randomBytes(8).toString('hex') }));
  const configDigest = await pushBlob(registryUrl, repo, config, authorization);
  const layer = victim.layers[0]!;
  const manifest = await putManifest(
    registryUrl,
    repo,
    'lure',
    OCI_MANIFEST,
    {
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip', digest: layer.digest, size: layer.size, urls: ['https://example.com/layer'] }],
      subject: { mediaType: OCI_MANIFEST, digest: victim.manifestDigest, size: victim.manifestSize },
    },
    authorization,
  );
  await putManifest(
    registryUrl,
    repo,
    'lure-index',
    OCI_INDEX,
    {
      schemaVersion: 2,
      mediaType: OCI_INDEX,
      manifests: [{ mediaType: OCI_MANIFEST, digest: sha256(manifest), size: manifest.length, platform: { architecture: 'amd64', os: 'linux' } }],
      subject: { mediaType: OCI_MANIFEST, digest: victim.manifestDigest, size: victim.manifestSize },
    },
    authorization,
  );
}

function cachedFile(proxy: OcirelayProcess, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(proxy.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

async function errorCode(text: string): Promise<string | undefined> {
  try {
    return (JSON.parse(text) as { errors?: Array<{ code?: string }> }).errors?.[0]?.code;
  } catch {
    return undefined; // not an error body (e.g. the private bytes themselves)
  }
}

/**
 * GET and HEAD of the private layer and manifest under `prefix` (a repository URL) answer 404
 * with the OCI code (a HEAD has no body). All four are compared at once, so a failure shows
 * which of them leaked.
 */
async function assertRefused(prefix: string, victim: RandomImage): Promise<void> {
  const layer = victim.layers[0]!.digest;
  const seen: string[] = [];
  const expected: string[] = [];
  for (const method of ['GET', 'HEAD'] as const) {
    for (const [kind, url, code] of [
      ['layer', `${prefix}/blobs/${layer}`, 'BLOB_UNKNOWN'],
      ['manifest', `${prefix}/manifests/${victim.manifestDigest}`, 'MANIFEST_UNKNOWN'],
    ] as const) {
      const res = await fetch(url, { method, headers: { accept: ACCEPT } });
      const text = await res.text();
      seen.push(`${method} ${kind}: ${res.status} ${method === 'GET' ? await errorCode(text) : '-'}`);
      expected.push(`${method} ${kind}: 404 ${method === 'GET' ? code : '-'}`);
    }
  }
  assert.deepEqual(seen, expected, `private content under ${prefix}`);
}

/** Fetches the lure manifest and index through ocirelay (the step that used to link their references). */
async function fetchLures(prefix: string): Promise<void> {
  for (const tag of ['lure', 'lure-index']) {
    const r = await fetch(`${prefix}/manifests/${tag}`, { headers: { accept: ACCEPT } });
    await r.arrayBuffer();
    assert.equal(r.status, 200, `lure ${tag} fetched through ocirelay`);
  }
}

describe('cross-repository reads', () => {
  let upstream: RegistryFixture;
  let other: RegistryFixture;
  let proxy: OcirelayProcess;
  let victim: RandomImage;

  before(async () => {
    upstream = await startRegistry({ auth: 'token', manifestUrlsAllow: '^https://example\.com/' });
    other = await startRegistry({ manifestUrlsAllow: '^https://example\.com/' });
    const privAuth = await upstream.authorization('repository:private/app:pull,push');
    victim = await pushRandomImage(upstream.url, 'private/app', 'v1', [64 * 1024], privAuth);
    await pushLure(upstream.url, 'attacker/app', victim, await upstream.authorization('repository:attacker/app:pull,push'));
    await pushLure(other.url, 'evil/app', victim, undefined);
    proxy = await startOcirelay({
      registries: {
        'docker.io': { url: upstream.url, username: upstream.user, password: upstream.password, trustedHosts: [new URL(upstream.tokenServer!.realm).host] },
        'other.example': { url: other.url },
      },
    });

    // The private image, pulled through its own repository (our credentials may read it): cached.
    const m = await fetch(`${proxy.url}/v2/private/app/manifests/v1`, { headers: { accept: ACCEPT } });
    assert.equal(sha256(Buffer.from(await m.arrayBuffer())), victim.manifestDigest);
    const l = await fetch(`${proxy.url}/v2/private/app/blobs/${victim.layers[0]!.digest}`);
    assert.equal(sha256(Buffer.from(await l.arrayBuffer())), victim.layers[0]!.digest);
    await eventually(
      () => existsSync(cachedFile(proxy, victim.manifestDigest)) && existsSync(cachedFile(proxy, victim.layers[0]!.digest)),
      'private manifest and layer cached',
    );
  });
  after(async () => {
    await proxy?.cleanup();
    await upstream?.stop();
    await other?.stop();
  });

  test('a manifest and an index in another repository of the same registry do not open the private content', async () => {
    await fetchLures(`${proxy.url}/v2/attacker/app`);
    const headsBefore = await upstream.countRequests({ method: 'HEAD', pathIncludes: '/v2/attacker/app/' });
    await assertRefused(`${proxy.url}/v2/attacker/app`, victim);
    // The refusals came from the upstream, asked under the attacker's repository.
    assert.ok((await upstream.countRequests({ method: 'HEAD', pathIncludes: '/v2/attacker/app/' })) > headsBefore, 'upstream asked');
  });

  test('a manifest and an index in another configured registry do not open the private content', async () => {
    await fetchLures(`${proxy.url}/v2/other.example/evil/app`);
    await assertRefused(`${proxy.url}/v2/other.example/evil/app`, victim);
    // Same through ?ns=.
    const r = await fetch(`${proxy.url}/v2/evil/app/blobs/${victim.layers[0]!.digest}?ns=other.example`, { method: 'HEAD' });
    await r.arrayBuffer();
    assert.equal(r.status, 404);
  });

  test('under its own repository the private content is still served, from the cache', async () => {
    const layerGets = await upstream.countRequests({ method: 'GET', pathIncludes: `/blobs/${victim.layers[0]!.digest}` });
    const layer = await fetch(`${proxy.url}/v2/private/app/blobs/${victim.layers[0]!.digest}`);
    assert.equal(layer.status, 200);
    assert.equal(sha256(Buffer.from(await layer.arrayBuffer())), victim.layers[0]!.digest);
    const head = await fetch(`${proxy.url}/v2/private/app/blobs/${victim.layers[0]!.digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), String(victim.layers[0]!.size));
    const m = await fetch(`${proxy.url}/v2/private/app/manifests/${victim.manifestDigest}`, { headers: { accept: ACCEPT } });
    assert.equal(m.status, 200);
    assert.equal(sha256(Buffer.from(await m.arrayBuffer())), victim.manifestDigest);
    const mh = await fetch(`${proxy.url}/v2/private/app/manifests/${victim.manifestDigest}`, { method: 'HEAD', headers: { accept: ACCEPT } });
    assert.equal(mh.status, 200);
    assert.equal(mh.headers.get('docker-content-digest'), victim.manifestDigest);
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: `/blobs/${victim.layers[0]!.digest}` }), layerGets, 'no new upstream GET of the layer');
  });

  test('another repository the upstream confirms gets the cached bytes after one upstream HEAD', async () => {
    // A legitimate cross-mount: the same layer pushed to team/copy. Our credentials read it there.
    const authz = await upstream.authorization('repository:team/copy:pull,push repository:private/app:pull');
    const mount = await fetch(`${upstream.url}/v2/team/copy/blobs/uploads/?mount=${victim.layers[0]!.digest}&from=private/app`, { method: 'POST', headers: authz ? { authorization: authz } : {} });
    await mount.arrayBuffer();
    assert.equal(mount.status, 201, 'cross-repository mount upstream');
    const getsBefore = await upstream.countRequests({ method: 'GET', pathIncludes: `/v2/team/copy/blobs/` });
    // Answered heads only: the first request of a scope also draws a 401 challenge.
    const headsBefore = await upstream.countRequests({ method: 'HEAD', pathIncludes: `/v2/team/copy/blobs/`, status: 200 });
    const r = await fetch(`${proxy.url}/v2/team/copy/blobs/${victim.layers[0]!.digest}`);
    assert.equal(r.status, 200);
    assert.equal(sha256(Buffer.from(await r.arrayBuffer())), victim.layers[0]!.digest);
    const again = await fetch(`${proxy.url}/v2/team/copy/blobs/${victim.layers[0]!.digest}`, { method: 'HEAD' });
    assert.equal(again.status, 200);
    assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: `/v2/team/copy/blobs/` }), getsBefore, 'served from the cache');
    assert.equal(await upstream.countRequests({ method: 'HEAD', pathIncludes: `/v2/team/copy/blobs/`, status: 200 }), headsBefore + 1, 'confirmed once, then linked');
  });
});
