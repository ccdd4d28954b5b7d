// An HTTPS upstream: a real Distribution registry serving TLS with a certificate of a private
// CA (generated here with openssl), trusted by ocirelay through NODE_EXTRA_CA_CERTS, the way a
// platform team points it at an internal registry. skopeo pulls through ocirelay; an ocirelay
// that does not trust the CA refuses the upstream and says why.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { RegistryClient, UpstreamError } from '../src/upstream/registry-client.ts';
import { startForwardProxy } from './fixtures/forward-proxy.ts';
import { buildImages, pushImages, type PushedImages } from './fixtures/images.ts';
import { runCommand } from './fixtures/processes.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';
import { skopeoCopy } from './fixtures/skopeo.ts';
import { startOcirelay, type OcirelayProcess } from './helpers/ocirelay-process.ts';

let dir: string;
let plain: RegistryFixture;
let secure: RegistryFixture;
let images: PushedImages;
let caFile: string;
let caKey: string;
let serverKey: string;
let serverCert: string;
const started: OcirelayProcess[] = [];

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-tls-'));
  // A CA, and a server certificate it signed for 127.0.0.1.
  caFile = path.join(dir, 'ca.pem');
  caKey = path.join(dir, 'ca.key');
  const key = (serverKey = path.join(dir, 'server.key'));
  const csr = path.join(dir, 'server.csr');
  const cert = (serverCert = path.join(dir, 'server.pem'));
  const ext = path.join(dir, 'san.ext');
  await runCommand('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=ocirelay test CA', '-keyout', caKey, '-out', caFile], { timeoutMs: 20_000 });
  await runCommand('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', key, '-out', csr], { timeoutMs: 20_000 });
  await runCommand('sh', ['-c', `printf 'subjectAltName=IP:127.0.0.1\\n' > '${ext}'`], { timeoutMs: 5_000 });
  await runCommand('openssl', ['x509', '-req', '-in', csr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-days', '1', '-extfile', ext, '-out', cert], { timeoutMs: 20_000 });

  // Seeded over plain HTTP, then served over TLS by a second registry on the same storage.
  plain = await startRegistry({ auth: 'none' });
  images = await pushImages(plain, await buildImages({ bigLayerBytes: 8 * 1024 * 1024 }));
  secure = await startRegistry({ auth: 'none', tls: { certFile: cert, keyFile: key, caFile }, storageDir: path.join(plain.dir, 'storage') });
  assert.ok(secure.url.startsWith('https://'));
});

