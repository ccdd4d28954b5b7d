// ocirelay against authenticated upstreams (a real Distribution registry with htpasswd Basic
// auth, and one with token auth and our own token server), and the rule that content fetched
// with credentials is served under a repository only when that repository references it.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { download, pushBlob, randomBlob } from './helpers/http-client.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-auth-'));
});
after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function assertNoSecrets(proxy: OcirelayProcess, secret: string): Promise<void> {
  await proxy.flushLogs();
  const all = JSON.stringify(proxy.logs()) + proxy.stderr();
  assert.ok(!all.includes(secret), 'password never logged');
  assert.ok(!all.includes(Buffer.from(`tester:${secret}`).toString('base64')), 'Basic credentials never logged');
  assert.ok(!/Bearer [A-Za-z0-9_-]{20,}/.test(all), 'no bearer token logged');
}

/** The token server is another loopback origin: it gets our credentials only as a trusted host. */
function trustedHosts(upstream: RegistryFixture): string[] {
  return upstream.tokenServer === undefined ? [] : [new URL(upstream.tokenServer.realm).host];
}

for (const auth of ['basic', 'token'] as const) {
  describe(`${auth}-auth upstream`, () => {
    let upstream: RegistryFixture;
    let images: PushedImages;
    let proxy: OcirelayProcess;
    let secretBlob: string;

    before(async () => {
      upstream = await startRegistry({ auth });
      images = await pushImages(upstream, await buildImages({ bigLayerBytes: 4 * 1024 * 1024 }));
      const authz = await upstream.authorization('repository:team/secret:pull,push');
      secretBlob = await pushBlob(upstream.url, 'team/secret', randomBlob(256 * 1024), authz);
      proxy = await startOcirelay({
        registries: { 'docker.io': { url: upstream.url, username: upstream.user, password: upstream.password, trustedHosts: trustedHosts(upstream) } },
      });
    });
    after(async () => {
      await proxy?.cleanup();
      await upstream?.stop();
    });

    test('skopeo pulls an image through ocirelay with the configured credentials', async () => {
      const out = path.join(dir, `${auth}-single`);
      const scope = 'repository:library/single:pull';
      const tokensBefore = upstream.tokenServer?.requests.filter((r) => r.scope === scope).length ?? 0;
      const challengesBefore = await upstream.countRequests({ status: 401 });
      await skopeoCopy(`docker://${proxy.host}/library/single:1.0`, `dir:${out}`, { srcTlsVerify: false, timeoutMs: 120_000 });
      const m = await fetch(`${proxy.url}/v2/library/single/manifests/1.0`, { method: 'HEAD', headers: { accept: images.single.mediaType } });
      assert.equal(m.headers.get('docker-content-digest'), images.single.manifestDigest);
      if (auth === 'token') {
        const scoped = upstream.tokenServer!.requests.filter((r) => r.scope === scope).slice(tokensBefore);
        assert.equal(scoped.length, 1, 'one token for the whole pull: cached per scope');
        assert.equal(scoped[0]!.user, upstream.user, 'token requested with our Basic credentials');
      }
      // Credentials are sent pre-emptively after the first challenge: one 401 for the whole pull.
      assert.equal((await upstream.countRequests({ status: 401 })) - challengesBefore, 1);
      await assertNoSecrets(proxy, upstream.password);
    });

    test('a blob is never served under a repository that does not reference it', async () => {
      const own = await download(`${proxy.url}/v2/team/secret/blobs/${secretBlob}`, { keep: true });
      assert.equal(own.status, 200);
      assert.equal(own.sha256, secretBlob);
      // Now cached. Other names must not read it: the upstream says they do not have it.
      for (const other of ['library/single', 'team/other', 'nobody/here']) {
        const r = await download(`${proxy.url}/v2/${other}/blobs/${secretBlob}`, { keep: true });
        assert.equal(r.status, 404, other);
        assert.equal((JSON.parse(r.body!.toString()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'BLOB_UNKNOWN');
        const head = await fetch(`${proxy.url}/v2/${other}/blobs/${secretBlob}`, { method: 'HEAD' });
        assert.equal(head.status, 404);
      }
      // Once another repository does hold it upstream, it is served from cache after a HEAD.
      // (A repository not asked before: the 404s above are remembered for negativeTTL.)
      const authz = await upstream.authorization('repository:team/shared:pull,push');
      await pushBlob(upstream.url, 'team/shared', own.body!, authz);
      const getsBefore = await upstream.countRequests({ method: 'GET', pathIncludes: secretBlob });
      const shared = await download(`${proxy.url}/v2/team/shared/blobs/${secretBlob}`);
      assert.equal(shared.status, 200);
      assert.equal(shared.sha256, secretBlob);
      assert.equal(await upstream.countRequests({ method: 'GET', pathIncludes: secretBlob }), getsBefore, 'served from cache');
      assert.ok((await upstream.countRequests({ method: 'HEAD', pathIncludes: `team/shared/blobs/${secretBlob}` })) >= 1, 'after the upstream confirmed it');
    });

    test('wrong credentials give an OCI UNAUTHORIZED error, not an outage', async () => {
      const bad = await startOcirelay({
        registries: { 'docker.io': { url: upstream.url, username: upstream.user, password: 'wrong-password', trustedHosts: trustedHosts(upstream) } },
      });
      try {
        const r = await fetch(`${bad.url}/v2/library/single/manifests/1.0`);
        assert.equal(r.status, 401);
        assert.equal(((await r.json()) as { errors: Array<{ code: string }> }).errors[0]?.code, 'UNAUTHORIZED');
        await assertNoSecrets(bad, 'wrong-password');
      } finally {
        await bad.cleanup();
      }
    });
  });
}
