// nginx (Debian's nginx-light) serving blob files with sendfile: the practical ceiling for
// serving bytes on this machine. Blobs are hard links to the upstream's own files (same
// bytes, no copy), published as /blobs/<64 hex>.
import { copyFile, link, mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, waitFor } from '../test/fixtures/ports.ts';
import { makeTempDir, removeTempDir, spawnLogged, type ManagedProcess } from '../test/fixtures/processes.ts';

export interface NginxServer {
  url: string;
  process: ManagedProcess;
  /** Publish a file as /blobs/<hex>; returns its URL. */
  publish(digest: string, file: string): Promise<string>;
  stop(): Promise<void>;
}

function nginxConfig(dir: string, port: number): string {
  // Workers run as root: the blob files sit in 0700 temp dirs that `nobody` cannot read.
  return `
user root;
worker_processes auto;
daemon off;
master_process on;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 65;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  types { }
  default_type application/octet-stream;
  server {
    listen 127.0.0.1:${port};
    root ${dir}/www;
    location /blobs/ { }
  }
}
`;
}

export async function startNginx(): Promise<NginxServer> {
  const dir = await makeTempDir('ocirelay-bench-nginx-');
  try {
    await mkdir(path.join(dir, 'www', 'blobs'), { recursive: true });
    await mkdir(path.join(dir, 'tmp'), { recursive: true });
    let proc: ManagedProcess | undefined;
    let port = 0;
    // freePort() releases the port before nginx binds it: retry a few times on a race.
    for (let attempt = 1; !proc; attempt++) {
      port = await freePort();
      const conf = path.join(dir, 'nginx.conf');
      await writeFile(conf, nginxConfig(dir, port));
      const p = await spawnLogged({ name: 'nginx', cmd: 'nginx', args: ['-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')], dir });
      await writeFile(path.join(dir, 'www', 'probe.txt'), `nginx-${port}`);
      try {
        await waitFor(
          async () => {
            const res = await fetch(`http://127.0.0.1:${port}/probe.txt`, { signal: AbortSignal.timeout(1_000) });
            return res.status === 200 && (await res.text()) === `nginx-${port}`;
          },
          { timeoutMs: 10_000, intervalMs: 50, what: `nginx on 127.0.0.1:${port}`, abortIf: () => p.diedError() },
        );
        proc = p;
      } catch (e) {
        await p.stop().catch(() => undefined);
        if (attempt >= 3) throw await p.startupError((e as Error).message);
      }
    }
    const running = proc;
    const url = `http://127.0.0.1:${port}`;
    return {
      url,
      process: running,
      publish: async (digest, file) => {
        const hex = digest.replace(/^sha256:/, '');
        const target = path.join(dir, 'www', 'blobs', hex);
        try {
          await link(file, target);
        } catch (e) {
          const code = (e as NodeJS.ErrnoException).code;
          if (code === 'EEXIST') return `${url}/blobs/${hex}`;
          if (code !== 'EXDEV') throw e;
          await copyFile(file, target);
        }
        return `${url}/blobs/${hex}`;
      },
      stop: async () => {
        try {
          await running.stop();
        } finally {
          await removeTempDir(dir);
        }
      },
    };
  } catch (e) {
    await removeTempDir(dir);
    throw e;
  }
}
