// `ocirelay <command> [flags]`: `serve` runs the proxy (and reads its config); every other
// command is an admin client (src/admin-cli/) talking to a running proxy's admin API, which
// needs no config file, only --admin URL and a token.
import { parseArgs } from 'node:util';
import { adminUsage, isAdminCommand, runAdminCommand } from './admin-cli/commands.ts';
import { ConfigError, loadConfig } from './config.ts';

const USAGE = `usage: ocirelay serve [--config FILE] [--listen HOST:PORT] [--data-dir DIR]
       ocirelay ls | stats | pin | unpin | freeze | unfreeze | prefetch | purge | history [flags]

  --config FILE       YAML config (env OCIRELAY_CONFIG)
  --listen HOST:PORT  listen address, default 0.0.0.0:5000 (env OCIRELAY_LISTEN)
  --data-dir DIR      cache directory, default ./data (env OCIRELAY_DATA_DIR)

${adminUsage()}`;

export async function runCli(argv: string[]): Promise<number> {
  const [cmd = 'serve', ...rest] = argv;
  if (cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(USAGE);
    return 0;
  }
  if (isAdminCommand(cmd)) return runAdmin(cmd, rest);
  if (cmd !== 'serve') {
    process.stderr.write(`ocirelay: unknown command "${cmd}"\n${USAGE}`);
    return 2;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      options: {
        config: { type: 'string' },
        listen: { type: 'string' },
        'data-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }));
  } catch (e) {
    process.stderr.write(`ocirelay: ${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  let config;
  try {
    config = loadConfig({
      ...(values.config !== undefined ? { file: values.config } : {}),
      flags: { ...(values.listen !== undefined ? { listen: values.listen } : {}), ...(values['data-dir'] !== undefined ? { dataDir: values['data-dir'] } : {}) },
    });
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`ocirelay: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  // Signal handlers go in before start-up, so a SIGTERM during it is a clean stop, not a kill.
  let signalled: string | undefined;
  let onSignal: ((signal: string) => void) | undefined;
  const handler = (signal: NodeJS.Signals) => {
    if (signalled) {
      process.stderr.write(`ocirelay: second ${signal}: exiting now\n`);
      process.exit(1);
    }
    signalled = signal;
    onSignal?.(signal);
  };
  process.on('SIGTERM', handler);
  process.on('SIGINT', handler);
  let proxy;
  try {
    // Loaded here, not at the top: admin commands do not need the server's modules.
    const { startProxy } = await import('./main.ts');
    proxy = await startProxy(config);
  } catch (e) {
    process.stderr.write(`ocirelay: cannot start: ${(e as Error).message}\n`);
    return 1;
  }
  const running = proxy;
  await new Promise<void>((resolve) => {
    onSignal = (signal) => {
      running.logger.info({ signal }, 'signal received');
      void running.close().then(resolve);
    };
    if (signalled) onSignal(signalled);
  });
  return 0;
}

/** Ctrl-C aborts the admin command's requests (a prefetch job goes on in the server). */
async function runAdmin(cmd: string, rest: string[]): Promise<number> {
  const interrupt = new AbortController();
  const onSigint = () => interrupt.abort();
  process.once('SIGINT', onSigint);
  try {
    return await runAdminCommand(cmd, rest, { stdout: process.stdout, stderr: process.stderr, stdin: process.stdin, env: process.env, interrupt: interrupt.signal });
  } finally {
    process.off('SIGINT', onSigint);
  }
}
