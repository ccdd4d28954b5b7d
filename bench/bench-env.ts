// Everything a benchmark run starts, in one owner: the seeded upstream, fresh (cold) or shared
// (warm) contenders, nginx. Every process is stopped by its PID in close(), also after a failure.
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, removeTempDir } from '../test/fixtures/processes.ts';
import { startRegistry, type RegistryFixture } from '../test/fixtures/registry.ts';
import { skopeoCopy } from '../test/fixtures/skopeo.ts';
import { startDistributionProxy, type DistributionProxy } from './distribution-proxy.ts';
import { concurrentGets, curlGet } from './load-clients.ts';
import { startNginx, type NginxServer } from './nginx-server.ts';
import { OcirelayLauncher, type RunningOcirelay } from './ocirelay-launcher.ts';
import { soakWarmSize, type BenchOptions, type SizeName } from './options.ts';
import { seedUpstream, upstreamBlobFile, type SeededImage, type SeededSet } from './seed.ts';
import { UpstreamMeter } from './upstream-meter.ts';
import { progress } from './progress.ts';

export interface Endpoint {
  /** Base URL, e.g. http://127.0.0.1:PORT */
  url: string;
  host: string;
  pid: number;
}

export interface WarmContenders {
  ocirelay: RunningOcirelay;
  proxy: DistributionProxy;
  nginx: NginxServer;
  /** nginx URL of each primed layer, by size. */
  nginxUrls: Partial<Record<SizeName, string>>;
}

/** GETs of a primed layer before giving up on the proxy keeping it. */
const PRIME_CHECKS = 5;

export class BenchEnv {
  readonly launcher: OcirelayLauncher;
  private readonly stoppers = new Set<() => Promise<void>>();
  private warm: WarmContenders | undefined;
  private counter = 0;

  private constructor(
    readonly options: BenchOptions,
    readonly workDir: string,
    readonly upstream: RegistryFixture,
    readonly seeded: SeededSet,
    readonly meter: UpstreamMeter,
  ) {
    this.launcher = new OcirelayLauncher(options.ocirelayBin);
  }

  /** Start and seed the upstream with every image the selected scenarios need. */
  static async create(options: BenchOptions): Promise<BenchEnv> {
    const workDir = await makeTempDir('ocirelay-bench-');
    let upstream: RegistryFixture | undefined;
    try {
      upstream = await startRegistry();
      // Only what the selected scenarios pull: seeding 1 GiB takes a while.
      const has = (s: string) => (options.scenarios as string[]).includes(s);
      const sizes = new Set<SizeName>();
      if (has('cold-pull') || has('warm-throughput') || has('peak-rss')) for (const s of options.sizes) sizes.add(s);
      if (has('herd') || has('peak-rss') || has('region-herd') || has('s3-read')) sizes.add(options.herdSize);
      if (has('manifest-load')) sizes.add(options.sizes[0] ?? '4m');
      if (has('soak')) sizes.add(soakWarmSize(options.mode));
      const index = has('cold-pull') && options.pullIndex ? (options.mode === 'smoke' ? '1m' : '4m') : undefined;
      progress(`seeding upstream ${upstream.url} with layers ${[...sizes].join(', ') || '(none)'}${index ? ' and a multi-arch index' : ''}`);
      const seeded = await seedUpstream(upstream, [...sizes], index);
      progress(`seeded in ${seeded.seedSeconds.toFixed(1)} s`);
      return new BenchEnv(options, workDir, upstream, seeded, new UpstreamMeter(upstream));
    } catch (e) {
      await upstream?.stop().catch(() => undefined);
      await removeTempDir(workDir);
      throw e;
    }
  }

  image(size: SizeName): SeededImage {
    const img = this.seeded.layers[size];
    if (!img) throw new Error(`no image with a ${size} layer was seeded`);
    return img;
  }

  /** Registers a stopper run by close() (also after a failure); returns it, runnable once. */
  track(stop: () => Promise<void>): () => Promise<void> {
    const once = async () => {
      this.stoppers.delete(once);
      await stop();
    };
    this.stoppers.add(once);
    return once;
  }

  /**
   * A fresh ocirelay with an empty data dir (cold). Its stop() also removes the data dir.
   * `extraConfig`: more config sections (the soak's small cache budget); `how`: a listen port
   * chosen beforehand, more environment (a region's cluster members and S3 credentials), a
   * longer start-up allowance (several instances starting at once on two cores).
   */
  async coldOcirelay(extraConfig?: Record<string, unknown>, how: { port?: number; env?: Record<string, string>; startTimeoutMs?: number } = {}): Promise<RunningOcirelay> {
    const dir = path.join(this.workDir, `ocirelay-${++this.counter}`);
    await mkdir(dir, { recursive: true });
    const r = await this.launcher.start({ dir, upstreamUrl: this.upstream.url, logLevel: 'warn', nodeArgs: this.options.ocirelayNodeArgs, ...(extraConfig ? { extraConfig } : {}), ...how });
    const stop = this.track(async () => {
      await r.stop();
      await rm(dir, { recursive: true, force: true });
    });
    return { ...r, stop };
  }

  /**
   * Pull `bench/warmup` through a freshly started proxy, so that what is measured next is a
   * cold cache in a process that has served before (JIT-compiled, connections open).
   */
  async warmUpProcess(host: string): Promise<void> {
    const dest = path.join(this.workDir, `warmup-${++this.counter}`);
    try {
      await skopeoCopy(`docker://${host}/${this.seeded.warmup.repo}:${this.seeded.warmup.tag}`, `oci:${dest}:${this.seeded.warmup.tag}`, { srcTlsVerify: false, timeoutMs: 120_000 });
    } finally {
      await rm(dest, { recursive: true, force: true });
    }
  }

