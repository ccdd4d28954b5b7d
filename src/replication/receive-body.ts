// Request bodies of pushes: the Node request stream itself (blobs are streamed to disk, never
// buffered whole), or a bounded buffer for manifests and the small JSON documents of pins and
// freezes.
import type { IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import type { Context } from 'hono';
import { RegistryError } from '../errors.ts';
import type { AppEnv } from '../http/request-context.ts';

/** Freeze and pin bodies are small JSON documents. */
const MAX_JSON_BYTES = 1024 * 1024;

export function bodyOf(c: Context<AppEnv>): Readable {
  const incoming = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming;
  if (incoming) return incoming;
  const web = c.req.raw.body;
  return web ? Readable.fromWeb(web as import('node:stream/web').ReadableStream<Uint8Array>) : Readable.from([]);
}

export async function readCapped(c: Context<AppEnv>, cap: number): Promise<Buffer> {
  const cl = Number(c.req.header('content-length'));
  if (Number.isFinite(cl) && cl > cap) throw new RegistryError('SIZE_INVALID', `body exceeds ${cap} bytes`, { status: 413 });
  const body = bodyOf(c);
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    n += chunk.length;
    if (n > cap) {
      body.destroy();
      throw new RegistryError('SIZE_INVALID', `body exceeds ${cap} bytes`, { status: 413 });
    }
    chunks.push(chunk);
  }
  return Buffer.concat(chunks);
}

export async function readJson(c: Context<AppEnv>): Promise<Record<string, unknown>> {
  const buf = await readCapped(c, MAX_JSON_BYTES);
  if (buf.length === 0) return {};
  try {
    const v: unknown = JSON.parse(buf.toString('utf8'));
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) return v as Record<string, unknown>;
  } catch {
    // answered below
  }
  throw new RegistryError('BAD_REQUEST', 'body is not a JSON object', { status: 400 });
}

export function contentLength(c: Context<AppEnv>): number | undefined {
  const v = c.req.header('content-length');
  return v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined;
}
