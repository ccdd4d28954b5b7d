// The shape of GET /api/v1/replication and `ocirelay replication --json` (docs/admin-api.md).

export interface PeerStatus {
  name: string;
  kind: 'ocirelay' | 'registry';
  url: string;
  /** Jobs in the peer's outbox. */
  pending: number;
  /** Age of the oldest pending job, seconds (0 when none). */
  lagSeconds: number;
  /** Last job sent (ISO 8601), null before the first. */
  lastSuccess: string | null;
  lastError: { at: string; message: string } | null;
  /** The peer failed as a whole: no job is tried until its backoff ends. */
  backingOff: boolean;
  /**
   * DR readiness: the share of this region's cached images (by count and by bytes) confirmed
   * present at the peer since this process started (0..1; 1 when nothing is cached).
   */
  readiness: { images: number; bytes: number };
}

export interface ReplicationStatus {
  region: string;
  peers: PeerStatus[];
}
