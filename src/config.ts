// The only reader of config files and the environment. Produces one validated, frozen Config.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { httpUrl, replicationConfig, replicationFileSchema, type ReplicationConfig } from './config-replication.ts';
import { clusterConfig, clusterFileSchema, type ClusterConfig } from './config-cluster.ts';
import { storageConfig, storageFileSchema, type S3Config } from './config-s3.ts';

export type { PeerConfig, ReplicationConfig } from './config-replication.ts';
export type { ClusterConfig } from './config-cluster.ts';
export type { S3Config } from './config-s3.ts';

export interface RegistryConfig {
  /** The key clients use (`?ns=`, path prefix), e.g. `docker.io`. Never an address to connect to. */
  readonly name: string;
  readonly url: string;
  readonly username?: string;
  readonly password?: string;
  readonly tagTtlMs: number;
  /** How long an upstream 404 (unknown tag, manifest, blob or repository) is remembered; 0 disables. */
  readonly negativeTtlMs: number;
  /** `host` / `host:port` entries that may be reached at non-public addresses and get realm credentials. */
  readonly trustedHosts?: readonly string[];
  /** Present when caFile or certFile/keyFile is set: `ca` is the whole list (system + NODE_EXTRA_CA_CERTS + caFile). */
  readonly tls?: { readonly ca?: readonly string[]; readonly cert?: string; readonly key?: string };
}

export interface Config {
  readonly listen: { readonly host: string; readonly port: number };
  readonly dataDir: string;
  readonly defaultRegistry: string;
  readonly registries: ReadonlyMap<string, RegistryConfig>;
  readonly cache: {
    readonly maxBytes: number;
    readonly memoryBytes: number;
    /** Cap on a blob fill whose size the upstream did not announce (chunked): beyond it the fill is aborted. */
    readonly maxBlobBytes: number;
    /** Eviction starts when the disk cache exceeds this fraction of maxBytes... */
    readonly highWatermark: number;
    /** ...and frees down to this fraction. */
    readonly lowWatermark: number;
  };
  readonly admin: {
    readonly listen: { readonly host: string; readonly port: number };
    /** Bearer token for the admin API; when absent only loopback clients are served. */
    readonly token?: string;
  };
  readonly upstream: {
    readonly connectTimeoutMs: number;
    readonly headersTimeoutMs: number;
    readonly idleTimeoutMs: number;
    readonly retries: number;
    readonly breakerMaxFails: number;
    readonly breakerResetMs: number;
    /** Forward proxies: upstream.proxy, else HTTPS_PROXY / HTTP_PROXY; NO_PROXY or upstream.noProxy. */
    readonly proxy: { readonly httpProxy?: string; readonly httpsProxy?: string; readonly noProxy: readonly string[] };
    /** A body slower than this (bytes/s) over minRateWindowMs is aborted; 0 turns it off. */
    readonly minRateBytesPerSec: number;
    readonly minRateWindowMs: number;
  };
  /** Limits of the pull and admin listeners (client-facing sockets). */
  readonly server: {
    /** A request's headers must arrive within this (slow-header clients are cut off). */
    readonly headersTimeoutMs: number;
    /** An idle keep-alive connection is closed after this. */
    readonly keepAliveTimeoutMs: number;
    /** Request line plus headers, in bytes; more is answered 431. */
    readonly maxHeaderSize: number;
    /** Concurrent connections per listener; more are refused. */
    readonly maxConnections: number;
    /** A client that takes no response bytes for this long is dropped and its reader released. */
    readonly sendStallTimeoutMs: number;
    /** Largest admin API request body; more is answered 413. */
    readonly adminBodyLimit: number;
  };
  readonly log: { readonly level: string };
  readonly shutdownGraceMs: number;
  /** This region's name (default: the host name). */
  readonly region: string;
  readonly peers: ReplicationConfig['peers'];
  readonly replication: ReplicationConfig['replication'];
  readonly failover: ReplicationConfig['failover'];
  /** The instances of this region (one upstream fetch per region); absent: this instance is alone. */
  readonly cluster?: ClusterConfig;
  /** Shared tiers behind the local disk: `s3`, the region's bucket (absent: none). */
  readonly storage: { readonly s3?: S3Config };
  /** ocirelay's version (package.json), sent upstream as User-Agent: ocirelay/<version>. */
  readonly version: string;
}

