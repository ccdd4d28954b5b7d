// The metric of the receiving side, registered on the process's Metrics registry beside the
// receiver (as replication-metrics.ts does for the sending side), so the shared metrics.ts stays small.
import { Counter } from 'prom-client';
import type { Metrics } from '../metrics.ts';

export class ReceiveMetrics {
  readonly received: Counter<'peer' | 'kind' | 'result'>;

  private constructor(m: Metrics) {
    this.received = new Counter({
      name: 'ocirelay_replication_received_total',
      help: 'Pushes received from replication peers by peer, kind (blob, mount, manifest, tag, freeze, pin; upload for refused authentication) and result (stored, exists, mounted, skipped_older, digest_invalid, refused, error, unauthorized, denied)',
      labelNames: ['peer', 'kind', 'result'],
      registers: [m.registry],
    });
  }

  private static readonly sets = new WeakMap<Metrics, ReceiveMetrics>();

  /** The set registered on `m` (made on first use: a registry takes each name once). */
  static of(m: Metrics): ReceiveMetrics {
    let r = ReceiveMetrics.sets.get(m);
    if (!r) ReceiveMetrics.sets.set(m, (r = new ReceiveMetrics(m)));
    return r;
  }
}
