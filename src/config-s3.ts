// The S3 tier's part of the config (issue 11): `storage.s3`, the bucket shared by the instances
// of a region. Credentials are not config: the AWS SDK's default chain (AWS_ACCESS_KEY_ID and
// co., a profile, an instance or pod role). Read by config.ts (the only reader of files and
// env); the schema lives here to keep config.ts small. Sizes and durations are parsed by the
// parsers config.ts hands in (one grammar for the whole file).
import { z } from 'zod';
import { httpUrl } from './config-replication.ts';

export interface S3Config {
  readonly bucket: string;
  /** Prepended to every key, e.g. "cache/"; "" when absent. */
  readonly prefix: string;
  /** An S3-compatible endpoint (MinIO, R2, moto); absent: AWS for the region. */
  readonly endpoint?: string;
  readonly region?: string;
  readonly forcePathStyle?: boolean;
  /** The bucket's budget (enforced by the elected budget keeper); absent: unbounded. */
  readonly maxBytes?: number;
  /** Advanced: objects at least this big go up as multipart uploads (default 64 MiB). */
  readonly multipartThreshold: number;
  /** Advanced: multipart uploads started longer ago than this are aborted at start-up (default 1 h). */
  readonly staleUploadAgeMs: number;
}

// S3 bucket names: 3-63 lower-case letters, digits, dots and hyphens.
const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

type Parse = (v: string | number) => number;

function parsed(parse: Parse) {
  return z.union([z.string(), z.number()]).transform((v, ctx) => {
    try {
      return parse(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  });
}

/** The `storage:` key of the config file; built with config.ts's size and duration parsers. */
export function storageFileSchema(parseSize: Parse, parseDuration: Parse) {
  return {
    storage: z
      .object({
        s3: z
          .object({
            bucket: z.string().regex(BUCKET_RE, 'must be an S3 bucket name (3-63 lower-case letters, digits, dots, hyphens)'),
            prefix: z.string().max(512).optional(),
            endpoint: httpUrl('must be an http:// or https:// URL without credentials, query or fragment').optional(),
            region: z.string().min(1).max(64).optional(),
            forcePathStyle: z.boolean().optional(),
            maxBytes: parsed(parseSize).optional(),
            multipartThreshold: parsed(parseSize).optional(),
            staleUploadAge: parsed(parseDuration).optional(),
          })
          .strict()
          .optional(),
      })
      .strict()
      .optional(),
  };
}

type StorageInput = {
  storage?: {
    s3?: {
      bucket: string;
      prefix?: string | undefined;
      endpoint?: string | undefined;
      region?: string | undefined;
      forcePathStyle?: boolean | undefined;
      maxBytes?: number | undefined;
      multipartThreshold?: number | undefined;
      staleUploadAge?: number | undefined;
    } | undefined;
  } | undefined;
};

const MiB = 2 ** 20;

/** Applies defaults; `fail(message)` throws the caller's ConfigError. */
export function storageConfig(c: StorageInput, fail: (message: string) => never): { storage: { s3?: S3Config } } {
  const s = c.storage?.s3;
  if (s === undefined) return { storage: Object.freeze({}) };
  const prefix = s.prefix ?? '';
  if (prefix.startsWith('/')) fail('invalid config: storage.s3.prefix: must not start with "/" (example: cache/)');
  const multipartThreshold = s.multipartThreshold ?? 64 * MiB;
  // S3 refuses parts under 5 MiB (but the last); lib-storage uploads 16 MiB parts.
  if (multipartThreshold < 5 * MiB) fail('invalid config: storage.s3.multipartThreshold: must be at least 5MiB');
  if (s.maxBytes !== undefined && s.maxBytes < 1) fail('invalid config: storage.s3.maxBytes: must be at least 1 byte');
  const s3: S3Config = {
    bucket: s.bucket,
    prefix,
    ...(s.endpoint !== undefined ? { endpoint: s.endpoint.replace(/\/+$/, '') } : {}),
    ...(s.region !== undefined ? { region: s.region } : {}),
    ...(s.forcePathStyle !== undefined ? { forcePathStyle: s.forcePathStyle } : {}),
    ...(s.maxBytes !== undefined ? { maxBytes: s.maxBytes } : {}),
    multipartThreshold,
    staleUploadAgeMs: s.staleUploadAge ?? 3_600_000,
  };
  return { storage: Object.freeze({ s3: Object.freeze(s3) }) };
}
