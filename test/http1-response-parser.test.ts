// The HTTP/1.1 response parser under BulkGet: framing by Content-Length, chunked coding and
// close, interim responses, connection reuse, and every kind of malformed input, with the
// bytes fed whole, byte by byte and split at every offset (a socket may cut anywhere).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Http1ParseError, Http1ResponseParser, type ResponseHead } from '../src/upstream/http1-response-parser.ts';

interface Parsed {
  head: ResponseHead | undefined;
  body: Buffer;
  chunks: Buffer[];
  ended: boolean;
  reusable: boolean | undefined;
}

function parse(pieces: Buffer[], opts: { finish?: boolean } = {}): Parsed {
  const out: Parsed = { head: undefined, body: Buffer.alloc(0), chunks: [], ended: false, reusable: undefined };
  const parser = new Http1ResponseParser({
    head: (h) => {
      assert.equal(out.head, undefined, 'one head per response');
      out.head = h;
    },
    body: (c) => {
      assert.ok(!out.ended, 'no body after the end');
      out.chunks.push(c);
    },
    end: (reusable) => {
      out.ended = true;
      out.reusable = reusable;
    },
  });
  for (const p of pieces) parser.feed(p);
  if (opts.finish === true) parser.finish();
  out.body = Buffer.concat(out.chunks);
  return out;
}

/** The same bytes whole, byte by byte, and split in two at every offset. */
function splits(text: string | Buffer): Buffer[][] {
  const all = typeof text === 'string' ? Buffer.from(text, 'latin1') : text;
  const ways: Buffer[][] = [[all], [...all].map((b) => Buffer.from([b]))];
  for (let i = 1; i < all.length; i++) ways.push([all.subarray(0, i), all.subarray(i)]);
  return ways;
}

function rejects(text: string, pattern: RegExp, opts: { finish?: boolean } = {}): void {
  for (const pieces of splits(text)) {
    assert.throws(() => parse(pieces, opts), (e: unknown) => e instanceof Http1ParseError && pattern.test(e.message), JSON.stringify(text));
  }
}

