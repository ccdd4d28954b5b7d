// ocirelay regions for the replication and failover scenarios, each a fresh process with an
// empty data dir (BenchEnv.coldOcirelay, stopped and removed by the env on close):
//   B: receives pushes (replication.accept), its own upstream unreachable, so replication is the
//      only way anything gets there;
//   A: the bench's upstream, replicating to B;
//   D: its upstream cut (an outage), failover reads from A, replicates nothing.
import type { BenchEnv } from './bench-env.ts';
import type { RunningOcirelay } from './ocirelay-launcher.ts';
import { freePort } from '../test/fixtures/ports.ts';

/** The key of the (only) registry in every region's config: pushes arrive under it. */
export const REGISTRY = 'docker.io';
export const PEER_TOKEN = 'bench-a-to-b';

/** A loopback URL nothing listens on: a stopped upstream (connection refused at once). */
export async function deadUpstreamUrl(): Promise<string> {
  return `http://127.0.0.1:${await freePort()}`;
}

export async function startReceiver(env: BenchEnv): Promise<RunningOcirelay> {
  return env.coldOcirelay({
    region: 'bench-b',
    registries: { [REGISTRY]: { url: await deadUpstreamUrl(), tagTTL: '5m' } },
    replication: { accept: [{ name: 'bench-a', token: PEER_TOKEN }] },
  });
}

export async function startSender(env: BenchEnv, b: RunningOcirelay): Promise<RunningOcirelay> {
  return env.coldOcirelay({ region: 'bench-a', peers: { b: { url: b.url, token: PEER_TOKEN } } });
}

/** A plain region (no peers): the failover source. */
export async function startSource(env: BenchEnv): Promise<RunningOcirelay> {
  return env.coldOcirelay({ region: 'bench-a' });
}

/** D: failover reads from A, replicates nothing; `upstreamUrl` is cut by the caller (an outage). */
export async function startFailoverRegion(env: BenchEnv, a: RunningOcirelay, upstreamUrl: string): Promise<RunningOcirelay> {
  return env.coldOcirelay({
    region: 'bench-d',
    registries: { [REGISTRY]: { url: upstreamUrl, tagTTL: '5m' } },
    peers: { a: { url: a.url, failover: true, replicate: false } },
  });
}
