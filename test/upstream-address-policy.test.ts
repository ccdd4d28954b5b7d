// Which addresses count as public, which hosts are trusted, which URLs bypass the forward
// proxy, and how config.ts turns the environment and the config file into proxy settings.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { describe, it } from 'node:test';
import { loadConfig } from '../src/config.ts';
import { isNonPublicHostname, isPublicAddress, parseTrustedEntry, TrustedHosts } from '../src/upstream/address-policy.ts';
import { bypassesProxy, proxyFor } from '../src/upstream/proxy-route.ts';

describe('public addresses', () => {
  it('classifies loopback, private, link-local, CGNAT, unspecified, multicast and reserved as not public', () => {
    for (const ip of [
      '127.0.0.1', '127.255.1.2', '10.0.0.1', '172.16.0.1', '172.31.255.255', '192.168.1.1', '169.254.169.254',
      '100.64.0.1', '100.127.255.254', '0.0.0.0', '224.0.0.1', '239.1.2.3', '240.0.0.1', '255.255.255.255',
      '::', '::1', 'fe80::1', 'fe80::1%eth0', 'fc00::1', 'fd12:3456::1', 'ff02::1', '2001:db8::1',
    ]) {
      assert.equal(isPublicAddress(ip), false, ip);
    }
  });

  it('classifies the IPv4-mapped, NAT64 and 6to4 forms of non-public IPv4 addresses as not public', () => {
    for (const ip of ['::ffff:127.0.0.1', '::ffff:7f00:1', '::FFFF:10.1.2.3', '::ffff:a9fe:a9fe', '[::ffff:192.168.0.1]', '64:ff9b::7f00:1', '2002:c0a8:101::1']) {
      assert.equal(isPublicAddress(ip), false, ip);
    }
  });

  it('classifies public addresses as public, also mapped', () => {
    for (const ip of ['8.8.8.8', '1.1.1.1', '172.32.0.1', '100.128.0.1', '::ffff:8.8.8.8', '2606:4700:4700::1111', '2002:808:808::1']) {
      assert.equal(isPublicAddress(ip), true, ip);
    }
  });

  it('does not take names or garbage for addresses', () => {
    for (const v of ['', 'example.com', '1.2.3', '::gg', '1:2:3:4:5:6:7:8:9']) assert.equal(isPublicAddress(v), false, v);
  });

  it('sees decimal, hex, octal and short IPv4 spellings and localhost names in URL hosts as not public', () => {
    for (const host of ['2130706433', '0x7f000001', '0x7f.1', '017700000001', '127.1', '0', 'localhost', 'LOCALHOST.', 'api.localhost', '[::1]', '::ffff:127.0.0.1', '[::ffff:7f00:1]', '3232235777']) {
      assert.equal(isNonPublicHostname(host), true, host);
    }
    for (const host of ['example.com', '8.8.8.8', '134744072', 'registry-1.docker.io']) assert.equal(isNonPublicHostname(host), false, host);
  });
});

describe('trustedHosts', () => {
  it("trusts the registry's own origin, host:port entries on that port only, and bare hosts on every port", () => {
    const t = new TrustedHosts(new URL('http://127.0.0.1:5001'), ['127.0.0.1:6001', 'CDN.example.', '[::1]:7001']);
    assert.equal(t.has(new URL('http://127.0.0.1:5001/v2/')), true);
    assert.equal(t.has(new URL('http://127.0.0.1:6001/x')), true);
    assert.equal(t.has(new URL('http://127.0.0.1:6002/x')), false);
    assert.equal(t.has(new URL('https://cdn.example/x')), true);
    assert.equal(t.has(new URL('https://cdn.example:8443/x')), true);
    assert.equal(t.has(new URL('http://[::1]:7001/x')), true);
    assert.equal(t.hasHostPort('[::1]', '7001', 'http:'), true);
    assert.equal(t.hasHostPort('cdn.example', '', 'https:'), true);
    assert.equal(t.hasHostPort('127.0.0.1', '', 'http:'), false, 'port 80 is not 5001');
    const https = new TrustedHosts(new URL('https://registry.example'), []);
    assert.equal(https.hasHostPort('registry.example', '', 'https:'), true, 'default port 443');
  });

  it('refuses entries that are not host or host:port', () => {
    assert.deepEqual(parseTrustedEntry('10.0.0.7'), { host: '10.0.0.7', port: undefined });
    assert.deepEqual(parseTrustedEntry('::1'), { host: '::1', port: undefined });
    for (const bad of ['http://x/', 'a/b', 'user@host', 'host:port']) assert.throws(() => parseTrustedEntry(bad), TypeError, bad);
  });
});

