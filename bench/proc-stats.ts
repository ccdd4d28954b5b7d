// What the kernel knows about a process we started: peak resident memory (VmHWM, which
// `echo 5 > /proc/PID/clear_refs` resets to the current RSS so each measurement has its own
// peak), current RSS and open fds (the soak), bytes it wrote (/proc/PID/io wchar, which counts
// sendfile too) and CPU seconds, also of a whole process tree (nginx's master and workers).
import { readdir, readFile, writeFile } from 'node:fs/promises';

async function statusField(pid: number, field: string): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/status`, 'utf8');
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set size in bytes since start or since the last resetPeakRss. */
export function peakRss(pid: number): Promise<number | undefined> {
  return statusField(pid, 'VmHWM');
}

export function currentRss(pid: number): Promise<number | undefined> {
  return statusField(pid, 'VmRSS');
}

/** Reset VmHWM to the current RSS; false when the kernel refuses (then the peak is since start). */
export async function resetPeakRss(pid: number): Promise<boolean> {
  try {
    await writeFile(`/proc/${pid}/clear_refs`, '5');
    return true;
  } catch {
    return false;
  }
}

/** Open file descriptors of the process (entries of /proc/PID/fd). */
export async function openFds(pid: number): Promise<number | undefined> {
  try {
    return (await readdir(`/proc/${pid}/fd`)).length;
  } catch {
    return undefined;
  }
}

/** Bytes the process has passed to write(2)/sendfile(2) and friends so far. */
export async function writtenBytes(pid: number): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/io`, 'utf8');
    const m = /^wchar:\s+(\d+)/m.exec(text);
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** User + system CPU seconds the process has used so far (from /proc/PID/stat). */
export async function cpuSeconds(pid: number): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which is in parentheses and may contain spaces.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    const utime = Number(rest[11]);
    const stime = Number(rest[12]);
    return (utime + stime) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/** The parent PID from /proc/PID/stat, undefined when the process is gone. */
async function parentPid(pid: number): Promise<number | undefined> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8');
    return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[1]);
  } catch {
    return undefined;
  }
}

/** `pid` and every process below it (nginx's workers under its master), by scanning /proc. */
export async function processTree(pid: number): Promise<number[]> {
  const children = new Map<number, number[]>();
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const child = Number(name);
    const parent = await parentPid(child);
    if (parent === undefined) continue;
    let list = children.get(parent);
    if (!list) children.set(parent, (list = []));
    list.push(child);
  }
  const out: number[] = [];
  const queue = [pid];
  for (let p = queue.shift(); p !== undefined; p = queue.shift()) {
    out.push(p);
    queue.push(...(children.get(p) ?? []));
  }
  return out;
}

/**
 * User + system CPU seconds of the processes in `pids` together (a server's processTree(),
 * taken before the sample and read before and after it); undefined when one of them is gone.
 */
export async function cpuSecondsOf(pids: readonly number[]): Promise<number | undefined> {
  let total = 0;
  for (const p of pids) {
    const s = await cpuSeconds(p);
    if (s === undefined) return undefined;
    total += s;
  }
  return total;
}

/** USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK). */
const CLOCK_TICKS = 100;
