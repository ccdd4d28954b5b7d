// The paths replication peers push to, in the path-prefix form only:
//   <registry>/<repository>/blobs/uploads/[<session>]    start, append to, finish an upload
//   <registry>/<repository>/blobs/<digest>               HEAD: "do you have it"
//   <registry>/<repository>/manifests/<tag|digest>
//   <registry>/<repository>/_ocirelay/freeze/<tag>       a frozen tag
//   <registry>/<repository>/_ocirelay/pin                a pin
// `_ocirelay` cannot be a repository component (components start with a letter or digit). The
// registry must be a configured one (a key of `registries:`), never an address.
import { RegistryError } from '../errors.ts';
import { parseDigest, type Digest } from '../oci/digest.ts';
import { isValidName, isValidTag, looksLikeDigest } from '../oci/reference.ts';

interface Base {
  registry: string;
  repository: string;
}

export type PushTarget =
  | (Base & { kind: 'upload'; session: string })
  | (Base & { kind: 'blob'; digest: Digest })
  | (Base & { kind: 'manifest'; reference: string })
  | (Base & { kind: 'freeze'; tag: string })
  | (Base & { kind: 'pin' });

const UPLOAD_RE = /^(.+)\/blobs\/uploads\/([^/]*)$/;
const BLOB_RE = /^(.+)\/blobs\/([^/]+)$/;
const MANIFEST_RE = /^(.+)\/manifests\/([^/]+)$/;
const FREEZE_RE = /^(.+)\/_ocirelay\/freeze\/([^/]+)$/;
const PIN_RE = /^(.+)\/_ocirelay\/pin$/;

/** `<registry>/<repository>` -> its parts; refuses unconfigured registries and bad names. */
export function splitName(name: string, registries: ReadonlySet<string> | ReadonlyMap<string, unknown>): Base {
  const slash = name.indexOf('/');
  const registry = (slash > 0 ? name.slice(0, slash) : '').toLowerCase();
  if (registry === '' || !registries.has(registry)) {
    throw new RegistryError('NAME_UNKNOWN', `registry "${(slash > 0 ? name.slice(0, slash) : name).slice(0, 200)}" is not configured here (pushes use /v2/<registry>/<repository>/...)`);
  }
  const path = name.slice(slash + 1);
  if (!isValidName(path)) throw new RegistryError('NAME_INVALID', `invalid repository name "${path.slice(0, 300)}"`);
  // As the read path (RegistryRouter): Docker Hub's official images live under library/.
  const repository = registry === 'docker.io' && !path.includes('/') ? `library/${path}` : path;
  return { registry, repository };
}

/** `rest` is the path after /v2/; undefined when it is none of the push paths. */
export function parsePushPath(rest: string, registries: ReadonlySet<string> | ReadonlyMap<string, unknown>): PushTarget | undefined {
  let m: RegExpExecArray | null;
  if ((m = UPLOAD_RE.exec(rest))) return { kind: 'upload', ...splitName(m[1]!, registries), session: m[2]! };
  if ((m = BLOB_RE.exec(rest))) {
    const base = splitName(m[1]!, registries);
    const digest = parseDigest(m[2]!);
    if (!digest) throw new RegistryError('DIGEST_INVALID', `unsupported or malformed digest "${m[2]!.slice(0, 200)}"`);
    return { kind: 'blob', ...base, digest };
  }
  if ((m = MANIFEST_RE.exec(rest))) {
    const base = splitName(m[1]!, registries);
    const ref = m[2]!;
    if (looksLikeDigest(ref) ? !parseDigest(ref) : !isValidTag(ref)) {
      throw new RegistryError(looksLikeDigest(ref) ? 'DIGEST_INVALID' : 'TAG_INVALID', `invalid manifest reference "${ref.slice(0, 200)}"`);
    }
    return { kind: 'manifest', ...base, reference: ref };
  }
  if ((m = FREEZE_RE.exec(rest))) {
    const base = splitName(m[1]!, registries);
    if (!isValidTag(m[2]!)) throw new RegistryError('TAG_INVALID', `invalid tag "${m[2]!.slice(0, 200)}"`);
    return { kind: 'freeze', ...base, tag: m[2]! };
  }
  if ((m = PIN_RE.exec(rest))) return { kind: 'pin', ...splitName(m[1]!, registries) };
  return undefined;
}

const RFC3339_MS = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/i;

/** An RFC 3339 time (Ocirelay-Resolved-At, freeze and pin times) or ms since epoch -> ms; undefined when invalid. */
export function parseTime(v: unknown): number | undefined {
  if (typeof v === 'number') return Number.isSafeInteger(v) && v >= 0 ? v : undefined;
  if (typeof v !== 'string' || !RFC3339_MS.test(v)) return undefined;
  const ms = Date.parse(v);
  return Number.isFinite(ms) && ms >= 0 ? ms : undefined;
}
