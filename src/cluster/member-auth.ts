// Whether a request comes from another member of this cluster: its Ocirelay-Cluster-Token
// equals the shared token. Compared as sha256 hashes with timingSafeEqual (equal lengths
// whatever was sent), so the answer's timing tells a guesser nothing. A wrong or missing token
// is no error: the request is served as any client's (it only loses the member flag, which
// keeps the owner from asking the region's shared tiers).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { ClusterMetrics } from './cluster-metrics.ts';

export const CLUSTER_TOKEN_HEADER = 'ocirelay-cluster-token';

const hash = (s: string) => createHash('sha256').update(s, 'utf8').digest();

export function memberAuth(token: string, metrics: ClusterMetrics): (header: string | undefined) => boolean {
  const expected = hash(token);
  return (header) => {
    if (header === undefined) return false;
    const ok = timingSafeEqual(hash(header), expected);
    metrics.memberRequests.inc({ result: ok ? 'accepted' : 'refused' });
    return ok;
  };
}
