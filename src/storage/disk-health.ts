// Whether the disk cache accepts writes. Any ENOSPC / EROFS / EACCES / EIO / EDQUOT on a cache
// write marks it unwritable: pulls then stream through uncached (BlobService) and /readyz says
// so. A probe (write, fsync, unlink a small file in tmp/) runs every `probeMs` while unwritable
// and flips it back by itself when space returns.
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';

const DISK_CODES = new Set(['ENOSPC', 'EROFS', 'EACCES', 'EPERM', 'EIO', 'EDQUOT', 'ENOENT']);

export function isDiskError(e: unknown): e is NodeJS.ErrnoException {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === 'string' && DISK_CODES.has(code);
}

export class DiskHealth {
  private ok = true;
  private reason: string | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly tmpDir: string,
    private readonly metrics: Metrics,
    private readonly logger: Logger,
    private readonly probeMs = 5000,
    /** Called when writes work again (e.g. to run eviction). */
    private readonly onRecovered: () => void = () => undefined,
  ) {
    metrics.diskWritable.set(1);
  }

  get writable(): boolean {
    return this.ok;
  }

  get problem(): string | undefined {
    return this.reason;
  }

  /** Report a failed cache write. */
  failed(e: unknown, what: string): void {
    const code = (e as NodeJS.ErrnoException).code ?? 'UNKNOWN';
    this.metrics.diskErrors.inc({ code });
    if (!this.ok) return;
    this.ok = false;
    this.reason = `${code} while ${what}`;
    this.metrics.diskWritable.set(0);
    this.logger.error({ code, what }, 'disk cache not writable: streaming pulls through without caching');
    this.timer = setInterval(() => void this.probe(), this.probeMs);
    this.timer.unref();
  }

  /**
   * Throw an ENOSPC error when the filesystem has less than `bytes` free, so that a fill
   * that cannot fit is refused before it starts rather than failing half-way.
   */
  async ensureRoom(bytes: number): Promise<void> {
    let free: number;
    try {
      const st = await fs.statfs(this.tmpDir);
      free = st.bavail * st.bsize;
    } catch {
      return; // cannot tell: let the write itself decide
    }
    if (free < bytes) {
      const e = new Error(`only ${free} bytes free for ${bytes}`) as NodeJS.ErrnoException;
      e.code = 'ENOSPC';
      throw e;
    }
  }

  /** Try a small write; on success the cache is writable again. */
  async probe(): Promise<boolean> {
    const file = path.join(this.tmpDir, `.probe-${process.pid}-${Date.now()}`);
    try {
      const fh = await fs.open(file, 'w');
      try {
        await fh.writeFile(Buffer.alloc(64 * 1024));
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.rm(file, { force: true });
    } catch {
      await fs.rm(file, { force: true }).catch(() => undefined);
      return false;
    }
    if (!this.ok) {
      this.ok = true;
      this.reason = undefined;
      this.metrics.diskWritable.set(1);
      if (this.timer) clearInterval(this.timer);
      this.timer = undefined;
      this.logger.info('disk cache writable again: caching resumed');
      this.onRecovered();
    }
    return true;
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
