// Which addresses an upstream request may reach. A registry (or anything it redirects us to,
// or names as its token realm) must not make us fetch from the machine's own services or the
// private network around it (SSRF): only public addresses are reached, except the registry's
// own origin and the hosts its config lists in `trustedHosts`.
//
// Checked on the address a socket actually connected to (see upstream-dispatchers.ts), so a
// name that resolves to a public address for a check and to 127.0.0.1 for the connection
// (DNS rebinding) gains nothing.
import net from 'node:net';

/** A connection was refused because of where it led: the kind a caller maps to an OCI error. */
export class TargetRefusedError extends Error {
  readonly code = 'OCIRELAY_TARGET_REFUSED';
  constructor(message: string) {
    super(message);
    this.name = 'TargetRefusedError';
  }
}

const blocked = new net.BlockList();
for (const [net4, bits] of [
  ['0.0.0.0', 8], // "this network", unspecified
  ['10.0.0.0', 8],
  ['100.64.0.0', 10], // carrier-grade NAT
  ['127.0.0.0', 8],
  ['169.254.0.0', 16], // link-local, cloud metadata services
  ['172.16.0.0', 12],
  ['192.0.0.0', 24], // IETF protocol assignments
  ['192.0.2.0', 24], // documentation
  ['192.88.99.0', 24], // 6to4 relay anycast
  ['192.168.0.0', 16],
  ['198.18.0.0', 15], // benchmarking
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4], // multicast
  ['240.0.0.0', 4], // reserved, broadcast
] as const) {
  blocked.addSubnet(net4, bits, 'ipv4');
}
for (const [net6, bits] of [
  ['::', 96], // unspecified, loopback, IPv4-compatible (deprecated)
  ['100::', 64], // discard-only
  ['2001:db8::', 32], // documentation
  ['fc00::', 7], // unique local
  ['fe80::', 10], // link-local
  ['fec0::', 10], // site-local (deprecated)
  ['ff00::', 8], // multicast
] as const) {
  blocked.addSubnet(net6, bits, 'ipv6');
}

/** An IP address in any of its usual spellings (IPv4-mapped IPv6 included) is publicly routable. */
export function isPublicAddress(address: string): boolean {
  const ip = address.replace(/^\[|\]$/g, '').replace(/%.*$/, '');
  const family = net.isIP(ip);
  if (family === 4) return !blocked.check(ip, 'ipv4');
  if (family !== 6) return false;
  const groups = expandIpv6(ip);
  if (groups === undefined) return false;
  const embedded = embeddedIpv4(groups);
  if (embedded !== undefined && !isPublicAddress(embedded)) return false;
  return !blocked.check(ip, 'ipv6');
}

/**
 * Whether a URL host names a non-public place without asking DNS: `localhost` names and
 * IP literals that are not public. Decimal and hex IPv4 forms (`2130706433`, `0x7f.1`) are
 * normalised by the URL parser first.
 */
export function isNonPublicHostname(hostname: string): boolean {
  let host: string;
  try {
    host = new URL(`http://${hostname.includes(':') && !hostname.startsWith('[') ? `[${hostname}]` : hostname}/`).hostname;
  } catch {
    return true;
  }
  const bare = host.replace(/^\[|\]$/g, '').replace(/\.$/, '').toLowerCase();
  if (bare === 'localhost' || bare.endsWith('.localhost')) return true;
  return net.isIP(bare) !== 0 && !isPublicAddress(bare);
}

/**
 * The origins a client may reach at non-public addresses: its registry's own, and the
 * `trustedHosts` entries (`host` trusts every port of that host, `host:port` that port only).
 */
export class TrustedHosts {
  readonly #hosts = new Set<string>();
  readonly #hostPorts = new Set<string>();

