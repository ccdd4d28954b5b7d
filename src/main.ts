// Wires everything from a Config: stores, index, upstream clients, services, the HTTP server.
// Every piece of state is built here and passed in; nothing lives in module-level singletons.
import fs from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import type { Server } from 'node:http';
import { createApp, type Readiness } from './app.ts';
import { createListener } from './http/listener.ts';
import type { Config } from './config.ts';
import { createLogger, type Logger } from './logger.ts';
import { Metrics } from './metrics.ts';
import { CacheEvents } from './cache-events.ts';
import { BlobFills } from './pull-through/blob-fills.ts';
import { BlobService, type BlobRequest } from './pull-through/blob-service.ts';
import { ListingService } from './pull-through/listing-service.ts';
import { ManifestService } from './pull-through/manifest-service.ts';
import { NegativeCache } from './pull-through/negative-cache.ts';
import { CacheAdmin } from './admin/cache-admin.ts';
import { createAdminApp } from './admin/admin-app.ts';
import { ImagePuller } from './admin/image-puller.ts';
import { PrefetchJobs } from './admin/prefetch-jobs.ts';
import { RegistryRouter } from './registry-router.ts';
import { ReplicationAdmin } from './replication/replication-admin.ts';
import { Replicator } from './replication/replicator.ts';
import { createPushReceiver } from './replication/receive-routes.ts';
import { CacheIndex } from './storage/cache-index.ts';
import { DiskBlobStore } from './storage/disk-blob-store.ts';
import { DiskHealth } from './storage/disk-health.ts';
import { Evictor } from './storage/evictor.ts';
import { CacheLayout } from './storage/layout.ts';
import { MemoryCache } from './storage/memory-cache.ts';
import { RegistryClient } from './upstream/registry-client.ts';
import { PeerSource } from './sources/peer-source.ts';
import { SourceChain, upstreamSource } from './sources/source-chain.ts';
import type { ContentSource } from './sources/content-source.ts';
import { Cluster } from './cluster/cluster.ts';

export interface RunningProxy {
  url: string;
  port: number;
  adminUrl: string;
  metrics: Metrics;
  logger: Logger;
  /** Stop accepting, let in-flight pulls and fills finish (bounded), close the index. */
  close(): Promise<void>;
}

