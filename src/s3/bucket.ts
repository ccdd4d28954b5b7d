// The one owner of the S3 client: every request to the bucket goes through S3Bucket. Keys are
// given relative to the configured prefix. Each call is bounded: a connect timeout, an idle
// socket timeout (a stalled body), and a deadline for the response headers (an S3 that accepts
// connections and never answers fails within it). Failures of the bucket itself (unreachable,
// timed out, 5xx, throttled, credentials) are thrown as S3Unavailable, so callers can tell "S3
// is down" from "no such object" (undefined) and "someone else wrote it first" ('exists' /
// 'conflict').
import { Readable } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListMultipartUploadsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  S3ServiceException,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';

export interface BucketOptions {
  bucket: string;
  /** Prepended to every key, e.g. "cache/"; default "". */
  prefix?: string;
  /** An S3-compatible endpoint (MinIO, moto, R2); default: AWS for the region. */
  endpoint?: string;
  region?: string;
  forcePathStyle?: boolean;
  /** Default 5 s. */
  connectTimeoutMs?: number;
  /** Response headers must arrive within this; default 30 s. */
  headersTimeoutMs?: number;
  /** A socket without traffic for this long is dropped (a stalled body); default 30 s. */
  idleTimeoutMs?: number;
  /** Objects at least this big are uploaded as multipart uploads; default 64 MiB. */
  multipartThreshold?: number;
  /** A client to use instead of one built from the options (tests). */
  client?: S3Client;
}

/** The bucket failed (not a "no such key"): unreachable, timed out, 5xx, throttled, refused. */
export class S3Unavailable extends Error {
  constructor(
    /** A short label for metrics: timeout, network, throttled, server, auth, other. */
    readonly reason: string,
    message: string,
  ) {
    super(message);
    this.name = 'S3Unavailable';
  }
}

export interface ObjectInfo {
  size: number;
  etag: string;
}

export interface ObjectBody {
  body: Readable;
  /** Bytes in this response (the range's length for a ranged GET). */
  size: number;
  /** The whole object's size. */
  totalSize: number;
  etag: string;
}

export interface ListedObject {
  /** Relative to the prefix. */
  key: string;
  size: number;
  lastModified: Date;
}

export type PutResult = 'created' | 'exists';

/** A conditional write for JSON records: create only if absent, or replace only this ETag. */
export type JsonCondition = { ifNoneMatch: true } | { ifMatch: string };

const MiB = 2 ** 20;
/** 409 ConditionalRequestConflict: S3 asks the client to retry a conditional write. */
const CONFLICT_RETRIES = 5;

export class S3Bucket {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly headersTimeoutMs: number;
  private readonly multipartThreshold: number;

  constructor(o: BucketOptions) {
    this.bucket = o.bucket;
    this.prefix = o.prefix ?? '';
    this.headersTimeoutMs = o.headersTimeoutMs ?? 30_000;
    this.multipartThreshold = o.multipartThreshold ?? 64 * MiB;
    this.client =
      o.client ??
      new S3Client({
        ...(o.endpoint !== undefined ? { endpoint: o.endpoint } : {}),
        ...(o.region !== undefined ? { region: o.region } : {}),
        ...(o.forcePathStyle !== undefined ? { forcePathStyle: o.forcePathStyle } : {}),
        // Retries are ours to decide (the write-behind retries with backoff; reads fall through to the upstream).
        maxAttempts: 2,
        requestHandler: { connectionTimeout: o.connectTimeoutMs ?? 5_000, socketTimeout: o.idleTimeoutMs ?? 30_000 },
      });
  }

  key(rel: string): string {
    return this.prefix + rel;
  }

