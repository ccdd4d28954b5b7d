// The soak's mixed load, run in the harness process against one ocirelay until told to stop:
//   cold   new random images pushed to the upstream, then pulled through ocirelay (manifest by
//          tag, config and layer with sha256 checked); every 4th image first gets a client
//          that hangs up in the middle of the cold fill
//   warm   GETs of a cached blob, sha256 checked
//   manifest  GETs of a cached manifest by tag and by digest, and of recent cold images by tag
//   disconnect  GETs of the cached blob that hang up after a random number of bytes
// Every answer is checked; anything unexpected counts as an error (with its message kept).
import { createHash, randomBytes, randomInt } from 'node:crypto';
import http from 'node:http';
import { setTimeout as sleep } from 'node:timers/promises';
import { pushBlob } from '../test/helpers/http-client.ts';
import type { SeededImage } from './seed.ts';

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';

export interface SoakCounters {
  coldPulls: number;
  coldBytes: number;
  warmGets: number;
  warmBytes: number;
  manifestGets: number;
  disconnects: number;
  /** ocirelay's answers that were wrong, or requests to it that failed. */
  errors: number;
  /** Pushes of new images to the upstream that failed: the harness's or the upstream's trouble, not ocirelay's. */
  pushErrors: number;
}

export interface SoakLoadOptions {
  /** ocirelay's base URL. */
  proxyUrl: string;
  /** The upstream's base URL, where the cold images are pushed. */
  upstreamUrl: string;
  /** The cached image: its layer for warm GETs and disconnects, its manifest for manifest GETs. */
  warm: SeededImage;
  /** Layer sizes of the cold images, bytes. */
  coldLayerBytes: { min: number; max: number };
  warmClients: number;
}

interface Fetched {
  status: number;
  bytes: number;
  digest: string;
}

/** GET with the body hashed; rejects on a transport error or a stall of 30 s. */
function getHashed(agent: http.Agent, url: string, headers: Record<string, string> = {}): Promise<Fetched> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, headers }, (res) => {
      const hash = createHash('sha256');
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        hash.update(c);
      });
      res.once('aborted', () => reject(new Error(`GET ${url}: aborted after ${bytes} bytes`)));
      res.on('error', reject);
      res.once('end', () => resolve({ status: res.statusCode ?? 0, bytes, digest: `sha256:${hash.digest('hex')}` }));
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`GET ${url}: stalled for 30 s`)));
    req.on('error', reject);
  });
}

/** GET on a fresh connection that hangs up after `afterBytes` body bytes (or at the end). */
function getAndHangUp(url: string, afterBytes: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false }, (res) => {
      // Our own hang-up surfaces as an 'aborted' error on res, after the promise settled: ignored.
      res.on('error', () => resolve(0));
      if (res.statusCode !== 200) {
        req.destroy();
        reject(new Error(`GET ${url}: status ${res.statusCode}`));
        return;
      }
      let bytes = 0;
      res.on('data', (c: Buffer) => {
        bytes += c.length;
        if (bytes >= afterBytes) {
          req.destroy();
          resolve(bytes);
        }
      });
      res.once('end', () => resolve(bytes));
    });
    req.setTimeout(30_000, () => req.destroy(new Error(`GET ${url}: stalled for 30 s`)));
    req.on('error', reject);
  });
}

function expect(ok: boolean, what: string): void {
  if (!ok) throw new Error(what);
}

interface ColdImage {
  repo: string;
  manifestDigest: string;
  config: { digest: string; size: number };
  layer: { digest: string; size: number };
}

/** A new image with one random layer, pushed straight to the upstream. */
async function pushColdImage(upstreamUrl: string, n: number, layerBytes: number): Promise<ColdImage> {
  const repo = `soak/cold-${n}`;
  const layerData = randomBytes(layerBytes);
  const layer = { digest: await pushBlob(upstreamUrl, repo, layerData), size: layerData.length };
  const configData = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [layer.digest] }, config: {} }));
  const config = { digest: await pushBlob(upstreamUrl, repo, configData), size: configData.length };
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: { mediaType: OCI_CONFIG, ...config },
      layers: [{ mediaType: OCI_LAYER, ...layer }],
    }),
  );
  const res = await fetch(`${upstreamUrl}/v2/${repo}/manifests/1.0`, { method: 'PUT', headers: { 'content-type': OCI_MANIFEST }, body: manifest, signal: AbortSignal.timeout(30_000) });
  await res.arrayBuffer();
  if (res.status !== 201) throw new Error(`push of ${repo}:1.0 answered ${res.status}`);
  return { repo, manifestDigest: `sha256:${createHash('sha256').update(manifest).digest('hex')}`, config, layer };
}

