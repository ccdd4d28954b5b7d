// The clients that put load on the contenders, native tools so that the client is not the
// bottleneck on two cores: curl for blob downloads (one process per concurrent client, body to
// /dev/null), wrk for manifest request rates and latencies.
import { CommandError, runCommand } from '../test/fixtures/processes.ts';

export interface CurlResult {
  status: number;
  /** Body bytes received over all repeats. */
  bytes: number;
  /** Seconds from start to the first body byte of the first transfer, as curl measured it. */
  ttfbS: number;
  /** Seconds of all transfers together. */
  totalS: number;
}

const CURL_FORMAT = '%{http_code} %{size_download} %{time_starttransfer} %{time_total}\\n';

export interface CurlOptions {
  /** Bytes each transfer must deliver. */
  expectBytes?: number;
  timeoutMs: number;
  headers?: Record<string, string>;
  /** Download the URL this many times in a row on one keep-alive connection (default 1). */
  repeat?: number;
}

/** GETs with curl, bodies discarded. Rejects on a transport error, a non-200 or a short body. */
export async function curlGet(url: string, opts: CurlOptions): Promise<CurlResult> {
  const repeat = opts.repeat ?? 1;
  // -y/-Y: a transfer that stalls (under 1 byte/s for 15 s) is a failure, not a long wait.
  const args = ['-s', '-S', '-y', '15', '-Y', '1', '-w', CURL_FORMAT];
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}: ${v}`);
  for (let i = 0; i < repeat; i++) args.push('-o', '/dev/null', url);
  let stdout: string;
  try {
    ({ stdout } = await runCommand('curl', args, { timeoutMs: opts.timeoutMs }));
  } catch (e) {
    // The command line repeats the URL; what matters is curl's own complaint.
    if (e instanceof CommandError) throw new Error(`GET ${url} (x${repeat}): curl exited ${e.exitCode ?? e.signal}: ${e.stderr.trim().split('\n').slice(0, 3).join('; ')}`);
    throw e;
  }
  const lines = stdout.trim().split('\n');
  if (lines.length !== repeat) throw new Error(`GET ${url}: curl reported ${lines.length} transfers, expected ${repeat}`);
  const r: CurlResult = { status: 0, bytes: 0, ttfbS: NaN, totalS: 0 };
  for (const [i, line] of lines.entries()) {
    const [code, size, ttfb, total] = line.trim().split(' ').map(Number);
    if (code !== 200) throw new Error(`GET ${url}: status ${code}`);
    if (opts.expectBytes !== undefined && size !== opts.expectBytes) throw new Error(`GET ${url}: ${size} bytes, expected ${opts.expectBytes}`);
    r.status = code;
    r.bytes += size ?? 0;
    if (i === 0) r.ttfbS = ttfb ?? NaN;
    r.totalS += total ?? 0;
  }
  return r;
}

export interface ConcurrentResult {
  /** Wall time from the first client's start to the last client's end. */
  wallS: number;
  /** Body bytes all clients received. */
  bytes: number;
  clients: CurlResult[];
}

/** `n` curl clients started together against one URL; resolves when every one is done. */
export async function concurrentGets(url: string, n: number, opts: CurlOptions): Promise<ConcurrentResult> {
  const t0 = performance.now();
  const settled = await Promise.allSettled(Array.from({ length: n }, () => curlGet(url, opts)));
  const wallS = (performance.now() - t0) / 1000;
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  const clients = settled.map((s) => (s as PromiseFulfilledResult<CurlResult>).value);
  return { wallS, bytes: clients.reduce((a, c) => a + c.bytes, 0), clients };
}

export interface WrkResult {
  requests: number;
  rps: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  /** Non-2xx/3xx answers plus socket errors: must be 0 for a valid sample. */
  errors: number;
}

/** wrk's latency figures ("1.23ms", "850.00us", "1.02s") in milliseconds. */
function toMs(v: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(v.trim());
  if (!m) return NaN;
  const n = Number(m[1]);
  return m[2] === 'us' ? n / 1000 : m[2] === 'ms' ? n : m[2] === 's' ? n * 1000 : n * 60_000;
}

export function parseWrk(out: string): WrkResult {
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    return m ? Number(m[1]) : NaN;
  };
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+(\\S+)`, 'm').exec(out);
    return m ? toMs(m[1] as string) : NaN;
  };
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  const socketErrors = socket ? socket.slice(1).reduce((a, b) => a + Number(b), 0) : 0;
  const non2xx = num(/Non-2xx or 3xx responses: (\d+)/);
  return {
    requests: num(/(\d+) requests in/),
    rps: num(/Requests\/sec:\s+([\d.]+)/),
    p50Ms: pct('50'),
    p90Ms: pct('90'),
    p99Ms: pct('99'),
    errors: socketErrors + (Number.isNaN(non2xx) ? 0 : non2xx),
  };
}

/**
 * wrk with one thread (the other core is the server's), `connections` keep-alive connections,
 * for `seconds`. One thread keeps the client's share of the CPU the same for every contender.
 */
export async function runWrk(url: string, opts: { connections: number; seconds: number; headers?: Record<string, string> }): Promise<WrkResult> {
  const args = ['-t1', `-c${opts.connections}`, `-d${opts.seconds}s`, '--latency', '--timeout', '5s'];
  for (const [k, v] of Object.entries(opts.headers ?? {})) args.push('-H', `${k}: ${v}`);
  args.push(url);
  const { stdout } = await runCommand('wrk', args, { timeoutMs: (opts.seconds + 30) * 1000 });
  const r = parseWrk(stdout);
  if (!Number.isFinite(r.rps)) throw new Error(`cannot read wrk output:\n${stdout}`);
  return r;
}
