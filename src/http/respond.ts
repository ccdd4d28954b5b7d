// Writes responses. On Node, bodies go straight to the ServerResponse with pipeline(): a body
// that fails after the headers were sent destroys the socket, so the client sees an aborted
// transfer, never a clean end (the adapter's own error path would append an error text).
import { pipeline } from 'node:stream';
import type { Readable } from 'node:stream';
import type { ServerResponse } from 'node:http';
import type { Context } from 'hono';
import { RESPONSE_ALREADY_SENT } from '@hono/node-server/utils/response';
import { isBodySource, type BodySource } from '../storage/body-source.ts';
import type { AppEnv } from './request-context.ts';

type Body = Buffer | Readable | BodySource | undefined;

function outgoingOf(c: Context<AppEnv>): ServerResponse | undefined {
  const env = c.env as { outgoing?: ServerResponse } | undefined;
  return env?.outgoing;
}

export function respond(c: Context<AppEnv>, status: number, headers: Record<string, string>, body: Body, onBytes?: (n: number) => void): Response {
  const info = c.get('info');
  const head = c.req.method === 'HEAD';
  const out = outgoingOf(c);
  headers = { ...headers, 'X-Request-Id': info.id };
  if (isBodySource(body) && (head || !out)) {
    if (head) {
      void body.release();
      body = undefined;
    } else {
      body = body.toReadable();
    }
  }
  if (out) {
    out.writeHead(status, headers);
    if (head || body === undefined) {
      (body as Readable | undefined)?.destroy?.();
      out.end();
    } else if (isBodySource(body)) {
      body
        .sendTo(out, (n) => {
          info.bytes += n;
          onBytes?.(n);
        })
        .catch((err: Error) => {
          info.aborted = err.message;
          out.destroy();
        });
    } else if (Buffer.isBuffer(body)) {
      info.bytes += body.length;
      onBytes?.(body.length);
      out.end(body);
    } else {
      body.on('data', (chunk: Buffer) => {
        info.bytes += chunk.length;
        onBytes?.(chunk.length);
      });
      pipeline(body, out, (err) => {
        if (err) {
          info.aborted = (err as NodeJS.ErrnoException).code === 'ERR_STREAM_PREMATURE_CLOSE' ? 'client closed' : err.message;
          out.destroy();
        }
      });
    }
    return RESPONSE_ALREADY_SENT;
  }
  // No Node response object (app.request() in tests): a web Response.
  if (head || body === undefined) {
    (body as Readable | undefined)?.destroy?.();
    return new Response(null, { status, headers });
  }
  if (Buffer.isBuffer(body)) {
    info.bytes += body.length;
    onBytes?.(body.length);
    return new Response(new Uint8Array(body) as Uint8Array<ArrayBuffer>, { status, headers });
  }
  // OpenFile bodies were turned into streams above when there is no ServerResponse.
  const readable = body as Readable;
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      readable.on('data', (chunk: Buffer) => {
        info.bytes += chunk.length;
        onBytes?.(chunk.length);
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.length));
      });
      readable.on('end', () => controller.close());
      readable.on('error', (e) => controller.error(e));
    },
    cancel() {
      readable.destroy();
    },
  });
  return new Response(stream, { status, headers });
}
