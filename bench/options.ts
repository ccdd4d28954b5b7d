// Command-line options of `npm run bench`: which scenarios, which sizes, how many repetitions,
// and the three presets (full, --quick, --smoke). Pure: no I/O, so the smoke test can check it.
import path from 'node:path';
import { parseArgs } from 'node:util';

export const SCENARIOS = ['cold-pull', 'herd', 'warm-throughput', 'manifest-load', 'peak-rss', 'startup', 'soak', 'replication', 'failover', 'region-herd', 's3-read'] as const;
export type ScenarioId = (typeof SCENARIOS)[number];
/**
 * Scenarios that run only when named: the soak takes half an hour by itself; replication and
 * failover (issue 10), region-herd and s3-read (issue 11: a region of instances on one S3
 * bucket, moto_server) start regions of their own and are judged apart from issue 4.
 */
export const ONLY_WHEN_NAMED: readonly ScenarioId[] = ['soak', 'replication', 'failover', 'region-herd', 's3-read'];
/** What runs without --scenarios. */
export const DEFAULT_SCENARIOS: readonly ScenarioId[] = SCENARIOS.filter((s) => !ONLY_WHEN_NAMED.includes(s));

/**
 * How herd and warm-throughput clients treat the body: `hash` verifies sha256 against the
 * digest as containerd does (a mismatch fails the sample), `discard` is curl to /dev/null.
 */
export const CLIENT_MODES = ['hash', 'discard'] as const;
export type ClientMode = (typeof CLIENT_MODES)[number];

/** Layer sizes the upstream is seeded with, by name. */
export const SIZE_BYTES = {
  '1m': 2 ** 20,
  '4m': 4 * 2 ** 20,
  '64m': 64 * 2 ** 20,
  '256m': 256 * 2 ** 20,
  '1g': 2 ** 30,
} as const;
export type SizeName = keyof typeof SIZE_BYTES;

export type Mode = 'full' | 'quick' | 'smoke';

export interface BenchOptions {
  mode: Mode;
  scenarios: ScenarioId[];
  /** Repetitions per contender and case. */
  reps: number;
  /** Repetitions for cases involving the 1 GiB layer (they take the longest). */
  repsLarge: number;
  /** Layer sizes for cold pulls and warm throughput. */
  sizes: SizeName[];
  /** The blob the herd scenario asks for. */
  herdSize: SizeName;
  /** Concurrent clients in the herd scenario. */
  herdClients: number[];
  /** Concurrent clients in the warm-throughput scenario. */
  warmClients: number[];
  /** Seconds of load per manifest measurement. */
  loadSeconds: number;
  loadConnections: number;
  /** Cached blobs on disk for the start-up scenario. */
  startupBlobs: number;
  /** Where the JSON, Markdown and SVG go. */
  outDir: string;
  /** Extra node flags for every ocirelay process, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof". */
  ocirelayNodeArgs: string[];
  /** bin/ocirelay.js of another checkout (e.g. one with a suggested fix applied); default this one. */
  ocirelayBin: string | undefined;
  /** Include the multi-arch index in the cold pulls. */
  pullIndex: boolean;
  /** Blob clients of herd and warm-throughput. */
  client: ClientMode;
  /** Length of the soak scenario. */
  soakSeconds: number;
  /** Seconds between RSS/fd samples in the soak. */
  soakSampleSeconds: number;
  /** Small images in the replication scenario's burst. */
  burstImages: number;
}

export const USAGE = `usage: npm run bench -- [options]

  --scenarios a,b    ${SCENARIOS.join(', ')}
                     (default: all but soak, replication, failover, region-herd and s3-read)
  --sizes a,b        layer sizes for cold-pull and warm-throughput: ${Object.keys(SIZE_BYTES).join(', ')}
                     (default 4m,256m,1g)
  --reps N           repetitions per contender and case (default 5)
  --reps-large N     repetitions for 1g cases (default: --reps)
  --herd-size S      blob size for the herd, region-herd and s3-read (default 256m)
  --herd-clients a,b concurrent clients in the herd (default 16,32)
  --warm-clients a,b concurrent clients in warm throughput (default 1,8)
  --load-seconds N   seconds of load per manifest measurement (default 5)
  --startup-blobs N  cached blobs for the start-up scenario (default 100000)
  --client hash|discard  herd and warm-throughput clients: hash = node clients that check
                     sha256 against the digest as containerd does (default); discard = curl
                     to /dev/null (the figures before 2026-12)
  --soak-seconds N   length of the soak scenario (default 1800)
  --soak-sample-seconds N  RSS/fd sampling interval of the soak (default: soak/120, 1..5 s)
  --burst-images N   small images in the replication burst (default 50; --smoke: 5)
  --quick            a check in under two minutes: 1 rep, 4m+256m, herd of 16, 2 s loads, 20k blobs
  --smoke            seconds: 1 rep, 1 MiB layers, 200 blobs, 1 s loads (CI); replication: a
                     1 MiB image and a burst of 5
  --out-dir DIR      where results go (default bench/results)
  --node-args="..."  extra node flags for ocirelay (e.g. --node-args="--cpu-prof --cpu-prof-dir=/tmp/prof")
  --ocirelay-root D  measure the ocirelay checkout in D (D/bin/ocirelay.js) instead of this one
`;

