// Which forward proxy (if any) an upstream URL goes through: the usual HTTPS_PROXY /
// HTTP_PROXY / NO_PROXY rules (config.ts reads them, or upstream.proxy / upstream.noProxy).
import net from 'node:net';

export interface ProxySettings {
  /** Proxy for http:// upstream URLs. */
  readonly httpProxy?: string;
  /** Proxy for https:// upstream URLs (tunnelled with CONNECT). */
  readonly httpsProxy?: string;
  /**
   * Hosts reached directly, as in NO_PROXY: `*` (everything), `example.com` (that host and its
   * subdomains; a leading `.` or `*.` means the same), `host:port` (that port only), IP literals.
   */
  readonly noProxy?: readonly string[];
}

/** The proxy URL for `url`, or undefined to connect directly. */
export function proxyFor(url: URL, settings: ProxySettings | undefined): string | undefined {
  if (settings === undefined) return undefined;
  const proxy = url.protocol === 'https:' ? settings.httpsProxy : settings.httpProxy;
  if (proxy === undefined || proxy === '') return undefined;
  return bypassesProxy(url, settings.noProxy ?? []) ? undefined : proxy;
}

export function bypassesProxy(url: URL, noProxy: readonly string[]): boolean {
  const host = url.hostname.replace(/^\[|\]$/g, '').replace(/\.$/, '').toLowerCase();
  const port = url.port !== '' ? url.port : url.protocol === 'https:' ? '443' : '80';
  for (const raw of noProxy) {
    const entry = raw.trim().toLowerCase();
    if (entry === '') continue;
    if (entry === '*') return true;
    const { name, entryPort } = splitEntry(entry);
    if (entryPort !== undefined && entryPort !== port) continue;
    const domain = name.replace(/^\*?\./, '');
    if (host === domain) return true;
    if (net.isIP(domain) === 0 && host.endsWith(`.${domain}`)) return true;
  }
  return false;
}

function splitEntry(entry: string): { name: string; entryPort: string | undefined } {
  const v6 = /^\[([^\]]+)\](?::(\d+))?$/.exec(entry);
  if (v6 !== null) return { name: v6[1] ?? '', entryPort: v6[2] };
  if (net.isIP(entry) === 6) return { name: entry, entryPort: undefined };
  const m = /^(.*):(\d+)$/.exec(entry);
  return m === null ? { name: entry, entryPort: undefined } : { name: m[1] ?? '', entryPort: m[2] };
}
