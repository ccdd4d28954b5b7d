// The client-facing HTTP listeners (pull and admin), with every per-client resource bounded by
// the `server:` config: how long headers may take, how long an idle keep-alive socket stays,
// how big headers may be, how many sockets there are, and how long a client may refuse bytes.
// requestTimeout stays 0: a whole blob may rightly take longer than any fixed bound, and the
// send-stall watchdog cuts the clients that take nothing.
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import { getRequestListener } from '@hono/node-server';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import { watchSendStalls } from './send-stall.ts';

export type ListenerLimits = Config['server'];
type FetchHandler = Parameters<typeof getRequestListener>[0];

export interface Listener {
  server: Server;
  /** Stop the watchdog (the server itself is closed by its owner). */
  stop(): void;
}

/** How often Node checks for expired headers: often enough that the timeout is kept to about a second. */
const checkingIntervalOf = (headersTimeoutMs: number) => Math.max(100, Math.min(1000, Math.floor(headersTimeoutMs / 4)));

export function createListener(name: string, fetch: FetchHandler, limits: ListenerLimits, logger: Logger): Listener {
  // A request the adapter cannot turn into a URL (a Host that is no authority, a backslash in
  // the path) gets an OCI error body like every other refusal, not a bare 400.
  const listener = getRequestListener(fetch, {
    errorHandler: () => ociErrorResponse(400, 'NAME_INVALID', 'malformed request target or Host header'),
  });
  const server = createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: 0,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      maxHeaderSize: limits.maxHeaderSize,
      connectionsCheckingInterval: checkingIntervalOf(limits.headersTimeoutMs),
    },
    listener,
  );
  server.maxConnections = limits.maxConnections;
  // Node's parser refuses some requests before any handler runs (unknown method, malformed
  // framing, oversized headers, headers timeout); answer those with an OCI error body too.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable || err.code === 'ECONNRESET' || err.code === 'EPIPE') {
      socket.destroy();
      return;
    }
    const [status, code, reason] =
      err.code === 'HPE_HEADER_OVERFLOW'
        ? [431, 'UNSUPPORTED', 'Request Header Fields Too Large']
        : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
          ? [408, 'UNAVAILABLE', 'Request Timeout']
          : [400, 'UNSUPPORTED', 'Bad Request'];
    // A HEAD answer has no body, or the client would read it as the start of the next response.
    const raw = (err as NodeJS.ErrnoException & { rawPacket?: Buffer }).rawPacket;
    const isHead = raw !== undefined && raw.subarray(0, 5).toString('latin1') === 'HEAD ';
    socket.end(rawOciError(status, reason, code, reason.toLowerCase(), isHead));
  });
  // CONNECT is no registry request (node closes the socket silently when nobody listens for it).
  server.on('connect', (_req: unknown, socket: Socket) => {
    socket.on('error', () => socket.destroy());
    socket.end(rawOciError(405, 'Method Not Allowed', 'UNSUPPORTED', 'CONNECT is not supported', false));
  });

  // Refused connections are counted and logged at most every 10 s: a flood must not flood the log too.
  let dropped = 0;
  let lastDropLog = 0;
  server.on('drop', () => {
    dropped++;
    const now = Date.now();
    if (now - lastDropLog < 10_000) return;
    lastDropLog = now;
    logger.warn({ listener: name, maxConnections: limits.maxConnections, refused: dropped }, 'connection limit reached: refusing new connections');
    dropped = 0;
  });

  const stopWatch = watchSendStalls(server, limits.sendStallTimeoutMs, (socket: Socket, pendingBytes: number) => {
    logger.warn(
      { listener: name, remote: socket.remoteAddress, pendingBytes, stalledMs: limits.sendStallTimeoutMs },
      'client took no bytes for the send-stall timeout: connection dropped',
    );
  });
  return { server, stop: stopWatch };
}

function ociErrorResponse(status: number, code: string, message: string): Response {
  return new Response(JSON.stringify({ errors: [{ code, message }] }), { status, headers: { 'Content-Type': 'application/json' } });
}

/** A whole HTTP/1.1 error response for a socket no handler owns (Connection: close). */
function rawOciError(status: number, reason: string, code: string, message: string, headOnly: boolean): string {
  const body = JSON.stringify({ errors: [{ code, message }] });
  const head = `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n`;
  return headOnly ? head : head + body;
}
