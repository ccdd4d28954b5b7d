// The single owner of in-flight blob downloads: at most one fill per digest at any time.
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { BlobFill, WindowBudget, type FillFailure, type FillHooks } from './blob-fill.ts';
import type { Digest } from '../oci/digest.ts';

export type StartFill = Omit<FillHooks, 'onFinished' | 'windowBudget' | 'maxUnknownSize'>;

/**
 * Memory all fills together keep for readers close behind them (see BlobFill's window): a herd
 * on one blob uses one fill's 4 MiB (plus the batches being written); many parallel fills share this.
 */
const FILL_WINDOWS_BYTES = 32 * 1024 * 1024;

export class BlobFills {
  private readonly inFlight = new Map<Digest, BlobFill>();
  private readonly idle = new Set<() => void>();
  private readonly windowBudget = new WindowBudget(FILL_WINDOWS_BYTES);

  constructor(
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    /** cache.maxBlobBytes: the cap on a fill (or pass-through) whose upstream sent no length. */
    readonly maxBlobBytes: number = 16 * 2 ** 30,
  ) {
    metrics.fillMemory = () => this.windowBudget.used;
  }

  get(digest: Digest): BlobFill | undefined {
    return this.inFlight.get(digest);
  }

  get size(): number {
    return this.inFlight.size;
  }

  /** Bytes the running fills have yet to write (of those whose size is known). */
  inFlightRemaining(): number {
    let n = 0;
    for (const f of this.inFlight.values()) if (f.size !== undefined) n += Math.max(0, f.size - f.written);
    return n;
  }

  /** Bytes the running fills will put on disk (expected size, else what they wrote so far). */
  inFlightBytes(): number {
    let n = 0;
    for (const f of this.inFlight.values()) n += f.size ?? f.written;
    return n;
  }

  /**
   * Join the fill of `digest` if one runs, else start one with `hooks`. Registration is
   * synchronous, so concurrent callers in the same tick all end up on the same fill.
   */
  joinOrStart(digest: Digest, origin: string, tempPath: string, hooks: StartFill): { fill: BlobFill; joined: boolean } {
    const existing = this.inFlight.get(digest);
    if (existing) {
      this.metrics.coalescedWaiters.inc();
      return { fill: existing, joined: true };
    }
    const fill = new BlobFill(digest, origin, tempPath, {
      ...hooks,
      onFinished: (f, outcome) => this.finished(f, outcome),
      maxUnknownSize: this.maxBlobBytes,
      windowBudget: this.windowBudget,
    });
    this.inFlight.set(digest, fill);
    this.metrics.fillsInFlight.set(this.inFlight.size);
    void fill.run();
    return { fill, joined: false };
  }

  private finished(fill: BlobFill, outcome: 'committed' | FillFailure): void {
    if (this.inFlight.get(fill.digest) === fill) this.inFlight.delete(fill.digest);
    this.metrics.fillsInFlight.set(this.inFlight.size);
    this.metrics.fillResults.inc({ result: outcome });
    if (outcome === 'digest_mismatch' || outcome === 'size_mismatch') this.metrics.digestMismatches.inc({ kind: 'blob' });
    const log = { digest: fill.digest, origin: fill.origin, bytes: fill.written, outcome };
    if (outcome === 'committed') this.logger.debug(log, 'fill committed');
    else this.logger.warn({ ...log, err: fill.error?.message }, 'fill failed; nothing cached');
    if (this.inFlight.size === 0) for (const w of this.idle) w();
  }

  /** Wait (bounded) for running fills to finish; cancel those still running after `ms`. */
  async drain(ms: number): Promise<void> {
    if (this.inFlight.size === 0) return;
    let done!: () => void;
    const idle = new Promise<void>((r) => (done = r));
    this.idle.add(done);
    const timer = setTimeout(() => {
      for (const f of this.inFlight.values()) f.cancel();
    }, ms);
    await idle;
    clearTimeout(timer);
    this.idle.delete(done);
  }
}
