// A blob client that does what containerd does with every byte it receives: sha256 over the
// body, compared with the digest it asked for (a mismatch fails the sample). One process per
// concurrent client, like the curl clients it sits next to; run by plain `node` from an
// esbuild bundle (hash-client-runner.ts), not through tsx, so that 32 of them start quickly.
//
// argv: URL EXPECT_DIGEST EXPECT_BYTES REPEAT STALL_MS
// It prints `ready` once loaded, waits for a line on stdin (the start signal, so that process
// start-up is not in the measured time), downloads URL REPEAT times on one keep-alive
// connection, and prints one JSON line: { transfers: [{ status, bytes, ttfbS, totalS }] }.
// Exit 0 only when every transfer was a 200 of EXPECT_BYTES bytes hashing to EXPECT_DIGEST.
import { createHash } from 'node:crypto';
import http from 'node:http';

export interface HashTransfer {
  status: number;
  bytes: number;
  /** Seconds from this transfer's request to its first body byte. */
  ttfbS: number;
  totalS: number;
}

function fail(msg: string): never {
  process.stderr.write(`${msg}\n`);
  process.exit(1);
}

function getOnce(agent: http.Agent, url: string, expectDigest: string, expectBytes: number, stallMs: number): Promise<HashTransfer> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    let ttfb = NaN;
    const req = http.get(url, { agent }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (chunk: Buffer) => {
        if (bytes === 0) ttfb = (performance.now() - t0) / 1000;
        bytes += chunk.length;
        hash.update(chunk);
      });
      res.once('error', reject);
      res.once('aborted', () => reject(new Error(`aborted after ${bytes} bytes`)));
      res.once('end', () => {
        const totalS = (performance.now() - t0) / 1000;
        if (res.statusCode !== 200) return reject(new Error(`status ${res.statusCode}`));
        if (bytes !== expectBytes) return reject(new Error(`${bytes} bytes, expected ${expectBytes}`));
        const got = `sha256:${hash.digest('hex')}`;
        if (got !== expectDigest) return reject(new Error(`digest mismatch: got ${got}, expected ${expectDigest}`));
        resolve({ status: 200, bytes, ttfbS: ttfb, totalS });
      });
    });
    // A transfer that takes no byte for stallMs is a failure, not a long wait (curl's -y/-Y).
    req.setTimeout(stallMs, () => req.destroy(new Error(`stalled for ${stallMs} ms`)));
    req.once('error', reject);
  });
}

async function main(): Promise<void> {
  const [url, expectDigest, bytesArg, repeatArg, stallArg] = process.argv.slice(2);
  if (!url || !expectDigest || !bytesArg || !repeatArg || !stallArg) fail('usage: hash-client URL DIGEST BYTES REPEAT STALL_MS');
  const expectBytes = Number(bytesArg);
  const repeat = Number(repeatArg);
  const stallMs = Number(stallArg);
  // One connection, reused for every repeat (as curl does with several URLs).
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  process.stdout.write('ready\n');
  await new Promise<void>((resolve) => {
    process.stdin.once('data', () => resolve());
    process.stdin.once('end', () => fail('stdin closed before the start signal'));
  });
  process.stdin.pause();
  const transfers: HashTransfer[] = [];
  for (let i = 0; i < repeat; i++) {
    try {
      transfers.push(await getOnce(agent, url, expectDigest, expectBytes, stallMs));
    } catch (e) {
      fail(`GET ${url} (transfer ${i + 1} of ${repeat}): ${(e as Error).message}`);
    }
  }
  agent.destroy();
  process.stdout.write(`${JSON.stringify({ transfers })}\n`);
}

await main();
