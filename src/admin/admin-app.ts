// The admin API (docs/admin-api.md): its own Hono app on its own listener.
import { timingSafeEqual, createHash } from 'node:crypto';
import type { IncomingMessage } from 'node:http';
import { Hono, type Context } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { RegistryError } from '../errors.ts';
import type { Logger } from '../logger.ts';
import type { RegistryRouter } from '../registry-router.ts';
import type { CacheAdmin } from './cache-admin.ts';
import { parseImageRef, parseRepoRef } from './image-ref.ts';
import type { PrefetchJobs } from './prefetch-jobs.ts';
import { parseDigest } from '../oci/digest.ts';
import type { ReplicationAdmin } from '../replication/replication-admin.ts';

export interface AdminDeps {
  admin: CacheAdmin;
  jobs: PrefetchJobs;
  router: RegistryRouter;
  logger: Logger;
  token?: string;
  /** Largest request body accepted, in bytes (config server.adminBodyLimit). */
  bodyLimit: number;
  /** Replication status and backfills; absent: GET /api/v1/replication answers no peers. */
  replication?: ReplicationAdmin;
}

const isLoopback = (addr: string | undefined) => !!addr && (addr === '::1' || addr.startsWith('127.') || addr.startsWith('::ffff:127.'));
const sha = (s: string) => createHash('sha256').update(s).digest();

function platformsOf(v: unknown): string[] | undefined {
  if (v === undefined) return undefined;
  if (!Array.isArray(v) || !v.every((p) => typeof p === 'string' && /^[a-z0-9]+\/[a-z0-9_]+(\/[a-z0-9]+)?$/.test(p))) {
    throw new RegistryError('BAD_REQUEST', 'platforms must be a list like ["linux/amd64", "linux/arm64/v8"]');
  }
  return v as string[];
}

async function body(c: Context): Promise<Record<string, unknown>> {
  try {
    const b: unknown = await c.req.json();
    if (b === null || typeof b !== 'object' || Array.isArray(b)) throw new Error('not an object');
    return b as Record<string, unknown>;
  } catch {
    throw new RegistryError('BAD_REQUEST', 'the request body must be a JSON object');
  }
}

