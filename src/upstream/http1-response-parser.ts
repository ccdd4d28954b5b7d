// Incremental parser for one HTTP/1.1 response to a GET or HEAD (RFC 9112), fed the bytes of a
// connection as they arrive. Body bytes come out as subarrays of the buffers fed in (no
// copies), framed by Content-Length, chunked transfer coding, or the connection's close.
// Interim 1xx responses are skipped. Anything malformed throws an Http1ParseError; the
// connection is then unusable.

export class Http1ParseError extends Error {
  readonly code = 'OCIRELAY_HTTP_PARSE';
  constructor(message: string) {
    super(message);
    this.name = 'Http1ParseError';
  }
}

export interface ResponseHead {
  status: number;
  /** Lower-case names; a repeated header is an array of its values. */
  headers: Record<string, string | string[]>;
}

export interface ResponseEvents {
  head(head: ResponseHead): void;
  body(chunk: Buffer): void;
  /** The whole response has been read; `reusable` when the connection may carry another request. */
  end(reusable: boolean): void;
}

const MAX_HEAD = 64 * 1024;
const MAX_CHUNK_LINE = 4 * 1024;
const CRLF2 = Buffer.from('\r\n\r\n');
const STATUS_LINE = /^HTTP\/1\.([01]) (\d{3})(?: [^\r\n]*)?$/;
const HEADER_LINE = /^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$/;
const HEX = /^[0-9a-fA-F]{1,12}$/;

type Phase = 'head' | 'length' | 'chunk-size' | 'chunk-data' | 'chunk-crlf' | 'trailers' | 'close' | 'done';

export class Http1ResponseParser {
  #phase: Phase = 'head';
  #head: Buffer[] = [];
  #headBytes = 0;
  /** Body bytes left in the current Content-Length body or chunk. */
  #left = 0;
  #line = '';
  #keepAlive = false;

  constructor(
    private readonly on: ResponseEvents,
    /** The response to a HEAD: it ends at its headers, whatever they say of a body. */
    private readonly opts: { bodiless?: boolean } = {},
  ) {}

  get done(): boolean {
    return this.#phase === 'done';
  }

  /** True while no byte of the response has arrived yet. */
  get pristine(): boolean {
    return this.#phase === 'head' && this.#headBytes === 0;
  }

