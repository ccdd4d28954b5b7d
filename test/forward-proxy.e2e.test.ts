// ocirelay behind a real forward proxy (tinyproxy): upstream requests go through it when
// HTTP_PROXY / upstream.proxy say so (its log shows them), and NO_PROXY bypasses it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startForwardProxy, type ForwardProxy } from './fixtures/forward-proxy.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';
import { pullVerified, pushRandomImage, type RandomImage } from './helpers/random-image.ts';

describe('behind a forward proxy', () => {
  let upstream: RegistryFixture;
  let fwd: ForwardProxy;
  let hostPort: string;
  const relays: OcirelayProcess[] = [];

  before(async () => {
    [upstream, fwd] = await Promise.all([startRegistry(), startForwardProxy()]);
    hostPort = new URL(upstream.url).host;
  });
  after(async () => {
    for (const r of relays) await r.cleanup();
    await fwd?.stop();
    await upstream?.stop();
  });

  async function relay(config: Record<string, unknown>, env: Record<string, string>): Promise<OcirelayProcess> {
    const r = await startOcirelay({ registries: { 'r.test': { url: upstream.url } }, defaultRegistry: 'r.test', ...config }, { env });
    relays.push(r);
    return r;
  }

  async function image(tag: string): Promise<RandomImage> {
    return pushRandomImage(upstream.url, 'proxied/app', tag, [300 * 1024, 40 * 1024]);
  }

  test('HTTP_PROXY from the environment carries every upstream request; the proxy log shows them', async () => {
    const img = await image('env');
    const before = (await fwd.requestsTo(hostPort)).length;
    const r = await relay({}, { HTTP_PROXY: fwd.url, http_proxy: '', NO_PROXY: '', no_proxy: '' });
    await pullVerified(r.url, img);
    const lines = (await fwd.requestsTo(hostPort)).slice(before);
    assert.ok(lines.length >= 1, `tinyproxy relayed nothing to ${hostPort}:\n${await fwd.log()}`);
    assert.ok(lines.some((l) => l.includes('CONNECT')), lines.join('\n'));
  });

  test('upstream.proxy in the config wins over the environment', async () => {
    const img = await image('config');
    const before = (await fwd.requestsTo(hostPort)).length;
    // The environment names a proxy that does not exist: only the config's may be used.
    const r = await relay({ upstream: { proxy: fwd.url } }, { HTTP_PROXY: 'http://127.0.0.1:9', http_proxy: '', NO_PROXY: '', no_proxy: '' });
    await pullVerified(r.url, img);
    assert.ok((await fwd.requestsTo(hostPort)).length > before, await fwd.log());
  });

  test('NO_PROXY bypasses the proxy: the pull works and the proxy log shows nothing', async () => {
    const img = await image('direct');
    const before = (await fwd.requestsTo(hostPort)).length;
    const r = await relay({}, { HTTP_PROXY: fwd.url, http_proxy: '', NO_PROXY: `example.invalid,${new URL(upstream.url).hostname}`, no_proxy: '' });
    await pullVerified(r.url, img);
    assert.equal((await fwd.requestsTo(hostPort)).length, before, await fwd.log());
  });
});
