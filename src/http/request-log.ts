// One access-log line and one set of request metrics per request, written when the response
// is really finished (for streamed blobs that is when the last byte left, or the stream aborted).
import { randomUUID } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import type { MiddlewareHandler } from 'hono';
import type { Logger } from '../logger.ts';
import type { Metrics } from '../metrics.ts';
import type { AppEnv, RequestInfo } from './request-context.ts';

const REQ_ID_RE = /^[A-Za-z0-9._-]{1,64}$/;

export function requestLog(logger: Logger, metrics: Metrics): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const start = process.hrtime.bigint();
    const given = c.req.header('x-request-id');
    const info: RequestInfo = { id: given && REQ_ID_RE.test(given) ? given : randomUUID(), kind: 'other', bytes: 0 };
    c.set('info', info);
    const url = new URL(c.req.url);
    const out = (c.env as { outgoing?: ServerResponse } | undefined)?.outgoing;
    let logged = false;
    const done = (status: number) => {
      if (logged) return;
      logged = true;
      const seconds = Number(process.hrtime.bigint() - start) / 1e9;
      metrics.httpRequests.inc({ method: c.req.method, kind: info.kind, status: String(status) });
      metrics.httpDuration.observe({ method: c.req.method, kind: info.kind }, seconds);
      const line = {
        reqId: info.id,
        method: c.req.method,
        path: url.pathname,
        ns: url.searchParams.get('ns') ?? undefined,
        status,
        bytes: info.bytes,
        ms: Math.round(seconds * 1e4) / 10,
        kind: info.kind,
        cache: info.cache,
        source: info.source,
        upstream: info.registry,
        repository: info.repository,
        aborted: info.aborted,
      };
      if (info.aborted) logger.warn(line, 'request aborted');
      else if (info.kind !== 'ops') logger.info(line, 'request');
    };
    await next();
    if (out) {
      const status = c.res.headers.get('x-hono-already-sent') ? out.statusCode : c.res.status;
      if (out.writableFinished || out.destroyed) done(status);
      else out.once('close', () => done(out.statusCode ?? status));
    } else {
      done(c.res.status);
    }
  };
}
