// ocirelay behind a real forward proxy (tinyproxy): upstream requests go through it when
// HTTP_PROXY / upstream.proxy say so (its log shows them), and NO_PROXY bypasses it.
import assert from 'node:assert/strict';
import { lookup } from 'node:dns/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import { after, before, describe, test } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { isPublicAddress } from '../src/upstream/address-policy.ts';
import { RegistryClient, UpstreamError } from '../src/upstream/registry-client.ts';
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

  test('through the proxy, a redirect target is resolved and checked before the request: a non-public name is refused', async () => {
    const name = os.hostname();
    const addresses = await lookup(name, { all: true });
    assert.ok(addresses.length > 0 && addresses.every((a) => !isPublicAddress(a.address)), `${name} must resolve to a non-public address for this test`);
    const registry = http.createServer((_req, res) => {
      res.writeHead(307, { location: `http://${name}:9/internal`, 'content-length': '0' });
      res.end();
    });
    await new Promise<void>((resolve) => registry.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(registry.address() as AddressInfo).port}`;
    const client = new RegistryClient(
      { name: 'r.test', url },
      { metrics: new Metrics({ defaultMetrics: false }), logger: createLogger({ level: 'silent' }), retry: { attempts: 0 }, proxy: { httpProxy: fwd.url } },
    );
    try {
      await assert.rejects(
        client.request({ method: 'GET', path: '/v2/library/app/blobs/sha256:abc', repository: 'library/app' }),
        (e: unknown) => e instanceof UpstreamError && e.kind === 'target_refused' && /resolves to non-public address/.test(e.message),
      );
      assert.ok((await fwd.requestsTo(new URL(url).host)).length >= 1, 'the registry itself was reached through the proxy');
      assert.equal((await fwd.requestsTo(`${name}:9`)).length, 0, 'nothing was sent towards the refused target');
    } finally {
      await client.close();
      registry.closeAllConnections();
      await new Promise<void>((resolve) => registry.close(() => resolve()));
    }
  });
});