export function createAdminApp(d: AdminDeps): Hono {
  const app = new Hono();
  app.onError((err, c) => {
    const re = err instanceof RegistryError ? err : new RegistryError('UNKNOWN', 'internal error');
    if (!(err instanceof RegistryError)) d.logger.error({ err }, 'admin API error');
    return c.json(re.toBody(), re.status as 400, re.headers);
  });
  app.notFound(() => {
    throw new RegistryError('NOT_FOUND', 'no such admin endpoint');
  });
  app.get('/healthz', (c) => c.json({ status: 'ok' }));

  // Every path but /healthz is authenticated before routing: an unknown path answers 401 to a
  // stranger, so the API's shape is not revealed to anyone without the token.
  app.use('*', async (c, next) => {
    if (d.token !== undefined) {
      const m = /^Bearer (.+)$/.exec(c.req.header('authorization') ?? '');
      if (!m || !timingSafeEqual(sha(m[1]!), sha(d.token))) throw new RegistryError('UNAUTHORIZED', 'admin token required', { headers: { 'WWW-Authenticate': 'Bearer realm="ocirelay-admin"' } });
    } else {
      const addr = (c.env as { incoming?: IncomingMessage } | undefined)?.incoming?.socket.remoteAddress;
      if (!isLoopback(addr)) throw new RegistryError('DENIED', 'no admin token configured: only loopback clients are served');
    }
    const t0 = Date.now();
    await next();
    d.logger.info({ admin: true, method: c.req.method, path: c.req.path, status: c.res.status, ms: Date.now() - t0 }, 'admin request');
  });

  // Bodies are small JSON documents: a bigger one is refused before it is buffered.
  app.use(
    '*',
    bodyLimit({
      maxSize: d.bodyLimit,
      onError: (c) => c.json(new RegistryError('BAD_REQUEST', `request body exceeds ${d.bodyLimit} bytes`).toBody(), 413),
    }),
  );

  app.get('/api/v1/images', (c) => {
    const registry = c.req.query('registry');
    const repository = c.req.query('repository');
    return c.json({ images: d.admin.listImages({ ...(registry ? { registry } : {}), ...(repository ? { repository } : {}) }) });
  });
  app.get('/api/v1/stats', async (c) => c.json(await d.admin.stats()));
  app.post('/api/v1/pin', async (c) => {
    const b = await body(c);
    const ref = parseImageRef(d.router, b.image);
    return c.json(await d.admin.pin(ref, platformsOf(b.platforms), b.freeze === true));
  });
  app.post('/api/v1/unpin', async (c) => {
    const b = await body(c);
    return c.json(await d.admin.unpin(parseImageRef(d.router, b.image), b.unfreeze !== false));
  });
  app.post('/api/v1/freeze', async (c) => {
    const b = await body(c);
    const digest = b.digest === undefined ? undefined : typeof b.digest === 'string' ? parseDigest(b.digest) : undefined;
    if (b.digest !== undefined && digest === undefined) throw new RegistryError('DIGEST_INVALID', 'digest must be sha256:<64 hex>');
    return c.json(await d.admin.freeze(parseImageRef(d.router, b.image), digest));
  });
  app.post('/api/v1/unfreeze', async (c) => {
    const b = await body(c);
    return c.json(await d.admin.unfreeze(parseImageRef(d.router, b.image)));
  });
  app.post('/api/v1/prefetch', async (c) => {
    const b = await body(c);
    if (!Array.isArray(b.images) || b.images.length === 0 || b.images.length > 1000) throw new RegistryError('BAD_REQUEST', 'images must be a non-empty list of image references (at most 1000)');
    const refs = b.images.map((i) => parseImageRef(d.router, i));
    const { job } = d.jobs.start(refs, platformsOf(b.platforms));
    return c.json({ job }, 202);
  });
  app.get('/api/v1/prefetch/:id', (c) => c.json({ job: d.jobs.get(c.req.param('id')) }));
  app.post('/api/v1/purge', async (c) => {
    const b = await body(c);
    if ((b.image === undefined) === (b.repository === undefined)) throw new RegistryError('BAD_REQUEST', 'give exactly one of image or repository');
    const target = b.image !== undefined ? { image: parseImageRef(d.router, b.image) } : { repo: parseRepoRef(d.router, b.repository) };
    return c.json(await d.admin.purge(target, b.force === true));
  });
  app.get('/api/v1/replication', (c) => c.json(d.replication?.status() ?? { region: null, peers: [] }));
  app.post('/api/v1/replicate', async (c) => {
    const b = await body(c);
    if (typeof b.peer !== 'string' || b.peer === '') throw new RegistryError('BAD_REQUEST', 'peer must be the name of a replicating peer');
    const all = b.all === true;
    const images = b.images;
    if (all === (images !== undefined)) throw new RegistryError('BAD_REQUEST', 'give either "all": true or "images": [...]');
    if (!all && (!Array.isArray(images) || images.length === 0 || images.length > 1000)) throw new RegistryError('BAD_REQUEST', 'images must be a non-empty list of image references (at most 1000)');
    if (!d.replication) throw new RegistryError('NOT_FOUND', `no replicating peer named "${b.peer}"`);
    const target = all ? { all: true as const } : { refs: (images as unknown[]).map((i) => parseImageRef(d.router, i)) };
    return c.json(await d.replication.backfill(b.peer, target), 202);
  });
  app.get('/api/v1/history', (c) => {
    const image = c.req.query('image');
    const repository = c.req.query('repository');
    if ((image === undefined) === (repository === undefined)) throw new RegistryError('BAD_REQUEST', 'give exactly one of image or repository');
    const target = image !== undefined ? { image: parseImageRef(d.router, image) } : { repo: parseRepoRef(d.router, repository) };
    return c.json({ history: d.admin.history(target) });
  });
  return app;
}
