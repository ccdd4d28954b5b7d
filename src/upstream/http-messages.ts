// Small helpers for HTTP messages exchanged with upstreams: header maps and bodies we drop or cap.
import type { Readable } from 'node:stream';

type Headers = Record<string, string | string[] | undefined>;

const DROPPED_REQUEST_HEADERS = new Set([
  'authorization', 'host', 'connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'te', 'trailer',
  'proxy-authorization', 'proxy-connection', 'content-length',
]);

export function requestHeaders(h: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (h === undefined) return out;
  for (const [k, v] of Object.entries(h)) {
    const name = k.toLowerCase();
    if (!DROPPED_REQUEST_HEADERS.has(name)) out[name] = v;
  }
  return out;
}

export function flattenHeaders(h: Headers): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(h)) {
    if (v === undefined) continue;
    out[k.toLowerCase()] = Array.isArray(v) ? v.join(', ') : v;
  }
  return out;
}

export function headerValue(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/** `76;w=21600` -> 76 (Docker Hub's rate-limit headers). */
export function leadingNumber(v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const m = /^\s*(\d+)/.exec(v);
  return m?.[1] === undefined ? undefined : Number(m[1]);
}

export function nonEmptyString(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

export function elapsed(started: number): number {
  return Math.round((performance.now() - started) * 10) / 10;
}

const DISCARD_LIMIT = 64 * 1024;

/** Drop a body we do not pass on; the connection is kept when the rest is small. */
export async function discard(body: Readable): Promise<void> {
  try {
    let read = 0;
    for await (const chunk of body as AsyncIterable<Buffer>) {
      read += chunk.length;
      if (read > DISCARD_LIMIT) break; // leaving the loop destroys the body, and its connection
    }
  } catch {
    // the connection is gone already; nothing to release
  }
}

export async function readCapped(body: Readable, limit: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > limit) {
      body.destroy();
      throw new Error(`reply larger than ${limit} bytes`);
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}
