// What the kernel knows about a process we started: peak resident memory (VmHWM, which
// `echo 5 > /proc/PID/clear_refs` resets to the current RSS so each measurement has its own
// peak) and bytes it wrote (/proc/PID/io wchar, which counts sendfile too).
import { readFile, writeFile } from 'node:fs/promises';

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

/** USER_HZ: 100 on every Linux this runs on (getconf CLK_TCK). */
const CLOCK_TICKS = 100;
