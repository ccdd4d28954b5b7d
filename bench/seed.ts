// The benchmark's image set, built offline and pushed to the upstream Distribution registry:
//   bench/layer-<size>:1.0   one uncompressed tar layer of <size> random bytes (4m, 256m, 1g, ...)
//   bench/multi:1.0          an OCI index, linux/amd64 + linux/arm64, one random layer each
// Random content every run, so no cache can be satisfied by a previous run's leftovers.
import { createHash } from 'node:crypto';
import path from 'node:path';
import {
  initLayout,
  MEDIA,
  tagLayout,
  writeImage,
  writeIndexBlob,
  writeRandomTarLayer,
  type Platform,
} from '../test/fixtures/oci-layout.ts';
import { makeTempDir, removeTempDir } from '../test/fixtures/processes.ts';
import type { RegistryFixture } from '../test/fixtures/registry.ts';
import { skopeoCopy } from '../test/fixtures/skopeo.ts';
import { SIZE_BYTES, type SizeName } from './options.ts';

export const TAG = '1.0';

export interface SeededBlob {
  digest: string;
  size: number;
}

export interface SeededImage {
  /** Repository, e.g. 'bench/layer-256m'. */
  repo: string;
  tag: string;
  manifestDigest: string;
  mediaType: string;
  /** Config and layers: every blob a pull fetches. */
  blobs: SeededBlob[];
  /** The big layer (the image's only layer; for the index, the amd64 layer). */
  layer: SeededBlob;
  /** Total bytes a full pull transfers (manifests + blobs). */
  pullBytes: number;
  /** `--all` for skopeo: an index. */
  isIndex: boolean;
}

export interface SeededSet {
  layers: Partial<Record<SizeName, SeededImage>>;
  /** `bench/warmup`: a 1 MiB image pulled through a fresh proxy before it is measured. */
  warmup: SeededImage;
  multi?: SeededImage;
  /** Seconds spent building and pushing. */
  seedSeconds: number;
}

const ACCEPT = [MEDIA.ociIndex, MEDIA.ociManifest, 'application/vnd.docker.distribution.manifest.v2+json'].join(', ');

async function fetchManifest(reg: RegistryFixture, repo: string, ref: string): Promise<{ digest: string; mediaType: string; json: Record<string, unknown>; size: number }> {
  const res = await fetch(`${reg.url}/v2/${repo}/manifests/${ref}`, { headers: { accept: ACCEPT }, signal: AbortSignal.timeout(30_000) });
  const bytes = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`seed: GET ${repo}:${ref} manifest answered ${res.status}`);
  const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  return { digest, mediaType: res.headers.get('content-type') ?? '', json: JSON.parse(bytes.toString('utf8')) as Record<string, unknown>, size: bytes.length };
}

type Desc = { digest: string; size: number };

async function buildLayerImage(dir: string, size: SizeName): Promise<string> {
  const layout = path.join(dir, `layer-${size}`);
  await initLayout(layout);
  const { layer, diffId } = await writeRandomTarLayer(layout, `random-${size}.bin`, SIZE_BYTES[size]);
  const { manifest } = await writeImage(layout, { os: 'linux', architecture: 'amd64' }, [{ layer, diffId }], { Cmd: ['/bin/true'] });
  await tagLayout(layout, TAG, manifest);
  return layout;
}

async function buildIndex(dir: string, size: SizeName): Promise<string> {
  const layout = path.join(dir, 'multi');
  await initLayout(layout);
  const platforms: Platform[] = [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64' },
  ];
  const descriptors = [];
  for (const p of platforms) {
    const { layer, diffId } = await writeRandomTarLayer(layout, `random-${p.architecture}.bin`, SIZE_BYTES[size]);
    const { manifest } = await writeImage(layout, p, [{ layer, diffId }], { Cmd: ['/bin/true'] });
    descriptors.push(manifest);
  }
  await tagLayout(layout, TAG, await writeIndexBlob(layout, descriptors));
  return layout;
}

/** What a registry now holds for repo:tag, read back from it. */
async function describe(reg: RegistryFixture, repo: string): Promise<SeededImage> {
  const top = await fetchManifest(reg, repo, TAG);
  const manifests = (top.json.manifests as Desc[] | undefined) ?? undefined;
  const isIndex = manifests !== undefined;
  const blobs: SeededBlob[] = [];
  let pullBytes = top.size;
  const images = isIndex ? await Promise.all(manifests.map((m) => fetchManifest(reg, repo, m.digest))) : [top];
  for (const img of images) {
    if (isIndex) pullBytes += img.size;
    const config = img.json.config as Desc;
    const layers = img.json.layers as Desc[];
    for (const d of [config, ...layers]) {
      blobs.push({ digest: d.digest, size: d.size });
      pullBytes += d.size;
    }
  }
  const firstLayers = images[0]?.json.layers as Desc[] | undefined;
  const layer = firstLayers?.[0];
  if (!layer) throw new Error(`seed: ${repo} has no layer`);
  return { repo, tag: TAG, manifestDigest: top.digest, mediaType: top.mediaType, blobs, layer: { digest: layer.digest, size: layer.size }, pullBytes, isIndex };
}

/** Build and push `bench/layer-<size>` for each size, and `bench/multi` when asked. */
export async function seedUpstream(reg: RegistryFixture, sizes: readonly SizeName[], index: SizeName | undefined): Promise<SeededSet> {
  const t0 = performance.now();
  const dir = await makeTempDir('ocirelay-bench-seed-');
  try {
    const push = (layout: string, repo: string, all: boolean) =>
      skopeoCopy(`oci:${layout}:${TAG}`, `docker://${reg.host}/${repo}:${TAG}`, {
        destTlsVerify: false,
        preserveDigests: true,
        ...(all ? { all: true } : {}),
        timeoutMs: 600_000,
      });
    const layers: Partial<Record<SizeName, SeededImage>> = {};
    // One image at a time: building is CPU-bound (random bytes, two hashes) and the machine has
    // two cores; the layout is removed after its push so 1 GiB never sits on disk twice.
    for (const size of [...new Set(sizes)]) {
      const layout = await buildLayerImage(dir, size);
      const repo = `bench/layer-${size}`;
      await push(layout, repo, false);
      await removeTempDir(layout);
      layers[size] = await describe(reg, repo);
    }
    // Pulled through every fresh proxy before its measurement: a cold cache, not a cold
    // process (JIT, connection pools), as in a long-running mirror meeting a new image.
    const warmupLayout = await buildLayerImage(dir, '1m');
    await push(warmupLayout, 'bench/warmup', false);
    await removeTempDir(warmupLayout);
    const warmup = await describe(reg, 'bench/warmup');
    let multi: SeededImage | undefined;
    if (index) {
      const layout = await buildIndex(dir, index);
      await push(layout, 'bench/multi', true);
      multi = await describe(reg, 'bench/multi');
    }
    return { layers, warmup, ...(multi ? { multi } : {}), seedSeconds: (performance.now() - t0) / 1000 };
  } finally {
    await removeTempDir(dir);
  }
}

/** Where the upstream Distribution registry (filesystem driver) keeps a blob's bytes. */
export function upstreamBlobFile(reg: RegistryFixture, digest: string): string {
  const hex = digest.replace(/^sha256:/, '');
  return path.join(reg.dir, 'storage', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}
