import type { Context } from 'hono';
import type { ServerResponse } from 'node:http';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { AppEnv } from './request-context.ts';

/** The one place an error becomes an OCI error response. */
export function errorResponse(err: unknown, c: Context<AppEnv>, logger: Logger): Response {
  const out = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
  if (out?.headersSent) {
    // Too late for an error body: abort the transfer.
    out.destroy();
    return new Response(null);
  }
  const re =
    err instanceof RegistryError
      ? err
      : new RegistryError('UNKNOWN', 'internal error', { detail: { requestId: c.get('info')?.id } });
  if (!(err instanceof RegistryError)) logger.error({ err, reqId: c.get('info')?.id }, 'unhandled error');
  const body = c.req.method === 'HEAD' ? null : JSON.stringify(re.toBody());
  const headers: Record<string, string> = {
    'Content-Type': 'application/json; charset=utf-8',
    'Docker-Distribution-API-Version': 'registry/2.0',
    ...re.headers,
  };
  const id = c.get('info')?.id;
  if (id) headers['X-Request-Id'] = id;
  if (body !== null) headers['Content-Length'] = String(Buffer.byteLength(body));
  return new Response(body, { status: re.status, headers });
}
