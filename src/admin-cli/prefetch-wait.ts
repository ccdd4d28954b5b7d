// Follows a prefetch job until it is no longer running: GET /api/v1/prefetch/<id> every
// 500 ms, each answer handed to the progress view. Bounded by the command's signal (its
// --timeout and Ctrl-C); a few lost polls in a row are tolerated, a longer outage is not.
import { setTimeout as sleep } from 'node:timers/promises';
import { AdminUnreachableError, type AdminClient, type PrefetchJob } from './admin-client.ts';

export const POLL_INTERVAL_MS = 500;
/** Consecutive unreachable polls (about 3 s) before giving up with exit code 5. */
const MAX_LOST_POLLS = 6;

export async function waitForJob(
  client: AdminClient,
  first: PrefetchJob,
  opts: { signal: AbortSignal; onUpdate: (job: PrefetchJob) => void; intervalMs?: number },
): Promise<PrefetchJob> {
  let job = first;
  let lost = 0;
  opts.onUpdate(job);
  while (job.state === 'running') {
    try {
      await sleep(opts.intervalMs ?? POLL_INTERVAL_MS, undefined, { signal: opts.signal });
    } catch (e) {
      throw opts.signal.aborted ? opts.signal.reason : e;
    }
    try {
      job = (await client.prefetchJob(job.id)).job;
      lost = 0;
    } catch (e) {
      if (e instanceof AdminUnreachableError && ++lost < MAX_LOST_POLLS) continue;
      throw e;
    }
    opts.onUpdate(job);
  }
  return job;
}
