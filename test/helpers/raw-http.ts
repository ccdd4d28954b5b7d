// One HTTP/1.1 request sent as given: the path goes on the request line untouched (no URL
// parsing, so dot segments and percent-escapes reach the server as the fuzz wrote them), any
// method token, any header set. The body is collected up to a cap; a response that does not
// finish within the deadline is reported as a hang, not retried.
import http from 'node:http';

export interface RawRequest {
  method: string;
  /** Request target as sent on the request line (path plus query). */
  path: string;
  headers: Record<string, string>;
  body?: string;
}

export interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** The body ended before Content-Length, or the connection was cut mid-body. */
  aborted: boolean;
  ms: number;
}

const BODY_CAP = 16 * 1024 * 1024;

export function sendRaw(port: number, req: RawRequest, timeoutMs: number): Promise<RawResponse> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const cr = http.request(
      { host: '127.0.0.1', port, method: req.method, path: req.path, headers: req.headers, agent: false },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        let settled = false;
        const finish = (aborted: boolean) => {
          if (settled) return;
          settled = true;
          clearTimeout(timer);
          const expected = res.headers['content-length'];
          const short = req.method !== 'HEAD' && expected !== undefined && Number(expected) !== size && size < BODY_CAP;
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks), aborted: aborted || short, ms: performance.now() - t0 });
        };
        res.on('data', (b: Buffer) => {
          if (size < BODY_CAP) chunks.push(b);
          size += b.length;
        });
        res.on('end', () => finish(false));
        res.on('error', () => finish(true));
        res.on('close', () => finish(!res.complete));
      },
    );
    const timer = setTimeout(() => {
      cr.destroy();
      reject(new Error(`no complete response within ${timeoutMs} ms`));
    }, timeoutMs);
    cr.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    // Node's client hands any answer to a CONNECT to 'connect' (with the socket), not to the
    // response callback: read the body from the socket until it closes.
    cr.on('connect', (res: http.IncomingMessage, socket: import('node:net').Socket, head: Buffer) => {
      const chunks: Buffer[] = [head];
      socket.on('data', (b: Buffer) => chunks.push(b));
      socket.on('error', () => undefined);
      socket.on('close', () => {
        clearTimeout(timer);
        const body = Buffer.concat(chunks);
        const expected = res.headers['content-length'];
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body, aborted: expected !== undefined && Number(expected) !== body.length, ms: performance.now() - t0 });
      });
    });
    cr.end(req.body);
  });
}
