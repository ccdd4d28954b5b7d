// Puts files in the page cache before a measurement. This machine runs DAMON with a `pageout`
// scheme (/sys/kernel/mm/damon/admin/kdamonds/0: pages unused for 12 x 5 s are reclaimed), so
// a blob nobody read for a minute is back on disk: a "warm" sample would then measure the
// disk, for whichever contender happened to wait longest. Reading the file first makes warm
// mean warm for every contender, as in the reference figures (blob already in page cache).
import { runCommand } from '../test/fixtures/processes.ts';

export async function warmPageCache(files: readonly string[]): Promise<void> {
  for (const f of files) await runCommand('dd', [`if=${f}`, 'of=/dev/null', 'bs=4M', 'status=none'], { timeoutMs: 300_000 });
}
