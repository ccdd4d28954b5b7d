// Rendezvous (highest random weight) hashing: the owner of a key among a set of members is the
// member whose hash of (member, key) is highest. Every member computes the same owner from the
// same member list with no coordination, and when a member leaves only the keys it owned move
// (each to its runner-up); when one joins it takes about 1/n of the keys from the others.
import { createHash } from 'node:crypto';

/** A member's weight for a key: the first 8 bytes of sha256(member NUL key), as an unsigned 64-bit integer. */
export function weight(member: string, key: string): bigint {
  return createHash('sha256').update(member).update('\0').update(key).digest().readBigUInt64BE(0);
}

/**
 * The owner of `key` among `members` (undefined when there are none). Ties (practically never)
 * go to the lexically smaller member, so the answer does not depend on the list's order.
 */
export function ownerOf(key: string, members: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestWeight = -1n;
  for (const m of members) {
    const w = weight(m, key);
    if (w > bestWeight || (w === bestWeight && best !== undefined && m < best)) {
      best = m;
      bestWeight = w;
    }
  }
  return best;
}
