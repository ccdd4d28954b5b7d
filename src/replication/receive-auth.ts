// Who may push into this instance: the Bearer tokens of replication.accept. Tokens are compared
// as sha256 hashes with timingSafeEqual (equal lengths whatever the token), against every entry,
// so neither the answer's timing nor an early exit tells a guesser anything about a token.
import { createHash, timingSafeEqual } from 'node:crypto';
import { RegistryError } from '../errors.ts';

export const REPLICATION_CHALLENGE = 'Bearer realm="ocirelay-replication"';

const hash = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export class ReceiveAuth {
  private readonly accepted: Array<{ name: string; hash: Buffer }>;

  constructor(accept: ReadonlyArray<{ readonly name: string; readonly token: string }>) {
    this.accepted = accept.map((a) => ({ name: a.name, hash: hash(a.token) }));
  }

  /** The accepted peer a request's Authorization header names, if any. */
  peerOf(authorization: string | undefined): string | undefined {
    const m = authorization === undefined ? null : /^Bearer +(\S+) *$/i.exec(authorization);
    if (!m) return undefined;
    const given = hash(m[1]!);
    let found: string | undefined;
    for (const a of this.accepted) if (timingSafeEqual(given, a.hash) && found === undefined) found = a.name;
    return found;
  }

  /** The peer, or the error to answer: 401 with a challenge without a token, 403 with a wrong one. */
  require(authorization: string | undefined): string {
    if (authorization === undefined || authorization.trim() === '') {
      throw new RegistryError('UNAUTHORIZED', 'authentication required: replication pushes need a Bearer token of replication.accept', {
        headers: { 'WWW-Authenticate': REPLICATION_CHALLENGE },
      });
    }
    const peer = this.peerOf(authorization);
    if (peer === undefined) throw new RegistryError('DENIED', 'this token may not push here (not in replication.accept)');
    return peer;
  }
}
