// The client-facing HTTP listeners (pull and admin), with every per-client resource bounded by
// the `server:` config: how long headers may take, how long an idle keep-alive socket stays,
// how big headers may be, how many sockets there are, and how long a client may refuse bytes.
// requestTimeout stays 0: a whole blob may rightly take longer than any fixed bound, and the
// send-stall watchdog cuts the clients that take nothing.
import type { Server } from 'node:http';
import type { Socket } from 'node:net';
import { createAdaptorServer } from '@hono/node-server';
import type { Config } from '../config.ts';
import type { Logger } from '../logger.ts';
import { watchSendStalls } from './send-stall.ts';

export type ListenerLimits = Config['server'];
type FetchHandler = Parameters<typeof createAdaptorServer>[0]['fetch'];

export interface Listener {
  server: Server;
  /** Stop the watchdog (the server itself is closed by its owner). */
  stop(): void;
}

/** How often Node checks for expired headers: often enough that the timeout is kept to about a second. */
const checkingIntervalOf = (headersTimeoutMs: number) => Math.max(100, Math.min(1000, Math.floor(headersTimeoutMs / 4)));

export function createListener(name: string, fetch: FetchHandler, limits: ListenerLimits, logger: Logger): Listener {
  const server = createAdaptorServer({
    fetch,
    serverOptions: {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: 0,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      maxHeaderSize: limits.maxHeaderSize,
      connectionsCheckingInterval: checkingIntervalOf(limits.headersTimeoutMs),
    },
  }) as Server;
  server.maxConnections = limits.maxConnections;

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
