// The cluster member that owns a digest or a tag, as a region ContentSource (asked by the
// SourceChain before the upstream): "one upstream fetch per region". A non-owner with a cold
// blob streams it from the owner, whose BlobService joins its fill in flight or starts one, so
// a herd spread over the members costs one upstream GET; a tag is resolved by its owner (key
// `<registry>/<repository>:<tag>`), which answers from its cache within its tagTTL.
// When this instance owns the key, or no member is live but this one, it answers 404 (the chain
// goes on to the upstream, silently). When the owner fails (unreachable, timeout, 5xx, its body
// cut off), the failure is counted and logged and the chain fetches directly; an unreachable
// owner is marked down so the next keys it owned go to their runner-up at once.
// Reads go through the owner's ordinary /v2 pull API in its path-prefix form
// (/v2/<registry>/<repository>/...), over the same RegistrySource and PeerHttp transport as a
// failover peer's, with the cluster token instead of a peer's headers: the owner then does not
// ask its own region sources (no loops), and authorizes the repository by its own rule.
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import { isDigest } from '../oci/digest.ts';
import type { FillSource } from '../pull-through/blob-fill.ts';
import { isSourceOutage, markOutage, type BlobHead, type BlobRef, type ContentSource, type ManifestHead, type ManifestRef, type RawManifest } from '../sources/content-source.ts';
import { PeerHttp } from '../sources/peer-http.ts';
import { RegistrySource, type Transport } from '../sources/registry-source.ts';
import type { MinRate } from '../upstream/metered-body.ts';
import { isUpstreamError } from '../upstream/upstream-error.ts';
import type { ClusterMetrics } from './cluster-metrics.ts';
import { CLUSTER_TOKEN_HEADER } from './member-auth.ts';
import type { ClusterMembers } from './members.ts';

export interface OwnerSourceOptions {
  members: ClusterMembers;
  token: string;
  metrics: ClusterMetrics;
  logger: Logger;
  timeouts: { connectMs: number; headersMs: number; idleMs: number };
  minRate?: MinRate;
  userAgent?: string;
}

type Kind = 'blob' | 'blob_head' | 'manifest' | 'manifest_head';

/** The rendezvous key of a manifest reference: its digest, or `<registry>/<repository>:<tag>`. */
export function manifestKey(ref: ManifestRef): string {
  return isDigest(ref.reference) ? ref.reference : `${ref.registry}/${ref.repository}:${ref.reference}`;
}

export class OwnerSource implements ContentSource {
  readonly name = 'cluster';
  readonly via = 'region' as const;
  readonly #sources = new Map<string, RegistrySource>();
  /** Errors of reads the owner never answered (already counted as unreachable or timeout). */
  readonly #transportFailed = new WeakSet<RegistryError>();

  constructor(private readonly o: OwnerSourceOptions) {}

  async openBlob(ref: BlobRef, signal: AbortSignal, expectedSize?: number): Promise<FillSource> {
    const member = this.#owner(ref.digest, 'BLOB_UNKNOWN');
    const got = await this.#ask(member, 'blob', (s) => s.openBlob(ref, signal, expectedSize));
    // The owner dying mid-body fails this fill (its clients see an aborted transfer); a retry
    // must not wait for the next health check to learn it.
    // (`on`, not `once`: a listener of ours never leaves a later 'error' unhandled.)
    let counted = false;
    got.body.on('error', (e: unknown) => {
      if (counted || !isUpstreamError(e) || e.kind === 'aborted') return;
      counted = true;
      this.#failed(member, 'mid_body', e);
    });
    return got;
  }

  headBlob(ref: BlobRef): Promise<BlobHead> {
    const member = this.#owner(ref.digest, 'BLOB_UNKNOWN');
    return this.#ask(member, 'blob_head', (s) => s.headBlob(ref));
  }

  getManifest(ref: ManifestRef, accept: readonly string[]): Promise<RawManifest> {
    const member = this.#owner(manifestKey(ref), 'MANIFEST_UNKNOWN');
    return this.#ask(member, 'manifest', (s) => s.getManifest(ref, accept));
  }

