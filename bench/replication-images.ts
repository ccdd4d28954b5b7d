// The images of the replication and failover scenarios (issue 10, item 7), pushed to the bench's
// upstream on first use: `bench/repl-<size>:1.0` (one uncompressed tar layer of random bytes,
// 256 MiB in a full run) and `bench/repl-small-<i>:1.0` (the burst: one small random layer
// each). Fresh random content every run; BenchEnv seeds only what the issue-4 scenarios need.
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { initLayout, MEDIA, sha256, tagLayout, tarArchive, writeImage, writeRandomTarLayer } from '../test/fixtures/oci-layout.ts';
import { removeTempDir } from '../test/fixtures/processes.ts';
import { skopeoCopy } from '../test/fixtures/skopeo.ts';
import type { BenchEnv } from './bench-env.ts';
import { SIZE_BYTES, type SizeName } from './options.ts';
import { TAG, type SeededImage } from './seed.ts';
import { progress } from './progress.ts';

/** The big image's size (the lag case and the failover pull): 256 MiB, 1 MiB in a smoke run. */
export function replicationSize(env: BenchEnv): SizeName {
  return env.options.mode === 'smoke' ? '1m' : '256m';
}

/** Bytes of random data in each burst image's layer. */
export const SMALL_LAYER_BYTES = 1024 * 1024;

const big = new WeakMap<BenchEnv, Promise<SeededImage>>();
const small = new WeakMap<BenchEnv, Promise<SeededImage[]>>();

/** `bench/repl-<size>:1.0`, pushed once per run (shared by replication and failover). */
export function bigImage(env: BenchEnv): Promise<SeededImage> {
  let p = big.get(env);
  if (!p) big.set(env, (p = pushBigImage(env, replicationSize(env))));
  return p;
}

/** `bench/repl-small-<i>:1.0` for i < count, pushed once per run. */
export function smallImages(env: BenchEnv, count: number): Promise<SeededImage[]> {
  let p = small.get(env);
  if (!p) small.set(env, (p = pushSmallImages(env, count)));
  return p;
}

async function pushBigImage(env: BenchEnv, size: SizeName): Promise<SeededImage> {
  const t0 = performance.now();
  const layout = path.join(env.workDir, `repl-layout-${size}`);
  const repo = `bench/repl-${size}`;
  try {
    await initLayout(layout);
    const { layer, diffId } = await writeRandomTarLayer(layout, `random-${size}.bin`, SIZE_BYTES[size]);
    const { manifest, config } = await writeImage(layout, { os: 'linux', architecture: 'amd64' }, [{ layer, diffId }], { Cmd: ['/bin/true'] });
    await tagLayout(layout, TAG, manifest);
    await skopeoCopy(`oci:${layout}:${TAG}`, `docker://${env.upstream.host}/${repo}:${TAG}`, { destTlsVerify: false, preserveDigests: true, timeoutMs: 600_000 });
    progress(`seeded ${repo} (${size}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    const blobs = [config, layer].map((d) => ({ digest: d.digest, size: d.size }));
    return {
      repo,
      tag: TAG,
      manifestDigest: manifest.digest,
      mediaType: MEDIA.ociManifest,
      blobs,
      layer: { digest: layer.digest, size: layer.size },
      pullBytes: manifest.size + config.size + layer.size,
      isIndex: false,
    };
  } finally {
    await removeTempDir(layout);
  }
}

/** Upload one blob to the upstream (POST, then PUT ?digest= with the body). */
async function pushBlob(base: string, repo: string, data: Buffer): Promise<string> {
  const digest = sha256(data);
  const post = await fetch(`${base}/v2/${repo}/blobs/uploads/`, { method: 'POST', signal: AbortSignal.timeout(30_000) });
  await post.arrayBuffer();
  const location = post.headers.get('location');
  if (post.status !== 202 || !location) throw new Error(`seed: POST ${repo} upload answered ${post.status}`);
  const url = new URL(location, base);
  url.searchParams.set('digest', digest);
  const put = await fetch(url, { method: 'PUT', body: new Uint8Array(data), headers: { 'content-type': 'application/octet-stream' }, signal: AbortSignal.timeout(30_000) });
  await put.arrayBuffer();
  if (put.status !== 201) throw new Error(`seed: PUT ${repo} blob answered ${put.status}`);
  return digest;
}

/** Small images straight over HTTP (a skopeo process per image would take longer than the burst). */
async function pushSmallImages(env: BenchEnv, count: number): Promise<SeededImage[]> {
  const t0 = performance.now();
  const base = env.upstream.url;
  const out: SeededImage[] = [];
  for (let i = 0; i < count; i++) {
    const repo = `bench/repl-small-${String(i).padStart(2, '0')}`;
    const tar = tarArchive([{ name: 'random.bin', content: randomBytes(SMALL_LAYER_BYTES) }]);
    const layerDigest = await pushBlob(base, repo, tar);
    const config = Buffer.from(
      JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Cmd: ['/bin/true'] }, rootfs: { type: 'layers', diff_ids: [layerDigest] } }),
    );
    const configDigest = await pushBlob(base, repo, config);
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MEDIA.ociManifest,
        config: { mediaType: MEDIA.ociConfig, digest: configDigest, size: config.length },
        layers: [{ mediaType: MEDIA.ociLayerTar, digest: layerDigest, size: tar.length }],
      }),
    );
    const res = await fetch(`${base}/v2/${repo}/manifests/${TAG}`, { method: 'PUT', body: new Uint8Array(manifest), headers: { 'content-type': MEDIA.ociManifest }, signal: AbortSignal.timeout(30_000) });
    await res.arrayBuffer();
    if (res.status !== 201) throw new Error(`seed: PUT ${repo}:${TAG} manifest answered ${res.status}`);
    out.push({
      repo,
      tag: TAG,
      manifestDigest: sha256(manifest),
      mediaType: MEDIA.ociManifest,
      blobs: [
        { digest: configDigest, size: config.length },
        { digest: layerDigest, size: tar.length },
      ],
      layer: { digest: layerDigest, size: tar.length },
      pullBytes: manifest.length + config.length + tar.length,
      isIndex: false,
    });
  }
  progress(`seeded ${count} small images (${SMALL_LAYER_BYTES} byte layers) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  return out;
}
