// HTTP/1.1 GETs for blob bodies, read off the socket with `onread` into 1 MiB slabs.
//
// Why not undici here: a socket read through undici allocates a fresh 64 KiB buffer per read,
// copies it into the WASM parser's memory, and often concatenates reads again; for a blob
// that is 16,000 short-lived buffers per GiB, and the garbage collector's work made the
// receive cost of a 256 MiB body swing between 0.07 and 0.44 CPU-s (bench/README.md). Here the
// kernel writes straight into the free end of a 1 MiB slab, and body chunks are subarrays of
// it, handed on without a copy. Everything else (auth, redirects, retries) stays with the
// RegistryClient, which calls this for one hop at a time.
//
// Idle connections are kept per origin (a few, for a few seconds) and reused; a request on a
// reused connection that dies before any response byte is sent again once on a fresh one.
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { Http1ParseError, Http1ResponseParser, type ResponseHead } from './http1-response-parser.ts';

export interface BulkGetOptions {
  /** Default 5000. */
  connectMs?: number;
  /** From request sent to response headers, default 30000. */
  headersMs?: number;
  /** Longest pause between two body reads (while the consumer wants more), default 30000. */
  idleMs?: number;
  /** Idle connections kept per origin, default 4. */
  maxIdlePerOrigin?: number;
  /** How long an idle connection is kept, default 4000 ms. */
  keepIdleMs?: number;
  /** Extra trusted CAs for https (tests); the system's and NODE_EXTRA_CA_CERTS are trusted anyway. */
  ca?: string | Buffer;
}

export interface BulkResponse {
  statusCode: number;
  headers: Record<string, string | string[]>;
  /** The body; destroy it to drop the rest (the connection is then closed). */
  body: Readable;
}

export type BulkTimeout = 'connect' | 'headers' | 'body';

/** A connect, headers or body-idle timeout. */
export class BulkTimeoutError extends Error {
  readonly code = 'OCIRELAY_BULK_TIMEOUT';
  constructor(readonly phase: BulkTimeout, ms: number) {
    super(phase === 'connect' ? `connect timeout (${ms} ms)` : phase === 'headers' ? `no response headers in ${ms} ms` : `body idle for more than ${ms} ms`);
    this.name = 'BulkTimeoutError';
  }
}

const SLAB = 1024 * 1024;
/** A slab whose free end is smaller than this is replaced for the next read. */
const MIN_READ = 64 * 1024;

export class BulkGet {
  readonly #connectMs: number;
  readonly #headersMs: number;
  readonly #idleMs: number;
  readonly #maxIdle: number;
  readonly #keepIdleMs: number;
  readonly #ca: string | Buffer | undefined;
  readonly #idle = new Map<string, Connection[]>();
  #closed = false;

  constructor(opts: BulkGetOptions = {}) {
    this.#connectMs = opts.connectMs ?? 5_000;
    this.#headersMs = opts.headersMs ?? 30_000;
    this.#idleMs = opts.idleMs ?? 30_000;
    this.#maxIdle = opts.maxIdlePerOrigin ?? 4;
    this.#keepIdleMs = opts.keepIdleMs ?? 4_000;
    this.#ca = opts.ca;
  }