  constructor(registryUrl: URL, entries: readonly string[] = []) {
    this.#hostPorts.add(hostPort(registryUrl));
    for (const entry of entries) {
      const parsed = parseTrustedEntry(entry);
      if (parsed.port === undefined) this.#hosts.add(parsed.host);
      else this.#hostPorts.add(`${parsed.host}:${parsed.port}`);
    }
  }

  /** `url` may be reached even where it is not public (and may receive credentials). */
  has(url: URL): boolean {
    return this.#hosts.has(normalHost(url.hostname)) || this.#hostPorts.has(hostPort(url));
  }

  /** The same for what undici's connector knows: host name and port (as strings). */
  hasHostPort(hostname: string, port: string, protocol: string): boolean {
    const p = port !== '' ? port : protocol === 'https:' ? '443' : '80';
    const host = normalHost(hostname);
    return this.#hosts.has(host) || this.#hostPorts.has(`${host}:${p}`);
  }
}

/** `example.com`, `example.com:5000`, `[::1]:5000`, `10.0.0.7` -> host (normalised) and port. */
export function parseTrustedEntry(entry: string): { host: string; port: string | undefined } {
  const bracketed = entry.includes(':') && !entry.startsWith('[') && net.isIP(entry) === 6 ? `[${entry}]` : entry;
  let url: URL;
  try {
    url = new URL(`http://${bracketed}/`);
  } catch {
    throw new TypeError(`trustedHosts entry "${entry}" is not a host or host:port`);
  }
  if (url.username !== '' || url.password !== '' || url.pathname !== '/' || url.search !== '' || url.hash !== '') {
    throw new TypeError(`trustedHosts entry "${entry}" is not a host or host:port`);
  }
  const explicitPort = /:(\d{1,5})$/.exec(bracketed)?.[1];
  return { host: normalHost(url.hostname), port: explicitPort === undefined ? undefined : String(Number(explicitPort)) };
}

function hostPort(url: URL): string {
  const port = url.port !== '' ? url.port : url.protocol === 'https:' ? '443' : '80';
  return `${normalHost(url.hostname)}:${port}`;
}

function normalHost(hostname: string): string {
  return hostname.replace(/^\[|\]$/g, '').replace(/\.$/, '').toLowerCase();
}

/** Eight 16-bit groups of an IPv6 address, or undefined when it does not parse. */
function expandIpv6(ip: string): number[] | undefined {
  // A trailing dotted quad (::ffff:127.0.0.1) becomes two hex groups (::ffff:7f00:1).
  const text = ip.toLowerCase().replace(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/, (_m, a: string, b: string, c: string, d: string) =>
    `${((Number(a) << 8) | Number(b)).toString(16)}:${((Number(c) << 8) | Number(d)).toString(16)}`,
  );
  const [head = '', rest] = text.split('::');
  const parse = (s: string): number[] => (s === '' ? [] : s.split(':').map((g) => Number.parseInt(g, 16)));
  const front = parse(head);
  const back = rest === undefined ? [] : parse(rest);
  const missing = 8 - front.length - back.length;
  if (missing < 0 || (rest === undefined && missing !== 0)) return undefined;
  const groups = [...front, ...new Array<number>(missing).fill(0), ...back];
  return groups.length === 8 && groups.every((g) => Number.isInteger(g) && g >= 0 && g <= 0xffff) ? groups : undefined;
}

/** The IPv4 address inside an IPv4-mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address. */
function embeddedIpv4(g: number[]): string | undefined {
  const v4 = (hi: number, lo: number): string => `${hi >> 8}.${hi & 0xff}.${lo >> 8}.${lo & 0xff}`;
  const [a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, g6 = 0, h = 0] = g;
  if (a === 0 && b === 0 && c === 0 && d === 0 && e === 0 && f === 0xffff) return v4(g6, h);
  if (a === 0x64 && b === 0xff9b && c === 0 && d === 0 && e === 0 && f === 0) return v4(g6, h);
  if (a === 0x2002) return v4(b, c);
  return undefined;
}
