// Whether the region's bucket is usable, one owner for the whole process. S3 trouble never fails
// a pull: while the bucket is down the S3 read source is skipped at once (no request waits on
// S3), the write-behind holds its jobs, /readyz reports degraded and ocirelay_s3_up is 0. Down
// is learnt from any call that failed with S3Unavailable (reads, writes, this probe) and from a
// probe every few seconds (a HEAD of a key that never exists: any answer, 404 included, means
// S3 is up), so an S3 that accepts connections and never answers is found within S3Bucket's
// headers deadline even when no pull touches it.
//
// At start-up the bucket is checked: reachable, credentials accepted, and conditional writes
// honoured (a probe object created twice with IfNoneMatch '*': the second must be refused).
// The write-behind's correctness across instances rests on that refusal, so a store that ignores
// If-None-Match is reported loudly and, with a cluster configured, refused at start-up.
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import { HEALTH_KEY, probeKey } from './bucket-layout.ts';
import { S3Unavailable, type S3Bucket } from './bucket.ts';

export type ConditionalWrites = 'honoured' | 'ignored' | 'unknown';

/** Thrown by the start-up check when the instance must not start (config or store unfit). */
export class S3StartupError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'S3StartupError';
  }
}

// A failure of the bucket itself; other S3Unavailable reasons ('other': a 4xx about one request) are that request's.
const OUTAGE_REASONS = new Set(['timeout', 'network', 'server', 'throttled', 'auth']);

export function isS3Outage(e: unknown): boolean {
  return outageReason(e) !== undefined;
}

function outageReason(e: unknown): S3Unavailable | undefined {
  return e instanceof S3Unavailable && OUTAGE_REASONS.has(e.reason) ? e : undefined;
}

export class S3Health {
  #up = true;
  #problem: string | undefined;
  #conditional: ConditionalWrites = 'unknown';
  #timer: NodeJS.Timeout | undefined;
  #probing = false;
  #waiters: Array<() => void> = [];
  #upListeners: Array<() => void> = [];

  constructor(
    private readonly bucket: S3Bucket,
    private readonly o: { metrics: Metrics; logger: Logger; clustered: boolean; intervalMs?: number },
  ) {
    o.metrics.s3Up.set(1);
  }

  get up(): boolean {
    return this.#up;
  }

  /** Why the bucket is down (readiness), undefined while up. */
  get problem(): string | undefined {
    return this.#up ? undefined : this.#problem;
  }

  get conditionalWrites(): ConditionalWrites {
    return this.#conditional;
  }

  /** Writes to the bucket are allowed: refused in a cluster on a store that ignores If-None-Match. */
  get writesAllowed(): boolean {
    return !(this.o.clustered && this.#conditional === 'ignored');
  }

  /**
   * The start-up check. An outage (unreachable, timing out, 5xx) starts the instance with the
   * bucket down (the probe finds it back; the check runs then); refused credentials, a missing
   * bucket, or (with a cluster) ignored conditional writes throw S3StartupError.
   */
  async check(): Promise<void> {
    try {
      await this.checkConditionalWrites();
    } catch (e) {
      if (e instanceof S3StartupError) throw e;
      if (e instanceof S3Unavailable && e.reason !== 'auth' && e.reason !== 'other') {
        this.failed(e);
        this.o.logger.warn({ bucket: this.bucket.bucket, err: e.message }, 'S3 bucket unreachable at start-up: starting without it (pulls use disk and upstream); it is probed every few seconds');
        return;
      }
      throw new S3StartupError(`S3 bucket ${this.bucket.bucket} unusable (credentials from the AWS SDK's default chain; does the bucket exist?): ${(e as Error).message}`);
    }
  }

  private async checkConditionalWrites(): Promise<void> {
    const key = probeKey();
    const body = Buffer.from(`ocirelay start-up probe ${new Date().toISOString()}\n`);
    const first = await this.bucket.putIfAbsent(key, () => body, body.length, 'text/plain');
    const second = await this.bucket.putIfAbsent(key, () => body, body.length, 'text/plain');
    await this.bucket.delete(key).catch((e: unknown) => this.o.logger.warn({ key, err: (e as Error).message }, 'could not delete the S3 start-up probe object'));
    if (first === 'created' && second === 'exists') {
      this.#conditional = 'honoured';
      this.o.logger.info({ bucket: this.bucket.bucket, prefix: this.bucket.prefix }, 'S3 bucket checked: reachable, credentials accepted, conditional writes honoured');
      return;
    }
    this.#conditional = 'ignored';
    const msg = `S3 store ignores If-None-Match (a second create of ${key} was not refused): instances sharing this bucket would silently overwrite each other's writes`;
    if (this.o.clustered) {
      this.o.logger.error({ bucket: this.bucket.bucket }, `${msg}; writes from a cluster are refused`);
      throw new S3StartupError(`${msg}. With cluster configured this store cannot be used: use a store that enforces conditional writes (AWS S3, MinIO, R2)`);
    }
    this.o.logger.error({ bucket: this.bucket.bucket }, `${msg}; continuing because this instance is alone (no cluster configured): do not share this bucket`);
  }

  /** Starts the periodic probe. */
  start(): void {
    if (this.#timer) return;
    this.#timer = setInterval(() => void this.probe(), this.o.intervalMs ?? 5000);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    // Waiters (the write-behind's workers) wake and see that they are stopping.
    for (const w of this.#waiters.splice(0)) w();
  }

  /** One probe; the next starts only once this one is answered (a hung S3 holds one probe, not many). */
  async probe(): Promise<void> {
    if (this.#probing) return;
    this.#probing = true;
    try {
      await this.bucket.head(HEALTH_KEY);
      if (!this.#up) this.recovered();
      if (this.#conditional === 'unknown') await this.check().catch((e: unknown) => this.o.logger.error({ err: (e as Error).message }, 'S3 check after recovery failed'));
    } catch (e) {
      this.failed(e);
    } finally {
      this.#probing = false;
    }
  }

  /** Any call's failure: an outage marks the bucket down (other errors are that call's). Returns whether it was an outage. */
  failed(err: unknown): boolean {
    const e = outageReason(err);
    if (e === undefined) return false;
    this.#problem = `S3 bucket ${this.bucket.bucket} unavailable (${e.reason}): ${e.message}`;
    if (this.#up) {
      this.#up = false;
      this.o.metrics.s3Up.set(0);
      this.o.logger.warn({ bucket: this.bucket.bucket, reason: e.reason, err: e.message }, 'S3 bucket down: reads skip it, the write-behind waits');
    }
    return true;
  }

  private recovered(): void {
    this.#up = true;
    this.#problem = undefined;
    this.o.metrics.s3Up.set(1);
    this.o.logger.info({ bucket: this.bucket.bucket }, 'S3 bucket back: the write-behind resumes');
    for (const w of this.#waiters.splice(0)) w();
    for (const l of this.#upListeners) l();
  }

  /** Resolves when the bucket is up (at once if it is). */
  whenUp(): Promise<void> {
    if (this.#up) return Promise.resolve();
    return new Promise((r) => this.#waiters.push(r));
  }

  onUp(l: () => void): void {
    this.#upListeners.push(l);
  }
}