describe('HTTP/1.1 response parser', () => {
  it('frames a body by Content-Length, however the bytes are split', () => {
    const text = 'HTTP/1.1 200 OK\r\nContent-Length: 11\r\nDocker-Content-Digest: sha256:x\r\nX-A: 1\r\nx-a: 2\r\n\r\nhello world';
    for (const pieces of splits(text)) {
      const r = parse(pieces);
      assert.equal(r.head?.status, 200);
      assert.equal(r.head?.headers['docker-content-digest'], 'sha256:x');
      assert.deepEqual(r.head?.headers['x-a'], ['1', '2']);
      assert.equal(r.body.toString(), 'hello world');
      assert.equal(r.ended, true);
      assert.equal(r.reusable, true);
    }
  });

  it('hands body bytes on as views of the buffers fed in (no copies)', () => {
    const wire = Buffer.from('HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nabcde');
    const r = parse([wire]);
    assert.equal(r.chunks.length, 1);
    assert.equal(r.chunks[0]!.buffer, wire.buffer);
  });

  it('decodes chunked bodies with extensions and trailers', () => {
    const text =
      'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n' +
      '5;name=value\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nDigest: x\r\nOther: y\r\n\r\n';
    for (const pieces of splits(text)) {
      const r = parse(pieces);
      assert.equal(r.body.toString(), 'hello 0123456789');
      assert.equal(r.ended, true);
      assert.equal(r.reusable, true);
    }
  });

  it('skips interim 1xx responses', () => {
    const r = parse([Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok')]);
    assert.equal(r.head?.status, 200);
    assert.equal(r.head?.headers.link, undefined);
    assert.equal(r.body.toString(), 'ok');
  });

  it('reads a body without length to the close, and never reuses that connection', () => {
    for (const pieces of splits('HTTP/1.1 200 OK\r\n\r\nuntil the end')) {
      const open = parse(pieces);
      assert.equal(open.ended, false, 'not ended before the connection closes');
      const r = parse(pieces, { finish: true });
      assert.equal(r.body.toString(), 'until the end');
      assert.equal(r.reusable, false);
    }
  });

  it('marks connections not reusable on Connection: close, HTTP/1.0, and Content-Length beside chunked', () => {
    assert.equal(parse([Buffer.from('HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')]).reusable, false);
    assert.equal(parse([Buffer.from('HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n')]).reusable, false);
    assert.equal(parse([Buffer.from('HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n')]).reusable, true);
    const both = parse([Buffer.from('HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n')]);
    assert.equal(both.body.toString(), 'ab');
    assert.equal(both.reusable, false);
  });

  it('ends 204 and 304 at their headers', () => {
    for (const status of [204, 304]) {
      const r = parse([Buffer.from(`HTTP/1.1 ${status} X\r\nContent-Length: 10\r\n\r\n`)]);
      assert.equal(r.ended, true);
      assert.equal(r.body.length, 0);
    }
  });

  it('rejects malformed status lines, header lines and lengths', () => {
    rejects('HTTP/2 200 OK\r\n\r\n', /status line/);
    rejects('HTTP/1.1 20 OK\r\n\r\n', /status line/);
    rejects('ICY 200 OK\r\n\r\n', /status line/);
    rejects('HTTP/1.1 200 OK\r\nno colon here\r\n\r\n', /header line/);
    rejects('HTTP/1.1 200 OK\r\nA: 1\r\n folded\r\n\r\n', /header line/);
    rejects('HTTP/1.1 200 OK\r\nBad Name: 1\r\n\r\n', /header line/);
    rejects('HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n', /Content-Length/);
    rejects('HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n', /Content-Length/);
    rejects('HTTP/1.1 200 OK\r\nContent-Length: 0x10\r\n\r\n', /Content-Length/);
    rejects('HTTP/1.1 101 Switching Protocols\r\n\r\n', /101/);
  });

  it('rejects broken chunk framing', () => {
    const head = 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n';
    rejects(`${head}zz\r\n`, /chunk size/);
    rejects(`${head}\r\n`, /chunk size/);
    rejects(`${head}3\r\nabcdef\r\n`, /longer than its size/);
    rejects(`${head}3\nabc`, /bare LF/);
    rejects(`${head}${'1'.repeat(5000)}`, /too long/);
    rejects(`${head}1000000000000\r\n`, /chunk size/);
  });

  it('rejects oversized headers, bytes after the end, and a connection cut short', () => {
    assert.throws(() => parse([Buffer.from(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70 * 1024)}`)]), /larger than/);
    assert.throws(() => parse([Buffer.from(`HTTP/1.1 200 OK\r\nX: ${'a'.repeat(70 * 1024)}\r\n\r\n`)]), /larger than/);
    rejects('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc', /after the end/);
    rejects('HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc', /before the body ended/, { finish: true });
    rejects('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab', /before the body ended/, { finish: true });
    rejects('HTTP/1.1 200 OK\r\nContent-Le', /before the response headers/, { finish: true });
  });
});

describe('HTTP/1.1 response parser, randomised', () => {
  // A seeded generator: a failure names its seed and reproduces.
  function rng(seed: number): () => number {
    let x = seed >>> 0 || 1;
    return () => {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      return (x >>> 0) / 2 ** 32;
    };
  }

  function randomResponse(r: () => number): { wire: Buffer; body: Buffer } {
    const body = Buffer.from(Array.from({ length: Math.floor(r() * 3000) }, () => Math.floor(r() * 256)));
    if (r() < 0.5) return { wire: Buffer.concat([Buffer.from(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`), body]), body };
    const parts: Buffer[] = [Buffer.from('HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n')];
    for (let at = 0; at < body.length; ) {
      const n = Math.min(body.length - at, 1 + Math.floor(r() * 700));
      parts.push(Buffer.from(`${n.toString(16)}${r() < 0.3 ? ';x=y' : ''}\r\n`), body.subarray(at, at + n), Buffer.from('\r\n'));
      at += n;
    }
    parts.push(Buffer.from(r() < 0.3 ? '0\r\nT: v\r\n\r\n' : '0\r\n\r\n'));
    return { wire: Buffer.concat(parts), body };
  }

  function randomSplit(r: () => number, wire: Buffer): Buffer[] {
    const pieces: Buffer[] = [];
    for (let at = 0; at < wire.length; ) {
      const n = 1 + Math.floor(r() * 200);
      pieces.push(wire.subarray(at, at + n));
      at += n;
    }
    return pieces;
  }

  it('decodes 300 random bodies, in random pieces, to the bytes that were framed', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const r = rng(seed);
      const { wire, body } = randomResponse(r);
      const out = parse(randomSplit(r, wire));
      assert.ok(out.ended, `seed ${seed}: ended`);
      assert.ok(out.body.equals(body), `seed ${seed}: body`);
    }
  });

  it('turns 2000 corrupted responses into bodies or Http1ParseErrors, nothing else', () => {
    let errors = 0;
    for (let seed = 1; seed <= 2000; seed++) {
      const r = rng(seed);
      const wire = Buffer.from(randomResponse(r).wire);
      for (let k = 1 + Math.floor(r() * 4); k > 0; k--) wire[Math.floor(r() * wire.length)] = Math.floor(r() * 256);
      try {
        parse(randomSplit(r, wire), { finish: true });
      } catch (e) {
        assert.ok(e instanceof Http1ParseError, `seed ${seed}: ${String(e)}`);
        errors++;
      }
    }
    assert.ok(errors > 200, `corruption was noticed ${errors} times`);
  });
});
