// Real clients pulling through ocirelay: containerd's ctr with a hosts.toml mirror (the ?ns=
// form), skopeo with a registries.conf path-prefix mirror, and skopeo addressing it directly
// (the bare form). The upstream is a real Distribution registry serving as docker.io and ghcr.io.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startContainerd, writeHostsToml, type ContainerdFixture } from './fixtures/containerd.ts';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy, writeRegistriesConf } from './fixtures/skopeo.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

let upstream: RegistryFixture;
let images: PushedImages;
let proxy: OcirelayProcess;
let containerd: ContainerdFixture;
let dir: string;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-clients-'));
  upstream = await startRegistry({ auth: 'none' });
  images = await pushImages(upstream, await buildImages({ bigLayerBytes: 8 * 1024 * 1024 }));
  proxy = await startOcirelay({
    registries: { 'docker.io': { url: upstream.url }, 'ghcr.io': { url: upstream.url } },
  });
  containerd = await startContainerd();
});

after(async () => {
  await containerd?.stop();
  await proxy?.cleanup();
  await upstream?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

async function verifyDirCopy(out: string, manifestDigest: string): Promise<void> {
  const manifest = await readFile(path.join(out, 'manifest.json'));
  assert.equal(`sha256:${createHash('sha256').update(manifest).digest('hex')}`, manifestDigest);
  for (const f of await readdir(out)) {
    if (!/^[a-f0-9]{64}$/.test(f)) continue;
    const data = await readFile(path.join(out, f));
    assert.equal(createHash('sha256').update(data).digest('hex'), f, `blob ${f} intact`);
  }
}

describe('containerd (hosts.toml mirror, ?ns=)', () => {
  test('pulls and unpacks a single-arch OCI image; a file reads back from it', async () => {
    const hosts = path.join(dir, 'certs.d');
    await writeHostsToml(hosts, 'docker.io', proxy.url);
    const ref = 'docker.io/library/single:1.0';
    await containerd.pull(ref, hosts);
    const check = await containerd.check(ref);
    assert.ok(check.complete && check.unpacked, JSON.stringify(check));
    assert.equal(check.digest, images.single.manifestDigest);
    assert.equal((await containerd.readFile(ref, images.single.file.path)).trim(), images.single.file.content.trim());
    // Every request carried ns=docker.io and was served by the mirror.
    await proxy.flushLogs();
    const lines = proxy.logs().filter((l) => l.msg === 'request' && typeof l.path === 'string' && (l.path as string).includes('/single/'));
    assert.ok(lines.length >= 3);
    assert.ok(lines.every((l) => l.ns === 'docker.io' && l.status === 200));
  });

  test('pulls the platform manifest of a multi-arch index and a Docker v2s2 image', async () => {
    const hosts = path.join(dir, 'certs.d');
    await writeHostsToml(hosts, 'docker.io', proxy.url);
    await containerd.pull('docker.io/library/multi:1.0', hosts);
    const amd = images.multi.platforms.find((p) => p.platform.architecture === 'amd64')!;
    assert.equal((await containerd.readFile('docker.io/library/multi:1.0', amd.file.path)).trim(), amd.file.content.trim());
    await containerd.pull('docker.io/library/v2s2:1.0', hosts);
    assert.equal((await containerd.readFile('docker.io/library/v2s2:1.0', images.v2s2.file.path)).trim(), images.v2s2.file.content.trim());
  });

  test('another registry through the same instance (ns=ghcr.io)', async () => {
    const hosts = path.join(dir, 'certs-ghcr');
    await writeHostsToml(hosts, 'ghcr.io', proxy.url);
    const ref = 'ghcr.io/library/single:1.0';
    await containerd.pull(ref, hosts);
    assert.equal((await containerd.readFile(ref, images.single.file.path)).trim(), images.single.file.content.trim());
    await proxy.flushLogs();
    assert.ok(proxy.logs().some((l) => l.ns === 'ghcr.io' && l.upstream === 'ghcr.io' && l.status === 200));
  });
});

describe('skopeo', () => {
  test('through a registries.conf path-prefix mirror (/v2/docker.io/...)', async () => {
    const conf = path.join(dir, 'registries.conf');
    await writeRegistriesConf(conf, [{ prefix: 'docker.io', location: `${proxy.host}/docker.io`, insecure: true }]);
    const out = path.join(dir, 'skopeo-mirror');
    await skopeoCopy('docker://docker.io/library/v2s2:1.0', `dir:${out}`, { registriesConf: conf, timeoutMs: 120_000 });
    await verifyDirCopy(out, images.v2s2.manifestDigest);
    await proxy.flushLogs();
    assert.ok(proxy.logs().some((l) => typeof l.path === 'string' && (l.path as string).startsWith('/v2/docker.io/library/v2s2/') && l.status === 200));
  });

  test('addressing the proxy directly (bare paths to the default registry)', async () => {
    const out = path.join(dir, 'skopeo-direct');
    await skopeoCopy(`docker://${proxy.host}/library/big:1.0`, `dir:${out}`, { srcTlsVerify: false, timeoutMs: 120_000 });
    await verifyDirCopy(out, images.big.manifestDigest);
  });
});
