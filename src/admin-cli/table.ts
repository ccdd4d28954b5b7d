// Plain-text tables for the human output: columns padded to their widest cell, two spaces
// apart, no borders, so `grep` and `awk '{print $1}'` still work on them.

export interface Column {
  header: string;
  /** Numbers read better right-aligned. */
  align?: 'left' | 'right';
}

export function renderTable(columns: Column[], rows: string[][]): string {
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    columns
      .map((c, i) => {
        const cell = cells[i] ?? '';
        const w = widths[i] ?? 0;
        // The last left-aligned column is not padded: no trailing blanks.
        if (i === columns.length - 1 && c.align !== 'right') return cell;
        return c.align === 'right' ? cell.padStart(w) : cell.padEnd(w);
      })
      .join('  ');
  return [line(columns.map((c) => c.header)), ...rows.map(line)].map((l) => `${l.trimEnd()}\n`).join('');
}

/** A two-column table of labelled values (the stats command). */
export function renderKeyValues(pairs: Array<[string, string]>): string {
  const w = Math.max(0, ...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}\n`).join('');
}
