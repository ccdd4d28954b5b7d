// Human-readable renderings for the tables (bytes, ages, digests, durations), and the
// duration syntax of --timeout. Machine-readable output is --json; nothing here is parsed back.

const BYTE_UNITS = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** 512 B, 12.3 MiB: binary units, one decimal under 100. */
export function formatBytes(n: number | undefined | null): string {
  if (typeof n !== 'number' || !Number.isFinite(n)) return '-';
  if (Math.abs(n) < 1024) return `${n} B`;
  let v = n;
  let unit: string = 'B';
  for (const u of BYTE_UNITS) {
    if (Math.abs(v) < 1024) break;
    v /= 1024;
    unit = u;
  }
  return `${Math.abs(v) < 100 ? v.toFixed(1) : Math.round(v)} ${unit}`;
}

/** `sha256:` and the first 12 hex digits, enough to tell digests apart in a table. */
export function shortDigest(d: string | null | undefined): string {
  if (!d) return '-';
  const m = /^([a-z0-9]+):([a-f0-9]+)$/.exec(d);
  return m ? `${m[1]}:${m[2]!.slice(0, 12)}` : d;
}

/** ISO time without milliseconds, `2026-11-23T20:00:00Z`. */
export function formatTime(iso: string | null | undefined): string {
  if (!iso) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  return new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** `5m ago` for the last week, then the ISO time: a week-old age says less than a date. */
export function formatAge(iso: string | null | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return iso;
  const s = Math.round((now - t) / 1000);
  if (s < -5 || s >= 7 * 86_400) return formatTime(iso);
  if (s < 5) return 'just now';
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86_400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86_400)}d ago`;
}

/** 0:07, 12:03, 1:02:03 */
export function formatElapsed(ms: number): string {
  const total = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
}

/** A ratio 0..1 as `88.2 %`. */
export function formatPercent(ratio: number | undefined | null): string {
  if (typeof ratio !== 'number' || !Number.isFinite(ratio)) return '-';
  return `${(ratio * 100).toFixed(1)} %`;
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** `500ms`, `90s`, `30m`, `2h`, `1h30m`; undefined when it is not one. */
export function parseDuration(text: string): number | undefined {
  if (!/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(text)) return undefined;
  let ms = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) ms += Number(m[1]) * DURATION_UNITS[m[2]!]!;
  return ms > 0 ? ms : undefined;
}
