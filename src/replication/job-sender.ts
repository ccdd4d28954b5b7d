// Sends one outbox job to one peer, and what it needs first: every request asks the peer
// (HEAD) before anything is sent; a blob the peer holds in another repository is mounted, else
// uploaded from the local cache file; an image manifest's blobs go before it, an index's
// children before the index, a tag after its manifest. Pushes of one manifest or blob to one
// peer that overlap (a tag job and its manifest job, two images sharing layers) are shared.
import type { PeerConfig } from '../config-replication.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { guessManifestMediaType } from '../oci/media-types.ts';
import type { CacheIndex } from '../storage/cache-index.ts';
import type { DiskBlobStore } from '../storage/disk-blob-store.ts';
import type { JobSpec } from './outbox.ts';
import type { PeerClient } from './peer-client.ts';
import type { ReplicationMetrics } from './replication-metrics.ts';

/** sent; present (the peer had it); evicted (gone from the local cache before it left: dropped). */
export type Outcome = 'sent' | 'present' | 'evicted';

/** One peer as the sender knows it; state lives as long as the process. */
export interface PeerLink {
  peer: PeerConfig;
  client: PeerClient;
  /** Manifests confirmed present at the peer (in memory: DR readiness, and no second HEAD). */
  confirmed: Set<Digest>;
  /** Where the peer holds a blob (repository path), for cross-repository mounts. */
  blobHome: Map<Digest, string>;
  /** Pushes in progress by repository and digest. */
  pushing: Map<string, Promise<unknown>>;
}

export interface JobSenderDeps {
  disk: DiskBlobStore;
  index: CacheIndex;
  /** Pulls an image (or an index's child) into the cache through the normal path. */
  pull(registry: string, repository: string, reference: string): Promise<unknown>;
  metrics: ReplicationMetrics;
}

/** The blob is no longer in the local cache: the job cannot be sent. */
class Evicted extends Error {
  constructor(digest: Digest) {
    super(`${digest} is no longer in the local cache`);
  }
}

export class JobSender {
  constructor(private readonly d: JobSenderDeps) {}

  /** Send one job to the peer; throws PeerError (or a local error) when it did not get there. */
  async send(st: PeerLink, s: JobSpec): Promise<Outcome> {
    const repo = st.client.repoPath(s.r, s.n);
    switch (s.k) {
      case 'blob': {
        if (await st.client.hasBlob(repo, s.d)) {
          st.blobHome.set(s.d, repo);
          return 'present';
        }
        const size = this.d.disk.sizeOf(s.d);
        if (size === undefined) return 'evicted';
        try {
          await this.upload(st, repo, s.d, size);
        } catch (e) {
          if (e instanceof Evicted) return 'evicted';
          throw e;
        }
        return 'sent';
      }
      case 'manifest':
        return this.pushManifest(st, s.r, s.n, s.d);
      case 'tag': {
        const m = await this.pushManifest(st, s.r, s.n, s.d);
        if (m === 'evicted') return m;
        const body = await this.d.disk.read(s.d);
        if (!body) return 'evicted';
        const mediaType = this.d.index.manifestMeta(s.d)?.mediaType ?? guessManifestMediaType(body);
        await st.client.putManifest(repo, s.tag, body, mediaType, { 'Ocirelay-Resolved-At': new Date(s.at).toISOString() });
        return 'sent';
      }
      case 'pin': {
        if (!s.pinned) {
          await st.client.ocirelayCall(repo, 'DELETE', 'pin', { ref: s.ref });
          return 'sent';
        }
        const root = s.ds[0];
        if (root !== undefined && (await this.pushManifest(st, s.r, s.n, root)) === 'evicted') return 'evicted';
        await st.client.ocirelayCall(repo, 'PUT', 'pin', { ref: s.ref, digests: s.ds, createdAt: new Date(s.at).toISOString() });
        return 'sent';
      }
      case 'freeze': {
        if (s.d === null) {
          await st.client.ocirelayCall(repo, 'DELETE', `freeze/${s.tag}`, { at: new Date(s.at).toISOString() });
          return 'sent';
        }
        if ((await this.pushManifest(st, s.r, s.n, s.d)) === 'evicted') return 'evicted';
        await st.client.ocirelayCall(repo, 'PUT', `freeze/${s.tag}`, { digest: s.d, at: new Date(s.at).toISOString() });
        return 'sent';
      }
    }
  }