  async head(rel: string): Promise<ObjectInfo | undefined> {
    try {
      const r = await this.call((abortSignal) => this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.key(rel) }), { abortSignal }));
      return { size: r.ContentLength ?? 0, etag: r.ETag ?? '' };
    } catch (e) {
      if (isStatus(e, 404)) return undefined;
      throw unavailable(e);
    }
  }

  /** The object's body (a byte range of it: `start`..`end` inclusive), or undefined when absent. */
  async get(rel: string, range?: { start: number; end: number }, signal?: AbortSignal): Promise<ObjectBody | undefined> {
    try {
      const r = await this.call(
        (abortSignal) =>
          this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: this.key(rel), ...(range ? { Range: `bytes=${range.start}-${range.end}` } : {}) }), { abortSignal }),
        signal,
      );
      const body = r.Body;
      if (!(body instanceof Readable)) throw new S3Unavailable('other', `GET ${rel}: no body stream`);
      const size = r.ContentLength ?? 0;
      const total = totalFromContentRange(r.ContentRange) ?? size;
      return { body, size, totalSize: total, etag: r.ETag ?? '' };
    } catch (e) {
      if (isStatus(e, 404)) return undefined;
      if (isStatus(e, 416)) return undefined;
      throw unavailable(e);
    }
  }

  /**
   * Creates the object only if no object has that key (IfNoneMatch: '*'): 'exists' when another
   * writer was first (412), which for content-addressed keys means the same bytes. 409 conflicts
   * are retried. At `multipartThreshold` and above (or with an unknown size) the body goes up as
   * a multipart upload that lib-storage aborts when it fails.
   */
  async putIfAbsent(rel: string, body: () => Buffer | Readable, size: number | undefined, contentType = 'application/octet-stream'): Promise<PutResult> {
    for (let attempt = 0; ; attempt++) {
      try {
        if (size !== undefined && size < this.multipartThreshold) {
          await this.call((abortSignal) =>
            this.client.send(new PutObjectCommand({ Bucket: this.bucket, Key: this.key(rel), Body: body(), ContentLength: size, ContentType: contentType, IfNoneMatch: '*' }), { abortSignal }),
          );
        } else {
          const upload = new Upload({
            client: this.client,
            params: { Bucket: this.bucket, Key: this.key(rel), Body: body(), ContentType: contentType, IfNoneMatch: '*' },
            partSize: 16 * MiB,
            queueSize: 2,
            leavePartsOnError: false,
          });
          await upload.done();
        }
        return 'created';
      } catch (e) {
        if (isStatus(e, 412)) return 'exists';
        if (isStatus(e, 409) && attempt < CONFLICT_RETRIES) continue;
        throw unavailable(e);
      }
    }
  }

  /** A JSON record and its ETag, or undefined when absent. */
  async getJson(rel: string): Promise<{ value: unknown; etag: string } | undefined> {
    const got = await this.get(rel);
    if (!got) return undefined;
    const chunks: Buffer[] = [];
    let n = 0;
    for await (const c of got.body as AsyncIterable<Buffer>) {
      n += c.length;
      // Records are small; a huge one is not ours.
      if (n > 16 * MiB) {
        got.body.destroy();
        throw new S3Unavailable('other', `GET ${rel}: record over 16 MiB`);
      }
      chunks.push(c);
    }
    try {
      return { value: JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown, etag: got.etag };
    } catch {
      throw new S3Unavailable('other', `GET ${rel}: not JSON`);
    }
  }

  /** Writes a JSON record under a condition: its new ETag, or 'conflict' when the condition failed (412). */
  async putJson(rel: string, value: unknown, cond?: JsonCondition): Promise<string | 'conflict'> {
    const body = Buffer.from(JSON.stringify(value));
    for (let attempt = 0; ; attempt++) {
      try {
        const r = await this.call((abortSignal) =>
          this.client.send(
            new PutObjectCommand({
              Bucket: this.bucket,
              Key: this.key(rel),
              Body: body,
              ContentLength: body.length,
              ContentType: 'application/json',
              ...(cond && 'ifNoneMatch' in cond ? { IfNoneMatch: '*' } : {}),
              ...(cond && 'ifMatch' in cond ? { IfMatch: cond.ifMatch } : {}),
            }),
            { abortSignal },
          ),
        );
        return r.ETag ?? '';
      } catch (e) {
        if (isStatus(e, 412)) return 'conflict';
        if (isStatus(e, 409) && attempt < CONFLICT_RETRIES) continue;
        throw unavailable(e);
      }
    }
  }

  async delete(rel: string): Promise<void> {
    try {
      await this.call((abortSignal) => this.client.send(new DeleteObjectCommand({ Bucket: this.bucket, Key: this.key(rel) }), { abortSignal }));
    } catch (e) {
      if (isStatus(e, 404)) return;
      throw unavailable(e);
    }
  }

  /** Every object under a relative key prefix, page by page. */
  async *list(relPrefix: string): AsyncGenerator<ListedObject> {
    let token: string | undefined;
    do {
      let r;
      try {
        r = await this.call((abortSignal) =>
          this.client.send(new ListObjectsV2Command({ Bucket: this.bucket, Prefix: this.key(relPrefix), ...(token !== undefined ? { ContinuationToken: token } : {}) }), { abortSignal }),
        );
      } catch (e) {
        throw unavailable(e);
      }
      for (const o of r.Contents ?? []) {
        if (o.Key === undefined) continue;
        yield { key: o.Key.slice(this.prefix.length), size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
      }
      token = r.IsTruncated === true ? r.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /** Aborts multipart uploads under the prefix started before `olderThan` (left by a killed process). */
  async abortStaleUploads(olderThan: Date): Promise<number> {
    let aborted = 0;
    let keyMarker: string | undefined;
    let uploadMarker: string | undefined;
    do {
      let r;
      try {
        r = await this.call((abortSignal) =>
          this.client.send(
            new ListMultipartUploadsCommand({
              Bucket: this.bucket,
              Prefix: this.prefix,
              ...(keyMarker !== undefined ? { KeyMarker: keyMarker } : {}),
              ...(uploadMarker !== undefined ? { UploadIdMarker: uploadMarker } : {}),
            }),
            { abortSignal },
          ),
        );
      } catch (e) {
        throw unavailable(e);
      }
      for (const u of r.Uploads ?? []) {
        if (u.Key === undefined || u.UploadId === undefined) continue;
        if (u.Initiated !== undefined && u.Initiated >= olderThan) continue;
        try {
          await this.call((abortSignal) => this.client.send(new AbortMultipartUploadCommand({ Bucket: this.bucket, Key: u.Key, UploadId: u.UploadId }), { abortSignal }));
          aborted++;
        } catch (e) {
          if (!isStatus(e, 404)) throw unavailable(e);
        }
      }
      const more = r.IsTruncated === true;
      keyMarker = more ? r.NextKeyMarker : undefined;
      uploadMarker = more ? r.NextUploadIdMarker : undefined;
    } while (keyMarker !== undefined);
    return aborted;
  }

  destroy(): void {
    this.client.destroy();
  }

  /** Runs one SDK call with the headers deadline (and the caller's signal) as its abort signal. */
  private async call<T>(fn: (signal: AbortSignal) => Promise<T>, outer?: AbortSignal): Promise<T> {
    const deadline = new AbortController();
    const timer = setTimeout(() => deadline.abort(new S3Unavailable('timeout', `no answer from S3 within ${this.headersTimeoutMs} ms`)), this.headersTimeoutMs);
    timer.unref();
    const signal = outer ? AbortSignal.any([deadline.signal, outer]) : deadline.signal;
    try {
      return await fn(signal);
    } catch (e) {
      if (deadline.signal.aborted) throw deadline.signal.reason as S3Unavailable;
      throw e;
    } finally {
      // Only the headers are bounded by the deadline: a body that streams on is bounded by the idle timeout.
      clearTimeout(timer);
    }
  }
}

function isStatus(e: unknown, status: number): boolean {
  if (e instanceof S3ServiceException) return e.$metadata.httpStatusCode === status;
  const m = (e as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata;
  return m?.httpStatusCode === status;
}

function unavailable(e: unknown): Error {
  if (e instanceof S3Unavailable) return e;
  if ((e as Error | null)?.name === 'AbortError') return e as Error;
  const status = (e as { $metadata?: { httpStatusCode?: number } } | null)?.$metadata?.httpStatusCode;
  const msg = (e as Error | null)?.message ?? String(e);
  if (status === undefined) return new S3Unavailable((e as Error | null)?.name === 'TimeoutError' ? 'timeout' : 'network', msg);
  if (status === 429 || status === 503) return new S3Unavailable('throttled', `${status}: ${msg}`);
  if (status === 401 || status === 403) return new S3Unavailable('auth', `${status}: ${msg}`);
  if (status >= 500) return new S3Unavailable('server', `${status}: ${msg}`);
  return new S3Unavailable('other', `${status}: ${msg}`);
}

function totalFromContentRange(v: string | undefined): number | undefined {
  const m = v === undefined ? null : /\/(\d+)$/.exec(v);
  return m ? Number(m[1]) : undefined;
}
