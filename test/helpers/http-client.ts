// Small HTTP helpers for tests: a streaming download that hashes as it reads (so 16 x 256 MiB
// never sits in memory) and reports aborted transfers, and a raw blob push to a registry.
import { createHash, randomBytes } from 'node:crypto';
import http from 'node:http';

export interface Download {
  status: number;
  headers: http.IncomingHttpHeaders;
  /** Bytes received. */
  size: number;
  sha256: string;
  /** The body ended before Content-Length, or the connection was cut. */
  aborted: boolean;
  body?: Buffer;
  firstByteMs: number;
  totalMs: number;
}

export interface DownloadOptions {
  headers?: Record<string, string>;
  /** Keep the body (small blobs only). */
  keep?: boolean;
  /** Called for each chunk; return a promise to pause reading until it settles. */
  onChunk?: (received: number) => void | Promise<void>;
  /** Destroy the request after this many bytes (a client that leaves). */
  abortAfter?: number;
  timeoutMs?: number;
}

export function download(url: string, opts: DownloadOptions = {}): Promise<Download> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const req = http.get(url, { headers: opts.headers ?? {}, agent: false }, (res) => {
      const hash = createHash('sha256');
      const kept: Buffer[] = [];
      let size = 0;
      let firstByteMs = -1;
      let settled = false;
      const finish = (aborted: boolean) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        const expected = res.headers['content-length'];
        const short = expected !== undefined && Number(expected) !== size;
        resolve({
          status: res.statusCode ?? 0,
          headers: res.headers,
          size,
          sha256: `sha256:${hash.digest('hex')}`,
          aborted: aborted || short || !res.complete,
          ...(opts.keep ? { body: Buffer.concat(kept) } : {}),
          firstByteMs,
          totalMs: performance.now() - t0,
        });
      };
      res.on('data', (chunk: Buffer) => {
        if (firstByteMs < 0) firstByteMs = performance.now() - t0;
        size += chunk.length;
        hash.update(chunk);
        if (opts.keep) kept.push(chunk);
        if (opts.abortAfter !== undefined && size >= opts.abortAfter) {
          req.destroy();
          finish(true);
          return;
        }
        const p = opts.onChunk?.(size);
        if (p) {
          res.pause();
          void p.then(() => res.resume());
        }
      });
      res.on('end', () => finish(false));
      res.on('aborted', () => finish(true));
      res.on('error', () => finish(true));
      res.on('close', () => finish(!res.complete));
    });
    const timer = setTimeout(() => {
      req.destroy(new Error(`download of ${url} timed out`));
    }, opts.timeoutMs ?? 120_000);
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

/** Push raw bytes as a blob to a registry (POST then PUT ?digest=); returns the digest. */
export async function pushBlob(registryUrl: string, repo: string, data: Buffer, authorization?: string): Promise<string> {
  const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
  const auth: Record<string, string> = authorization ? { authorization } : {};
  const start = await fetch(`${registryUrl}/v2/${repo}/blobs/uploads/`, { method: 'POST', headers: auth });
  await start.arrayBuffer();
  if (start.status !== 202) throw new Error(`upload start for ${repo}: ${start.status}`);
  const loc = new URL(start.headers.get('location') ?? '', registryUrl);
  loc.searchParams.set('digest', digest);
  const put = await fetch(loc, {
    method: 'PUT',
    headers: { ...auth, 'content-type': 'application/octet-stream', 'content-length': String(data.length) },
    body: new Uint8Array(data) as Uint8Array<ArrayBuffer>,
  });
  await put.arrayBuffer();
  if (put.status !== 201) throw new Error(`upload of ${digest} to ${repo}: ${put.status}`);
  return digest;
}

export function randomBlob(bytes: number): Buffer {
  return randomBytes(bytes);
}
