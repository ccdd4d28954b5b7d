// Pulls a whole image into the cache through the same services clients use (so prefetches and
// client pulls share fills): the manifest or index, the chosen platforms' manifests, every blob.
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DEFAULT_MANIFEST_ACCEPT } from '../oci/media-types.ts';
import type { BlobService } from '../pull-through/blob-service.ts';
import type { ManifestService } from '../pull-through/manifest-service.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import { RegistryError } from '../errors.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';

export interface PulledImage {
  /** What the reference resolved to (the index for a multi-arch image). */
  digest: Digest;
  /** Every digest of the image: manifests and blobs. */
  digests: Digest[];
  /** Bytes of all of it. */
  bytes: number;
}

interface Descriptor {
  digest?: unknown;
  size?: unknown;
  platform?: { os?: unknown; architecture?: unknown; variant?: unknown };
}

const platformOf = (d: Descriptor) => {
  const p = d.platform;
  if (!p || typeof p.os !== 'string' || typeof p.architecture !== 'string') return undefined;
  return `${p.os}/${p.architecture}${typeof p.variant === 'string' ? `/${p.variant}` : ''}`;
};

export class ImagePuller {
  constructor(
    private readonly manifests: ManifestService,
    private readonly blobs: BlobService,
    private readonly disk: DiskBlobStore,
    private readonly index: CacheIndex,
  ) {}

  /** Pull `reference` (tag or digest) of registry/repository; `platforms` filters an index. */
  async pull(registry: string, repository: string, reference: string, platforms: string[] | undefined, onBytes: (n: number) => void = () => undefined): Promise<PulledImage> {
    const accept = [...DEFAULT_MANIFEST_ACCEPT];
    const top = await this.manifests.get({ registry, repository, reference, accept });
    const digests = [top.digest];
    let bytes = top.body.length;
    const json = JSON.parse(top.body.toString('utf8')) as { manifests?: Descriptor[]; layers?: Descriptor[]; config?: Descriptor; blobs?: Descriptor[] };
    const images: Array<{ layers?: Descriptor[]; config?: Descriptor; blobs?: Descriptor[] }> = [];
    if (Array.isArray(json.manifests)) {
      for (const child of json.manifests) {
        if (typeof child.digest !== 'string') continue;
        const p = platformOf(child);
        if (platforms && platforms.length > 0 && (!p || !platforms.some((want) => p === want || p.startsWith(`${want}/`)))) continue;
        // Attestation manifests (unknown/unknown) come along only when no filter is given.
        const m = await this.manifests.get({ registry, repository, reference: child.digest, accept });
        digests.push(m.digest);
        bytes += m.body.length;
        images.push(JSON.parse(m.body.toString('utf8')) as (typeof images)[number]);
      }
    } else {
      images.push(json);
    }
    for (const img of images) {
      const descs = [img.config, ...(img.layers ?? []), ...(img.blobs ?? [])].filter((d): d is Descriptor => !!d && typeof d.digest === 'string');
      for (const d of descs) {
        // A descriptor digest is upstream content: parsed before it can name a file.
        const digest = parseDigest(String(d.digest));
        if (digest === undefined) throw new RegistryError('MANIFEST_INVALID', `manifest lists an invalid digest "${String(d.digest).slice(0, 100)}"`, { status: 502 });
        if (digests.includes(digest)) continue;
        digests.push(digest);
        const size = this.disk.sizeOf(digest);
        if (size !== undefined && this.index.isLinked(registry, repository, digest)) {
          bytes += size;
          onBytes(size);
          continue;
        }
        // The descriptor's size bounds the fill: the first byte beyond it aborts it.
        const expected = typeof d.size === 'number' && Number.isSafeInteger(d.size) && d.size >= 0 ? { expectedSize: d.size } : {};
        const res = await this.blobs.get({ registry, repository, digest, method: 'GET', range: undefined, ...expected });
        let n = 0;
        await pipeline(
          res.body ?? res.file!.toReadable(),
          new Writable({
            write(chunk: Buffer, _enc, cb) {
              n += chunk.length;
              onBytes(chunk.length);
              cb();
            },
          }),
        );
        bytes += n;
        // Pulled into the cache means committed, not only streamed.
        await this.blobs.settled(digest);
      }
    }
    return { digest: top.digest, digests, bytes };
  }
}
