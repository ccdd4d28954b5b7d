// The HTTP/1.1 client every upstream request goes through (RegistryClient does auth,
// redirects and retries on top of it, one hop at a time).
//
// Sockets are read with `onread`: the kernel writes straight into the free end of a slab, and
// body chunks are views of it, handed on without a copy. A response body gets 1 MiB slabs;
// headers and idle connections a 64 KiB one. undici (which this replaced) allocates a fresh
// 64 KiB buffer per socket read and copies it into its WASM parser: for a blob that is 16,000
// short-lived buffers per GiB, and the garbage collector's work made receiving 256 MiB cost
// 0.07 to 0.44 CPU-s (bench/README.md). Loading undici also cost 19 MiB of RSS.
//
// Connections are pooled per origin: at most `maxConnectionsPerOrigin` open (requests beyond
// wait for one), idle ones kept for `keepIdleMs` (or less when the server's Keep-Alive header
// says so). A request on a reused connection that dies before any byte of its response is
// sent again on a fresh connection (all requests here are GET or HEAD).
import net from 'node:net';
import { Readable } from 'node:stream';
import tls from 'node:tls';
import { Http1ParseError, Http1ResponseParser, type ResponseHead } from './http1-response-parser.ts';

export interface Http1ClientOptions {
  /** Default 5000 (TCP connect and TLS handshake). */
  connectMs?: number;
  /** From request sent to response headers, default 30000. */
  headersMs?: number;
  /** Longest pause between two body reads (while the consumer wants more), default 30000. */
  idleMs?: number;
  /** Default 64; requests beyond wait for a connection. */
  maxConnectionsPerOrigin?: number;
  /** Idle connections kept per origin, default 16. */
  maxIdlePerOrigin?: number;
  /** How long an idle connection is kept, default 30000 ms (less if the server says so). */
  keepIdleMs?: number;
  /** Extra trusted CAs for https (tests); the system's and NODE_EXTRA_CA_CERTS are trusted anyway. */
  ca?: string | Buffer;
}

export interface Http1Response {
  statusCode: number;
  /** Lower-case names; a repeated header is an array of its values. */
  headers: Record<string, string | string[]>;
  /** The body (empty for HEAD); destroy it to drop the rest (the connection is then closed). */
  body: Readable;
}

export type Http1Method = 'GET' | 'HEAD';
export type TimeoutPhase = 'connect' | 'headers' | 'body';

/** A connect, headers or body-idle timeout. */
export class HttpTimeoutError extends Error {
  readonly code = 'OCIRELAY_HTTP_TIMEOUT';
  constructor(
    readonly phase: TimeoutPhase,
    ms: number,
  ) {
    super(phase === 'connect' ? `connect timeout (${ms} ms)` : phase === 'headers' ? `no response headers in ${ms} ms` : `body idle for more than ${ms} ms`);
    this.name = 'HttpTimeoutError';
  }
}

const SLAB = 1024 * 1024;
const SMALL_SLAB = 64 * 1024;
/** A slab whose free end is smaller than this is replaced for the next read. */
const MIN_READ = 64 * 1024;
const EMPTY = Buffer.alloc(0);

interface Waiter {
  wake(): void;
}

/** The connections of one origin; dropped from the client's map when it has none and no waiter. */
class Pool {
  constructor(readonly origin: string) {}
  idle: Connection[] = [];
  /** Open or connecting, idle included. */
  open = 0;
  waiters: Waiter[] = [];
}

export class Http1Client {
  readonly #connectMs: number;
  readonly #headersMs: number;
  readonly #idleMs: number;
  readonly #maxConnections: number;
  readonly #maxIdle: number;
  readonly #keepIdleMs: number;
  readonly #ca: string | Buffer | undefined;
  readonly #pools = new Map<string, Pool>();
  #closed = false;

  constructor(opts: Http1ClientOptions = {}) {
    this.#connectMs = opts.connectMs ?? 5_000;
    this.#headersMs = opts.headersMs ?? 30_000;
    this.#idleMs = opts.idleMs ?? 30_000;
    this.#maxConnections = Math.max(1, opts.maxConnectionsPerOrigin ?? 64);
    this.#maxIdle = opts.maxIdlePerOrigin ?? 16;
    this.#keepIdleMs = opts.keepIdleMs ?? 30_000;
    this.#ca = opts.ca;
  }

  /** Connections open right now, and how many of them are idle (for tests). */
  connections(origin: string): { open: number; idle: number } {
    const pool = this.#pools.get(origin);
    return { open: pool?.open ?? 0, idle: pool?.idle.length ?? 0 };
  }

