// The OCI distribution read API under /v2/. Validation happens in RegistryRouter; handlers
// only translate between HTTP and the pull-through services.
import { Hono } from 'hono';
import { RegistryError } from '../errors.ts';
import type { Metrics } from '../metrics.ts';
import { MT, parseAccept } from '../oci/media-types.ts';
import { usableRange } from '../oci/range.ts';
import type { BlobService } from '../pull-through/blob-service.ts';
import type { ListingService } from '../pull-through/listing-service.ts';
import type { ManifestService } from '../pull-through/manifest-service.ts';
import type { RegistryRouter, V2Route } from '../registry-router.ts';
import type { PushReceiver } from '../replication/receive-routes.ts';
import type { AppEnv } from './request-context.ts';
import { respond } from './respond.ts';

export interface V2Deps {
  router: RegistryRouter;
  blobs: BlobService;
  manifests: ManifestService;
  listings: ListingService;
  metrics: Metrics;
  /** Replication pushes (only with replication.accept): it answers what is its own first. */
  receive?: PushReceiver | undefined;
  /** With `cluster:`: whether an Ocirelay-Cluster-Token header is the cluster's token (a member's read). */
  isMember?: ((header: string | undefined) => boolean) | undefined;
}

const API_VERSION = { 'Docker-Distribution-API-Version': 'registry/2.0' };

/**
 * Route a path. A manifest reference that is neither a tag nor a digest names no manifest:
 * 404 MANIFEST_UNKNOWN, as the Distribution registry and the OCI conformance suite have it,
 * decided here without asking any upstream.
 */
function resolveRoute(router: RegistryRouter, rest: string, ns: string | undefined): V2Route {
  try {
    return router.resolve(rest, ns);
  } catch (e) {
    if (e instanceof RegistryError && (e.code === 'TAG_INVALID' || e.code === 'DIGEST_INVALID') && /\/manifests\/[^/]+$/.test(rest)) {
      throw new RegistryError('MANIFEST_UNKNOWN', `manifest unknown: ${e.message}`);
    }
    throw e;
  }
}

export function v2Routes(d: V2Deps): Hono<AppEnv> {
  const app = new Hono<AppEnv>();

  app.all('/*', async (c) => {
    const info = c.get('info');
    const method = c.req.method;
    const url = new URL(c.req.url);
    const rest = url.pathname.slice('/v2/'.length);
    if (rest === '' && (method === 'GET' || method === 'HEAD')) {
      // The API version check clients send first. No auth here: the mirror is open for pulls.
      info.kind = 'base';
      return respond(c, 200, { ...API_VERSION, 'Content-Type': 'application/json', 'Content-Length': '2' }, Buffer.from('{}'));
    }
    const received = await d.receive?.handle(c, rest);
    if (received) return received;
    if (method !== 'GET' && method !== 'HEAD') {
      // Uploads, deletes, anything that writes: refused whatever the path.
      throw new RegistryError('UNSUPPORTED', `${method} is not supported: this is a read-only pull-through mirror`, { headers: { Allow: 'GET, HEAD' } });
    }
    const route = resolveRoute(d.router, rest, url.searchParams.get('ns') ?? undefined);
    info.kind = route.kind;
    info.registry = route.registry;
    info.repository = route.repository;
    // Another member of this cluster reads what it does not own from here: answered without
    // asking the region's shared tiers (no loops). A wrong token is just a client request.
    const forMember = (route.kind === 'manifests' || route.kind === 'blobs') && (d.isMember?.(c.req.header('ocirelay-cluster-token')) ?? false);
    const kindLabel = route.kind === 'tags' ? 'tags' : route.kind === 'referrers' ? 'referrers' : route.kind === 'blobs' ? 'blob' : 'manifest';

    switch (route.kind) {
      case 'manifests': {
        const m = await d.manifests.get({
          registry: route.registry,
          repository: route.repository,
          reference: route.reference,
          accept: parseAccept(c.req.raw.headers.get('accept')),
          // A peer region's failover read: not passed on to this region's peers (no loops).
          forPeer: c.req.header('ocirelay-failover') !== undefined,
          forMember,
        });
        info.cache = m.cache;
        info.source = m.cache === 'miss' ? 'upstream' : 'cache';
        d.metrics.cacheResults.inc({ kind: kindLabel, result: m.cache });
        return respond(
          c,
          200,
          {
            ...API_VERSION,
            'Content-Type': m.mediaType,
            'Content-Length': String(m.body.length),
            'Docker-Content-Digest': m.digest,
            ETag: `"${m.digest}"`,
            // A member keeps the tag's resolution time, so the region revalidates it once per TTL.
            ...(forMember && m.resolvedAt !== undefined ? { 'Ocirelay-Resolved-At': new Date(m.resolvedAt).toISOString() } : {}),
          },
          m.body,
          (n) => d.metrics.bytesServed.inc({ source: m.cache === 'miss' ? 'upstream' : 'memory' }, n),
        );
      }
      case 'blobs': {
        if (route.digest === undefined) throw new RegistryError('DIGEST_INVALID', 'not a sha256 digest');
        const b = await d.blobs.get({
          registry: route.registry,
          repository: route.repository,
          digest: route.digest,
          method,
          range: usableRange(c.req.header('range')),
          forPeer: c.req.header('ocirelay-failover') !== undefined,
          forMember,
        });
        info.cache = b.cache;
        info.source = b.source;
        d.metrics.cacheResults.inc({ kind: kindLabel, result: b.cache });
        const counter = d.metrics.bytesServed.labels({ source: b.source });
        return respond(c, b.status, { ...API_VERSION, ...b.headers }, b.file ?? b.body, (n) => counter.inc(n));
      }
      case 'tags': {
        const q = url.searchParams;
        const l = await d.listings.tags(
          route.registry,
          route.repository,
          { ...(q.has('n') ? { n: q.get('n')! } : {}), ...(q.has('last') ? { last: q.get('last')! } : {}) },
          route.clientPath,
        );
        info.cache = l.cache;
        d.metrics.cacheResults.inc({ kind: kindLabel, result: l.cache });
        // Our type, never the upstream's (which could be anything, e.g. text/html).
        return respond(c, 200, { ...API_VERSION, ...l.headers, 'Content-Type': 'application/json', 'Content-Length': String(l.body.length) }, l.body);
      }
      case 'referrers': {
        const l = await d.listings.referrers(route.registry, route.repository, route.reference, url.searchParams.get('artifactType') ?? undefined, route.clientPath + '/' + route.reference);
        info.cache = l.cache;
        d.metrics.cacheResults.inc({ kind: kindLabel, result: l.cache });
        // The referrers API answers an image index (distribution-spec), whatever the upstream's type.
        return respond(c, 200, { ...API_VERSION, ...l.headers, 'Content-Type': MT.ociIndex, 'Content-Length': String(l.body.length) }, l.body);
      }
    }
  });
  return app;
}
