// The OCI distribution-spec grammar for repository names, tags and digests (sha256 digests: digest.ts).
// Anything that does not match is rejected before it can reach a file path or an upstream URL.

const NAME_COMPONENT = '[a-z0-9]+(?:(?:\\.|_|__|-+)[a-z0-9]+)*';
const NAME_RE = new RegExp(`^${NAME_COMPONENT}(?:/${NAME_COMPONENT})*$`);
const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
export const MAX_NAME_LENGTH = 255;

export function isValidName(name: string): boolean {
  return name.length > 0 && name.length <= MAX_NAME_LENGTH && NAME_RE.test(name);
}

export function isValidTag(tag: string): boolean {
  return TAG_RE.test(tag);
}

/** Digests we can verify (the parser lives in digest.ts). Other well-formed algorithms are refused as unsupported. */
export { isDigest as isSha256Digest } from './digest.ts';

/** Anything shaped like `algorithm:encoded` (spec grammar), whether or not we support it. */
export function looksLikeDigest(d: string): boolean {
  return DIGEST_RE.test(d);
}
