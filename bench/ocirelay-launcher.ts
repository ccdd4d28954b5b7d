// Starts the real `node bin/ocirelay.js serve --config FILE` with its PID in hand (for RSS and
// CPU profiles), times it from spawn to the 'ocirelay ready' log line and to the first 200 from
// /readyz, and stops it by that PID.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { freePort } from '../test/fixtures/ports.ts';

/** This checkout's ocirelay; another checkout can be measured with --ocirelay-root. */
export const DEFAULT_BIN = fileURLToPath(new URL('../bin/ocirelay.js', import.meta.url));
/** The node flags ocirelay runs with in production (package.json's start, deploy/Dockerfile). */
export const PRODUCTION_NODE_ARGS = ['--max-semi-space-size=4'] as const;
/** Only the tail of the output is kept: enough for an error message, bounded in memory. */
const KEEP_OUTPUT = 64 * 1024;

export interface OcirelayStartOptions {
  /** Directory for config and data (created). */
  dir: string;
  /** Data dir; default `<dir>/data`. */
  dataDir?: string;
  upstreamUrl: string;
  /** 'warn' for load (info logs a line per request); 'info' when the ready line is awaited. */
  logLevel: 'info' | 'warn' | 'error';
  nodeArgs?: readonly string[];
  startTimeoutMs?: number;
  /** More top-level config sections, e.g. `cache: {maxBytes}` for the soak's evictions. */
  extraConfig?: Record<string, unknown>;
  /** Listen port chosen beforehand (cluster members list each other's URLs); default a free one. */
  port?: number;
  /** More environment variables, e.g. the S3 credentials (the SDK's default chain reads them). */
  env?: Record<string, string>;
}

export interface RunningOcirelay {
  pid: number;
  url: string;
  host: string;
  dataDir: string;
  /** ms from spawn to the first 200 from GET /readyz. */
  readyzMs: number;
  /** ms from spawn to the 'ocirelay ready' line (undefined when logLevel hides it). */
  readyLogMs: number | undefined;
  /** The 'ocirelay ready' log line (startupMs, cachedBlobs, ...); undefined when logLevel hides it. */
  readyLine: Record<string, unknown> | undefined;
  outputTail(): string;
  /** SIGTERM, SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs?: number): Promise<void>;
}

/**
 * Launches ocirelay processes. Holds one piece of learned state: whether this ocirelay's
 * config schema has an `admin` listener (it is being added); when it has, every instance gets
 * its own free admin port, so that several instances never fight over the default one.
 */
export class OcirelayLauncher {
  private adminSupported: boolean | undefined;
  /** PIDs started and not yet exited, for killAllNow(). */
  private readonly live = new Set<number>();

  constructor(private readonly bin: string = DEFAULT_BIN) {}

  /** Synchronous SIGKILL of every instance still running: the harness's last-resort exit hook. */
  killAllNow(): void {
    for (const pid of this.live) killPid(pid, 'SIGKILL');
  }

  async start(o: OcirelayStartOptions): Promise<RunningOcirelay> {
    if (this.adminSupported !== false) {
      try {
        const r = await this.startOnce(o, true);
        this.adminSupported = true;
        return r;
      } catch (e) {
        if (!(e instanceof ConfigRejected) || !/admin/.test(e.message)) throw e;
        this.adminSupported = false;
      }
    }
    return this.startOnce(o, false);
  }

  private async startOnce(o: OcirelayStartOptions, withAdmin: boolean): Promise<RunningOcirelay> {
    await mkdir(o.dir, { recursive: true });
    const dataDir = o.dataDir ?? path.join(o.dir, 'data');
    const port = o.port ?? (await freePort());
    const config: Record<string, unknown> = {
      listen: `127.0.0.1:${port}`,
      dataDir,
      registries: { 'docker.io': { url: o.upstreamUrl, tagTTL: '5m' } },
      log: { level: o.logLevel },
      ...o.extraConfig,
    };
    if (withAdmin) config.admin = { listen: `127.0.0.1:${await freePort()}` };
    const cfgFile = path.join(o.dir, 'ocirelay.yaml');
    await writeFile(cfgFile, stringify(config));

    const t0 = performance.now();
    const child: ChildProcess = spawn(process.execPath, [...PRODUCTION_NODE_ARGS, ...(o.nodeArgs ?? []), this.bin, 'serve', '--config', cfgFile], {
      cwd: o.dir,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, OCIRELAY_CONFIG: '', OCIRELAY_LISTEN: '', OCIRELAY_DATA_DIR: '', ...o.env },
    });
    const pid = await new Promise<number>((resolve, reject) => {
      child.once('spawn', () => resolve(child.pid as number));
      child.once('error', reject);
    });
    this.live.add(pid);
    let output = '';
    let partial = '';
    let readyLogMs: number | undefined;
    let readyLine: Record<string, unknown> | undefined;
    const keep = (s: string) => {
      output = (output + s).slice(-KEEP_OUTPUT);
    };
    child.stdout!.setEncoding('utf8').on('data', (s: string) => {
      keep(s);
      if (readyLogMs !== undefined) return;
      partial += s;
      for (let i = partial.indexOf('\n'); i >= 0; i = partial.indexOf('\n')) {
        const line = partial.slice(0, i);
        partial = partial.slice(i + 1);
        if (!line.includes('"ocirelay ready"')) continue;
        readyLogMs = performance.now() - t0;
        try {
          readyLine = JSON.parse(line) as Record<string, unknown>;
        } catch {
          // a non-JSON line that happens to contain the text: the timing still counts
        }
        partial = '';
        break;
      }
    });
    child.stderr!.setEncoding('utf8').on('data', keep);
    let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
    const exited = new Promise<void>((resolve) =>
      child.once('exit', (code, signal) => {
        exit = { code, signal };
        this.live.delete(pid);
        resolve();
      }),
    );

    const url = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + (o.startTimeoutMs ?? 30_000);
    let readyzMs: number | undefined;
    // Bounded: by the deadline and by the process exiting.
    while (readyzMs === undefined) {
      if (exit) {
        await sleep(50); // let the last output arrive
        const msg = `ocirelay exited during start-up (${exit.code ?? exit.signal}): ${output.slice(-3000)}`;
        if (exit.code === 2) throw new ConfigRejected(msg);
        throw new Error(msg);
      }
      if (Date.now() > deadline) {
        killPid(pid, 'SIGKILL');
        await exited;
        throw new Error(`ocirelay not ready within ${o.startTimeoutMs ?? 30_000} ms: ${output.slice(-3000)}`);
      }
      try {
        const res = await fetch(`${url}/readyz`, { signal: AbortSignal.timeout(1_000) });
        await res.arrayBuffer();
        if (res.status === 200) readyzMs = performance.now() - t0;
      } catch {
        // not listening yet
      }
      if (readyzMs === undefined) await sleep(10);
    }
    if (o.logLevel === 'info') {
      // The ready line is written before the first /readyz can be answered; give the pipe a moment.
      for (let i = 0; i < 100 && readyLogMs === undefined && !exit; i++) await sleep(10);
    }

    return {
      pid,
      url,
      host: `127.0.0.1:${port}`,
      dataDir,
      readyzMs,
      readyLogMs,
      readyLine,
      outputTail: () => output,
      stop: async (graceMs = 30_000) => {
        if (exit) return;
        killPid(pid, 'SIGTERM');
        const timer = setTimeout(() => killPid(pid, 'SIGKILL'), graceMs);
        await exited;
        clearTimeout(timer);
      },
    };
  }
}

/** ocirelay refused its config (exit code 2). */
class ConfigRejected extends Error {}

function killPid(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // already gone
  }
}