function list(v: string | undefined): string[] | undefined {
  return v === undefined ? undefined : v.split(',').map((s) => s.trim()).filter(Boolean);
}

function positiveInt(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new Error(`--${name}: expected a positive integer, got "${v}"`);
  return n;
}

function sizeName(v: string): SizeName {
  if (!(v in SIZE_BYTES)) throw new Error(`unknown size "${v}" (have: ${Object.keys(SIZE_BYTES).join(', ')})`);
  return v as SizeName;
}

export function parseBenchArgs(argv: string[], defaultOutDir: string): BenchOptions | 'help' {
  const { values } = parseArgs({
    args: argv,
    strict: true,
    options: {
      scenarios: { type: 'string' },
      sizes: { type: 'string' },
      reps: { type: 'string' },
      'reps-large': { type: 'string' },
      'herd-size': { type: 'string' },
      'herd-clients': { type: 'string' },
      'warm-clients': { type: 'string' },
      'load-seconds': { type: 'string' },
      'startup-blobs': { type: 'string' },
      client: { type: 'string' },
      'soak-seconds': { type: 'string' },
      'soak-sample-seconds': { type: 'string' },
      'burst-images': { type: 'string' },
      quick: { type: 'boolean' },
      smoke: { type: 'boolean' },
      'out-dir': { type: 'string' },
      'node-args': { type: 'string' },
      'ocirelay-root': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) return 'help';
  if (values.quick && values.smoke) throw new Error('--quick and --smoke exclude each other');
  const mode: Mode = values.smoke ? 'smoke' : values.quick ? 'quick' : 'full';

  const preset: Omit<BenchOptions, 'scenarios' | 'outDir' | 'ocirelayNodeArgs' | 'ocirelayBin' | 'client' | 'soakSeconds' | 'soakSampleSeconds' | 'burstImages'> =
    mode === 'smoke'
      ? { mode, reps: 1, repsLarge: 1, sizes: ['1m'], herdSize: '1m', herdClients: [4], warmClients: [1, 4], loadSeconds: 1, loadConnections: 16, startupBlobs: 200, pullIndex: true }
      : mode === 'quick'
        ? { mode, reps: 1, repsLarge: 1, sizes: ['4m', '256m'], herdSize: '256m', herdClients: [16], warmClients: [1, 8], loadSeconds: 2, loadConnections: 64, startupBlobs: 20_000, pullIndex: false }
        : { mode, reps: 5, repsLarge: 5, sizes: ['4m', '256m', '1g'], herdSize: '256m', herdClients: [16, 32], warmClients: [1, 8], loadSeconds: 5, loadConnections: 64, startupBlobs: 100_000, pullIndex: true };

  const scenarios = (list(values.scenarios) ?? [...DEFAULT_SCENARIOS]).map((s) => {
    if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`unknown scenario "${s}" (have: ${SCENARIOS.join(', ')})`);
    return s as ScenarioId;
  });
  const reps = positiveInt('reps', values.reps) ?? preset.reps;
  const outDir = values['out-dir'] ?? defaultOutDir;
  const client = values.client ?? 'hash';
  if (!(CLIENT_MODES as readonly string[]).includes(client)) throw new Error(`--client: expected ${CLIENT_MODES.join(' or ')}, got "${client}"`);
  const soakSeconds = positiveInt('soak-seconds', values['soak-seconds']) ?? 1800;
  return {
    ...preset,
    scenarios,
    reps,
    repsLarge: positiveInt('reps-large', values['reps-large']) ?? (values.reps !== undefined ? reps : preset.repsLarge),
    sizes: (list(values.sizes) ?? preset.sizes).map(sizeName),
    herdSize: values['herd-size'] !== undefined ? sizeName(values['herd-size']) : preset.herdSize,
    herdClients: list(values['herd-clients'])?.map((v) => positiveInt('herd-clients', v) as number) ?? preset.herdClients,
    warmClients: list(values['warm-clients'])?.map((v) => positiveInt('warm-clients', v) as number) ?? preset.warmClients,
    loadSeconds: positiveInt('load-seconds', values['load-seconds']) ?? preset.loadSeconds,
    startupBlobs: positiveInt('startup-blobs', values['startup-blobs']) ?? preset.startupBlobs,
    outDir,
    ocirelayNodeArgs: (values['node-args'] ?? '').split(/\s+/).filter(Boolean),
    ocirelayBin: values['ocirelay-root'] !== undefined ? path.resolve(values['ocirelay-root'], 'bin', 'ocirelay.js') : undefined,
    client: client as ClientMode,
    soakSeconds,
    soakSampleSeconds: positiveInt('soak-sample-seconds', values['soak-sample-seconds']) ?? Math.min(5, Math.max(1, Math.round(soakSeconds / 120))),
    burstImages: positiveInt('burst-images', values['burst-images']) ?? (mode === 'smoke' ? 5 : 50),
  };
}

/** The cached blob the soak's warm clients fetch again and again. */
export function soakWarmSize(mode: Mode): SizeName {
  return mode === 'smoke' ? '1m' : '64m';
}

/** Repetitions for a case that involves `size`. */
export function repsFor(o: BenchOptions, size: SizeName): number {
  return SIZE_BYTES[size] >= SIZE_BYTES['1g'] ? o.repsLarge : o.reps;
}
