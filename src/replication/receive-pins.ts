// Pins and frozen tags pushed by replication peers (PUT and DELETE of
// /v2/<registry>/<repository>/_ocirelay/pin and .../_ocirelay/freeze/<tag>): small JSON
// documents, applied by ReceiveStore with "the later one wins".
import type { Context } from 'hono';
import { RegistryError } from '../errors.ts';
import type { AppEnv } from '../http/request-context.ts';
import { respond } from '../http/respond.ts';
import type { Logger } from '../logger.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { readJson } from './receive-body.ts';
import { parseTime, type PushTarget } from './receive-paths.ts';
import type { ReceiveStore, Repo, StoreResult } from './receive-store.ts';

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };

export interface PinRoutesDeps {
  store: ReceiveStore;
  logger: Logger;
  count: (peer: string, kind: 'freeze' | 'pin', result: StoreResult) => void;
}

export class PinRoutes {
  constructor(private readonly d: PinRoutesDeps) {}

  private json(c: Context<AppEnv>, status: number, v: unknown): Response {
    const body = Buffer.from(JSON.stringify(v));
    return respond(c, status, { ...API_VERSION, 'Content-Type': 'application/json', 'Content-Length': String(body.length) }, body);
  }

  async freeze(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'freeze' }): Promise<Response> {
    const b = await readJson(c);
    const digest = typeof b.digest === 'string' ? parseDigest(b.digest) : undefined;
    if (!digest) throw new RegistryError('DIGEST_INVALID', 'freeze needs {"digest": "sha256:...", "at": <RFC 3339>}');
    const at = b.at === undefined ? Date.now() : parseTime(b.at);
    if (at === undefined) throw new RegistryError('BAD_REQUEST', '"at" is not an RFC 3339 time', { status: 400 });
    const result = await this.d.store.freeze(t, t.tag, digest, at);
    this.d.count(peer, 'freeze', result);
    this.d.logger.info({ peer, ...t, digest, result }, 'received a frozen tag');
    return this.json(c, 200, { result, frozen: { tag: t.tag, digest } });
  }

  async unfreeze(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'freeze' }): Promise<Response> {
    const b = await readJson(c);
    const at = b.at === undefined ? undefined : parseTime(b.at);
    if (b.at !== undefined && at === undefined) throw new RegistryError('BAD_REQUEST', '"at" is not an RFC 3339 time', { status: 400 });
    const result = await this.d.store.unfreeze(t, t.tag, at);
    this.d.count(peer, 'freeze', result);
    this.d.logger.info({ peer, ...t, result }, 'received an unfreeze');
    return this.json(c, 200, { result });
  }

  private pinRef(t: Repo, v: unknown): string {
    // The pin's reference names this repository: <registry>/<repository> then :tag, @digest or #platforms.
    const prefix = `${t.registry}/${t.repository}`;
    if (typeof v !== 'string' || v.length > 1024 || !v.startsWith(prefix) || !/^(?:$|[:@#])/.test(v.slice(prefix.length))) {
      throw new RegistryError('BAD_REQUEST', `"ref" must name ${prefix} (e.g. ${prefix}:tag)`, { status: 400 });
    }
    return v;
  }

  async pin(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'pin' }): Promise<Response> {
    const b = await readJson(c);
    const ref = this.pinRef(t, b.ref);
    const list = Array.isArray(b.digests) ? b.digests : [];
    const digests = list.map((x) => (typeof x === 'string' ? parseDigest(x) : undefined));
    if (digests.length === 0 || digests.length > 100_000 || digests.some((x) => x === undefined)) {
      throw new RegistryError('DIGEST_INVALID', 'pin needs {"ref", "digests": ["sha256:..."], "createdAt"}');
    }
    const createdAt = b.createdAt === undefined ? Date.now() : parseTime(b.createdAt);
    if (createdAt === undefined) throw new RegistryError('BAD_REQUEST', '"createdAt" is not an RFC 3339 time', { status: 400 });
    const result = await this.d.store.pin(t, ref, digests as Digest[], createdAt);
    this.d.count(peer, 'pin', result);
    this.d.logger.info({ peer, ...t, ref, digests: digests.length, result }, 'received a pin');
    return this.json(c, 200, { result, pinned: { ref, digests } });
  }

  async unpin(c: Context<AppEnv>, peer: string, t: PushTarget & { kind: 'pin' }): Promise<Response> {
    const b = await readJson(c);
    const ref = this.pinRef(t, b.ref);
    const result = await this.d.store.unpin(t, ref);
    this.d.count(peer, 'pin', result);
    this.d.logger.info({ peer, ...t, ref, result }, 'received an unpin');
    return this.json(c, 200, { result });
  }
}
