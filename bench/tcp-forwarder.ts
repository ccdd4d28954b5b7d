// A loopback TCP forwarder that can be cut: a region's upstream URL points at it, so the upstream
// is live while the region warms up, and then goes away as in an outage (the listener closes
// and every forwarded connection is destroyed: new connects are refused at once).
import net from 'node:net';

export interface TcpForwarder {
  url: string;
  /** Stop listening and drop every connection; idempotent. */
  cut(): Promise<void>;
}

export async function startTcpForwarder(targetHost: string, targetPort: number): Promise<TcpForwarder> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, targetHost);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined); // a reset on either side ends both, below
    }
    client.pipe(upstream).on('close', () => client.destroy());
    upstream.pipe(client).on('close', () => upstream.destroy());
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as net.AddressInfo;
  let cut: Promise<void> | undefined;
  return {
    url: `http://127.0.0.1:${port}`,
    cut: () =>
      (cut ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of sockets) s.destroy();
      })),
  };
}
