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
 * Resolve a Range header against a known size. Unknown units or syntax -> invalid; the HTTP
 * layer drops such headers first (usableRange), so only an unsatisfiable range becomes a 416.
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

/**
 * The Range header to act on: a well-formed single byte range, else none. RFC 9110 section
 * 14.2: a server ignores a Range it cannot use (`bytes=5-3`, other units, several ranges,
 * garbage) and sends the whole body with 200; only a valid but unsatisfiable one gets 416.
 */
export function usableRange(header: string | undefined | null): string | undefined {
  if (header == null || header === '') return undefined;
  return isRangeSyntaxValid(header) ? header : undefined;
}
