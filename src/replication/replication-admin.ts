// What the admin API asks of replication: the status (GET /api/v1/replication) and backfills
// (POST /api/v1/replicate): adding a peer does not copy what was cached before, so
// `ocirelay replicate --peer NAME (--all | REF...)` queues a manifest job and a job per tag
// for each cached image it names (the jobs push blobs and children themselves).
import type { CachedImage } from '../admin/cache-admin.ts';
import type { ImageRef } from '../admin/image-ref.ts';
import { RegistryError } from '../errors.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { JobSpec } from './outbox.ts';
import type { Replicator } from './replicator.ts';
import type { ReplicationStatus } from './status.ts';

export interface BackfillAnswer {
  peer: string;
  images: number;
  /** Jobs added, already pending, and refused because the outbox is full. */
  queued: number;
  duplicate: number;
  full: number;
}

export class ReplicationAdmin {
  constructor(
    private readonly replicator: Replicator | undefined,
    private readonly region: string,
    private readonly images: (filter: { registry?: string; repository?: string }) => CachedImage[],
    private readonly index: CacheIndex,
  ) {}

  status(): ReplicationStatus {
    return this.replicator ? this.replicator.status() : { region: this.region, peers: [] };
  }

  async backfill(peer: string, target: { all: true } | { refs: ImageRef[] }): Promise<BackfillAnswer> {
    if (!this.replicator?.hasPeer(peer)) throw new RegistryError('NOT_FOUND', `no replicating peer named "${peer}"`);
    let chosen: CachedImage[];
    if ('all' in target) chosen = this.images({});
    else {
      chosen = [];
      for (const ref of target.refs) {
        const found = this.images({ registry: ref.registry, repository: ref.repository }).filter((i) => (ref.digest ? i.digest === ref.digest : i.tags.includes(ref.tag ?? '')));
        if (found.length === 0) throw new RegistryError('MANIFEST_UNKNOWN', `${ref.canonical} is not cached`);
        chosen.push(...found);
      }
    }
    const ocirelay = this.replicator.peerKind(peer) === 'ocirelay';
    const specs: JobSpec[] = [];
    for (const img of chosen) {
      const r = img.registry;
      const n = img.repository;
      specs.push({ k: 'manifest', r, n, d: img.digest });
      for (const tag of img.tags) {
        const frozen = this.index.frozen(r, n, tag);
        // A frozen tag: a freeze to an ocirelay peer, the tag at the frozen digest to a registry.
        if (frozen) specs.push(ocirelay ? { k: 'freeze', r, n, tag, d: img.digest, at: frozen.at } : { k: 'tag', r, n, tag, d: img.digest, at: frozen.at });
        else specs.push({ k: 'tag', r, n, tag, d: img.digest, at: this.index.tag(r, n, tag)?.checkedAt ?? Date.now() });
      }
      if (ocirelay && img.pinned) {
        for (const p of this.index.pinsOf(r, n)) {
          if (p.digests[0] === img.digest) specs.push({ k: 'pin', r, n, ref: p.ref, ds: p.digests, pinned: true, at: p.createdAt });
        }
      }
    }
    const res = await this.replicator.backfill(peer, specs);
    return { peer, images: chosen.length, ...res };
  }
}
