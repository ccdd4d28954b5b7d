// Maps what an upstream said (or failed to say) to the OCI error a client sees.
import { RegistryError, type OciErrorCode } from '../errors.ts';
import { UpstreamError, type UpstreamResponse } from '../upstream/registry-client.ts';

const PASSTHROUGH_CODES = new Set<OciErrorCode>([
  'BLOB_UNKNOWN', 'MANIFEST_UNKNOWN', 'NAME_UNKNOWN', 'NAME_INVALID', 'DIGEST_INVALID', 'TAG_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED',
]);

/** Reads (a bounded amount of) an upstream error body to keep its OCI code when it has one. */
async function upstreamCode(res: UpstreamResponse): Promise<OciErrorCode | undefined> {
  let text = '';
  try {
    for await (const chunk of res.body as AsyncIterable<Buffer>) {
      text += chunk.toString('utf8');
      if (text.length > 16384) break;
    }
  } catch {
    return undefined;
  } finally {
    res.body.destroy();
  }
  try {
    const j = JSON.parse(text) as { errors?: Array<{ code?: unknown }> };
    const code = j.errors?.[0]?.code;
    if (typeof code === 'string' && PASSTHROUGH_CODES.has(code as OciErrorCode)) return code as OciErrorCode;
  } catch {
    // not JSON: fall back to the status
  }
  return undefined;
}

/** A RegistryError for a non-success upstream response. Consumes (destroys) the body. */
export async function errorFromUpstream(res: UpstreamResponse, registry: string, notFound: OciErrorCode): Promise<RegistryError> {
  const code = res.status === 404 ? ((await upstreamCode(res)) ?? notFound) : (res.body.destroy(), undefined);
  switch (res.status) {
    case 404:
      return new RegistryError(code === 'NAME_UNKNOWN' || code === 'BLOB_UNKNOWN' || code === 'MANIFEST_UNKNOWN' ? code : notFound, `not found at upstream ${registry}`);
    case 401:
      return new RegistryError('UNAUTHORIZED', `upstream ${registry} refused our credentials or requires authentication`);
    case 403:
      return new RegistryError('DENIED', `upstream ${registry} denied access`);
    case 429: {
      const ra = res.headers['retry-after'];
      return new RegistryError('TOOMANYREQUESTS', `upstream ${registry} rate limit reached`, ra ? { headers: { 'Retry-After': ra } } : {});
    }
    default:
      if (res.status >= 500) return new RegistryError('UNAVAILABLE', `upstream ${registry} answered ${res.status}`);
      return new RegistryError('UNAVAILABLE', `upstream ${registry} answered unexpected status ${res.status}`, { status: 502 });
  }
}

/** A RegistryError for a transport failure (unreachable, timeout, open circuit...). */
export function errorFromTransport(e: unknown, registry: string): RegistryError {
  if (e instanceof RegistryError) return e;
  if (e instanceof UpstreamError) {
    if (e.kind === 'auth_failed' && e.status === 401) return new RegistryError('UNAUTHORIZED', `upstream ${registry} refused our credentials`);
    if (e.kind === 'auth_failed' && e.status === 403) return new RegistryError('DENIED', `upstream ${registry} denied access`);
    // The policy refused where the upstream pointed us (a redirect or token realm at a private
    // address or over plain http): the upstream's doing, answered as a bad gateway, never a 500.
    if (e.kind === 'target_refused') {
      return new RegistryError('UNAVAILABLE', `upstream ${registry} pointed to a host ocirelay does not contact (see the log; registries.${registry}.trustedHosts)`, { status: 502 });
    }
    if (e.kind === 'too_many_redirects' || e.kind === 'bad_redirect') return new RegistryError('UNAVAILABLE', `upstream ${registry} sent an unusable redirect (${e.kind})`, { status: 502 });
    return new RegistryError('UNAVAILABLE', `upstream ${registry} unavailable (${e.kind})`);
  }
  return new RegistryError('UNAVAILABLE', `upstream ${registry} request failed`);
}

/** Whether an upstream failure justifies serving stale content (outage-like, not "it is gone"). */
export function isOutage(e: unknown, status?: number): boolean {
  if (status !== undefined) return status >= 500 || status === 429;
  // A refused redirect or realm is a policy answer, not an outage.
  if (!(e instanceof UpstreamError) || e.kind === 'aborted' || e.kind === 'target_refused') return false;
  // The token endpoint saying no is an answer, not an outage.
  return !(e.kind === 'auth_failed' && e.status !== undefined && e.status < 500);
}