export async function startProxy(config: Config, opts: { logger?: Logger; metrics?: Metrics } = {}): Promise<RunningProxy> {
  const logger = opts.logger ?? createLogger({ level: config.log.level });
  const metrics = opts.metrics ?? new Metrics();
  const t0 = Date.now();

  const layout = new CacheLayout(config.dataDir);
  const disk = new DiskBlobStore(layout, logger);
  const index = new CacheIndex(layout, logger);
  index.onJournalFailure = () => metrics.journalWriteFailures.inc();
  const diskInfo = await disk.init();
  const indexInfo = await index.init((d) => disk.has(d));
  const memory = new MemoryCache(config.cache.memoryBytes);
  metrics.cacheBytes.set({ tier: 'disk' }, disk.bytes);
  metrics.cacheEntries.set({ tier: 'disk' }, disk.count);
  // A writable data dir is required to start at all (later trouble only degrades caching).
  await fs.access(layout.tmpDir, fs.constants.W_OK);

  // Each registry's client has its own undici pools (its connector knows its trustedHosts).
  const upstreams = new Map<string, RegistryClient>();
  for (const r of config.registries.values()) {
    upstreams.set(
      r.name,
      new RegistryClient(
        {
          name: r.name,
          url: r.url,
          ...(r.username !== undefined ? { username: r.username } : {}),
          ...(r.password !== undefined ? { password: r.password } : {}),
          ...(r.trustedHosts !== undefined ? { trustedHosts: r.trustedHosts } : {}),
          ...(r.tls !== undefined ? { tls: r.tls } : {}),
        },
        {
          metrics,
          logger,
          userAgent: `ocirelay/${config.version}`,
          proxy: config.upstream.proxy,
          minRate: { bytesPerSec: config.upstream.minRateBytesPerSec, windowMs: config.upstream.minRateWindowMs },
          timeouts: { connectMs: config.upstream.connectTimeoutMs, headersMs: config.upstream.headersTimeoutMs, idleMs: config.upstream.idleTimeoutMs },
          // With failover peers, an upstream that refuses connections is left for them at once.
          retry: { attempts: config.upstream.retries, unreachable: ![...config.peers.values()].some((p) => p.failover) },
          breaker: { maxFails: config.upstream.breakerMaxFails, resetMs: config.upstream.breakerResetMs },
        },
      ),
    );
  }

  const fills = new BlobFills(metrics, logger, config.cache.maxBlobBytes);
  const evictor = new Evictor(disk, index, memory, metrics, logger, {
    maxBytes: config.cache.maxBytes,
    highWatermark: config.cache.highWatermark,
    lowWatermark: config.cache.lowWatermark,
    inFlightBytes: () => fills.inFlightBytes(),
  });
  const health = new DiskHealth(layout.tmpDir, metrics, logger, 5000, () => void evictor.check());
  // Upstream 404s remembered for each registry's negativeTTL (shared by manifests and blobs).
  const negative = new NegativeCache({ ttlMs: (registry) => config.registries.get(registry)?.negativeTtlMs ?? 30_000, metrics });
  // Content changes, for the replication outbox and the S3 write-behind.
  const events = new CacheEvents();
  // The region's S3 bucket (storage.s3): checked before we listen (an unfit store or refused
  // credentials stop the start; an unreachable bucket only degrades), asked first on a local
  // miss, written behind after each local commit.
  // Loaded only when configured: the AWS SDK costs about 0.3 s of start-up and 20 MiB of RSS.
  const s3 = config.storage.s3
    ? await (await import('./s3/s3-tier.ts')).startS3Tier(config.storage.s3, {
        config,
        layout,
        index,
        disk,
        events,
        metrics,
        logger,
        upstreamDown: (registry) => upstreams.get(registry)?.circuitState() === 'open',
        upstream: (registry) => sources.upstream(registry),
      })
    : undefined;
  // This region's shared tiers, asked in order before the upstream: the S3 bucket first.
  const regionSources: ContentSource[] = s3 ? [s3.source] : [];
  // The instances of this region (cluster:): a miss is read from the member that owns the
  // digest or tag, which fetches it from the upstream once for the whole region.
  const cluster = config.cluster
    ? new Cluster(config.cluster, {
        metrics,
        logger,
        userAgent: `ocirelay/${config.version}`,
        minRate: { bytesPerSec: config.upstream.minRateBytesPerSec, windowMs: config.upstream.minRateWindowMs },
        timeouts: { connectMs: config.upstream.connectTimeoutMs, headersMs: config.upstream.headersTimeoutMs, idleMs: config.upstream.idleTimeoutMs },
      })
    : undefined;
  // Where misses are read from: this region's shared tiers (the owning cluster member), then
  // each registry's upstream, then (on an outage, or first with failover.mode peers-first) the
  // peers with failover: true.
  const sources = new SourceChain({
    region: [...regionSources, ...(cluster ? [cluster.source] : [])],
    upstreams: new Map([...upstreams].map(([name, client]) => [name, upstreamSource(client)])),
    peers: [...config.peers.values()]
      .filter((p) => p.failover)
      .map(
        (p) =>
          new PeerSource(p, {
            metrics,
            logger,
            userAgent: `ocirelay/${config.version}`,
            minRate: { bytesPerSec: config.upstream.minRateBytesPerSec, windowMs: config.upstream.minRateWindowMs },
            timeouts: { connectMs: config.upstream.connectTimeoutMs, headersMs: config.upstream.headersTimeoutMs, idleMs: config.upstream.idleTimeoutMs },
          }),
      ),
    mode: config.failover.mode,
    metrics,
    logger,
  });
  const blobs = new BlobService({
    disk,
    memory,
    index,
    fills,
    sources,
    evictor,
    health,
    metrics,
    logger,
    negative,
    events,
    ...(s3 ? { regionRange: (req: BlobRequest) => s3.source.openRange(req, req.range ?? '') } : {}),
  });
  if (s3) {
    events.listen(s3.writeBehind);
    s3.writeBehind.start();
  }
  const manifests = new ManifestService({
    events,
    disk,
    memory,
    index,
    sources,
    evictor,
    health,
    metrics,
    logger,
    tagTtlMs: (registry) => config.registries.get(registry)?.tagTtlMs ?? 300_000,
    negative,
  });
  const listings = new ListingService({ upstreams, index, metrics, logger });
  const router = new RegistryRouter(config.registries, config.defaultRegistry);

  let shuttingDown = false;
  const readiness = (): Readiness => {
    const problems: string[] = [];
    if (shuttingDown) problems.push('shutting down');
    // An unwritable disk does not stop pulls (they stream through uncached): report, stay ready.
    const degraded = health.writable ? [] : [`disk cache not writable (${health.problem}): pulls stream through uncached`];
    // S3 down: pulls go on from disk and upstream, the write-behind waits.
    if (s3 && !s3.health.up) degraded.push(`${s3.health.problem ?? 'S3 bucket unavailable'}: pulls use the local disk and the upstream`);
    return { ready: problems.length === 0, problems: [...problems, ...degraded], degraded: degraded.length > 0 };
  };
  metrics.cacheBytes.set({ tier: 'memory' }, 0);
  // Pushes from replication peers (only with replication.accept; otherwise writes stay 405).
  const receive = createPushReceiver({
    accept: config.replication.accept,
    registries: config.registries,
    tmpDir: layout.tmpDir,
    maxBlobBytes: config.cache.maxBlobBytes,
    store: { disk, memory, index, evictor, health, events, metrics, logger },
  });
  const app = createApp({ router, blobs, manifests, listings, metrics, logger, readiness, receive, isMember: cluster?.isMember });
  // Bounded per client (config `server:`): headers, idle keep-alive, header size, connections, send stalls.
  const pull = createListener('pull', app.fetch, config.server, logger);
  const server = pull.server;

  const puller = new ImagePuller(manifests, blobs, disk, index);
  const cacheAdmin = new CacheAdmin({ index, disk, memory, evictor, health, puller, metrics, maxBytes: config.cache.maxBytes, memoryBytes: config.cache.memoryBytes, events, ...(s3 ? { region: s3.region.shared } : {}) });
  // Replication to peers: one outbox job per replicating peer for each cache event (replayed
  // from <dataDir>/replication/ after a crash), sent by its workers.
  const replicator = [...config.peers.values()].some((p) => p.replicate)
    ? new Replicator({
        config,
        disk,
        index,
        pull: (registry, repository, reference) => puller.pull(registry, repository, reference, undefined),
        images: () => cacheAdmin.listImages({}),
        metrics,
        logger,
      })
    : undefined;
  if (replicator) {
    await replicator.start();
    events.listen(replicator);
  }
  const replicationAdmin = new ReplicationAdmin(replicator, config.region, (f) => cacheAdmin.listImages(f), index);
  const jobs = new PrefetchJobs(puller, logger);
  const adminApp = createAdminApp({ admin: cacheAdmin, jobs, router, logger, replication: replicationAdmin, bodyLimit: config.server.adminBodyLimit, ...(config.admin.token !== undefined ? { token: config.admin.token } : {}) });
  const adminListener = createListener('admin', adminApp.fetch, config.server, logger);
  const adminServer = adminListener.server;

  const port = await listen(server, config.listen);
  const adminPort = await listen(adminServer, config.admin.listen).catch(async (e: unknown) => {
    await new Promise<void>((r) => server.close(() => r()));
    throw e;
  });
  const url = urlOf(config.listen.host, port);
  // Once this instance answers: the first health round finds the members already up.
  await cluster?.start();
  const adminUrl = urlOf(config.admin.listen.host, adminPort);
  if (config.admin.token === undefined && !isLoopbackHost(config.admin.listen.host)) {
    logger.warn({ admin: `${config.admin.listen.host}:${adminPort}` }, 'admin API has no token: it answers loopback clients only');
  }
  const memGauge = setInterval(() => {
    metrics.cacheBytes.set({ tier: 'memory' }, memory.bytes);
    metrics.cacheEntries.set({ tier: 'memory' }, memory.count);
  }, 5000);
  memGauge.unref();
  logger.info(
    {
      listen: `${config.listen.host}:${port}`,
      admin: `${config.admin.listen.host}:${adminPort}`,
      dataDir: config.dataDir,
      registries: [...config.registries.values()].map((r) => `${r.name}=${r.url}`),
      defaultRegistry: config.defaultRegistry,
      cachedBlobs: diskInfo.blobs,
      cachedBytes: diskInfo.bytes,
      ...(cluster ? { cluster: { self: cluster.members.self, members: cluster.members.known(), live: cluster.members.live() } } : {}),
      indexRecords: indexInfo.records,
      startupMs: Date.now() - t0,
    },
    'ocirelay ready',
  );

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      shuttingDown = true;
      clearInterval(memGauge);
      pull.stop();
      adminListener.stop();
      health.stop();
      logger.info({ fillsInFlight: fills.size }, 'shutting down: finishing in-flight pulls');
      const serverClosed = new Promise<void>((r) => server.close(() => r()));
      server.closeIdleConnections();
      adminServer.close();
      adminServer.closeAllConnections();
      const grace = setTimeout(() => server.closeAllConnections(), config.shutdownGraceMs);
      await fills.drain(config.shutdownGraceMs);
      await serverClosed;
      // After the listener: uploads still arriving were let finish; abandoned ones lose their temp files.
      await receive?.close();
      clearTimeout(grace);
      await manifests.flush();
      await replicator?.close();
      await s3?.writeBehind.close();
      await s3?.region.close();
      s3?.health.stop();
      s3?.bucket.destroy();
      await cluster?.close();
      await index.close();
      await disk.flushRecency();
      for (const u of upstreams.values()) await u.close();
      await sources.close();
      logger.info('shut down');
      logger.flush();
    })());
  return { url, port, adminUrl, metrics, logger, close };
}

function listen(server: Server, at: { host: string; port: number }): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      resolve((server.address() as AddressInfo).port);
    });
  });
}

function urlOf(host: string, port: number): string {
  const h = host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
}

const isLoopbackHost = (h: string) => h === 'localhost' || h === '::1' || h.startsWith('127.');
