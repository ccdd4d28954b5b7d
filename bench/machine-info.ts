// What the numbers were measured on: CPU, cores, memory, kernel, node and the versions of
// every component, plus the load average (another process busy on two cores skews everything)
// and whether ocirelay ran from its build or from the sources through tsx (more memory, slower).
import { existsSync, readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CommandError, runCommand } from '../test/fixtures/processes.ts';

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryBytes: number;
  kernel: string;
  os: string;
  node: string;
  tools: Record<string, string>;
  loadAvgAtStart: number[];
  /** What bin/ocirelay.js runs: the dist/ build, or the sources through tsx. */
  ocirelayRunsFrom: string;
}

function newestMtime(dir: string): number {
  let t = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    t = Math.max(t, e.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs);
  }
  return t;
}

/** The same choice bin/ocirelay.js makes: dist/cli.js when it is newer than every file in src/. */
export function ocirelayRunsFrom(bin: string): string {
  const root = path.resolve(path.dirname(bin), '..');
  const dist = path.join(root, 'dist', 'cli.js');
  if (process.env.OCIRELAY_FROM_SOURCE === '1') return 'sources through tsx (OCIRELAY_FROM_SOURCE=1)';
  if (existsSync(dist) && statSync(dist).mtimeMs >= newestMtime(path.join(root, 'src'))) return 'dist/ build';
  return 'sources through tsx: dist/ is older than src/ (run `npm run build` to measure the build)';
}

async function version(cmd: string, args: string[]): Promise<string> {
  try {
    const r = await runCommand(cmd, args, { timeoutMs: 10_000 });
    return (r.stdout.trim() || r.stderr.trim()).split('\n')[0] ?? '';
  } catch (e) {
    // nginx -v prints to stderr; wrk -v exits non-zero after printing its version.
    if (e instanceof CommandError) return (e.stdout.trim() || e.stderr.trim()).split('\n')[0] ?? '';
    return `unavailable (${(e as Error).message.split('\n')[0]})`;
  }
}

export async function machineInfo(ocirelayBin: string): Promise<MachineInfo> {
  let cpuModel = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(await readFile('/proc/cpuinfo', 'utf8'));
    if (m?.[1]) cpuModel = m[1].trim();
  } catch {
    // not Linux
  }
  let osName = `${os.type()} ${os.release()}`;
  try {
    const m = /^PRETTY_NAME="?([^"\n]+)"?$/m.exec(await readFile('/etc/os-release', 'utf8'));
    if (m?.[1]) osName = m[1];
  } catch {
    // keep the kernel name
  }
  const tools: Record<string, string> = {
    'docker-registry': await version('docker-registry', ['--version']),
    nginx: await version('nginx', ['-v']),
    skopeo: await version('skopeo', ['--version']),
    curl: await version('curl', ['--version']),
    wrk: await version('wrk', ['-v']),
  };
  return {
    cpuModel,
    cores: os.cpus().length,
    memoryBytes: os.totalmem(),
    kernel: os.release(),
    os: osName,
    node: process.version,
    tools,
    loadAvgAtStart: os.loadavg().map((v) => Math.round(v * 100) / 100),
    ocirelayRunsFrom: ocirelayRunsFrom(ocirelayBin),
  };
}
