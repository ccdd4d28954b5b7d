// Clients of the replication and failover scenarios: a sha256-checking image pull from the
// harness process (the burst), a poll of a peer for images (HEAD by tag with the peer token:
// answered from the peer's cache alone, never its upstream), and the loopback transfer of the
// same bytes that is the limit a replication lag is compared with.
import { createHash } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommandError, runCommand } from '../test/fixtures/processes.ts';
import type { SeededImage } from './seed.ts';

const ACCEPT = 'application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json';

async function getVerified(url: string, digest: string, headers: Record<string, string>): Promise<number> {
  const res = await fetch(url, { headers, signal: AbortSignal.timeout(300_000) });
  if (res.status !== 200 || !res.body) throw new Error(`GET ${url} answered ${res.status}`);
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of res.body as AsyncIterable<Uint8Array>) {
    h.update(chunk);
    bytes += chunk.length;
  }
  const got = `sha256:${h.digest('hex')}`;
  if (got !== digest) throw new Error(`GET ${url}: body hashes to ${got}, expected ${digest}`);
  return bytes;
}

/**
 * Pull one image as a runtime does (manifest by tag, then config and layers), checking every
 * digest; resolves with the time (performance.now()) the last byte was checked.
 */
export async function hashPull(baseUrl: string, img: SeededImage): Promise<{ endMs: number; bytes: number }> {
  let bytes = await getVerified(`${baseUrl}/v2/${img.repo}/manifests/${img.tag}`, img.manifestDigest, { accept: ACCEPT });
  for (const b of img.blobs) bytes += await getVerified(`${baseUrl}/v2/${img.repo}/blobs/${b.digest}`, b.digest, {});
  return { endMs: performance.now(), bytes };
}

/** Pull every image, `concurrency` at a time; the end time of each, by index. */
export async function hashPullAll(baseUrl: string, imgs: readonly SeededImage[], concurrency: number): Promise<number[]> {
  const ends: number[] = new Array<number>(imgs.length).fill(NaN);
  let next = 0;
  const worker = async () => {
    for (let i = next++; i < imgs.length; i = next++) ends[i] = (await hashPull(baseUrl, imgs[i] as SeededImage)).endMs;
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, imgs.length) }, worker));
  return ends;
}

export interface PeerPoll {
  /** Base URL of the receiving region. */
  url: string;
  /** The registry key the images are under at the peer (path-prefix form). */
  registry: string;
  token: string;
  /** Milliseconds between polling rounds. */
  intervalMs: number;
  /** Give up (reject) after this long. */
  timeoutMs: number;
}

/** Does the peer hold repo:tag? HEAD with the peer token answers from its cache alone. */
async function peerHas(p: PeerPoll, img: SeededImage): Promise<boolean> {
  const res = await fetch(`${p.url}/v2/${p.registry}/${img.repo}/manifests/${img.tag}`, {
    method: 'HEAD',
    headers: { accept: ACCEPT, authorization: `Bearer ${p.token}` },
    signal: AbortSignal.timeout(10_000),
  });
  await res.arrayBuffer();
  if (res.status === 200) {
    const d = res.headers.get('docker-content-digest');
    if (d && d !== img.manifestDigest) throw new Error(`peer has ${img.repo}:${img.tag} as ${d}, expected ${img.manifestDigest}`);
    return true;
  }
  if (res.status === 404) return false;
  throw new Error(`HEAD ${img.repo}:${img.tag} at the peer answered ${res.status}`);
}

/**
 * Poll the peer until it holds every image by tag (a tag is pushed last, after its manifest and
 * blobs). Each round asks once for every image not yet seen, one request at a time, then waits
 * `intervalMs`. Resolves with the time (performance.now()) each image was first seen; the
 * resolution is one round. `stop` (optional) ends polling early (a failed client).
 */
export async function waitAtPeer(p: PeerPoll, imgs: readonly SeededImage[], stop?: { failed: boolean }): Promise<number[]> {
  const seen: number[] = new Array<number>(imgs.length).fill(NaN);
  let left = imgs.length;
  const deadline = performance.now() + p.timeoutMs;
  while (left > 0) {
    if (stop?.failed) throw new Error('stopped: the pull failed');
    if (performance.now() > deadline) {
      const missing = imgs.filter((_, i) => Number.isNaN(seen[i])).map((m) => m.repo);
      throw new Error(`${missing.length} of ${imgs.length} images not at the peer after ${p.timeoutMs} ms: ${missing.slice(0, 5).join(', ')}`);
    }
    for (let i = 0; i < imgs.length; i++) {
      if (!Number.isNaN(seen[i])) continue;
      if (await peerHas(p, imgs[i] as SeededImage)) {
        seen[i] = performance.now();
        left--;
      }
    }
    if (left > 0) await sleep(p.intervalMs);
  }
  return seen;
}

/**
 * The limit: the same bytes (manifest, config, layers of every image) fetched from `baseUrl`
 * by one curl process, in sequence on one keep-alive connection, bodies to /dev/null.
 * Returns the sum of curl's per-transfer times (process start-up not included).
 */
export async function loopbackTransfer(baseUrl: string, imgs: readonly SeededImage[], timeoutMs: number): Promise<{ seconds: number; bytes: number }> {
  const args = ['-s', '-S', '-f', '-y', '15', '-Y', '1', '-H', `accept: ${ACCEPT}`, '-w', '%{size_download} %{time_total}\\n'];
  for (const img of imgs) {
    args.push('-o', '/dev/null', `${baseUrl}/v2/${img.repo}/manifests/${img.tag}`);
    for (const b of img.blobs) args.push('-o', '/dev/null', `${baseUrl}/v2/${img.repo}/blobs/${b.digest}`);
  }
  let stdout: string;
  try {
    ({ stdout } = await runCommand('curl', args, { timeoutMs }));
  } catch (e) {
    if (e instanceof CommandError) throw new Error(`loopback transfer: curl exited ${e.exitCode ?? e.signal}: ${e.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
    throw e;
  }
  let seconds = 0;
  let bytes = 0;
  for (const line of stdout.trim().split('\n')) {
    const [b, t] = line.split(' ').map(Number);
    bytes += b ?? NaN;
    seconds += t ?? NaN;
  }
  const want = imgs.reduce((a, i) => a + i.pullBytes, 0);
  if (bytes !== want) throw new Error(`loopback transfer: ${bytes} bytes, expected ${want}`);
  return { seconds, bytes };
}
