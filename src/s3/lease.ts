// A lease object in the bucket ({holder, expiresAt}) that elects one member of the region for a
// job (the bucket budget). Taken and renewed only with conditional writes: created with
// If-None-Match (two contenders: one 412s), renewed by its holder or taken over once expired
// with If-Match on the ETag just read (a concurrent renewal or takeover makes ours 412). The
// holder acts only while its own clock says the lease it wrote is still valid, less a margin,
// so a holder that stalls past its expiry stops before a successor starts (clock skew between
// members must stay below the margin).
import type { S3Bucket } from './bucket.ts';
import { leaseKey } from './metadata-keys.ts';

export interface LeaseOptions {
  bucket: S3Bucket;
  /** The job's name: meta/lease/<name>.json. */
  name: string;
  /** This member's id (written into the lease). */
  holder: string;
  /** Default 60 s. */
  ttlMs?: number;
  /** The holder stops acting this long before the expiry it wrote; default ttl / 6. */
  marginMs?: number;
  now?: () => number;
}

export interface LeaseRecord {
  holder: string;
  expiresAt: number;
}

function parseLease(v: unknown): LeaseRecord | undefined {
  const o = typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  if (!o || typeof o.holder !== 'string' || typeof o.expiresAt !== 'number' || !Number.isFinite(o.expiresAt)) return undefined;
  return { holder: o.holder, expiresAt: o.expiresAt };
}

export class Lease {
  private validUntil = 0;
  private readonly key: string;
  private readonly ttlMs: number;
  private readonly marginMs: number;
  private readonly now: () => number;

  constructor(private readonly o: LeaseOptions) {
    this.key = leaseKey(o.name);
    this.ttlMs = o.ttlMs ?? 60_000;
    this.marginMs = o.marginMs ?? Math.floor(this.ttlMs / 6);
    this.now = o.now ?? Date.now;
  }

  /** Whether this member holds the lease now (by its own clock). */
  get held(): boolean {
    return this.now() < this.validUntil;
  }

  get holder(): string {
    return this.o.holder;
  }

  /** The lease as stored (who holds it, until when), or undefined. */
  async current(): Promise<LeaseRecord | undefined> {
    const got = await this.o.bucket.getJson(this.key);
    return got ? parseLease(got.value) : undefined;
  }

  /** Takes the lease when free or expired, renews it when held: true when this member holds it now. Throws S3Unavailable. */
  async tryAcquire(): Promise<boolean> {
    const start = this.now();
    try {
      const got = await this.o.bucket.getJson(this.key);
      const cur = got ? parseLease(got.value) : undefined;
      if (cur && cur.holder !== this.o.holder && cur.expiresAt > start) {
        this.validUntil = 0;
        return false;
      }
      const next: LeaseRecord = { holder: this.o.holder, expiresAt: start + this.ttlMs };
      const r = await this.o.bucket.putJson(this.key, next, got ? { ifMatch: got.etag } : { ifNoneMatch: true });
      // Valid from when we started asking: the request's own duration eats into it, never extends it.
      this.validUntil = r === 'conflict' ? 0 : start + this.ttlMs - this.marginMs;
      return r !== 'conflict';
    } catch (e) {
      // Not knowing whether the renewal landed: stop acting.
      this.validUntil = 0;
      throw e;
    }
  }

  /** Gives the lease up (expires it now) if this member holds it; best effort. */
  async release(): Promise<void> {
    if (!this.held) return;
    this.validUntil = 0;
    const got = await this.o.bucket.getJson(this.key);
    const cur = got ? parseLease(got.value) : undefined;
    if (got && cur?.holder === this.o.holder) await this.o.bucket.putJson(this.key, { holder: this.o.holder, expiresAt: 0 }, { ifMatch: got.etag });
  }
}
