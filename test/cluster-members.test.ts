// ClusterMembers (src/cluster/members.ts) with an injected resolver and health check: members
// from DNS are followed as they change, a member is live only while it passes its health check
// (or until a read from it fails), and this instance always takes part in the hashing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ClusterMetrics } from '../src/cluster/cluster-metrics.ts';
import { ClusterMembers } from '../src/cluster/members.ts';
import { ownerOf } from '../src/cluster/rendezvous.ts';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { eventually } from './helpers/eventually.ts';

const logger = createLogger({ level: 'silent' });

test('DNS members: re-resolved as they change, live only while healthy, marked down on a failed read', async () => {
  let addrs = ['10.0.3.7', '10.0.3.8'];
  let lookupFails = false;
  const healthy = new Set(['http://10.0.3.8:5000', 'http://10.0.3.9:5000']);
  const metrics = new Metrics({ defaultMetrics: false });
  const m = new ClusterMembers({
    config: { dns: 'ocirelay.svc', port: 5000, self: 'http://10.0.3.7:5000' },
    logger,
    metrics: new ClusterMetrics(metrics),
    dnsIntervalMs: 20,
    healthIntervalMs: 20,
    lookup: async () => {
      if (lookupFails) throw new Error('EAI_AGAIN');
      return addrs;
    },
    check: async (member) => healthy.has(member),
  });
  try {
    await m.start();
    assert.deepEqual(m.known().sort(), ['http://10.0.3.7:5000', 'http://10.0.3.8:5000']);
    assert.deepEqual(m.live().sort(), ['http://10.0.3.7:5000', 'http://10.0.3.8:5000']);
    // A third instance appears in DNS and answers its health check.
    addrs = ['10.0.3.7', '10.0.3.8', '10.0.3.9'];
    await eventually(() => m.live().length === 3, 'the new member is live');
    const gauge = async () => (await metrics.registry.getSingleMetric('ocirelay_cluster_members')!.get()).values;
    assert.deepEqual((await gauge()).map((v) => [v.labels.state, v.value]).sort(), [['down', 0], ['live', 3]]);
    // A failed read marks a member down at once; its next good health check brings it back.
    m.markDown('http://10.0.3.9:5000', 'unreachable');
    assert.deepEqual(m.live().sort(), ['http://10.0.3.7:5000', 'http://10.0.3.8:5000']);
    await eventually(() => m.live().length === 3, 'back after a good health check');
    // Failing its health check: down, and its keys go to the others.
    healthy.delete('http://10.0.3.8:5000');
    await eventually(() => !m.live().includes('http://10.0.3.8:5000'), 'the unhealthy member is down');
    for (let i = 0; i < 50; i++) assert.notEqual(m.owner(`sha256:${i}`), 'http://10.0.3.8:5000');
    // Gone from DNS: forgotten.
    addrs = ['10.0.3.7', '10.0.3.9'];
    await eventually(() => m.known().length === 2, 'the member left DNS');
    // A failing lookup keeps the last list (a resolver hiccup is not every member leaving).
    lookupFails = true;
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(m.known().sort(), ['http://10.0.3.7:5000', 'http://10.0.3.9:5000']);
    lookupFails = false;
    addrs = ['10.0.3.9'];
    await eventually(() => m.known().length === 1, 'an answer without this instance');
    assert.deepEqual(m.live().sort(), ['http://10.0.3.7:5000', 'http://10.0.3.9:5000'], 'this instance always takes part');
  } finally {
    m.close();
  }
});

test('self takes part in the hashing even when the list lacks it: a key only goes to a member that weighs more', async () => {
  const members = ['http://a:5000', 'http://b:5000'];
  const m = new ClusterMembers({
    config: { members, port: 5000, self: 'http://wrong-self:5000' },
    logger,
    metrics: new ClusterMetrics(new Metrics({ defaultMetrics: false })),
    check: async () => true,
  });
  try {
    await m.start();
    for (let i = 0; i < 200; i++) {
      const key = `sha256:${i}`;
      assert.equal(m.owner(key), ownerOf(key, [...members, 'http://wrong-self:5000']));
    }
  } finally {
    m.close();
  }
});
