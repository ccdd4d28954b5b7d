// Where the region's shared metadata lives in the bucket (relative to storage.s3.prefix). Every
// name is validated before it forms a key, so a client-supplied repository, tag or digest can
// never address another object: registry keys as config.ts accepts them, repository and tag
// names by the OCI grammar (oci/reference.ts), digests only as the validated `Digest` type.
//
//   meta/links/<hex>/<registry>/<repository>      empty object: the upstream let that repository read it
//   meta/repos/<registry>/<repository>/_tags/<tag>.json   {digest, mediaType, resolvedAt}
//   meta/frozen/<registry>/<repository>/<tag>.json         {digest|null, at}      (null: unfrozen)
//   meta/pins/<base64url(ref)>.json                        {ref, registry, repository, digests, pinned, at}
//   meta/lease/<name>.json                                 {holder, expiresAt}
//   meta/access/<instance>.json                            {instance, writtenAt, access: {hex: ms}}
//
// Links are keyed by digest first, so "which repositories may read this digest" (purge: is the
// content still needed?) is one listing. `_tags` cannot be a repository path component (a
// component starts with a letter or digit), so one repository's tags never list another's.
import { isValidName, isValidTag } from '../oci/reference.ts';
import { digestFromHex, digestHex, type Digest } from '../oci/digest.ts';
import { BLOBS_PREFIX } from './bucket-layout.ts';

// Content keys are the write-behind's (bucket-layout.ts): one definition.
export { BLOBS_PREFIX, blobKey } from './bucket-layout.ts';

// The registry key grammar of config.ts (lower-case host names with an optional port).
const REGISTRY_RE = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?$/;
const INSTANCE_RE = /^[A-Za-z0-9._-]{1,128}$/;
const LEASE_RE = /^[a-z0-9-]{1,64}$/;
const MAX_REF_LENGTH = 1024;

export class InvalidMetadataName extends Error {
  constructor(what: string) {
    super(`invalid name for a bucket metadata key: ${what}`);
    this.name = 'InvalidMetadataName';
  }
}

export function isValidRegistry(r: string): boolean {
  return r.length <= 255 && REGISTRY_RE.test(r);
}

function repo(registry: string, repository: string): string {
  if (!isValidRegistry(registry)) throw new InvalidMetadataName(`registry ${JSON.stringify(registry.slice(0, 100))}`);
  if (!isValidName(repository)) throw new InvalidMetadataName(`repository ${JSON.stringify(repository.slice(0, 100))}`);
  return `${registry}/${repository}`;
}

function tagName(tag: string): string {
  if (!isValidTag(tag)) throw new InvalidMetadataName(`tag ${JSON.stringify(tag.slice(0, 100))}`);
  return tag;
}

export const LINKS_PREFIX = 'meta/links/';
export const PINS_PREFIX = 'meta/pins/';
export const FROZEN_PREFIX = 'meta/frozen/';
export const REPOS_PREFIX = 'meta/repos/';
export const ACCESS_PREFIX = 'meta/access/';

export function digestOfBlobKey(rel: string): Digest | undefined {
  return rel.startsWith(BLOBS_PREFIX) ? digestFromHex(rel.slice(BLOBS_PREFIX.length)) : undefined;
}

export function linkKey(registry: string, repository: string, digest: Digest): string {
  return `${linksOfDigestPrefix(digest)}${repo(registry, repository)}`;
}

/** Every link of one digest is listed under this. */
export function linksOfDigestPrefix(digest: Digest): string {
  return `${LINKS_PREFIX}${digestHex(digest)}/`;
}

export function tagKey(registry: string, repository: string, tag: string): string {
  return `${tagsPrefix(registry, repository)}${tagName(tag)}.json`;
}

export function tagsPrefix(registry: string, repository: string): string {
  return `${REPOS_PREFIX}${repo(registry, repository)}/_tags/`;
}

/** registry, repository and tag of a tag record's key, or undefined when it is not one. */
export function parseTagKey(rel: string): { registry: string; repository: string; tag: string } | undefined {
  if (!rel.startsWith(REPOS_PREFIX) || !rel.endsWith('.json')) return undefined;
  const i = rel.lastIndexOf('/_tags/');
  if (i < 0) return undefined;
  return splitRepo(rel.slice(REPOS_PREFIX.length, i), rel.slice(i + '/_tags/'.length, -'.json'.length));
}

export function frozenKey(registry: string, repository: string, tag: string): string {
  return `${FROZEN_PREFIX}${repo(registry, repository)}/${tagName(tag)}.json`;
}

export function parseFrozenKey(rel: string): { registry: string; repository: string; tag: string } | undefined {
  if (!rel.startsWith(FROZEN_PREFIX) || !rel.endsWith('.json')) return undefined;
  const body = rel.slice(FROZEN_PREFIX.length, -'.json'.length);
  const i = body.lastIndexOf('/');
  if (i < 0) return undefined;
  return splitRepo(body.slice(0, i), body.slice(i + 1));
}

function splitRepo(registryAndRepo: string, tag: string): { registry: string; repository: string; tag: string } | undefined {
  const s = registryAndRepo.indexOf('/');
  if (s < 0) return undefined;
  const registry = registryAndRepo.slice(0, s);
  const repository = registryAndRepo.slice(s + 1);
  if (!isValidRegistry(registry) || !isValidName(repository) || !isValidTag(tag)) return undefined;
  return { registry, repository, tag };
}

/** A pin's reference (e.g. docker.io/library/alpine:3.19#linux/amd64) encoded into one key component. */
export function pinKey(ref: string): string {
  if (ref.length === 0 || ref.length > MAX_REF_LENGTH) throw new InvalidMetadataName('pin reference length');
  return `${PINS_PREFIX}${Buffer.from(ref, 'utf8').toString('base64url')}.json`;
}

export function refOfPinKey(rel: string): string | undefined {
  if (!rel.startsWith(PINS_PREFIX) || !rel.endsWith('.json')) return undefined;
  const enc = rel.slice(PINS_PREFIX.length, -'.json'.length);
  if (!/^[A-Za-z0-9_-]+$/.test(enc)) return undefined;
  const ref = Buffer.from(enc, 'base64url').toString('utf8');
  return ref.length > 0 && ref.length <= MAX_REF_LENGTH ? ref : undefined;
}

export function leaseKey(name: string): string {
  if (!LEASE_RE.test(name)) throw new InvalidMetadataName(`lease ${JSON.stringify(name.slice(0, 100))}`);
  return `meta/lease/${name}.json`;
}

export function isValidInstanceId(id: string): boolean {
  return INSTANCE_RE.test(id);
}

export function accessKey(instance: string): string {
  if (!isValidInstanceId(instance)) throw new InvalidMetadataName(`instance ${JSON.stringify(instance.slice(0, 100))}`);
  return `${ACCESS_PREFIX}${instance}.json`;
}

/** An instance id from anything (a URL, a host name): the characters a key may hold. */
export function instanceIdOf(s: string): string {
  const id = s.replace(/^[a-z]+:\/\//, '').replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 128);
  return id.length > 0 ? id : 'instance';
}
