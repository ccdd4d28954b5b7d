// Drops clients that take no response bytes for `stallMs` while we have bytes for them.
// Such a client would otherwise hold a socket, an open blob file (which eviction must then
// skip) and its send buffers for as long as it likes. Destroying the socket makes the send
// loop fail ('client closed'), which releases the reader on its way out.
//
// Progress is measured at the socket: bytes whose write completed (handed to the kernel) =
// bytesWritten - writableLength. A socket with nothing pending is never stalled: a client
// waiting for an upstream fill, or idle between keep-alive requests, is not refusing bytes.
import type { Server } from 'node:http';
import type { Socket } from 'node:net';

interface Progress {
  done: number;
  since: number;
}

export function watchSendStalls(server: Server, stallMs: number, onDrop: (socket: Socket, pendingBytes: number) => void): () => void {
  const sockets = new Map<Socket, Progress>();
  server.on('connection', (socket: Socket) => {
    sockets.set(socket, { done: 0, since: Date.now() });
    socket.once('close', () => sockets.delete(socket));
  });
  // One sweep for all sockets, a few times per timeout: no timer per connection.
  const sweep = setInterval(() => {
    const now = Date.now();
    for (const [socket, p] of sockets) {
      const pending = socket.writableLength;
      const done = (socket.bytesWritten ?? 0) - pending;
      if (pending === 0 || done !== p.done) {
        p.done = done;
        p.since = now;
      } else if (now - p.since >= stallMs) {
        sockets.delete(socket);
        onDrop(socket, pending);
        // A reset, not a FIN: the bytes queued in the kernel for this client are dropped now,
        // not kept until it reads them.
        socket.resetAndDestroy();
      }
    }
  }, Math.max(50, Math.min(1000, Math.floor(stallMs / 4))));
  sweep.unref();
  return () => clearInterval(sweep);
}
