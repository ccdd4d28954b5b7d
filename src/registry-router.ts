// Maps the three client forms onto (registry, repository):
//   containerd hosts.toml:   /v2/<repo>/...?ns=<registry>
//   registries.conf prefix:  /v2/<registry>/<repo>/...
//   Docker registry-mirrors: /v2/<repo>/...            (the default registry)
// `ns` and prefixes are keys into the configured registries, never addresses to connect to.
import { RegistryError } from './errors.ts';
import { parseDigest, type Digest } from './oci/digest.ts';
import { isValidName, isValidTag, looksLikeDigest } from './oci/reference.ts';

export type V2Kind = 'manifests' | 'blobs' | 'tags' | 'referrers';

export interface V2Route {
  kind: V2Kind;
  registry: string;
  repository: string;
  /** Tag or digest for manifests; digest for blobs and referrers; '' for tags. */
  reference: string;
  /** The reference parsed as a digest, when it is one (always set for blobs and referrers). */
  digest: Digest | undefined;
  /** The client's path up to and including the kind segment, for rewriting Link headers. */
  clientPath: string;
}

const KIND_RE = /^(.*)\/(manifests|blobs|referrers)\/([^/]+)$|^(.*)\/tags\/list$/;

/** Does a first path segment look like a registry host (has a dot or port, or is localhost)? */
function looksLikeRegistry(seg: string): boolean {
  return seg.includes('.') || seg.includes(':') || seg === 'localhost';
}

export class RegistryRouter {
  constructor(
    private readonly registries: ReadonlySet<string> | ReadonlyMap<string, unknown>,
    private readonly defaultRegistry: string,
  ) {}

  /** `rest` is the path after `/v2/` (percent-decoding is not applied: names have no escapes). */
  resolve(rest: string, ns: string | undefined): V2Route {
    const m = KIND_RE.exec(rest);
    if (!m) throw new RegistryError('NAME_INVALID', 'not an OCI distribution API path', { status: 404 });
    const kind: V2Kind = m[2] !== undefined ? (m[2] as V2Kind) : 'tags';
    let path = (m[1] ?? m[4] ?? '');
    const reference = m[3] ?? '';

    let registry: string;
    if (ns !== undefined) {
      const key = ns.toLowerCase();
      if (!this.registries.has(key)) throw new RegistryError('NAME_UNKNOWN', `registry "${ns}" is not configured on this mirror`);
      registry = key;
      // A client that also prefixed the path with the same registry: strip it.
      if (path.startsWith(`${key}/`)) path = path.slice(key.length + 1);
    } else {
      const slash = path.indexOf('/');
      const first = slash > 0 ? path.slice(0, slash) : '';
      if (first && looksLikeRegistry(first)) {
        const key = first.toLowerCase();
        if (!this.registries.has(key)) throw new RegistryError('NAME_UNKNOWN', `registry "${first}" is not configured on this mirror`);
        registry = key;
        path = path.slice(slash + 1);
      } else {
        registry = this.defaultRegistry;
      }
    }
    if (!isValidName(path)) throw new RegistryError('NAME_INVALID', `invalid repository name "${path.slice(0, 300)}"`);
    // Docker Hub's official images live under library/.
    const repository = registry === 'docker.io' && !path.includes('/') ? `library/${path}` : path;

    const digest = parseDigest(reference);
    if (kind === 'manifests') {
      if (looksLikeDigest(reference)) {
        if (digest === undefined) throw new RegistryError('DIGEST_INVALID', `unsupported or malformed digest "${reference.slice(0, 200)}"`);
      } else if (!isValidTag(reference)) {
        throw new RegistryError('TAG_INVALID', `invalid tag "${reference.slice(0, 200)}"`);
      }
    } else if (kind === 'blobs' || kind === 'referrers') {
      if (digest === undefined) throw new RegistryError('DIGEST_INVALID', `unsupported or malformed digest "${reference.slice(0, 200)}"`);
    }
    const clientPath = kind === 'tags' ? `/v2/${rest}` : `/v2/${rest.slice(0, rest.length - reference.length - 1)}`;
    return { kind, registry, repository, reference, digest, clientPath };
  }
}
