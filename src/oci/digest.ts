// The one validated digest type. A `Digest` is a string that passed the sha256 grammar check
// (`sha256:` + 64 lower-case hex) here, or was computed by hashing bytes here; nothing else can
// make one (the brand is a type only the functions of this module produce), so the storage layer,
// which builds file paths from digests, takes `Digest` and the compiler refuses a raw string.
import { createHash, type Hash } from 'node:crypto';

declare const validated: unique symbol;
export type Digest = string & { readonly [validated]: 'sha256' };

const SHA256_RE = /^sha256:[a-f0-9]{64}$/;

/** The digest if `s` is one we can verify (sha256:<64 hex>), else undefined. */
export function parseDigest(s: string): Digest | undefined {
  return SHA256_RE.test(s) ? (s as Digest) : undefined;
}

/** Type guard form of parseDigest, for filters and conditions. */
export function isDigest(s: string): s is Digest {
  return SHA256_RE.test(s);
}

/** The digest of bytes in memory. */
export function digestOf(data: Buffer): Digest {
  return `sha256:${createHash('sha256').update(data).digest('hex')}` as Digest;
}

/** The digest a finished sha256 hash stands for. */
export function digestOfHash(hash: Hash): Digest {
  return `sha256:${hash.digest('hex')}` as Digest;
}

/** The digest a blob file name (64 hex) stands for, if it is one. */
export function digestFromHex(hex: string): Digest | undefined {
  return parseDigest(`sha256:${hex}`);
}

/** The 64 hex digits: safe in a file name because the type guarantees the grammar. */
export function digestHex(digest: Digest): string {
  return digest.slice('sha256:'.length);
}
