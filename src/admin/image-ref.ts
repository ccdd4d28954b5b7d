// Image and repository references as operators write them: `docker.io/library/alpine:3.19`,
// `alpine:3.19` (default registry), `ghcr.io/org/app@sha256:...`. Parsed with the same rules as
// the /v2 routes (RegistryRouter), so the admin API and the pull path agree on every name.
import { RegistryError } from '../errors.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import type { RegistryRouter } from '../registry-router.ts';

export interface ImageRef {
  registry: string;
  repository: string;
  tag?: string;
  digest?: Digest;
  /** Normalised: registry/repository:tag or registry/repository@digest. */
  canonical: string;
}

export interface RepoRef {
  registry: string;
  repository: string;
  canonical: string;
}

export function parseImageRef(router: RegistryRouter, input: unknown): ImageRef {
  if (typeof input !== 'string' || input.length === 0 || input.length > 600) throw new RegistryError('NAME_INVALID', 'image must be a reference like docker.io/library/alpine:3.19');
  let name = input.trim();
  let digest: Digest | undefined;
  const at = name.indexOf('@');
  if (at >= 0) {
    const raw = name.slice(at + 1);
    name = name.slice(0, at);
    digest = parseDigest(raw);
    if (digest === undefined) throw new RegistryError('DIGEST_INVALID', `"${raw.slice(0, 100)}" is not a sha256 digest`);
  }
  let tag: string | undefined;
  const colon = name.lastIndexOf(':');
  if (colon > name.lastIndexOf('/')) {
    tag = name.slice(colon + 1);
    name = name.slice(0, colon);
  }
  if (!digest && !tag) tag = 'latest';
  const reference = digest ?? tag!;
  const route = router.resolve(`${name}/manifests/${reference}`, undefined);
  return {
    registry: route.registry,
    repository: route.repository,
    ...(tag !== undefined && digest === undefined ? { tag } : {}),
    ...(digest !== undefined ? { digest } : {}),
    canonical: `${route.registry}/${route.repository}${digest ? `@${digest}` : `:${tag}`}`,
  };
}

export function parseRepoRef(router: RegistryRouter, input: unknown): RepoRef {
  if (typeof input !== 'string' || input.length === 0 || input.length > 600) throw new RegistryError('NAME_INVALID', 'repository must be like docker.io/library/alpine');
  const route = router.resolve(`${input.trim()}/tags/list`, undefined);
  return { registry: route.registry, repository: route.repository, canonical: `${route.registry}/${route.repository}` };
}
