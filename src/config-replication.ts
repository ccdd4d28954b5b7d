// The geo-replication part of the config: this region's name, its peers (other ocirelay
// regions or any OCI registry), who may push into this instance, and the failover mode. Read by
// config.ts (the only reader of files and env); the schema lives here to keep config.ts small.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';

export interface PeerConfig {
  /** The key under `peers:`, used in metrics, logs and the admin API. */
  readonly name: string;
  /** Base URL of the peer's pull listener (ocirelay) or of the registry. */
  readonly url: string;
  readonly kind: 'ocirelay' | 'registry';
  /** Bearer token sent to an ocirelay peer (its `replication.accept`). */
  readonly token?: string;
  /** Basic credentials for a registry peer (it may answer with a token challenge). */
  readonly username?: string;
  readonly password?: string;
  /** Registry peers: content lands under `<prefix>/<registry>/<repository>` (no prefix: `<registry>/<repository>`). */
  readonly prefix: string;
  /** Push what this region caches to it. */
  readonly replicate: boolean;
  /** Read from it when the upstream fails (or first, with failover.mode peers-first). */
  readonly failover: boolean;
}

export interface ReplicationConfig {
  readonly region: string;
  readonly peers: ReadonlyMap<string, PeerConfig>;
  readonly replication: {
    /** Who may push into this instance; empty: pushes are refused (405, as before). */
    readonly accept: ReadonlyArray<{ readonly name: string; readonly token: string }>;
    /** Globs over `<registry>/<repository>` (`*` within a path segment, `**` across them). */
    readonly include: readonly string[];
    readonly exclude: readonly string[];
    /** Jobs pushed at once, over all peers. */
    readonly concurrency: number;
  };
  readonly failover: { readonly mode: 'on-upstream-failure' | 'peers-first' };
}

const PEER_NAME_RE = /^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$/;
const PREFIX_RE = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/;

/** An http(s) URL without credentials, query or fragment (registries and peers). */
export function httpUrl(message: string) {
  return z.string().refine(
    (v) => {
      try {
        const u = new URL(v);
        return (u.protocol === 'https:' || u.protocol === 'http:') && !u.username && !u.password && !u.search && !u.hash;
      } catch {
        return false;
      }
    },
    { message },
  );
}

const peerUrl = httpUrl('must be an http:// or https:// URL without credentials, query or fragment');

const peerSchema = z
  .object({
    url: peerUrl,
    kind: z.enum(['ocirelay', 'registry']).optional(),
    token: z.string().min(8).optional(),
    tokenFile: z.string().min(1).optional(),
    username: z.string().min(1).optional(),
    password: z.string().optional(),
    passwordFile: z.string().min(1).optional(),
    prefix: z.string().optional(),
    replicate: z.boolean().optional(),
    failover: z.boolean().optional(),
  })
  .strict();

const acceptSchema = z
  .object({ name: z.string().min(1), token: z.string().min(8).optional(), tokenFile: z.string().min(1).optional() })
  .strict();

export const replicationFileSchema = {
  region: z.string().min(1).max(63).optional(),
  peers: z.record(z.string(), peerSchema).optional(),
  replication: z
    .object({
      accept: z.array(acceptSchema).optional(),
      include: z.array(z.string().min(1)).optional(),
      exclude: z.array(z.string().min(1)).optional(),
      concurrency: z.number().int().min(1).max(64).optional(),
    })
    .strict()
    .optional(),
  failover: z.object({ mode: z.enum(['on-upstream-failure', 'peers-first']).optional() }).strict().optional(),
};

type ReplicationInput = {
  region?: string | undefined;
  peers?: Record<string, z.output<typeof peerSchema>> | undefined;
  replication?: z.output<typeof replicationFileSchema.replication>;
  failover?: z.output<typeof replicationFileSchema.failover>;
};