  feed(buf: Buffer): void {
    let at = 0;
    while (at < buf.length) {
      switch (this.#phase) {
        case 'head':
          at = this.#feedHead(buf, at);
          break;
        case 'length':
          at = this.#counted(buf, at);
          if (this.#left === 0) this.#finish(this.#keepAlive);
          break;
        case 'close':
          this.on.body(at === 0 ? buf : buf.subarray(at));
          at = buf.length;
          break;
        case 'chunk-data':
          at = this.#counted(buf, at);
          if (this.#left === 0) {
            this.#phase = 'chunk-crlf';
            this.#line = '';
          }
          break;
        case 'chunk-crlf':
          // Exactly CRLF after chunk data: anything else is an error at once, not a wait for a line end.
          if (buf[at] !== (this.#line === '' ? 13 : 10)) throw new Http1ParseError('chunk data longer than its size');
          this.#line = this.#line === '' ? '\r' : '';
          if (this.#line === '') this.#phase = 'chunk-size';
          at++;
          break;
        case 'chunk-size':
        case 'trailers':
          at = this.#feedLine(buf, at);
          break;
        case 'done':
          // Bytes after the end of the response: the connection is out of step.
          throw new Http1ParseError('bytes after the end of the response');
      }
    }
  }

  /** The connection reached its end (EOF). A close-delimited body ends here; anything else was cut short. */
  finish(): void {
    if (this.#phase === 'done') return;
    if (this.#phase === 'close') {
      this.#finish(false);
      return;
    }
    throw new Http1ParseError(this.#phase === 'head' ? 'connection closed before the response headers' : 'connection closed before the body ended');
  }

  /** Body bytes of a known count (a Content-Length body or one chunk): hands on what is here of them. */
  #counted(buf: Buffer, at: number): number {
    const n = Math.min(this.#left, buf.length - at);
    this.#left -= n;
    this.on.body(buf.subarray(at, at + n));
    return at + n;
  }

  #feedHead(buf: Buffer, at: number): number {
    const prev = this.#headBytes;
    const part = buf.subarray(at);
    this.#head.push(part);
    this.#headBytes += part.length;
    const all = this.#head.length === 1 ? part : Buffer.concat(this.#head);
    // The terminator may straddle the previous piece and this one.
    const end = all.indexOf(CRLF2, Math.max(0, prev - 3));
    if (end < 0) {
      if (this.#headBytes > MAX_HEAD) throw new Http1ParseError(`response headers larger than ${MAX_HEAD} bytes`);
      this.#head = [all];
      return buf.length;
    }
    if (end > MAX_HEAD) throw new Http1ParseError(`response headers larger than ${MAX_HEAD} bytes`);
    const consumed = end + 4 - prev; // bytes of `part` that belong to the head
    this.#head = [];
    this.#headBytes = 0;
    this.#startBody(all.subarray(0, end).toString('latin1'));
    return at + consumed;
  }

  #startBody(text: string): void {
    const lines = text.split('\r\n');
    const m = STATUS_LINE.exec(lines[0] ?? '');
    if (m === null) throw new Http1ParseError('malformed status line');
    const minor = m[1];
    const status = Number(m[2]);
    const headers: Record<string, string | string[]> = {};
    for (let i = 1; i < lines.length; i++) {
      const h = HEADER_LINE.exec(lines[i]!);
      if (h === null) throw new Http1ParseError('malformed header line');
      const name = h[1]!.toLowerCase();
      const value = h[2]!;
      const had = headers[name];
      headers[name] = had === undefined ? value : Array.isArray(had) ? [...had, value] : [had, value];
    }
    if (status < 200) {
      // 100 Continue, 103 Early Hints: another head follows. 101 would switch protocols.
      if (status === 101) throw new Http1ParseError('unexpected 101 Switching Protocols');
      return;
    }
    this.on.head({ status, headers });
    const connection = tokens(headers.connection);
    this.#keepAlive = minor === '1' ? !connection.includes('close') : connection.includes('keep-alive');
    if (status === 204 || status === 304 || this.opts.bodiless === true) {
      this.#finish(this.#keepAlive);
      return;
    }
    const te = tokens(headers['transfer-encoding']);
    if (te.length > 0) {
      if (te[te.length - 1] === 'chunked') {
        // A Content-Length beside Transfer-Encoding is ignored, and the connection not reused.
        if (headers['content-length'] !== undefined) this.#keepAlive = false;
        this.#phase = 'chunk-size';
        this.#line = '';
      } else {
        this.#phase = 'close';
      }
      return;
    }
    const length = contentLength(headers['content-length']);
    if (length === undefined) {
      this.#phase = 'close';
    } else if (length === 0) {
      this.#finish(this.#keepAlive);
    } else {
      this.#phase = 'length';
      this.#left = length;
    }
  }

  /** Chunk-size lines and trailer lines. */
  #feedLine(buf: Buffer, at: number): number {
    const nl = buf.indexOf(10, at);
    const stop = nl < 0 ? buf.length : nl + 1;
    this.#line += buf.toString('latin1', at, stop);
    if (this.#line.length > MAX_CHUNK_LINE) throw new Http1ParseError('chunk framing line too long');
    if (nl < 0) return stop;
    if (!this.#line.endsWith('\r\n')) throw new Http1ParseError('bare LF in chunk framing');
    const line = this.#line.slice(0, -2);
    this.#line = '';
    if (this.#phase === 'chunk-size') {
      const size = line.split(';', 1)[0]!.trim();
      if (!HEX.test(size)) throw new Http1ParseError('malformed chunk size');
      this.#left = parseInt(size, 16);
      this.#phase = this.#left === 0 ? 'trailers' : 'chunk-data';
    } else if (line === '') {
      this.#finish(this.#keepAlive);
    }
    // other trailer lines are read and dropped
    return stop;
  }

  #finish(reusable: boolean): void {
    this.#phase = 'done';
    this.on.end(reusable);
  }
}

function tokens(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  const all = Array.isArray(v) ? v.join(',') : v;
  return all
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .filter((t) => t !== '');
}

function contentLength(v: string | string[] | undefined): number | undefined {
  if (v === undefined) return undefined;
  const values = (Array.isArray(v) ? v.join(',') : v).split(',').map((s) => s.trim());
  const first = values[0]!;
  if (!/^\d{1,15}$/.test(first) || values.some((s) => s !== first)) throw new Http1ParseError('malformed Content-Length');
  return Number(first);
}