  async request(method: Http1Method, url: URL, headers: Record<string, string>, signal?: AbortSignal): Promise<Http1Response> {
    if (this.#closed) throw new Error('HTTP client is closed');
    if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new TypeError(`cannot request a ${url.protocol} URL`);
    const text = requestText(method, url, headers);
    for (;;) {
      if (signal?.aborted) throw abortError();
      if (this.#closed) throw new Error('HTTP client is closed');
      const pool = this.#pool(url.origin);
      const idle = pool.idle.pop();
      if (idle !== undefined) {
        idle.leaveIdle();
        try {
          return await idle.send(method, text, signal, this.#headersMs);
        } catch (err) {
          // The server may close an idle connection just as it is reused: try another.
          if (err instanceof StaleConnectionError && !signal?.aborted) continue;
          throw err;
        }
      }
      if (pool.open < this.#maxConnections) {
        pool.open++;
        let conn: Connection;
        try {
          conn = await this.#connect(url, pool, signal);
        } catch (err) {
          this.#gone(pool);
          throw err;
        }
        return conn.send(method, text, signal, this.#headersMs);
      }
      await this.#waitForConnection(pool, signal);
    }
  }

  /** Closes idle connections; requests in flight finish, and their connections close after. */
  close(): void {
    this.#closed = true;
    for (const pool of this.#pools.values()) {
      for (const c of pool.idle.splice(0)) c.destroy();
      for (const w of pool.waiters.splice(0)) w.wake();
    }
  }

  #pool(origin: string): Pool {
    let pool = this.#pools.get(origin);
    if (pool === undefined) {
      pool = new Pool(origin);
      this.#pools.set(origin, pool);
    }
    return pool;
  }

  #waitForConnection(pool: Pool, signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const i = pool.waiters.indexOf(waiter);
        if (i >= 0) pool.waiters.splice(i, 1);
        reject(abortError());
      };
      const waiter: Waiter = {
        wake: () => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        },
      };
      pool.waiters.push(waiter);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** A connection finished its response and may carry another. */
  #release(pool: Pool, conn: Connection, keepMs: number): void {
    if (this.#closed || pool.idle.length >= this.#maxIdle || keepMs <= 0) {
      conn.destroy();
      return;
    }
    pool.idle.push(conn);
    conn.enterIdle(keepMs);
    pool.waiters.shift()?.wake();
  }

  /** A connection closed (or never opened): its slot is free. */
  #gone(pool: Pool, conn?: Connection): void {
    pool.open--;
    if (conn !== undefined) {
      const i = pool.idle.indexOf(conn);
      if (i >= 0) pool.idle.splice(i, 1);
    }
    const waiter = pool.waiters.shift();
    if (waiter !== undefined) waiter.wake();
    else if (pool.open === 0 && this.#pools.get(pool.origin) === pool) this.#pools.delete(pool.origin);
  }