  /**
   * A manifest and what it needs at the peer first: an image manifest's blobs (missing local
   * ones are pulled through the normal path, joining a client's fill in flight), an index's
   * children. An ocirelay peer takes an index as it is (children nobody pulled stay behind);
   * a registry may refuse it until every child exists, so those are pulled first.
   */
  private pushManifest(st: PeerLink, registry: string, repository: string, digest: Digest, depth = 0): Promise<Outcome> {
    return once(st, `${registry}/${repository}@${digest}`, () => this.pushManifestNow(st, registry, repository, digest, depth));
  }

  private async pushManifestNow(st: PeerLink, registry: string, repository: string, digest: Digest, depth: number): Promise<Outcome> {
    const repo = st.client.repoPath(registry, repository);
    if (st.confirmed.has(digest)) return 'present';
    if (await st.client.hasManifest(repo, digest)) {
      st.confirmed.add(digest);
      return 'present';
    }
    const body = await this.d.disk.read(digest);
    if (!body) return 'evicted';
    const mediaType = this.d.index.manifestMeta(digest)?.mediaType ?? guessManifestMediaType(body);
    let json: { manifests?: unknown; config?: unknown; layers?: unknown; blobs?: unknown };
    try {
      json = JSON.parse(body.toString('utf8')) as typeof json;
    } catch {
      throw new Error(`cached manifest ${digest} is not JSON`);
    }
    if (Array.isArray(json.manifests)) {
      if (depth > 2) throw new Error(`index ${digest} nests too deep`);
      for (const child of descriptorDigests(json.manifests)) {
        if (!this.d.disk.has(child)) {
          if (st.peer.kind !== 'registry') continue;
          await this.d.pull(registry, repository, child);
        }
        const r = await this.pushManifest(st, registry, repository, child, depth + 1);
        if (r === 'evicted') throw new Error(`child manifest ${child} of ${digest} is not in the local cache`);
      }
    } else {
      const layers = Array.isArray(json.layers) ? json.layers : [];
      const blobs = Array.isArray(json.blobs) ? json.blobs : [];
      let pulled = false;
      for (const blob of descriptorDigests([json.config, ...layers, ...blobs])) {
        if (await st.client.hasBlob(repo, blob)) {
          st.blobHome.set(blob, repo);
          continue;
        }
        let size = this.d.disk.sizeOf(blob);
        if (size === undefined && !pulled) {
          pulled = true;
          await this.d.pull(registry, repository, digest);
          size = this.d.disk.sizeOf(blob);
        }
        if (size === undefined) throw new Error(`blob ${blob} of ${digest} is not in the local cache`);
        await this.upload(st, repo, blob, size);
      }
    }
    await st.client.putManifest(repo, digest, body, mediaType);
    st.confirmed.add(digest);
    return 'sent';
  }

  private upload(st: PeerLink, repo: string, digest: Digest, size: number): Promise<void> {
    return once(st, `${repo}@${digest}`, () => this.uploadNow(st, repo, digest, size));
  }

  private async uploadNow(st: PeerLink, repo: string, digest: Digest, size: number): Promise<void> {
    // Another job may have finished this very upload while our HEAD was in flight (the HEAD
    // answered 404 just before): ask again rather than send it twice. blobHome is only a hint
    // (the peer may have lost the blob since), so the peer's answer decides.
    if (st.blobHome.get(digest) === repo && (await st.client.hasBlob(repo, digest))) return;
    const open = async (start: number, end: number) => {
      const f = await this.d.disk.openFile(digest, { start, end });
      if (!f) throw new Evicted(digest);
      return f.toReadable();
    };
    const home = st.blobHome.get(digest);
    const how = await st.client.uploadBlob(repo, digest, size, open, home !== undefined && home !== repo ? home : undefined);
    if (how === 'uploaded') this.d.metrics.bytes.inc({ peer: st.peer.name }, size);
    st.blobHome.set(digest, repo);
    // Bounded: a hint, not a record.
    if (st.blobHome.size > 100_000) st.blobHome.delete(st.blobHome.keys().next().value!);
  }
}

/** Run `fn` unless the same push is in flight for this peer: then share its outcome. */
function once<T>(st: PeerLink, key: string, fn: () => Promise<T>): Promise<T> {
  const running = st.pushing.get(key);
  if (running) return running as Promise<T>;
  const p = fn().finally(() => st.pushing.delete(key));
  st.pushing.set(key, p);
  return p;
}

function descriptorDigests(list: unknown[]): Digest[] {
  const out: Digest[] = [];
  for (const d of list) {
    if (typeof d !== 'object' || d === null) continue;
    const digest = parseDigest(String((d as { digest?: unknown }).digest));
    if (digest !== undefined && !out.includes(digest)) out.push(digest);
  }
  return out;
}
