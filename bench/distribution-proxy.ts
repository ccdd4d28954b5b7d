// The reference peer: CNCF Distribution (`docker-registry`, the code of `registry:2`) in
// pull-through mode (`proxy: {remoteurl}`), with fresh storage per start. Unlike the test
// fixture it logs at warn with the access log off, as ocirelay runs at warn here: neither
// contender pays for a log line per request.
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, waitFor } from '../test/fixtures/ports.ts';
import { makeTempDir, removeTempDir, runCommand, spawnLogged, type ManagedProcess } from '../test/fixtures/processes.ts';

export interface DistributionProxy {
  url: string;
  host: string;
  pid: number;
  process: ManagedProcess;
  /** Where a committed blob's bytes are in this proxy's storage. */
  blobFile(digest: string): string;
  stop(): Promise<void>;
}

/** Does the listener on `port` belong to `pid`? (A bare "port answers" could be anybody's.) */
async function listenerIsOurs(port: number, pid: number): Promise<boolean> {
  const { stdout } = await runCommand('ss', ['-Hltnp', `sport = :${port}`], { timeoutMs: 5_000 });
  return stdout.includes(`pid=${pid},`);
}

export async function startDistributionProxy(remoteUrl: string): Promise<DistributionProxy> {
  const dir = await makeTempDir('ocirelay-bench-distproxy-');
  try {
    for (let attempt = 1; ; attempt++) {
      const port = await freePort();
      const config = {
        version: 0.1,
        log: { level: 'warn', formatter: 'text', accesslog: { disabled: true } },
        storage: {
          filesystem: { rootdirectory: path.join(dir, 'storage') },
          delete: { enabled: true },
          maintenance: { uploadpurging: { enabled: false } },
        },
        http: { addr: `127.0.0.1:${port}`, secret: `ocirelay-bench-${port}` },
        proxy: { remoteurl: remoteUrl },
      };
      const file = path.join(dir, 'config.yml');
      await writeFile(file, JSON.stringify(config, null, 2));
      const p = await spawnLogged({ name: 'distribution-proxy', cmd: 'docker-registry', args: ['serve', file], dir });
      const url = `http://127.0.0.1:${port}`;
      try {
        await waitFor(
          async () => {
            const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1_000) });
            await res.arrayBuffer();
            return res.status === 200 && res.headers.get('docker-distribution-api-version') === 'registry/2.0' && (await listenerIsOurs(port, p.pid));
          },
          { timeoutMs: 20_000, intervalMs: 50, what: `distribution proxy on ${url}`, abortIf: () => p.diedError() },
        );
      } catch (e) {
        await p.stop().catch(() => undefined);
        if (attempt < 3 && (await p.readLog()).includes('address already in use')) continue;
        throw await p.startupError((e as Error).message);
      }
      return {
        url,
        host: `127.0.0.1:${port}`,
        pid: p.pid,
        process: p,
        blobFile: (digest) => {
          const hex = digest.replace(/^sha256:/, '');
          return path.join(dir, 'storage', 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
        },
        stop: async () => {
          try {
            await p.stop();
          } finally {
            await removeTempDir(dir);
          }
        },
      };
    }
  } catch (e) {
    await removeTempDir(dir);
    throw e;
  }
}