after(async () => {
  for (const p of started) await p.cleanup();
  await secure?.stop();
  await plain?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('an HTTPS upstream with a private CA', () => {
  it('is pulled through when NODE_EXTRA_CA_CERTS names the CA', async () => {
    const proxy = await startOcirelay({ registries: { 'internal.test': { url: secure.url } } }, { env: { NODE_EXTRA_CA_CERTS: caFile } });
    started.push(proxy);
    const out = path.join(dir, 'pulled');
    await skopeoCopy(`docker://${proxy.host}/internal.test/library/big:1.0`, `dir:${out}`, { srcTlsVerify: false, timeoutMs: 120_000 });
    const manifest = await readFile(path.join(out, 'manifest.json'));
    assert.equal(`sha256:${createHash('sha256').update(manifest).digest('hex')}`, images.big.manifestDigest);
    const layer = images.big.layers[0]!;
    const layerBytes = await readFile(path.join(out, layer.digest.slice('sha256:'.length)));
    assert.equal(`sha256:${createHash('sha256').update(layerBytes).digest('hex')}`, layer.digest);
    // The bytes came over TLS from the second registry, not from the plain one.
    assert.equal(await secure.countRequests({ method: 'GET', pathIncludes: layer.digest }), 1);
    assert.equal(await plain.countRequests({ method: 'GET', pathIncludes: layer.digest }), 0);
    assert.equal(await proxy.metric('ocirelay_fills_total', { result: 'committed' }) >= 2, true);
  });

  it('is refused, with the certificate problem in the log, when the CA is not trusted', async () => {
    const proxy = await startOcirelay({ registries: { 'internal.test': { url: secure.url } }, upstream: { retries: 0 } });
    started.push(proxy);
    const res = await fetch(`${proxy.url}/v2/internal.test/library/single/manifests/1.0`);
    assert.equal(res.status, 503);
    const body = (await res.json()) as { errors: Array<{ code: string }> };
    assert.ok(body.errors.length > 0);
    const line = await proxy.waitForLog((l) => l.msg === 'upstream request failed' && l.registry === 'internal.test');
    assert.equal(line.err, 'unreachable');
    // The operator reads why: the certificate's issuer is not trusted.
    assert.match(String(line.reason), /UNABLE_TO_VERIFY_LEAF_SIGNATURE|unable to verify the first certificate/);
  });
});

describe('per-registry TLS settings', () => {
  it('trusts a registry caFile in addition to the system roots (no NODE_EXTRA_CA_CERTS)', async () => {
    const proxy = await startOcirelay({ registries: { 'internal.test': { url: secure.url, caFile } }, upstream: { retries: 0 } });
    started.push(proxy);
    const res = await fetch(`${proxy.url}/v2/internal.test/library/single/manifests/1.0`, { headers: { accept: images.single.mediaType } });
    assert.equal(res.status, 200);
    const body = Buffer.from(await res.arrayBuffer());
    assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, images.single.manifestDigest);
  });

  it('reaches an https registry through HTTPS_PROXY (a CONNECT tunnel), verifying it with the caFile', async () => {
    const fwd = await startForwardProxy();
    try {
      const proxy = await startOcirelay(
        { registries: { 'internal.test': { url: secure.url, caFile } }, upstream: { retries: 0 } },
        { env: { HTTPS_PROXY: fwd.url, https_proxy: '', NO_PROXY: '', no_proxy: '' } },
      );
      started.push(proxy);
      const res = await fetch(`${proxy.url}/v2/internal.test/library/single/manifests/1.0`, { headers: { accept: images.single.mediaType } });
      assert.equal(res.status, 200);
      const body = Buffer.from(await res.arrayBuffer());
      assert.equal(`sha256:${createHash('sha256').update(body).digest('hex')}`, images.single.manifestDigest);
      const tunnels = await fwd.requestsTo(new URL(secure.url).host);
      assert.ok(tunnels.some((l) => l.includes('CONNECT')), await fwd.log());
    } finally {
      await fwd.stop();
    }
  });

  it('from an https registry, refuses a redirect to plain http on another host (before connecting)', async () => {
    const server = https.createServer({ key: await readFile(serverKey), cert: await readFile(serverCert) }, (_req, res) => {
      res.writeHead(307, { location: 'http://8.8.8.8/blob', 'content-length': '0' });
      res.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const ca = await readFile(caFile, 'utf8');
    const client = new RegistryClient(
      { name: 'https.test', url, tls: { ca: [...tls.rootCertificates, ca] } },
      { metrics: new Metrics({ defaultMetrics: false }), logger: createLogger({ level: 'silent' }), retry: { attempts: 0 } },
    );
    try {
      await assert.rejects(
        client.request({ method: 'GET', path: '/v2/library/app/blobs/sha256:abc', repository: 'library/app' }),
        (e: unknown) => e instanceof UpstreamError && e.kind === 'target_refused' && /only over https/.test(e.message),
      );
    } finally {
      await client.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('presents a client certificate (mTLS) to a registry that requires one', async () => {
    const clientKey = path.join(dir, 'client.key');
    const clientCsr = path.join(dir, 'client.csr');
    const clientCert = path.join(dir, 'client.pem');
    await runCommand('openssl', ['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-subj', '/CN=ocirelay client', '-keyout', clientKey, '-out', clientCsr], { timeoutMs: 20_000 });
    await runCommand('openssl', ['x509', '-req', '-in', clientCsr, '-CA', caFile, '-CAkey', caKey, '-CAcreateserial', '-days', '1', '-out', clientCert], { timeoutMs: 20_000 });
    const ca = await readFile(caFile, 'utf8');
    const server = https.createServer(
      { key: await readFile(serverKey), cert: await readFile(serverCert), ca, requestCert: true, rejectUnauthorized: true },
      (req, res) => {
        const peer = (req.socket as tls.TLSSocket).getPeerCertificate();
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(`hello ${peer.subject?.CN ?? '?'}`);
      },
    );
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const opts = { metrics: new Metrics({ defaultMetrics: false }), logger: createLogger({ level: 'silent' }), retry: { attempts: 0 } };
    const tlsCa = [...tls.rootCertificates, ca];
    const withCert = new RegistryClient({ name: 'mtls.test', url, tls: { ca: tlsCa, cert: await readFile(clientCert, 'utf8'), key: await readFile(clientKey, 'utf8') } }, opts);
    const without = new RegistryClient({ name: 'mtls.test', url, tls: { ca: tlsCa } }, opts);
    try {
      const res = await withCert.request({ method: 'GET', path: '/v2/', repository: '' });
      assert.equal(res.status, 200);
      let text = '';
      for await (const chunk of res.body as AsyncIterable<Buffer>) text += chunk.toString();
      assert.equal(text, 'hello ocirelay client');
      await assert.rejects(without.request({ method: 'GET', path: '/v2/', repository: '' }), (e: unknown) => e instanceof UpstreamError && e.kind === 'unreachable');
    } finally {
      await withCert.close();
      await without.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