export const BUILTIN_REGISTRIES: Readonly<Record<string, string>> = {
  'docker.io': 'https://registry-1.docker.io',
  'ghcr.io': 'https://ghcr.io',
  'quay.io': 'https://quay.io',
  'registry.k8s.io': 'https://registry.k8s.io',
  'gcr.io': 'https://gcr.io',
  'public.ecr.aws': 'https://public.ecr.aws',
  'mcr.microsoft.com': 'https://mcr.microsoft.com',
};

export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const SIZE_UNITS: Record<string, number> = {
  '': 1, b: 1,
  k: 1e3, kb: 1e3, m: 1e6, mb: 1e6, g: 1e9, gb: 1e9, t: 1e12, tb: 1e12,
  ki: 2 ** 10, kib: 2 ** 10, mi: 2 ** 20, mib: 2 ** 20, gi: 2 ** 30, gib: 2 ** 30, ti: 2 ** 40, tib: 2 ** 40,
};

/** `50GiB`, `512MB`, `1048576` -> bytes. */
export function parseSize(v: string | number): number {
  if (typeof v === 'number') {
    if (!Number.isSafeInteger(v) || v < 0) throw new Error(`must be a whole number of bytes, got ${v}`);
    return v;
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  const unit = m ? SIZE_UNITS[(m[2] ?? '').toLowerCase()] : undefined;
  if (!m || unit === undefined) throw new Error(`"${v}" is not a size (examples: 512MiB, 50GiB, 1000000)`);
  return Math.floor(Number(m[1]) * unit);
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** `5m`, `30s`, `1h30m`, `250ms`; a bare number is seconds. */
export function parseDuration(v: string | number): number {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw new Error(`must be a non-negative number of seconds, got ${v}`);
    return Math.round(v * 1000);
  }
  const s = v.trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Math.round(Number(s) * 1000);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * (DURATION_UNITS[m[2] ?? ''] ?? 0);
    consumed = re.lastIndex;
  }
  if (consumed !== s.length || s.length === 0) throw new Error(`"${v}" is not a duration (examples: 30s, 5m, 1h)`);
  return Math.round(total);
}

/** host:port, [v6]:port or :port. */
export function parseListen(v: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]*)):(\d{1,5})$/.exec(v.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new Error(`"${v}" is not HOST:PORT (example: 0.0.0.0:5000)`);
  return { host: m[1] ?? (m[2] || '0.0.0.0'), port };
}

const REGISTRY_KEY_RE = /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*(?::\d{1,5})?$/;