/** Resolves secrets from files and applies defaults; `fail(message)` throws the caller's ConfigError. */
export function replicationConfig(c: ReplicationInput, cwd: string, fail: (message: string) => never): ReplicationConfig {
  const readSecret = (key: string, file: string): string => {
    try {
      return readFileSync(path.resolve(cwd, file), 'utf8').trim();
    } catch (e) {
      return fail(`invalid config: ${key}: cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  };
  const secret = (key: string, inline: string | undefined, file: string | undefined): string | undefined => {
    if (inline !== undefined && file !== undefined) fail(`invalid config: ${key}: set either ${key.split('.').pop()} or its File form, not both`);
    const v = file !== undefined ? readSecret(`${key}File`, file) : inline;
    if (v !== undefined && v.length < 8) fail(`invalid config: ${key}: a token must be at least 8 characters`);
    return v;
  };

  const peers = new Map<string, PeerConfig>();
  for (const [name, p] of Object.entries(c.peers ?? {})) {
    if (!PEER_NAME_RE.test(name)) fail(`invalid config: peers.${name}: peer names are lower-case letters, digits, '.', '_' and '-'`);
    const kind = p.kind ?? 'ocirelay';
    const where = `peers.${name}`;
    if (kind === 'ocirelay' && (p.username !== undefined || p.password !== undefined || p.passwordFile !== undefined || p.prefix !== undefined)) {
      fail(`invalid config: ${where}: username, password and prefix are for kind: registry (an ocirelay peer takes token or tokenFile)`);
    }
    if (kind === 'registry' && (p.token !== undefined || p.tokenFile !== undefined)) {
      fail(`invalid config: ${where}: token is for ocirelay peers (a registry takes username and password)`);
    }
    if (p.password !== undefined && p.passwordFile !== undefined) fail(`invalid config: ${where}: set either password or passwordFile, not both`);
    if ((p.password !== undefined || p.passwordFile !== undefined) && p.username === undefined) fail(`invalid config: ${where}: password given without username`);
    const prefix = (p.prefix ?? '').replace(/^\/+|\/+$/g, '');
    if (prefix !== '' && !PREFIX_RE.test(prefix)) fail(`invalid config: ${where}.prefix: "${p.prefix}" is not a repository path (example: mirror)`);
    const token = secret(`${where}.token`, p.token, p.tokenFile);
    let password = p.password;
    if (p.passwordFile !== undefined) password = readSecret(`${where}.passwordFile`, p.passwordFile);
    peers.set(
      name,
      Object.freeze({
        name,
        url: p.url.replace(/\/+$/, ''),
        kind,
        prefix,
        replicate: p.replicate ?? true,
        failover: p.failover ?? true,
        ...(token !== undefined ? { token } : {}),
        ...(p.username !== undefined ? { username: p.username } : {}),
        ...(password !== undefined ? { password } : {}),
      }),
    );
  }

  const accept: Array<{ name: string; token: string }> = [];
  for (const [i, a] of (c.replication?.accept ?? []).entries()) {
    const token = secret(`replication.accept.${i}.token`, a.token, a.tokenFile);
    if (token === undefined) fail(`invalid config: replication.accept.${i}: needs token or tokenFile`);
    accept.push(Object.freeze({ name: a.name, token }));
  }
  const globs = (key: string, list: string[] | undefined, dflt: string[]): string[] => {
    const out = list ?? dflt;
    for (const g of out) if (!/^[A-Za-z0-9._\-/:*]+$/.test(g)) fail(`invalid config: replication.${key}: "${g}" is not a glob over registry/repository (example: docker.io/library/**)`);
    return out;
  };

  return Object.freeze({
    region: c.region ?? os.hostname(),
    peers,
    replication: Object.freeze({
      accept: Object.freeze(accept),
      include: Object.freeze(globs('include', c.replication?.include, ['**'])),
      exclude: Object.freeze(globs('exclude', c.replication?.exclude, [])),
      concurrency: c.replication?.concurrency ?? 4,
    }),
    failover: Object.freeze({ mode: c.failover?.mode ?? 'on-upstream-failure' }),
  });
}

/** `*` matches within one path segment, `**` across segments (and nothing). */
export function globMatcher(globs: readonly string[]): (subject: string) => boolean {
  const res = globs.map((g) => {
    let re = '';
    for (let i = 0; i < g.length; i++) {
      const ch = g[i]!;
      if (ch === '*' && g[i + 1] === '*') {
        // `a/**` also matches `a`; `**/b` also matches `b`.
        if (g[i + 2] === '/') {
          re += '(?:.*/)?';
          i += 2;
        } else {
          re += '.*';
          i += 1;
        }
      } else if (ch === '*') re += '[^/]*';
      else re += ch.replace(/[.+?^${}()|[\]\\]/g, '\\$&');
    }
    re = re.replace(/\/\.\*$/, '(?:/.*)?');
    return new RegExp(`^${re}$`);
  });
  return (subject) => res.some((r) => r.test(subject));
}