  #connect(url: URL, pool: Pool, signal: AbortSignal | undefined): Promise<Connection> {
    return new Promise<Connection>((resolve, reject) => {
      const conn = new Connection(this.#idleMs, this.#keepIdleMs, {
        release: (c, keepMs) => this.#release(pool, c, keepMs),
        gone: (c) => this.#gone(pool, c),
      });
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
      const timer = setTimeout(() => fail(new HttpTimeoutError('connect', this.#connectMs)), this.#connectMs);
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

interface ConnectionHooks {
  release(c: Connection, keepMs: number): void;
  gone(c: Connection): void;
}

/** One socket, carrying one request at a time. */
class Connection {
  #socket: net.Socket | undefined;
  #slab: Buffer = EMPTY;
  #off = 0;
  #phase: Phase = 'idle';
  #parser: Http1ResponseParser | undefined;
  #body: Readable | undefined;
  #reused = false;
  #paused = false;
  #keepMs: number;
  #timer: NodeJS.Timeout | undefined;
  #signal: AbortSignal | undefined;
  #onAbort: (() => void) | undefined;
  #resolve: ((r: Http1Response) => void) | undefined;
  #reject: ((e: Error) => void) | undefined;
  #idleTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly idleMs: number,
    keepMs: number,
    private readonly hooks: ConnectionHooks,
  ) {
    this.#keepMs = keepMs;
  }

  attach(socket: net.Socket): void {
    this.#socket = socket;
    socket.on('error', (err) => this.#fail(err));
    socket.on('end', () => this.#eof());
    socket.on('close', () => this.#fail(new Error('connection closed')));
  }

  /** Where the kernel writes the next read: the free end of the slab (1 MiB ones for bodies). */
  nextBuffer(): Buffer {
    if (this.#slab.length - this.#off < MIN_READ) {
      this.#slab = Buffer.allocUnsafeSlow(this.#phase === 'body' ? SLAB : SMALL_SLAB);
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

  send(method: Http1Method, request: string, signal: AbortSignal | undefined, headersMs: number): Promise<Http1Response> {
    return new Promise<Http1Response>((resolve, reject) => {
      if (signal?.aborted) {
        this.destroy();
        reject(abortError());
        return;
      }
      this.#resolve = resolve;
      this.#reject = reject;
      this.#phase = 'waiting';
      this.#paused = false;
      this.#parser = new Http1ResponseParser(
        {
          head: (head) => this.#onHead(head),
          body: (chunk) => this.#onBody(chunk),
          end: (reusable) => this.#onEnd(reusable),
        },
        { bodiless: method === 'HEAD' },
      );
      this.#signal = signal;
      if (signal !== undefined) {
        this.#onAbort = () => this.#fail(abortError());
        signal.addEventListener('abort', this.#onAbort, { once: true });
      }
      this.#timer = setTimeout(() => this.#fail(new HttpTimeoutError('headers', headersMs)), headersMs);
      this.#socket!.resume();
      this.#socket!.write(request);
    });
  }

  enterIdle(keepMs: number): void {
    this.#phase = 'idle';
    this.#reused = true;
    // The body's slab stays with its chunks' owners; an idle connection reads into a small one.
    this.#slab = EMPTY;
    this.#off = 0;
    this.#idleTimer = setTimeout(() => this.destroy(), keepMs);
    this.#idleTimer.unref();
  }

  leaveIdle(): void {
    clearTimeout(this.#idleTimer);
    this.#idleTimer = undefined;
  }

  destroy(): void {
    this.#fail(new Error('connection closed'));
  }

  #onHead(head: ResponseHead): void {
    clearTimeout(this.#timer);
    this.#phase = 'body';
    this.#keepMs = Math.min(this.#keepMs, keepAliveHintMs(head.headers['keep-alive']));
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
    // The body may fail before its consumer attaches (request() resolves a tick later): that
    // must not be an uncaught 'error'. The error stays on the stream (`errored`) for the consumer.
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
      this.hooks.release(this, this.#keepMs);
    } else {
      this.destroy();
    }
  }

  #eof(): void {
    if (this.#phase === 'waiting' && this.#parser?.pristine === true) {
      // Closed without a byte of answer: on a reused connection, request() tries another.
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
    this.#timer = setTimeout(() => this.#fail(new HttpTimeoutError('body', this.idleMs)), this.idleMs);
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
    const pristine = this.#phase === 'waiting' && this.#parser?.pristine === true;
    this.#phase = 'dead';
    this.#finishRequest();
    clearTimeout(this.#idleTimer);
    this.#slab = EMPTY;
    this.#socket?.destroy();
    this.hooks.gone(this);
    const reject = this.#reject;
    this.#resolve = undefined;
    this.#reject = undefined;
    if (reject !== undefined) {
      const final = (err as { name?: string }).name === 'AbortError' || err instanceof HttpTimeoutError || err instanceof Http1ParseError;
      reject(this.#reused && pristine && !final ? new StaleConnectionError(err) : err);
    }
    const body = this.#body;
    this.#body = undefined;
    body?.destroy(err);
  }
}

function requestText(method: Http1Method, url: URL, headers: Record<string, string>): string {
  let text = `${method} ${url.pathname}${url.search} HTTP/1.1\r\nhost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (!/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(name) || /[\r\n\0]/.test(value)) throw new TypeError(`invalid request header ${name}`);
    const lower = name.toLowerCase();
    if (lower === 'host' || lower === 'connection' || lower === 'content-length' || lower === 'transfer-encoding') continue;
    text += `${name}: ${value}\r\n`;
  }
  return `${text}\r\n`;
}

/** `Keep-Alive: timeout=5` -> 4000 (a second's margin, as undici does); no hint -> Infinity. */
function keepAliveHintMs(v: string | string[] | undefined): number {
  const m = /(?:^|[,;\s])timeout=(\d+)/i.exec(Array.isArray(v) ? v.join(',') : (v ?? ''));
  return m === null ? Number.POSITIVE_INFINITY : Math.max(0, Number(m[1]) * 1000 - 1000);
}

function abortError(): Error {
  const err = new Error('aborted');
  err.name = 'AbortError';
  return err;
}
