// RegistryClient against the real CNCF Distribution registry (docker-registry 2.8) in its
// Basic (htpasswd) and Bearer-token variants. Nothing is pushed: a 404 NAME_UNKNOWN can only
// come after the registry accepted our credentials (it answers 401 before that).
import assert from 'node:assert/strict';
import { text } from 'node:stream/consumers';
import { after, before, describe, it } from 'node:test';
import { createLogger } from '../src/logger.ts';
import { Metrics } from '../src/metrics.ts';
import { RegistryClient, UpstreamError } from '../src/upstream/registry-client.ts';
import { startRegistry, type RegistryFixture } from './fixtures/registry.ts';

const REPO = 'library/alpine';
const TAGS = { method: 'GET', path: `/v2/${REPO}/tags/list`, repository: REPO } as const;

function clientFor(reg: RegistryFixture, password = reg.password): { client: RegistryClient; logs: string[] } {
  const logs: string[] = [];
  const logger = createLogger({ level: 'debug', destination: { write: (l: string) => void logs.push(l) } });
  const client = new RegistryClient(
    {
      name: 'real.test',
      url: reg.url,
      username: reg.user,
      password,
      // The token server is another loopback origin: it gets our credentials only as a trusted host.
      ...(reg.tokenServer !== undefined ? { trustedHosts: [new URL(reg.tokenServer.realm).host] } : {}),
    },
    { metrics: new Metrics({ defaultMetrics: false }), logger, retry: { attempts: 0 } },
  );
  return { client, logs };
}

/** The registry writes its access log a moment after answering. */
async function settledCount(reg: RegistryFixture, filter: { method?: string; pathIncludes?: string; status?: number }, want: number): Promise<number> {
  let n = 0;
  for (let i = 0; i < 40; i++) {
    n = await reg.countRequests(filter);
    if (n >= want) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  return n;
}

async function assertNameUnknown(client: RegistryClient): Promise<void> {
  const res = await client.request(TAGS);
  const body = await text(res.body);
  assert.equal(res.status, 404, body);
  assert.match(body, /NAME_UNKNOWN/);
}

describe('against a real Distribution registry', { concurrency: true }, () => {
  let basic: RegistryFixture;
  let token: RegistryFixture;
  before(async () => {
    [basic, token] = await Promise.all([startRegistry({ auth: 'basic' }), startRegistry({ auth: 'token' })]);
  });
  after(async () => {
    await Promise.all([basic?.stop(), token?.stop()]);
  });

  it('authenticates with Basic (htpasswd), then sends credentials up front', async () => {
    const { client, logs } = clientFor(basic);
    await assertNameUnknown(client);
    await assertNameUnknown(client);
    await client.close();
    const path = `/v2/${REPO}/tags/list`;
    assert.equal(await settledCount(basic, { pathIncludes: path, status: 404 }, 2), 2);
    assert.equal(await basic.countRequests({ pathIncludes: path, status: 401 }), 1, 'only the first request was challenged');
    assert.ok(!logs.join('').includes(basic.password));

    const wrong = clientFor(basic, 'not-the-password').client;
    const res = await wrong.request(TAGS);
    res.body.resume();
    assert.equal(res.status, 401);
    await wrong.close();
  });

  it('authenticates with a Bearer token (one token fetch, warm path one round trip)', async () => {
    const { client, logs } = clientFor(token);
    await assertNameUnknown(client);
    await assertNameUnknown(client);
    const head = await client.request({ method: 'HEAD', path: `/v2/${REPO}/manifests/3.19`, repository: REPO });
    assert.equal(head.status, 404);
    await client.close();
    const ts = token.tokenServer;
    assert.ok(ts);
    assert.equal(ts.requests.length, 1);
    assert.equal(ts.requests[0]?.scope, `repository:${REPO}:pull`);
    assert.equal(ts.requests[0]?.user, token.user);
    assert.equal(await settledCount(token, { pathIncludes: `/v2/${REPO}/`, status: 404 }, 3), 3);
    assert.equal(await token.countRequests({ pathIncludes: `/v2/${REPO}/`, status: 401 }), 1);
    assert.ok(!logs.join('').includes(token.password));

    const wrong = clientFor(token, 'not-the-password').client;
    await assert.rejects(wrong.request(TAGS), (e: unknown) => {
      assert.ok(e instanceof UpstreamError);
      assert.equal(e.kind, 'auth_failed');
      assert.equal(e.status, 401);
      assert.ok(!e.message.includes('not-the-password'));
      return true;
    });
    await wrong.close();
  });
});
