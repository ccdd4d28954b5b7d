// Runs N hash-client processes against one blob URL (see hash-client.ts): bundled once with
// esbuild to a plain .mjs (no tsx start-up per client), all started, then released together
// once every one is loaded, so the wall time covers the transfers and not node's start-up.
import { spawn } from 'node:child_process';
import { rmSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import { concurrentGets, type ConcurrentResult, type CurlResult } from './load-clients.ts';
import type { ClientMode } from './options.ts';

const SOURCE = fileURLToPath(new URL('./hash-client.ts', import.meta.url));
let bundle: Promise<string> | undefined;

/** The client as one .mjs in a temp dir, built on first use (milliseconds). */
function clientBundle(): Promise<string> {
  bundle ??= (async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'ocirelay-bench-hash-client-'));
    process.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const outfile = path.join(dir, 'hash-client.mjs');
    await build({ entryPoints: [SOURCE], bundle: true, platform: 'node', format: 'esm', target: 'node20', outfile, logLevel: 'error' });
    return outfile;
  })();
  return bundle;
}

export interface HashGetOptions {
  expectDigest: string;
  expectBytes: number;
  /** Downloads per client on one keep-alive connection (default 1). */
  repeat?: number;
  timeoutMs: number;
  /** A transfer taking no byte for this long fails (default 15 s, as the curl clients). */
  stallMs?: number;
}

interface Client {
  pid: number;
  ready: Promise<void>;
  go(): void;
  done: Promise<CurlResult>;
  kill(): void;
}

function startClient(file: string, url: string, o: HashGetOptions): Client {
  const repeat = o.repeat ?? 1;
  const child = spawn(process.execPath, [file, url, o.expectDigest, String(o.expectBytes), String(repeat), String(o.stallMs ?? 15_000)], { stdio: ['pipe', 'pipe', 'pipe'] });
  // Writing the start signal to a client that already died must not throw (EPIPE).
  child.stdin.on('error', () => undefined);
  let stdout = '';
  let stderr = '';
  let onReady: () => void = () => undefined;
  const ready = new Promise<void>((resolve) => (onReady = resolve));
  child.stdout.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
    if (stdout.startsWith('ready\n')) onReady();
  });
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr = (stderr + s).slice(-4000)));
  const done = new Promise<CurlResult>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code !== 0) return reject(new Error(`hash client exited ${code ?? signal}: ${stderr.trim().split('\n').slice(0, 3).join('; ')}`));
      try {
        const line = stdout.slice('ready\n'.length).trim();
        const { transfers } = JSON.parse(line) as { transfers: Array<{ status: number; bytes: number; ttfbS: number; totalS: number }> };
        if (transfers.length !== repeat) return reject(new Error(`hash client reported ${transfers.length} transfers, expected ${repeat}`));
        resolve({
          status: transfers[0]?.status ?? 0,
          bytes: transfers.reduce((a, t) => a + t.bytes, 0),
          ttfbS: transfers[0]?.ttfbS ?? NaN,
          totalS: transfers.reduce((a, t) => a + t.totalS, 0),
        });
      } catch (e) {
        reject(new Error(`hash client output unreadable (${(e as Error).message}): ${stdout.slice(0, 300)}`));
      }
    });
  });
  // A client that dies before it is ready must not leave the barrier waiting.
  done.catch(() => onReady());
  return {
    pid: child.pid as number,
    ready,
    go: () => child.stdin.end('go\n'),
    done,
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * `n` hashing clients against one URL, released together; resolves when every one is done.
 * Rejects when any client failed (transport error, non-200, short body, digest mismatch).
 */
export function concurrentHashGets(url: string, n: number, o: HashGetOptions): Promise<ConcurrentResult> {
  return concurrentHashGetsOf(Array.from({ length: n }, () => url), o);
}

/**
 * One hashing client per URL (the same blob through several servers, e.g. the members of a
 * region), all released together; results in the order of `urls`.
 */
export async function concurrentHashGetsOf(urls: readonly string[], o: HashGetOptions): Promise<ConcurrentResult> {
  const file = await clientBundle();
  const url = [...new Set(urls)].join(' ');
  const clients = urls.map((u) => startClient(file, u, o));
  const timer = setTimeout(() => clients.forEach((c) => c.kill()), o.timeoutMs);
  try {
    await Promise.all(clients.map((c) => c.ready));
    const t0 = performance.now();
    for (const c of clients) c.go();
    const settled = await Promise.allSettled(clients.map((c) => c.done));
    const wallS = (performance.now() - t0) / 1000;
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) throw new Error(`GET ${url} (x${o.repeat ?? 1}): ${(failed.reason as Error).message}`);
    const results = settled.map((s) => (s as PromiseFulfilledResult<CurlResult>).value);
    return { wallS, bytes: results.reduce((a, c) => a + c.bytes, 0), clients: results };
  } finally {
    clearTimeout(timer);
    for (const c of clients) c.kill();
  }
}

/** The herd's and warm-throughput's clients, as `--client` chose: hashing (default) or curl discarding. */
export function concurrentBlobGets(mode: ClientMode, url: string, n: number, o: HashGetOptions): Promise<ConcurrentResult> {
  if (mode === 'hash') return concurrentHashGets(url, n, o);
  return concurrentGets(url, n, { expectBytes: o.expectBytes, timeoutMs: o.timeoutMs, ...(o.repeat !== undefined ? { repeat: o.repeat } : {}) });
}

/** How the report describes the clients. */
export function clientDescription(mode: ClientMode): string {
  return mode === 'hash' ? 'node client per process, sha256 of every body checked against the digest (as containerd does)' : 'curl per process, body to /dev/null';
}
