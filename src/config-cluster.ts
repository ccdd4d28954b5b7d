// The cluster part of the config (issue 11): the ocirelay instances of one region, as a static
// list or a DNS name re-resolved while running, which of them this instance is, and the token
// they share for member-to-member reads. Read by config.ts (the only reader of files and env);
// the schema lives here to keep config.ts small.
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { z } from 'zod';
import { httpUrl } from './config-replication.ts';

export interface ClusterConfig {
  /** A DNS name whose addresses are the members (a headless Service), re-resolved while running. */
  readonly dns?: string;
  /** The members' origins (`http://host:port`), when listed in the config. */
  readonly members?: readonly string[];
  /** With `dns`: the members' port. */
  readonly port: number;
  /** This instance's origin as the other members know it (one of the members). */
  readonly self: string;
  /** Sent by members to each other (header Ocirelay-Cluster-Token). */
  readonly token: string;
}

const memberUrl = httpUrl('must be an http:// or https:// URL without credentials, query or fragment');

export const clusterFileSchema = {
  cluster: z
    .object({
      dns: z.string().min(1).max(253).optional(),
      members: z.array(memberUrl).min(1).optional(),
      port: z.number().int().min(1).max(65535).optional(),
      self: memberUrl.optional(),
      tokenFile: z.string().min(1, 'the cluster token file is required when cluster is set'),
    })
    .strict()
    .optional(),
};

type ClusterInput = { cluster?: z.output<typeof clusterFileSchema.cluster> };

/** A member's identity: its origin (scheme, host, port), so `http://a:5000/` and `http://a:5000` are one member. */
export function memberOrigin(url: string): string {
  return new URL(url).origin;
}

/** This host's first non-internal IPv4 address (else IPv6, else loopback): the default identity. */
export function hostAddress(interfaces = os.networkInterfaces()): string {
  const all = Object.values(interfaces).flatMap((l) => l ?? []);
  const pick = all.find((a) => !a.internal && a.family === 'IPv4') ?? all.find((a) => !a.internal && a.family === 'IPv6');
  if (!pick) return '127.0.0.1';
  return pick.family === 'IPv6' ? `[${pick.address}]` : pick.address;
}

/** Resolves the token file and defaults; `fail(message)` throws the caller's ConfigError. */
export function clusterConfig(c: ClusterInput, cwd: string, listenPort: number, fail: (message: string) => never): { cluster?: ClusterConfig } {
  const k = c.cluster;
  if (k === undefined) return {};
  if ((k.dns === undefined) === (k.members === undefined)) fail('invalid config: cluster: set either dns or members (exactly one)');
  if (k.members !== undefined && k.port !== undefined) fail('invalid config: cluster.port: only with cluster.dns (members carry their own port)');
  if (k.dns !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/.test(k.dns)) fail(`invalid config: cluster.dns: "${k.dns}" is not a host name`);
  const members = k.members?.map((m) => {
    const u = new URL(m);
    if (u.pathname !== '/') fail(`invalid config: cluster.members: "${m}" has a path (members are origins: http://host:port)`);
    return u.origin;
  });
  if (members !== undefined && new Set(members).size !== members.length) fail('invalid config: cluster.members: a member is listed twice');
  let token: string;
  try {
    token = readFileSync(path.resolve(cwd, k.tokenFile), 'utf8').trim();
  } catch (e) {
    return fail(`invalid config: cluster.tokenFile: cannot read: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (token.length < 16) fail('invalid config: cluster.tokenFile: the token must be at least 16 characters');
  const port = k.port ?? (listenPort !== 0 ? listenPort : 5000);
  let self: string;
  if (k.self !== undefined) {
    const u = new URL(k.self);
    if (u.pathname !== '/') fail(`invalid config: cluster.self: "${k.self}" has a path (an origin: http://host:port)`);
    self = u.origin;
  } else {
    self = memberOrigin(`http://${hostAddress()}:${k.members !== undefined ? listenPort : port}`);
  }
  return {
    cluster: Object.freeze({
      ...(k.dns !== undefined ? { dns: k.dns } : {}),
      ...(members !== undefined ? { members: Object.freeze(members) } : {}),
      port,
      self,
      token,
    }),
  };
}