  /** An ocirelay on a given data dir, logging at info so that the ready line is seen. */
  async ocirelayOn(dataDir: string): Promise<RunningOcirelay> {
    const dir = path.join(this.workDir, `ocirelay-${++this.counter}`);
    await mkdir(dir, { recursive: true });
    const r = await this.launcher.start({ dir, dataDir, upstreamUrl: this.upstream.url, logLevel: 'info', nodeArgs: this.options.ocirelayNodeArgs });
    const stop = this.track(async () => {
      await r.stop();
      await rm(dir, { recursive: true, force: true });
    });
    return { ...r, stop };
  }

  /** A fresh Distribution pull-through proxy with empty storage (cold). */
  async coldDistributionProxy(): Promise<DistributionProxy> {
    const p = await startDistributionProxy(this.upstream.url);
    const stop = this.track(() => p.stop());
    return { ...p, stop };
  }

  /**
   * The warm contenders, started once and shared by warm-throughput and manifest-load: every
   * selected layer fetched through each proxy (and given time to land in its storage) before
   * anything is measured, and published in nginx.
   */
  async warmContenders(): Promise<WarmContenders> {
    if (this.warm) return this.warm;
    const ocirelay = await this.coldOcirelay();
    const proxy = await this.coldDistributionProxy();
    const nginx = await startNginx();
    this.track(() => nginx.stop());
    const nginxUrls: Partial<Record<SizeName, string>> = {};
    for (const [size, img] of Object.entries(this.seeded.layers) as Array<[SizeName, SeededImage]>) {
      await this.prime(ocirelay.url, img, `ocirelay (pid ${ocirelay.pid})`);
      await this.prime(proxy.url, img, `the Distribution proxy (pid ${proxy.pid})`);
      nginxUrls[size] = await nginx.publish(img.layer.digest, upstreamBlobFile(this.upstream, img.layer.digest));
    }
    this.warm = { ocirelay, proxy, nginx, nginxUrls };
    return this.warm;
  }

  /**
   * Replace a warm contender that died (or misbehaves) with a fresh, primed one. Returns a
   * short description for the scenario's notes.
   */
  async recoverWarm(who: 'ocirelay' | 'distribution-proxy'): Promise<string> {
    const w = await this.warmContenders();
    const old = who === 'ocirelay' ? w.ocirelay : w.proxy;
    const alive = isAlive(old.pid);
    const tail = who === 'ocirelay' ? w.ocirelay.outputTail().slice(-1500) : await w.proxy.process.logTail(1500);
    await old.stop();
    if (who === 'ocirelay') w.ocirelay = await this.coldOcirelay();
    else w.proxy = await this.coldDistributionProxy();
    const fresh = who === 'ocirelay' ? w.ocirelay : w.proxy;
    for (const img of Object.values(this.seeded.layers)) if (img) await this.prime(fresh.url, img, `${who} (pid ${fresh.pid})`);
    return `warm ${who} (pid ${old.pid}) ${alive ? 'was still running' : 'had exited'}; replaced by pid ${fresh.pid}. Its last output: ${tail.replace(/\s+/g, ' ').slice(-600)}`;
  }

  /**
   * Pull an image's manifest (by tag and digest) and layer through a proxy, wait for the
   * upstream to go quiet (a proxy may still be storing), then check that a second GET of the
   * layer no longer reaches the upstream.
   */
  private async prime(url: string, img: SeededImage, who: string): Promise<void> {
    const accept = { accept: img.mediaType };
    await curlGet(`${url}/v2/${img.repo}/manifests/${img.tag}`, { headers: accept, timeoutMs: 60_000 });
    await curlGet(`${url}/v2/${img.repo}/manifests/${img.manifestDigest}`, { headers: accept, timeoutMs: 60_000 });
    const blobUrl = `${url}/v2/${img.repo}/blobs/${img.layer.digest}`;
    await curlGet(blobUrl, { expectBytes: img.layer.size, timeoutMs: 600_000 });
    // The Distribution proxy stores a big blob only after it has streamed it (seen: a 1 GiB
    // layer still being committed when the next GET came, which went upstream again): check
    // again, a bounded number of times, with growing pauses.
    let gets = 0;
    for (let attempt = 1; attempt <= PRIME_CHECKS; attempt++) {
      await this.meter.waitQuiet(500);
      const mark = await this.meter.mark();
      await concurrentGets(blobUrl, 1, { expectBytes: img.layer.size, timeoutMs: 600_000 });
      await this.meter.waitQuiet(500);
      gets = (await this.meter.trafficSince(mark, img.layer.digest)).blobGets;
      if (gets === 0) return;
      await new Promise((r) => setTimeout(r, 2_000 * attempt));
    }
    throw new Error(`priming ${who} at ${url}: after ${PRIME_CHECKS} tries a GET of ${img.repo} still reached the upstream (${gets} GETs)`);
  }

  /** Stop every process still running (by PID), remove the work dir. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const stop of [...this.stoppers].reverse()) {
      try {
        await stop();
      } catch (e) {
        errors.push(e);
      }
    }
    this.warm = undefined;
    try {
      await this.upstream.stop();
    } catch (e) {
      errors.push(e);
    }
    await removeTempDir(this.workDir);
    if (errors.length > 0) throw errors[0];
  }

  /** Last resort on an abrupt exit: SIGKILL ocirelay children (fixtures kill their own). */
  killNow(): void {
    this.launcher.killAllNow();
  }
}

/** Is a process we started still there? (signal 0 checks without sending anything) */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
