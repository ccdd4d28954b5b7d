// The geo-replication config (issue 10): names as given in the issue, secrets from files,
// defaults, and refusals that name the key.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { globMatcher } from '../src/config-replication.ts';
import { ConfigError, loadConfig } from '../src/config.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-config-repl-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

test("the issue's example config loads: peers, kinds, secrets from files, defaults", async () => {
  await writeFile(path.join(dir, 'peer-us-east'), 'us-east-secret-token\n');
  await writeFile(path.join(dir, 'dr-vault'), 'vault-password\n');
  await writeFile(path.join(dir, 'from-us-east'), 'incoming-token-1\n');
  const file = path.join(dir, 'geo.yaml');
  await writeFile(
    file,
    stringify({
      region: 'eu-west',
      peers: {
        'us-east': { url: 'https://ocirelay.us-east.example:5000/', tokenFile: 'peer-us-east', replicate: true, failover: true },
        'dr-vault': { url: 'https://registry.dr.example', kind: 'registry', prefix: 'mirror', username: 'replicator', passwordFile: 'dr-vault', failover: true },
      },
      replication: { accept: [{ name: 'us-east', tokenFile: 'from-us-east' }], include: ['**'], exclude: [], concurrency: 4 },
      failover: { mode: 'on-upstream-failure' },
    }),
  );
  const c = loadConfig({ file, env: {}, cwd: dir });
  assert.equal(c.region, 'eu-west');
  assert.deepEqual(c.peers.get('us-east'), {
    name: 'us-east',
    url: 'https://ocirelay.us-east.example:5000',
    kind: 'ocirelay',
    prefix: '',
    replicate: true,
    failover: true,
    token: 'us-east-secret-token',
  });
  assert.deepEqual(c.peers.get('dr-vault'), {
    name: 'dr-vault',
    url: 'https://registry.dr.example',
    kind: 'registry',
    prefix: 'mirror',
    replicate: true,
    failover: true,
    username: 'replicator',
    password: 'vault-password',
  });
  assert.deepEqual(c.replication.accept, [{ name: 'us-east', token: 'incoming-token-1' }]);
  assert.equal(c.failover.mode, 'on-upstream-failure');
});

test('zero config: region is the host name, no peers, pushes refused, failover on upstream failure', () => {
  const c = loadConfig({ env: {}, cwd: dir });
  assert.equal(c.region, os.hostname());
  assert.equal(c.peers.size, 0);
  assert.deepEqual(c.replication.accept, []);
  assert.deepEqual(c.replication.include, ['**']);
  assert.equal(c.replication.concurrency, 4);
  assert.equal(c.failover.mode, 'on-upstream-failure');
});

test('invalid replication config is refused naming the key', () => {
  const bad = (values: object, re: RegExp) => assert.throws(() => loadConfig({ values: values as never, env: {}, cwd: dir }), (e: unknown) => e instanceof ConfigError && re.test(e.message));
  bad({ peers: { b: { url: 'ftp://x' } } }, /peers\.b\.url/);
  bad({ peers: { b: { url: 'https://x', kind: 'registry', token: 'abcdefgh1' } } }, /peers\.b: token is for ocirelay peers/);
  bad({ peers: { b: { url: 'https://x', username: 'u' } } }, /peers\.b: username, password and prefix are for kind: registry/);
  bad({ peers: { b: { url: 'https://x', kind: 'registry', prefix: '../x' } } }, /peers\.b\.prefix/);
  bad({ peers: { b: { url: 'https://x', tokenFile: 'missing-file' } } }, /peers\.b\.tokenFile: cannot read: ENOENT/);
  bad({ peers: { B: { url: 'https://x' } } }, /peers\.B: peer names/);
  bad({ peers: { b: { url: 'https://x', color: 'red' } } }, /peers\.b/);
  bad({ replication: { accept: [{ name: 'x' }] } }, /replication\.accept\.0: needs token or tokenFile/);
  bad({ replication: { accept: [{ name: 'x', token: 'short' }] } }, /replication\.accept\.0\.token/);
  bad({ replication: { include: ['docker.io/(evil)'] } }, /replication\.include/);
  bad({ failover: { mode: 'sometimes' } }, /failover\.mode/);
});

test('include/exclude globs: * stays in a segment, ** crosses them', () => {
  const m = globMatcher(['docker.io/library/*', 'ghcr.io/myorg/**']);
  assert.ok(m('docker.io/library/alpine'));
  assert.ok(!m('docker.io/library/a/b'));
  assert.ok(m('ghcr.io/myorg/api'));
  assert.ok(m('ghcr.io/myorg/team/api'));
  assert.ok(!m('ghcr.io/other/api'));
  assert.ok(globMatcher(['**'])('quay.io/a/b/c'));
  assert.ok(!globMatcher([])('quay.io/a'));
  assert.ok(globMatcher(['**/secret-*'])('ghcr.io/myorg/secret-x'));
  assert.ok(!globMatcher(['**/secret-*'])('ghcr.io/myorg/public'));
});