  /** Idle connections kept right now (for tests and metrics). */
  idleCount(): number {
    let n = 0;
    for (const list of this.#idle.values()) n += list.length;
    return n;
  }

  async get(url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<BulkResponse> {
    if (this.#closed) throw new Error('BulkGet is closed');
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`cannot GET a ${url.protocol} URL`);
    const request = requestText(url, headers);
    const reused = this.#takeIdle(url.origin);
    if (reused !== undefined) {
      try {
        return await reused.send(request, signal, this.#headersMs);
      } catch (err) {
        // The server may close an idle connection just as it is reused: try a fresh one.
        if (!(err instanceof StaleConnectionError) || signal?.aborted) throw err;
      }
    }
    const conn = await this.#connect(url, signal);
    return conn.send(request, signal, this.#headersMs);
  }

  /** Closes idle connections; requests in flight finish on their own. */
  close(): void {
    this.#closed = true;
    for (const list of this.#idle.values()) for (const c of list) c.destroy();
    this.#idle.clear();
  }

  #takeIdle(origin: string): Connection | undefined {
    const list = this.#idle.get(origin);
    const conn = list?.pop();
    if (list !== undefined && list.length === 0) this.#idle.delete(origin);
    conn?.leaveIdle();
    return conn;
  }

  #release(conn: Connection): void {
    const list = this.#idle.get(conn.origin) ?? [];
    if (this.#closed || list.length >= this.#maxIdle) {
      conn.destroy();
      return;
    }
    list.push(conn);
    this.#idle.set(conn.origin, list);
    conn.enterIdle(this.#keepIdleMs, () => this.#forget(conn));
  }

  #forget(conn: Connection): void {
    const list = this.#idle.get(conn.origin);
    if (list === undefined) return;
    const i = list.indexOf(conn);
    if (i >= 0) list.splice(i, 1);
    if (list.length === 0) this.#idle.delete(conn.origin);
  }

  #connect(url: URL, signal: AbortSignal | undefined): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const conn = new Connection(url.origin, this.#idleMs, (c) => this.#release(c));
      const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
      const https = url.protocol === 'https:';
      const port = Number(url.port || (https ? 443 : 80));
      const onread: net.OnReadOpts = { buffer: () => conn.nextBuffer(), callback: (n, buf) => conn.onRead(n, buf) };
      // tls.connect takes onread as net.connect does (node >= 15); its typings omit it.
      const tlsOptions: tls.ConnectionOptions & { onread: net.OnReadOpts } = {
        host,
        port,
        onread,
        ALPNProtocols: ['http/1.1'],
        ...(net.isIP(host) === 0 ? { servername: host } : {}),
        ...(this.#ca !== undefined ? { ca: [...tls.rootCertificates, this.#ca.toString()] } : {}),
      };
      const socket: net.Socket = https ? tls.connect(tlsOptions) : net.connect({ host, port, onread });
      const timer = setTimeout(() => fail(new BulkTimeoutError('connect', this.#connectMs)), this.#connectMs);
      const onAbort = (): void => fail(abortError());
      const done = (): void => {
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        socket.off('error', fail);
      };
      function fail(err: Error): void {
        done();
        socket.destroy();
        reject(err);
      }
      if (signal?.aborted) {
        fail(abortError());
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      socket.once('error', fail);
      socket.once(https ? 'secureConnect' : 'connect', () => {
        done();
        socket.setNoDelay(true);
        conn.attach(socket);
        resolve(conn);
      });
    });
  }
}

/** A request on a reused connection failed before any byte of its response. */
class StaleConnectionError extends Error {
  constructor(cause: Error) {
    super('reused connection closed before the response', { cause });
  }
}

type Phase = 'idle' | 'waiting' | 'body' | 'dead';

/** One socket, carrying one request at a time. */
class Connection {
  #socket: net.Socket | undefined;
  #slab = Buffer.allocUnsafeSlow(SLAB);
  #off = 0;
  #phase: Phase = 'idle';
  #parser: Http1ResponseParser | undefined;
  #body: Readable | undefined;
  #reused = false;
  #paused = false;
  #timer: NodeJS.Timeout | undefined;
  #signal: AbortSignal | undefined;
  #onAbort: (() => void) | undefined;
  #resolve: ((r: BulkResponse) => void) | undefined;
  #reject: ((e: Error) => void) | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  #onIdleGone: (() => void) | undefined;

  constructor(
    readonly origin: string,
    private readonly idleMs: number,
    private readonly release: (c: Connection) => void,
  ) {}

  attach(socket: net.Socket): void {
    this.#socket = socket;
    socket.on('error', (err) => this.#fail(err));
    socket.on('end', () => this.#eof());
    socket.on('close', () => this.#fail(new Error('connection closed')));
  }

  /** Where the kernel writes the next read: the free end of the slab. */
  nextBuffer(): Buffer {
    if (SLAB - this.#off < MIN_READ) {
      this.#slab = Buffer.allocUnsafeSlow(SLAB);
      this.#off = 0;
    }
    return this.#slab.subarray(this.#off);
  }

  onRead(n: number, buf: Uint8Array): boolean {
    const bytes = (buf as Buffer).subarray(0, n);
    this.#off += n; // these bytes now belong to whoever receives them
    if (this.#phase !== 'waiting' && this.#phase !== 'body') {
      // Nothing was asked: a server talking out of turn.
      this.destroy();
      return false;
    }
    if (this.#phase === 'body' && !this.#paused) this.#timer?.refresh();
    try {
      this.#parser!.feed(bytes);
    } catch (err) {
      this.#fail(err as Error);
      return false;
    }
    return !this.#paused;
  }

  send(request: string, signal: AbortSignal | undefined, headersMs: number): Promise<BulkResponse> {
    return new Promise<BulkResponse>((resolve, reject) => {
      if (signal?.aborted) {
        this.destroy();
        reject(abortError());
        return;
      }
      this.#resolve = resolve;
      this.#reject = reject;
      this.#phase = 'waiting';
      this.#paused = false;
      this.#parser = new Http1ResponseParser({
        head: (head) => this.#onHead(head),
        body: (chunk) => this.#onBody(chunk),
        end: (reusable) => this.#onEnd(reusable),
      });
      this.#signal = signal;
      if (signal !== undefined) {
        this.#onAbort = () => this.#fail(abortError());
        signal.addEventListener('abort', this.#onAbort, { once: true });
      }
      this.#timer = setTimeout(() => this.#fail(new BulkTimeoutError('headers', headersMs)), headersMs);
      this.#socket!.resume();
      this.#socket!.write(request);
    });
  }

  enterIdle(keepMs: number, gone: () => void): void {
    this.#phase = 'idle';
    this.#reused = true;
    this.#onIdleGone = gone;
    this.#idleTimer = setTimeout(() => this.destroy(), keepMs);
    this.#idleTimer.unref();
  }

  leaveIdle(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
    this.#onIdleGone = undefined;
  }

  destroy(): void {
    this.#fail(new Error('connection closed'));
  }

  #onHead(head: ResponseHead): void {
    clearTimeout(this.#timer);
    this.#phase = 'body';
    this.#armIdle();
    const body = new Readable({
      highWaterMark: SLAB,
      read: () => this.#resume(),
      destroy: (err, cb) => {
        // Dropped before its end: the rest of the response is not read, the connection goes.
        if (this.#body === body) {
          this.#body = undefined;
          this.#fail(err ?? new Error('body destroyed'));
        }
        cb(err);
      },
    });
    // The body may fail before its consumer attaches (get() resolves a tick later): that must
    // not be an uncaught 'error'. The error stays on the stream (`errored`) for the consumer.
    body.on('error', () => undefined);
    this.#body = body;
    const resolve = this.#resolve!;
    this.#resolve = undefined;
    this.#reject = undefined;
    resolve({ statusCode: head.status, headers: head.headers, body });
  }

  #onBody(chunk: Buffer): void {
    if (chunk.length === 0 || this.#body === undefined) return;
    if (!this.#body.push(chunk)) this.#pause();
  }

  #onEnd(reusable: boolean): void {
    const body = this.#body;
    this.#body = undefined;
    this.#finishRequest();
    body?.push(null);
    if (reusable && this.#socket !== undefined && !this.#socket.destroyed) {
      this.#phase = 'idle';
      this.release(this);
    } else {
      this.destroy();
    }
  }

  #eof(): void {
    if (this.#phase === 'waiting' && this.#parser?.pristine === true) {
      // Closed without a byte of answer: on a reused connection, get() tries a fresh one.
      this.#fail(new Error('connection closed before the response'));
      return;
    }
    if (this.#phase === 'waiting' || this.#phase === 'body') {
      try {
        this.#parser!.finish();
      } catch (err) {
        this.#fail(err as Error);
        return;
      }
    }
    this.destroy();
  }

  #pause(): void {
    if (this.#paused) return;
    this.#paused = true;
    // A consumer that does not read is not the upstream being idle.
    clearTimeout(this.#timer);
  }

  #resume(): void {
    if (!this.#paused || this.#phase !== 'body') return;
    this.#paused = false;
    this.#armIdle();
    this.#socket?.resume();
  }

  #armIdle(): void {
    clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#fail(new BulkTimeoutError('body', this.idleMs)), this.idleMs);
  }

  #finishRequest(): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#onAbort !== undefined) this.#signal?.removeEventListener('abort', this.#onAbort);
    this.#onAbort = undefined;
    this.#signal = undefined;
  }

  #fail(err: Error): void {
    if (this.#phase === 'dead') return;
    const wasIdle = this.#phase === 'idle';
    const pristine = this.#phase === 'waiting' && this.#parser?.pristine === true;
    this.#phase = 'dead';
    this.#finishRequest();
    clearTimeout(this.#idleTimer);
    this.#onIdleGone?.();
    this.#onIdleGone = undefined;
    this.#socket?.destroy();
    if (wasIdle) return;
    const reject = this.#reject;
    this.#resolve = undefined;
    this.#reject = undefined;
    if (reject !== undefined) {
      const aborted = (err as { name?: string }).name === 'AbortError' || err instanceof BulkTimeoutError || err instanceof Http1ParseError;
      reject(this.#reused && pristine && !aborted ? new StaleConnectionError(err) : err);
    }
    const body = this.#body;
    this.#body = undefined;
    body?.destroy(err);
  }
}

function requestText(url: URL, headers: Record<string, string>): string {
  let text = `GET ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) throw new TypeError(`invalid request header ${name}`);
    const lower = name.toLowerCase();
    if (lower === 'host' || lower === 'connection' || lower === 'content-length' || lower === 'transfer-encoding') continue;
    text += `${name}: ${value}\r\n`;
  }
  return `${text}\r\n`;
}

function abortError(): Error {
  const err = new Error('aborted');
  err.name = 'AbortError';
  return err;
}