const size = z.union([z.string(), z.number()]).transform((v, ctx) => {
  try {
    return parseSize(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const duration = z.union([z.string(), z.number()]).transform((v, ctx) => {
  try {
    return parseDuration(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const listen = z.string().transform((v, ctx) => {
  try {
    return parseListen(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
/** 0.9, or "90%". */
const fraction = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const n = typeof v === 'number' ? v : /^\s*\d+(\.\d+)?\s*%\s*$/.test(v) ? Number(v.trim().replace('%', '')) / 100 : NaN;
  if (!(n > 0 && n <= 1)) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a fraction between 0 and 1 (examples: 0.9, 90%)` });
    return z.NEVER;
  }
  return n;
});
const upstreamUrl = httpUrl('must be an http:// or https:// URL without credentials, query or fragment (put credentials in username/password)');

const registrySchema = z
  .object({
    url: upstreamUrl,
    username: z.string().min(1).optional(),
    password: z.string().optional(),
    passwordFile: z.string().min(1).optional(),
    tagTTL: duration.optional(),
    negativeTTL: duration.optional(),
    trustedHosts: z.array(z.string().min(1)).optional(),
    caFile: z.string().min(1).optional(),
    certFile: z.string().min(1).optional(),
    keyFile: z.string().min(1).optional(),
  })
  .strict()
  .refine((r) => !(r.password !== undefined && r.passwordFile !== undefined), {
    message: 'set either password or passwordFile, not both',
  })
  .refine((r) => r.username !== undefined || (r.password === undefined && r.passwordFile === undefined), {
    message: 'password given without username',
  });

const fileSchema = z
  .object({
    listen: listen.optional(),
    dataDir: z.string().min(1).optional(),
    defaultRegistry: z.string().optional(),
    registries: z.record(z.string(), registrySchema).optional(),
    cache: z
      .object({ maxBytes: size.optional(), memoryBytes: size.optional(), maxBlobBytes: size.optional(), highWatermark: fraction.optional(), lowWatermark: fraction.optional() })
      .strict()
      .optional(),
    admin: z.object({ listen: listen.optional(), token: z.string().min(8).optional(), tokenFile: z.string().min(1).optional() }).strict().optional(),
    upstream: z
      .object({
        connectTimeout: duration.optional(),
        headersTimeout: duration.optional(),
        idleTimeout: duration.optional(),
        retries: z.number().int().min(0).max(10).optional(),
        breakerMaxFails: z.number().int().min(1).optional(),
        breakerReset: duration.optional(),
        proxy: z.string().url().optional(),
        noProxy: z.array(z.string()).optional(),
        minRate: size.optional(),
        minRateWindow: duration.optional(),
      })
      .strict()
      .optional(),
    server: z
      .object({
        headersTimeout: duration.optional(),
        keepAliveTimeout: duration.optional(),
        maxHeaderSize: size.optional(),
        maxConnections: z.number().int().min(1).optional(),
        sendStallTimeout: duration.optional(),
        adminBodyLimit: size.optional(),
      })
      .strict()
      .optional(),
    log: z.object({ level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).optional() }).strict().optional(),
    shutdownGrace: duration.optional(),
    ...replicationFileSchema,
    ...clusterFileSchema,
    ...storageFileSchema(parseSize, parseDuration),
  })
  .strict();

export type ConfigFile = z.input<typeof fileSchema>;

export interface ConfigSources {
  /** Path of a YAML file (flag --config, else env OCIRELAY_CONFIG). */
  file?: string;
  /** Object form, for tests and embedding; merged over the file. */
  values?: ConfigFile;
  /** Flag overrides (already parsed from argv). */
  flags?: { listen?: string; dataDir?: string };
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

function formatIssues(err: z.ZodError, prefix = ''): string {
  return err.issues
    .map((i) => {
      const key = [prefix, ...i.path.map(String)].filter(Boolean).join('.');
      return `${key || '(root)'}: ${i.message}`;
    })
    .join('; ');
}

export function loadConfig(src: ConfigSources = {}): Config {
  const env = src.env ?? process.env;
  const cwd = src.cwd ?? process.cwd();
  const file = src.file ?? env.OCIRELAY_CONFIG;
  let fromFile: unknown = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new ConfigError(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
    try {
      fromFile = parseYaml(text) ?? {};
    } catch (e) {
      throw new ConfigError(`config file ${file} is not valid YAML: ${(e as Error).message}`);
    }
    if (typeof fromFile !== 'object' || Array.isArray(fromFile)) throw new ConfigError(`config file ${file}: top level must be a mapping`);
  }
  const merged: Record<string, unknown> = { ...(fromFile as Record<string, unknown>), ...(src.values ?? {}) };
  const overrides: Array<[string, string | undefined]> = [
    ['listen', src.flags?.listen ?? env.OCIRELAY_LISTEN],
    ['dataDir', src.flags?.dataDir ?? env.OCIRELAY_DATA_DIR],
  ];
  for (const [k, v] of overrides) if (v !== undefined && v !== '') merged[k] = v;

  const parsed = fileSchema.safeParse(merged);
  if (!parsed.success) throw new ConfigError(`invalid config${file ? ` (${file})` : ''}: ${formatIssues(parsed.error)}`);
  const c = parsed.data;

  const defaultTagTtl = 5 * 60_000;
  const defaultNegativeTtl = 30_000;
  const registries = new Map<string, RegistryConfig>();
  for (const [name, url] of Object.entries(BUILTIN_REGISTRIES)) registries.set(name, Object.freeze({ name, url, tagTtlMs: defaultTagTtl, negativeTtlMs: defaultNegativeTtl }));
  for (const [name, r] of Object.entries(c.registries ?? {})) {
    if (!REGISTRY_KEY_RE.test(name)) {
      throw new ConfigError(`invalid config: registries.${name}: registry keys are lower-case host names with an optional :port (example: ghcr.io)`);
    }
    let password = r.password;
    if (r.passwordFile !== undefined) {
      try {
        password = readFileSync(path.resolve(cwd, r.passwordFile), 'utf8').replace(/\r?\n$/, '');
      } catch (e) {
        throw new ConfigError(`invalid config: registries.${name}.passwordFile: cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    }
    const entry: RegistryConfig = {
      name,
      url: r.url.replace(/\/+$/, ''),
      tagTtlMs: r.tagTTL ?? defaultTagTtl,
      negativeTtlMs: r.negativeTTL ?? defaultNegativeTtl,
      ...(r.username !== undefined ? { username: r.username } : {}),
      ...(password !== undefined ? { password } : {}),
      trustedHosts: Object.freeze(checkTrustedHosts(name, r.trustedHosts ?? [])),
      ...registryTls(name, r, cwd, env),
    };
    registries.set(name, Object.freeze(entry));
  }
  const defaultRegistry = c.defaultRegistry ?? 'docker.io';
  if (!registries.has(defaultRegistry)) {
    throw new ConfigError(`invalid config: defaultRegistry: "${defaultRegistry}" is not a configured registry (have: ${[...registries.keys()].join(', ')})`);
  }
  const maxBytes = c.cache?.maxBytes ?? 50 * 2 ** 30;
  // The memory tier's default follows a small disk budget down, so `maxBytes` alone always starts.
  const memoryBytes = c.cache?.memoryBytes ?? Math.min(256 * 2 ** 20, Math.floor(maxBytes / 4));
  if (memoryBytes > maxBytes) throw new ConfigError('invalid config: cache.memoryBytes: must not exceed cache.maxBytes');
  const maxBlobBytes = c.cache?.maxBlobBytes ?? 16 * 2 ** 30;
  if (maxBlobBytes < 1) throw new ConfigError('invalid config: cache.maxBlobBytes: must be at least 1 byte');
  const highWatermark = c.cache?.highWatermark ?? 0.9;
  const lowWatermark = c.cache?.lowWatermark ?? 0.8;
  if (lowWatermark >= highWatermark) throw new ConfigError('invalid config: cache.lowWatermark: must be below cache.highWatermark');
  if (c.admin?.token !== undefined && c.admin.tokenFile !== undefined) throw new ConfigError('invalid config: admin: set either token or tokenFile, not both');
  let adminToken = c.admin?.token;
  if (c.admin?.tokenFile !== undefined) {
    try {
      adminToken = readFileSync(path.resolve(cwd, c.admin.tokenFile), 'utf8').trim();
    } catch (e) {
      throw new ConfigError(`invalid config: admin.tokenFile: cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    if (adminToken.length < 8) throw new ConfigError('invalid config: admin.tokenFile: token must be at least 8 characters');
  }

  const cfg: Config = {
    listen: Object.freeze(c.listen ?? { host: '0.0.0.0', port: 5000 }),
    dataDir: path.resolve(cwd, c.dataDir ?? './data'),
    defaultRegistry,
    registries,
    cache: Object.freeze({ maxBytes, memoryBytes, maxBlobBytes, highWatermark, lowWatermark }),
    admin: Object.freeze({
      listen: Object.freeze(c.admin?.listen ?? { host: '127.0.0.1', port: 5050 }),
      ...(adminToken !== undefined ? { token: adminToken } : {}),
    }),
    upstream: Object.freeze({
      connectTimeoutMs: c.upstream?.connectTimeout ?? 5_000,
      headersTimeoutMs: c.upstream?.headersTimeout ?? 30_000,
      idleTimeoutMs: c.upstream?.idleTimeout ?? 30_000,
      retries: c.upstream?.retries ?? 2,
      breakerMaxFails: c.upstream?.breakerMaxFails ?? 5,
      breakerResetMs: c.upstream?.breakerReset ?? 30_000,
      proxy: Object.freeze(proxySettings(c.upstream, env)),
      // 16 KiB/s over 30 s: far below any working link, far above an upstream trickling bytes to hold a fill open.
      minRateBytesPerSec: c.upstream?.minRate ?? 16 * 2 ** 10,
      minRateWindowMs: c.upstream?.minRateWindow ?? 30_000,
    }),
    server: Object.freeze(serverLimits(c.server)),
    log: Object.freeze({ level: c.log?.level ?? 'info' }),
    shutdownGraceMs: c.shutdownGrace ?? 30_000,
    ...replicationConfig(c, cwd, (message) => {
      throw new ConfigError(message);
    }),
    ...clusterConfig(c, cwd, c.listen?.port ?? 5000, (message) => {
      throw new ConfigError(message);
    }),
    ...storageConfig(c, (message) => {
      throw new ConfigError(message);
    }),
    version: packageVersion(),
  };
  return Object.freeze(cfg);
}

/** Listener limits with the defaults of a production mirror; zero timeouts are refused (they would mean unbounded). */
function serverLimits(s: z.output<typeof fileSchema>['server']): Config['server'] {
  const limits = {
    headersTimeoutMs: s?.headersTimeout ?? 30_000,
    // Above the 60 s idle timeout of common load balancers, so they close first and never reuse a closed socket.
    keepAliveTimeoutMs: s?.keepAliveTimeout ?? 65_000,
    maxHeaderSize: s?.maxHeaderSize ?? 16 * 2 ** 10,
    maxConnections: s?.maxConnections ?? 4096,
    sendStallTimeoutMs: s?.sendStallTimeout ?? 60_000,
    adminBodyLimit: s?.adminBodyLimit ?? 2 ** 20,
  };
  for (const k of ['headersTimeoutMs', 'keepAliveTimeoutMs', 'sendStallTimeoutMs', 'maxHeaderSize', 'adminBodyLimit'] as const) {
    if (limits[k] <= 0) throw new ConfigError(`invalid config: server.${k.replace(/Ms$/, '')}: must be above zero`);
  }
  return limits;
}

/** Reads package.json next to src/ (and dist/): the version for User-Agent. */
function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

function checkTrustedHosts(name: string, entries: readonly string[]): string[] {
  for (const e of entries) {
    if (!/^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+|[0-9a-fA-F:]+)(?::\d{1,5})?$/.test(e.trim())) {
      throw new ConfigError(`invalid config: registries.${name}.trustedHosts: "${e}" is not a host or host:port (examples: cdn.example.com, 127.0.0.1:5001)`);
    }
  }
  return entries.map((e) => e.trim());
}

/** upstream.proxy wins over the environment; lower-case variables win over upper-case (as curl does). */
function proxySettings(u: { proxy?: string; noProxy?: string[] } | undefined, env: NodeJS.ProcessEnv): Config['upstream']['proxy'] {
  const pick = (...names: string[]): string | undefined => names.map((n) => env[n]).find((v) => v !== undefined && v !== '');
  const httpsProxy = u?.proxy ?? pick('https_proxy', 'HTTPS_PROXY');
  const httpProxy = u?.proxy ?? pick('http_proxy', 'HTTP_PROXY');
  for (const [key, v] of [['HTTPS_PROXY', httpsProxy], ['HTTP_PROXY', httpProxy]] as const) {
    if (v === undefined) continue;
    let ok = false;
    try {
      ok = ['http:', 'https:'].includes(new URL(v).protocol);
    } catch {
      ok = false;
    }
    if (!ok) throw new ConfigError(`invalid config: ${u?.proxy !== undefined ? 'upstream.proxy' : key}: must be an http:// or https:// URL`);
  }
  const noProxy = u?.noProxy ?? (pick('no_proxy', 'NO_PROXY') ?? '').split(',');
  return {
    ...(httpProxy !== undefined ? { httpProxy } : {}),
    ...(httpsProxy !== undefined ? { httpsProxy } : {}),
    noProxy: Object.freeze(noProxy.map((e) => e.trim()).filter((e) => e !== '')),
  };
}

/**
 * A registry's TLS settings. Passing `ca` to TLS replaces Node's default list, so a caFile is
 * added to the system roots and the NODE_EXTRA_CA_CERTS file rather than trusted alone.
 */
function registryTls(
  name: string,
  r: { caFile?: string; certFile?: string; keyFile?: string },
  cwd: string,
  env: NodeJS.ProcessEnv,
): { tls?: NonNullable<RegistryConfig['tls']> } {
  if ((r.certFile === undefined) !== (r.keyFile === undefined)) {
    throw new ConfigError(`invalid config: registries.${name}: certFile and keyFile go together`);
  }
  if (r.caFile === undefined && r.certFile === undefined) return {};
  const read = (key: string, file: string): string => {
    try {
      return readFileSync(path.resolve(cwd, file), 'utf8');
    } catch (e) {
      throw new ConfigError(`invalid config: registries.${name}.${key}: cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  };
  let ca: string[] | undefined;
  if (r.caFile !== undefined) {
    ca = [...tls.rootCertificates];
    const extra = env.NODE_EXTRA_CA_CERTS;
    if (extra !== undefined && extra !== '') {
      try {
        ca.push(readFileSync(extra, 'utf8'));
      } catch (e) {
        throw new ConfigError(`NODE_EXTRA_CA_CERTS: cannot read ${extra}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    }
    ca.push(read('caFile', r.caFile));
  }
  const tlsSettings = {
    ...(ca !== undefined ? { ca: Object.freeze(ca) } : {}),
    ...(r.certFile !== undefined ? { cert: read('certFile', r.certFile) } : {}),
    ...(r.keyFile !== undefined ? { key: read('keyFile', r.keyFile) } : {}),
  };
  return { tls: Object.freeze(tlsSettings) };
}
