// createApp(deps): the HTTP surface, with no I/O at import. main.ts builds the deps.
import type { IncomingMessage } from 'node:http';
import { Hono } from 'hono';
import { RegistryError } from './errors.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { errorResponse } from './http/error-handler.ts';
import type { AppEnv } from './http/request-context.ts';
import { requestLog } from './http/request-log.ts';
import { v2Routes, type V2Deps } from './http/v2-routes.ts';

const DOT_SEGMENT = /(^|\/)(\.|%2e){1,2}(\/|$)/i;

export interface Readiness {
  ready: boolean;
  /** Still ready, but something is wrong (e.g. the disk cache is unwritable). */
  degraded?: boolean;
  problems: string[];
}

export interface AppDeps extends V2Deps {
  logger: Logger;
  metrics: Metrics;
  readiness: () => Readiness;
}

export function createApp(d: AppDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();
  app.use('*', requestLog(d.logger, d.metrics));
  app.onError((err, c) => errorResponse(err, c, d.logger));
  app.use('*', async (c, next) => {
    // The URL parser resolves dot segments before routing; judge the path as the client sent it.
    const raw = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.url ?? '';
    if (DOT_SEGMENT.test(raw.split('?')[0] ?? '')) throw new RegistryError('NAME_INVALID', 'path contains dot segments');
    await next();
  });
  app.notFound(() => {
    throw new RegistryError('NAME_UNKNOWN', 'no such endpoint', { status: 404 });
  });

  app.get('/healthz', (c) => {
    c.get('info').kind = 'ops';
    return c.json({ status: 'ok' });
  });
  app.get('/readyz', (c) => {
    c.get('info').kind = 'ops';
    const r = d.readiness();
    return c.json({ status: !r.ready ? 'not ready' : r.degraded ? 'degraded' : 'ready', problems: r.problems }, r.ready ? 200 : 503);
  });
  app.get('/metrics', async (c) => {
    c.get('info').kind = 'ops';
    return c.body(await d.metrics.registry.metrics(), 200, { 'Content-Type': d.metrics.registry.contentType });
  });

  const v2 = v2Routes(d);
  app.route('/v2', v2);
  // `/v2` without the slash is the same version check.
  app.on(['GET', 'HEAD'], '/v2', (c) => c.redirect('/v2/', 301));
  return app;
}
