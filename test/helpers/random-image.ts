// Pushes small synthetic images (random layers) straight to a registry over HTTP: many distinct
// images quickly, for eviction and crash tests. Layers are random bytes (clients such as skopeo
// copy them to dir: without unpacking, so they need not be tars).
import { createHash, randomBytes } from 'node:crypto';
import { pushBlob } from './http-client.ts';

export interface RandomImage {
  repo: string;
  tag: string;
  manifestDigest: string;
  manifestSize: number;
  configDigest: string;
  layers: Array<{ digest: string; size: number }>;
}

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

export async function pushRandomImage(registryUrl: string, repo: string, tag: string, layerSizes: number[], authorization?: string): Promise<RandomImage> {
  const layers: Array<{ digest: string; size: number }> = [];
  for (const size of layerSizes) layers.push({ digest: await pushBlob(registryUrl, repo, randomBytes(size), authorization), size });
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) }, created: new Date().toISOString(), id: randomBytes(8).toString('hex') }));
  const configDigest = await pushBlob(registryUrl, repo, config, authorization);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: configDigest, size: config.length },
      layers: layers.map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: l.digest, size: l.size })),
    }),
  );
  const res = await fetch(`${registryUrl}/v2/${repo}/manifests/${tag}`, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST, ...(authorization ? { authorization } : {}) },
    body: new Uint8Array(manifest) as Uint8Array<ArrayBuffer>,
  });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`manifest push to ${repo}:${tag}: ${res.status}`);
  return { repo, tag, manifestDigest: `sha256:${createHash('sha256').update(manifest).digest('hex')}`, manifestSize: manifest.length, configDigest, layers };
}

/** Pull an image through a mirror over plain HTTP, verifying every digest; throws on any mismatch. */
export async function pullVerified(mirrorUrl: string, img: RandomImage): Promise<void> {
  const res = await fetch(`${mirrorUrl}/v2/${img.repo}/manifests/${img.tag}`, { headers: { accept: OCI_MANIFEST } });
  const body = Buffer.from(await res.arrayBuffer());
  if (res.status !== 200) throw new Error(`manifest ${img.repo}:${img.tag}: ${res.status} ${body.toString().slice(0, 200)}`);
  const md = `sha256:${createHash('sha256').update(body).digest('hex')}`;
  if (md !== img.manifestDigest) throw new Error(`manifest ${img.repo}:${img.tag}: digest ${md}`);
  for (const d of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
    const r = await fetch(`${mirrorUrl}/v2/${img.repo}/blobs/${d}`);
    const b = Buffer.from(await r.arrayBuffer());
    if (r.status !== 200) throw new Error(`blob ${d}: ${r.status}`);
    const got = `sha256:${createHash('sha256').update(b).digest('hex')}`;
    if (got !== d) throw new Error(`blob ${d} served with digest ${got}`);
  }
}
