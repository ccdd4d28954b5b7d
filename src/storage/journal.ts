// The index journal (index/journal.jsonl): its records and the check a line passes before it is
// applied. The file side (streamed replay, batched appends, online compaction) is an AppendLog.
import { AppendLog } from './append-log.ts';
import { isDigest, type Digest } from '../oci/digest.ts';

export type JournalRecord =
  | { t: 'link'; r: string; n: string; d: Digest }
  | { t: 'unlink'; r: string; n: string; d?: Digest }
  | { t: 'manifest'; d: Digest; mt: string; size: number; refs?: Digest[] }
  | { t: 'unmanifest'; d: Digest }
  | { t: 'tag'; r: string; n: string; tag: string; d: Digest; mt: string; at: number }
  | { t: 'untag'; r: string; n: string; tag: string }
  | { t: 'hist'; r: string; n: string; tag: string; from: Digest | null; to: Digest; at: number; src: 'upstream' | 'freeze' | 'unfreeze' | 'replication' }
  | { t: 'pin'; ref: string; r: string; n: string; ds: Digest[]; at: number }
  | { t: 'unpin'; ref: string }
  | { t: 'freeze'; r: string; n: string; tag: string; d: Digest; at: number }
  | { t: 'unfreeze'; r: string; n: string; tag: string };

/** The journal grows to max(this, 2x its live size at the last compaction) before it is compacted. */
export const MIN_COMPACT_BYTES = 1024 * 1024;

export class Journal extends AppendLog<JournalRecord> {
  constructor(file: string) {
    super(file, checkedRecord, MIN_COMPACT_BYTES);
  }
}

const digestField = (x: unknown): boolean => x === undefined || x === null || (typeof x === 'string' && isDigest(x));
const digestList = (x: unknown): boolean => x === undefined || (Array.isArray(x) && x.every((e) => typeof e === 'string' && isDigest(e)));

/**
 * A journal line as parsed JSON, checked before it is applied: every digest field must be a
 * valid digest (a hand-edited or corrupted journal cannot put a path into a file name).
 */
export function checkedRecord(v: unknown): JournalRecord {
  if (typeof v !== 'object' || v === null) throw new Error('not a record');
  const r = v as Record<string, unknown>;
  if (!digestField(r.d) || !digestField(r.from) || !digestField(r.to) || !digestList(r.refs) || !digestList(r.ds)) {
    throw new Error('record with an invalid digest');
  }
  return r as unknown as JournalRecord;
}
