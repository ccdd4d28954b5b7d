// Counts what the upstream registry sent, at the upstream: its own access log (one line per
// request, with the body bytes written) read from a mark, after the upstream has gone quiet
// (its written-bytes counter stops moving), so downloads a proxy finishes after its clients
// are served are counted too.
import { open, stat } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseAccessLog, type AccessLogEntry, type RegistryFixture } from '../test/fixtures/registry.ts';
import { writtenBytes } from './proc-stats.ts';

export interface UpstreamTraffic {
  /** GETs of the blob. */
  blobGets: number;
  /** Body bytes sent for GETs of the blob. */
  blobBytes: number;
  /** Every request in the window, by method. */
  requests: Record<string, number>;
  /** Body bytes of every request in the window. */
  totalBytes: number;
}

export class UpstreamMeter {
  constructor(private readonly upstream: RegistryFixture) {}

  /** A position in the access log; entries after it belong to the next measurement. */
  async mark(): Promise<number> {
    return (await stat(this.upstream.process.logFile)).size;
  }

  /** Wait until the upstream has written nothing for `quietMs` (bounded by `maxMs`). */
  async waitQuiet(quietMs = 1_000, maxMs = 120_000): Promise<void> {
    const pid = this.upstream.process.pid;
    const deadline = Date.now() + maxMs;
    let last = await writtenBytes(pid);
    let stableSince = Date.now();
    while (Date.now() < deadline) {
      await sleep(100);
      const now = await writtenBytes(pid);
      if (now !== last) {
        last = now;
        stableSince = Date.now();
      } else if (Date.now() - stableSince >= quietMs) {
        return;
      }
    }
    throw new Error(`upstream still sending after ${maxMs} ms`);
  }

  async entriesSince(mark: number): Promise<AccessLogEntry[]> {
    const fh = await open(this.upstream.process.logFile, 'r');
    try {
      const { size } = await fh.stat();
      const buf = Buffer.alloc(Math.max(0, size - mark));
      if (buf.length > 0) await fh.read(buf, 0, buf.length, mark);
      return parseAccessLog(buf.toString('utf8'));
    } finally {
      await fh.close();
    }
  }

  async trafficSince(mark: number, blobDigest: string): Promise<UpstreamTraffic> {
    const entries = await this.entriesSince(mark);
    const requests: Record<string, number> = {};
    let blobGets = 0;
    let blobBytes = 0;
    let totalBytes = 0;
    for (const e of entries) {
      requests[e.method] = (requests[e.method] ?? 0) + 1;
      totalBytes += e.bytes;
      if (e.method === 'GET' && e.path.includes(`/blobs/${blobDigest}`)) {
        blobGets++;
        blobBytes += e.bytes;
      }
    }
    return { blobGets, blobBytes, requests, totalBytes };
  }
}