describe('forward proxy routing', () => {
  const settings = { httpProxy: 'http://proxy:3128', httpsProxy: 'http://sproxy:3128', noProxy: ['.internal.example', 'direct.example:8443', '10.0.0.7', '[::1]'] };

  it('picks the proxy by scheme and honours NO_PROXY domains, ports and literals', () => {
    assert.equal(proxyFor(new URL('https://registry-1.docker.io/v2/'), settings), 'http://sproxy:3128');
    assert.equal(proxyFor(new URL('http://mirror.example/v2/'), settings), 'http://proxy:3128');
    assert.equal(proxyFor(new URL('https://a.internal.example/v2/'), settings), undefined);
    assert.equal(proxyFor(new URL('https://internal.example/v2/'), settings), undefined);
    assert.equal(proxyFor(new URL('https://notinternal.example/v2/'), settings), 'http://sproxy:3128');
    assert.equal(proxyFor(new URL('https://direct.example:8443/v2/'), settings), undefined);
    assert.equal(proxyFor(new URL('https://direct.example/v2/'), settings), 'http://sproxy:3128');
    assert.equal(proxyFor(new URL('http://10.0.0.7:5000/v2/'), settings), undefined);
    assert.equal(proxyFor(new URL('http://[::1]:5000/v2/'), settings), undefined);
    assert.equal(proxyFor(new URL('https://x.example/'), undefined), undefined);
    assert.equal(bypassesProxy(new URL('https://anything.example/'), ['*']), true);
  });

  it('reads HTTPS_PROXY, HTTP_PROXY and NO_PROXY (lower case first) in config.ts; upstream.proxy wins', () => {
    const env = { HTTPS_PROXY: 'http://upper:1', https_proxy: 'http://lower:2', HTTP_PROXY: 'http://plain:3', NO_PROXY: 'a.example, b.example' };
    const fromEnv = loadConfig({ env, values: {} }).upstream.proxy;
    assert.deepEqual(fromEnv, { httpsProxy: 'http://lower:2', httpProxy: 'http://plain:3', noProxy: ['a.example', 'b.example'] });
    const fromConfig = loadConfig({ env, values: { upstream: { proxy: 'http://cfg:3128', noProxy: ['c.example'] } } }).upstream.proxy;
    assert.deepEqual(fromConfig, { httpsProxy: 'http://cfg:3128', httpProxy: 'http://cfg:3128', noProxy: ['c.example'] });
    assert.deepEqual(loadConfig({ env: {}, values: {} }).upstream.proxy, { noProxy: [] });
    assert.throws(() => loadConfig({ env: { HTTPS_PROXY: 'socks5://x:1' }, values: {} }), /HTTPS_PROXY/);
  });

  it('has minRate defaults and takes sizes and durations', () => {
    const d = loadConfig({ env: {}, values: {} }).upstream;
    assert.equal(d.minRateBytesPerSec, 16 * 1024);
    assert.equal(d.minRateWindowMs, 30_000);
    const c = loadConfig({ env: {}, values: { upstream: { minRate: '1MiB', minRateWindow: '10s' } } }).upstream;
    assert.equal(c.minRateBytesPerSec, 2 ** 20);
    assert.equal(c.minRateWindowMs, 10_000);
  });

  it('builds a caFile into the system roots plus NODE_EXTRA_CA_CERTS, reads mTLS files, checks trustedHosts', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-tls-cfg-'));
    try {
      await writeFile(path.join(dir, 'ca.pem'), 'CA-FILE');
      await writeFile(path.join(dir, 'extra.pem'), 'EXTRA');
      await writeFile(path.join(dir, 'c.pem'), 'CERT');
      await writeFile(path.join(dir, 'k.pem'), 'KEY');
      const cfg = loadConfig({
        cwd: dir,
        env: { NODE_EXTRA_CA_CERTS: path.join(dir, 'extra.pem') },
        values: { registries: { 'r.example': { url: 'https://r.example', caFile: 'ca.pem', certFile: 'c.pem', keyFile: 'k.pem', trustedHosts: ['cdn.r.example', '127.0.0.1:5001'] } } },
      });
      const r = cfg.registries.get('r.example');
      assert.deepEqual(r?.tls?.ca, [...tls.rootCertificates, 'EXTRA', 'CA-FILE']);
      assert.equal(r?.tls?.cert, 'CERT');
      assert.equal(r?.tls?.key, 'KEY');
      assert.deepEqual(r?.trustedHosts, ['cdn.r.example', '127.0.0.1:5001']);
      assert.match(cfg.version, /^\d+\.\d+\.\d+/);
      assert.throws(() => loadConfig({ cwd: dir, env: {}, values: { registries: { 'r.example': { url: 'https://r.example', certFile: 'c.pem' } } } }), /certFile and keyFile/);
      assert.throws(() => loadConfig({ env: {}, values: { registries: { 'r.example': { url: 'https://r.example', trustedHosts: ['http://x/'] } } } }), /trustedHosts/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
