// What the cache tells the rest of the process when its content changes: a blob or a manifest
// was committed, a tag resolved to a new digest, a pin or a freeze changed. The replication
// outbox listens (one job per replicating peer, on disk before the commit is acknowledged, so
// every listener is awaited); later the S3 write-behind. `via` says where the content came from,
// so that content received from a peer (pushed to us, or read from it in a failover) is not
// pushed onward (full mesh, no loops).
import type { Digest } from './oci/digest.ts';

// 'region': read from this region's shared tiers (the S3 bucket, another cluster member):
// already in the bucket and already replicated by the member that fetched it.
export type ContentVia = 'upstream' | 'push' | 'failover' | 'admin' | 'region';

export interface ContentCommitted {
  kind: 'blob' | 'manifest';
  registry: string;
  repository: string;
  digest: Digest;
  size: number;
  /** Manifests only. */
  mediaType?: string;
  via: ContentVia;
}

export interface TagResolved {
  registry: string;
  repository: string;
  tag: string;
  digest: Digest;
  mediaType: string;
  /** When the upstream (or the peer it came from) resolved it, ms since epoch. */
  resolvedAt: number;
  via: ContentVia;
}

export interface PinChanged {
  registry: string;
  repository: string;
  /** The pin's reference as the index keeps it, e.g. docker.io/library/alpine:3.19. */
  ref: string;
  digests: Digest[];
  pinned: boolean;
}

export interface FreezeChanged {
  registry: string;
  repository: string;
  tag: string;
  /** Undefined when unfrozen. */
  digest: Digest | undefined;
  at: number;
}

export interface CacheListener {
  contentCommitted?(e: ContentCommitted): Promise<void> | void;
  tagResolved?(e: TagResolved): Promise<void> | void;
  pinChanged?(e: PinChanged): Promise<void> | void;
  freezeChanged?(e: FreezeChanged): Promise<void> | void;
}

/** The one place listeners register; emitting awaits every listener (a listener that throws fails the commit's acknowledgement, not the commit). */
export class CacheEvents {
  private readonly listeners: CacheListener[] = [];

  listen(l: CacheListener): void {
    this.listeners.push(l);
  }

  async contentCommitted(e: ContentCommitted): Promise<void> {
    for (const l of this.listeners) await l.contentCommitted?.(e);
  }

  async tagResolved(e: TagResolved): Promise<void> {
    for (const l of this.listeners) await l.tagResolved?.(e);
  }

  async pinChanged(e: PinChanged): Promise<void> {
    for (const l of this.listeners) await l.pinChanged?.(e);
  }

  async freezeChanged(e: FreezeChanged): Promise<void> {
    for (const l of this.listeners) await l.freezeChanged?.(e);
  }
}
