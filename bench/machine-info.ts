// What the numbers were measured on: CPU, cores, memory, kernel, node and the versions of
// every component, plus the load average (another process busy on two cores skews everything).
import { readFile } from 'node:fs/promises';
import os from 'node:os';
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

export async function machineInfo(): Promise<MachineInfo> {
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
  };
}