/** The running load; stop() ends every loop after its current request. */
export class SoakLoad {
  readonly counters: SoakCounters = { coldPulls: 0, coldBytes: 0, warmGets: 0, warmBytes: 0, manifestGets: 0, disconnects: 0, errors: 0, pushErrors: 0 };
  /** The first errors, for the report (bounded). */
  readonly errorMessages: string[] = [];
  private stopping = false;
  private readonly loops: Array<Promise<void>> = [];
  private readonly agents: http.Agent[] = [];
  /** Repositories of cold images already pulled, for manifest GETs by tag (revalidation). */
  private readonly pulled: string[] = [];

  constructor(private readonly o: SoakLoadOptions) {}

  start(): void {
    this.loops.push(this.loop('cold', 500, (agent) => this.coldPull(agent)));
    for (let i = 0; i < this.o.warmClients; i++) this.loops.push(this.loop('warm', 100, (agent) => this.warmGet(agent)));
    this.loops.push(this.loop('manifest', 20, (agent) => this.manifestGet(agent)));
    this.loops.push(this.loop('disconnect', 500, () => this.disconnect()));
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await Promise.all(this.loops);
    for (const a of this.agents) a.destroy();
  }

  private async loop(name: string, pauseMs: number, step: (agent: http.Agent) => Promise<void>): Promise<void> {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    this.agents.push(agent);
    while (!this.stopping) {
      try {
        await step(agent);
      } catch (e) {
        this.counters.errors++;
        if (this.errorMessages.length < 20) this.errorMessages.push(`${name}: ${(e as Error).message}`);
        // A broken connection must not poison the next request.
        agent.destroy();
      }
      await sleep(pauseMs);
    }
  }

  private coldN = 0;

  private async coldPull(agent: http.Agent): Promise<void> {
    const n = ++this.coldN;
    let img: ColdImage;
    try {
      img = await pushColdImage(this.o.upstreamUrl, n, randomInt(this.o.coldLayerBytes.min, this.o.coldLayerBytes.max + 1));
    } catch (e) {
      this.counters.pushErrors++;
      if (this.errorMessages.length < 20) this.errorMessages.push(`push to the upstream (not counted against ocirelay): ${(e as Error).message}`);
      return;
    }
    const base = `${this.o.proxyUrl}/v2/${img.repo}`;
    if (n % 4 === 0) {
      // Hang up in the middle of the cold fill; the full pull below must still get every byte.
      await getAndHangUp(`${base}/blobs/${img.layer.digest}`, Math.floor(img.layer.size / 2));
      this.counters.disconnects++;
    }
    const m = await getHashed(agent, `${base}/manifests/1.0`, { accept: OCI_MANIFEST });
    expect(m.status === 200 && m.digest === img.manifestDigest, `manifest ${img.repo}:1.0: status ${m.status}, ${m.digest}`);
    for (const b of [img.config, img.layer]) {
      const r = await getHashed(agent, `${base}/blobs/${b.digest}`);
      expect(r.status === 200 && r.bytes === b.size && r.digest === b.digest, `cold blob ${img.repo}@${b.digest}: status ${r.status}, ${r.bytes} bytes, ${r.digest}`);
      this.counters.coldBytes += r.bytes;
    }
    this.counters.coldPulls++;
    this.pulled.push(img.repo);
    if (this.pulled.length > 200) this.pulled.shift();
  }

  private async warmGet(agent: http.Agent): Promise<void> {
    const l = this.o.warm.layer;
    const r = await getHashed(agent, `${this.o.proxyUrl}/v2/${this.o.warm.repo}/blobs/${l.digest}`);
    expect(r.status === 200 && r.bytes === l.size && r.digest === l.digest, `warm blob: status ${r.status}, ${r.bytes} bytes, ${r.digest}`);
    this.counters.warmGets++;
    this.counters.warmBytes += r.bytes;
  }

  private manifestTurn = 0;

  private async manifestGet(agent: http.Agent): Promise<void> {
    const w = this.o.warm;
    const turn = ++this.manifestTurn % 3;
    if (turn === 0 && this.pulled.length > 0) {
      // A tag pulled a while ago: once its TTL is over, this revalidates with the upstream.
      const repo = this.pulled[randomInt(this.pulled.length)] as string;
      const r = await getHashed(agent, `${this.o.proxyUrl}/v2/${repo}/manifests/1.0`, { accept: OCI_MANIFEST });
      expect(r.status === 200, `manifest ${repo}:1.0: status ${r.status}`);
    } else {
      const ref = turn === 1 ? w.tag : w.manifestDigest;
      const r = await getHashed(agent, `${this.o.proxyUrl}/v2/${w.repo}/manifests/${ref}`, { accept: w.mediaType });
      expect(r.status === 200 && r.digest === w.manifestDigest, `manifest ${w.repo}:${ref}: status ${r.status}, ${r.digest}`);
    }
    this.counters.manifestGets++;
  }

  private async disconnect(): Promise<void> {
    const l = this.o.warm.layer;
    await getAndHangUp(`${this.o.proxyUrl}/v2/${this.o.warm.repo}/blobs/${l.digest}`, randomInt(1, Math.max(2, l.size)));
    this.counters.disconnects++;
  }
}
