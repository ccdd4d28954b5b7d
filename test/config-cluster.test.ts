// The cluster config (issue 11): names as given, the token from its file, defaults, and
// refusals that name the key.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { hostAddress } from '../src/config-cluster.ts';
import { ConfigError, loadConfig } from '../src/config.ts';

let dir: string;
before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-config-cluster-'));
  await writeFile(path.join(dir, 'cluster'), 'a-shared-cluster-token-0123\n');
  await writeFile(path.join(dir, 'short'), 'short\n');
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const load = async (values: Record<string, unknown>) => {
  const file = path.join(dir, `c-${Math.random().toString(36).slice(2)}.yaml`);
  await writeFile(file, stringify(values));
  return loadConfig({ file, env: {}, cwd: dir });
};

test("the issue's example (dns) loads: port, self, the token from its file", async () => {
  const c = await load({
    listen: '0.0.0.0:5000',
    cluster: { dns: 'ocirelay-headless.cache.svc.cluster.local', port: 5000, self: 'http://10.0.3.7:5000', tokenFile: 'cluster' },
  });
  assert.deepEqual(c.cluster, { dns: 'ocirelay-headless.cache.svc.cluster.local', port: 5000, self: 'http://10.0.3.7:5000', token: 'a-shared-cluster-token-0123' });
  assert.ok(Object.isFrozen(c.cluster));
});

test('members: origins (trailing slash dropped); self defaults to the host address and the listen port', async () => {
  const c = await load({ listen: '0.0.0.0:5001', cluster: { members: ['http://a:5001/', 'http://b:5001'], tokenFile: 'cluster' } });
  assert.deepEqual(c.cluster?.members, ['http://a:5001', 'http://b:5001']);
  assert.equal(c.cluster?.self, `http://${hostAddress()}:5001`);
  const d = await load({ listen: '0.0.0.0:5001', cluster: { dns: 'ocirelay.svc', tokenFile: 'cluster' } });
  assert.equal(d.cluster?.port, 5001, 'with dns, the port defaults to the listen port');
});

test('no cluster: none', async () => {
  assert.equal((await load({})).cluster, undefined);
});

test('refusals name the key', async () => {
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ dns: 'x.svc' }, /cluster\.tokenFile/],
    [{ tokenFile: 'cluster' }, /set either dns or members/],
    [{ dns: 'x.svc', members: ['http://a:5000'], tokenFile: 'cluster' }, /set either dns or members/],
    [{ members: ['http://a:5000'], port: 5000, tokenFile: 'cluster' }, /cluster\.port: only with cluster\.dns/],
    [{ members: ['ftp://a:5000'], tokenFile: 'cluster' }, /cluster\.members\.0/],
    [{ members: ['http://a:5000/x'], tokenFile: 'cluster' }, /cluster\.members: .* has a path/],
    [{ members: ['http://a:5000', 'http://a:5000/'], tokenFile: 'cluster' }, /listed twice/],
    [{ dns: 'not a name', tokenFile: 'cluster' }, /cluster\.dns/],
    [{ dns: 'x.svc', tokenFile: 'missing' }, /cluster\.tokenFile: cannot read: ENOENT/],
    [{ dns: 'x.svc', tokenFile: 'short' }, /at least 16 characters/],
    [{ dns: 'x.svc', tokenFile: 'cluster', token: 'inline-token-0123456789' }, /cluster: Unrecognized key|token/],
  ];
  for (const [cluster, re] of cases) {
    await assert.rejects(load({ cluster }), (e: unknown) => e instanceof ConfigError && re.test(e.message), JSON.stringify(cluster));
  }
});
