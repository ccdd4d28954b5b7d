// Starts the real ocirelay command (bin/ocirelay.js serve) as a child process on a free
// loopback port, with a YAML config written to a temp dir; parses its JSON log lines.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';

const BIN = fileURLToPath(new URL('../../bin/ocirelay.js', import.meta.url));

export interface OcirelayProcess {
  url: string;
  /** The admin API (on a free port unless the config sets admin.listen). */
  adminUrl: string;
  host: string;
  port: number;
  /** The child's process id (for /proc/PID/status). */
  pid: number;
  dataDir: string;
  dir: string;
  /** JSON log lines so far. */
  logs(): Array<Record<string, unknown>>;
  /** The first log line matching `pred`, waiting (bounded) for it: logs are written asynchronously. */
  waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stderr(): string;
  /** Resolves once every log line written before the call is in logs() (lines are written in order). */
  flushLogs(): Promise<void>;
  metrics(): Promise<string>;
  /** A metric's value summed over series whose labels include all of `labels`. */
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  /** SIGTERM (graceful) or SIGKILL; resolves with the exit code/signal. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Start again with the same config and data dir (a restart). */
  restart(): Promise<OcirelayProcess>;
  cleanup(): Promise<void>;
}

async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

export async function startOcirelay(
  config: Record<string, unknown>,
  opts: { dir?: string; port?: number; adminPort?: number; env?: Record<string, string> } = {},
): Promise<OcirelayProcess> {
  const dir = opts.dir ?? (await mkdtemp(path.join(os.tmpdir(), 'ocirelay-proc-')));
  const port = opts.port ?? (await freePort());
  const dataDir = typeof config.dataDir === 'string' ? config.dataDir : path.join(dir, 'data');
  const cfgFile = path.join(dir, 'config.yaml');
  const admin = { ...((config.admin as Record<string, unknown> | undefined) ?? {}) };
  admin.listen ??= `127.0.0.1:${opts.adminPort ?? (await freePort())}`;
  const adminPort = Number(String(admin.listen).split(':').pop());
  await writeFile(cfgFile, stringify({ dataDir, log: { level: 'debug' }, ...config, admin, listen: `127.0.0.1:${port}` }));
  const child: ChildProcess = spawn(process.execPath, [BIN, 'serve', '--config', cfgFile], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, OCIRELAY_CONFIG: '', OCIRELAY_LISTEN: '', OCIRELAY_DATA_DIR: '', ...opts.env },
  });
  const lines: Array<Record<string, unknown>> = [];
  let partial = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => {
    partial += s;
    let i;
    while ((i = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, i);
      partial = partial.slice(i + 1);
      try {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        err += line + '\n';
      }
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  // 'close', not 'exit': only then have the last log lines written to the pipes arrived.
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('close', (code, signal) => resolve({ code, signal })),
  );
  let exitedEarly = false;
  void exited.then(() => (exitedEarly = true));

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (exitedEarly) throw new Error(`ocirelay exited during start-up: ${err.slice(-2000)}`);
    if (lines.some((l) => l.msg === 'ocirelay ready')) break;
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`ocirelay not ready within 20 s: ${err.slice(-2000)}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }

  const proc: OcirelayProcess = {
    url,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    host: `127.0.0.1:${port}`,
    port,
    pid: child.pid!,
    dataDir,
    dir,
    logs: () => lines,
    waitForLog: async (pred, timeoutMs = 5000) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const hit = lines.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error(`no matching log line within ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 20));
      }
    },
    stderr: () => err,
    flushLogs: async () => {
      const id = `flush-${Math.random().toString(36).slice(2)}`;
      await (await fetch(`${url}/v2/`, { headers: { 'x-request-id': id } })).arrayBuffer();
      await proc.waitForLog((l) => l.reqId === id);
    },
    metrics: async () => (await fetch(`${url}/metrics`)).text(),
    metric: async (name, labels = {}) => {
      const text = await proc.metrics();
      let sum = 0;
      for (const line of text.split('\n')) {
        if (!line.startsWith(name)) continue;
        const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$/.exec(line);
        if (!m || m[1] !== name) continue;
        const lab: Record<string, string> = {};
        for (const kv of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) lab[kv[1]!] = kv[2]!;
        if (Object.entries(labels).every(([k, v]) => lab[k] === v)) sum += Number(m[4]);
      }
      return sum;
    },
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const t = setTimeout(() => child.kill('SIGKILL'), 40_000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
    restart: async () => {
      await proc.stop();
      return startOcirelay(config, { dir, port, adminPort, ...(opts.env ? { env: opts.env } : {}) });
    },
    cleanup: async () => {
      await proc.stop('SIGKILL');
      if (!opts.dir) await rm(dir, { recursive: true, force: true });
    },
  };
  return proc;
}