  async headManifest(ref: ManifestRef, accept: readonly string[]): Promise<ManifestHead> {
    const member = this.#owner(manifestKey(ref), 'MANIFEST_UNKNOWN');
    // A HEAD's status comes back as an answer, not an error: judged here like #ask judges errors.
    const head = await this.#ask(member, 'manifest_head', async (s) => {
      const h = await s.headManifest(ref, accept);
      if (h.status !== 200 && (h.status === 404 || h.status >= 500)) throw await h.error();
      return h;
    });
    return head;
  }

  async close(): Promise<void> {
    for (const s of this.#sources.values()) await s.transport.close();
    this.#sources.clear();
  }

  /** The owner of `key` when it is another live member; else a 404 that sends the chain on. */
  #owner(key: string, code: 'BLOB_UNKNOWN' | 'MANIFEST_UNKNOWN'): string {
    const owner = this.o.members.owner(key);
    if (owner === undefined || owner === this.o.members.self) {
      throw new RegistryError(code, owner === undefined ? 'no live cluster member' : 'owned by this cluster member', { status: 404 });
    }
    return owner;
  }

  async #ask<T>(member: string, kind: Kind, op: (s: RegistrySource) => Promise<T>): Promise<T> {
    try {
      const v = await op(this.#source(member));
      this.o.metrics.ownerReads.inc({ kind, result: 'ok' });
      return v;
    } catch (e) {
      if (e instanceof RegistryError && e.status === 404) {
        this.o.metrics.ownerReads.inc({ kind, result: 'not_found' });
      } else {
        this.o.metrics.ownerReads.inc({ kind, result: 'failed' });
        // An answer of the owner's that means an outage (5xx, 429): its upstream is in trouble,
        // not the owner; it stays live. Transport failures were counted by the transport.
        if (isSourceOutage(e) && e instanceof RegistryError && !this.#transportFailed.has(e)) this.#failed(member, 'http_5xx', e, false);
      }
      throw e;
    }
  }

  /** One RegistrySource per member, over a PeerHttp that carries the cluster token. */
  #source(member: string): RegistrySource {
    let s = this.#sources.get(member);
    if (s) return s;
    // Pods come and go with new addresses: the connections of members no longer known are closed.
    const known = new Set(this.o.members.known());
    for (const [m, old] of this.#sources) {
      if (known.has(m)) continue;
      this.#sources.delete(m);
      void old.transport.close().catch(() => undefined);
    }
    const http = new PeerHttp(
      { name: member, url: member },
      {
        ...this.o.timeouts,
        ...(this.o.minRate !== undefined ? { minRate: this.o.minRate } : {}),
        ...(this.o.userAgent !== undefined ? { userAgent: this.o.userAgent } : {}),
        headers: { [CLUSTER_TOKEN_HEADER]: this.o.token },
        label: `member ${member}`,
      },
    );
    // Connection failures and timeouts before an answer: the owner is unreachable (counted
    // here, and told apart from the owner's own 5xx answers in #ask).
    const transport: Transport = {
      request: async (req) => {
        try {
          return await http.request(req);
        } catch (e) {
          if (!isUpstreamError(e) || e.kind === 'aborted') throw e;
          this.#failed(member, e.kind === 'timeout' ? 'timeout' : 'unreachable', e);
          const re = markOutage(new RegistryError('UNAVAILABLE', `cluster member ${member} unavailable (${e.kind})`));
          this.#transportFailed.add(re);
          throw re;
        }
      },
      close: () => http.close(),
    };
    s = new RegistrySource({ name: `member ${member}`, via: 'region', label: `cluster member ${member}`, transport, pathOf: (registry, repository) => `${registry}/${repository}` });
    this.#sources.set(member, s);
    return s;
  }

  #failed(member: string, reason: string, e: unknown, down = true): void {
    this.o.metrics.ownerFailures.inc({ reason });
    this.o.logger.warn({ member, reason, err: (e as Error).message }, 'cluster owner failed: fetching directly');
    if (down) this.o.members.markDown(member, reason);
  }
}
