// What a region received from its replication peers, read from its debug log lines
// ('received blob', 'received manifest': one per push that reached the store), so a test can
// count how many times each blob or manifest crossed a link.
import type { OcirelayProcess } from './ocirelay-process.ts';

export interface ReceivedPush {
  kind: 'blob' | 'manifest';
  /** The accepted entry's name the push came with. */
  peer: string;
  registry: string;
  repository: string;
  /** A blob's digest; a manifest's tag or digest as pushed. */
  reference: string;
  /** stored, exists, ... (receive-store's result). */
  result: string;
}

export function receivedPushes(p: OcirelayProcess): ReceivedPush[] {
  const out: ReceivedPush[] = [];
  for (const l of p.logs()) {
    if (l.msg !== 'received blob' && l.msg !== 'received manifest') continue;
    const blob = l.msg === 'received blob';
    out.push({
      kind: blob ? 'blob' : 'manifest',
      peer: String(l.peer),
      registry: String(l.registry),
      repository: String(l.repository),
      reference: String(blob ? l.digest : l.reference),
      result: String(l.result),
    });
  }
  return out;
}
