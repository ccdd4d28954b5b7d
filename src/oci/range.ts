// Single byte-range parsing (RFC 9110 section 14.1.2). Multiple ranges are not supported:
// registry clients only ever send `bytes=<offset>-` to resume.

export interface ByteRange {
  start: number;
  /** Inclusive end. */
  end: number;
}

export type RangeResult =
  | { kind: 'none' }
  | { kind: 'range'; range: ByteRange }
  | { kind: 'unsatisfiable' }
  | { kind: 'invalid' };

/**
 * Resolve a Range header against a known size. Unknown units or syntax -> invalid
 * (which callers may answer with a 416 or by ignoring it; we answer 416 with RANGE_INVALID).
 */
export function parseRange(header: string | undefined | null, size: number): RangeResult {
  if (header == null || header === '') return { kind: 'none' };
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return { kind: 'invalid' };
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return { kind: 'invalid' };
  if (a === '') {
    // suffix range: the last N bytes
    const n = Number(b);
    if (!Number.isSafeInteger(n)) return { kind: 'invalid' };
    if (n === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'range', range: { start: Math.max(0, size - n), end: size - 1 } };
  }
  const start = Number(a);
  const end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end)) return { kind: 'invalid' };
  if (b !== '' && Number(b) < start) return { kind: 'invalid' };
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'range', range: { start, end } };
}

/** Syntax check alone, for requests whose size is not known yet. */
export function isRangeSyntaxValid(header: string): boolean {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return false;
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return false;
  if (a !== '' && b !== '' && Number(b) < Number(a)) return false;
  return true;
}
