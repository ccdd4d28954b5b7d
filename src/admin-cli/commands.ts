// The admin commands (`ocirelay ls | stats | pin | unpin | freeze | unfreeze | prefetch |
// purge | history`, and replication-commands.ts: `replication | replicate`): parse the command line, call the admin API, print a table or the API's
// JSON, and turn every outcome into one of the exit codes of exit-codes.ts. Nothing here
// reads the proxy's config file: the admin API's URL and token come from flags or the env.
import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import {
  AdminApiError,
  AdminClient,
  AdminProtocolError,
  AdminTimeoutError,
  AdminUnreachableError,
  parseAdminUrl,
  type CachedImage,
  type HistoryEntry,
  type PrefetchJob,
  type Stats,
} from './admin-client.ts';
import { EXIT, EXIT_CODES_HELP, UsageError, exitCodeForStatus } from './exit-codes.ts';
import { formatAge, formatBytes, formatElapsed, formatPercent, formatTime, parseDuration, shortDigest } from './human.ts';
import { waitForJob } from './prefetch-wait.ts';
import { createJobProgress, type ProgressStream } from './progress.ts';
import { renderKeyValues, renderTable } from './table.ts';
import { REPLICATION_COMMANDS } from './replication-commands.ts';

export const DEFAULT_ADMIN_URL = 'http://127.0.0.1:5050';
const DEFAULT_TIMEOUT = '30m';
/** Conventional exit code of a command stopped by Ctrl-C (128 + SIGINT). */
const EXIT_INTERRUPTED = 130;

export interface CliIo {
  stdout: { write(chunk: string): unknown };
  stderr: ProgressStream & { isTTY?: boolean };
  /** Read by `prefetch --file -`. */
  stdin: AsyncIterable<string | Buffer>;
  /** OCIRELAY_ADMIN, OCIRELAY_ADMIN_TOKEN; handed in by cli.ts. */
  env: Readonly<Record<string, string | undefined>>;
  /** Aborted on Ctrl-C. */
  interrupt?: AbortSignal;
}

/** The reason of an interrupt signal, so a Ctrl-C is told apart from a timeout. */
export class InterruptedError extends Error {
  constructor() {
    super('interrupted');
    this.name = 'InterruptedError';
  }
}

type OptionSpec = { type: 'string' | 'boolean'; multiple?: boolean; short?: string };
export type Values = Record<string, string | boolean | Array<string | boolean> | undefined>;

export interface Context {
  client: AdminClient;
  io: CliIo;
  json: boolean;
  signal: AbortSignal;
  timeoutText: string;
  /** Writes the API's answer as JSON with --json, else the human rendering. */
  print(answer: unknown, human: () => string): void;
}

export interface Command {
  /** Synopsis after `ocirelay `, e.g. `ls [--registry R] [--repository N]`. */
  synopsis: string[];
  summary: string;
  /** The command's own flags, for `ocirelay CMD --help`. */
  flags?: string;
  options: Record<string, OptionSpec>;
  /**
   * Checks the command line and returns the work to do, before anything is sent, so a usage
   * error never reaches the server. Throws UsageError.
   */
  prepare(values: Values, positionals: string[], io: CliIo): Promise<(ctx: Context) => Promise<number>>;
}

const GLOBAL_OPTIONS: Record<string, OptionSpec> = {
  admin: { type: 'string' },
  token: { type: 'string' },
  'token-file': { type: 'string' },
  json: { type: 'boolean' },
  timeout: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
};

// ---- argument helpers -----------------------------------------------------------------------

function str(values: Values, key: string): string | undefined {
  const v = values[key];
  if (typeof v !== 'string') return undefined;
  if (v.trim() === '') throw new UsageError(`--${key} needs a value`);
  return v;
}

function flag(values: Values, key: string): boolean {
  return values[key] === true;
}

/** Repeated and comma-separated: `--platform linux/amd64 --platform linux/arm64,linux/arm/v7`. */
function platforms(values: Values): string[] | undefined {
  const raw = values.platform;
  const list = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).filter((v): v is string => typeof v === 'string');
  const out = list.flatMap((v) => v.split(',')).map((p) => p.trim()).filter((p) => p !== '');
  for (const p of out) {
    if (!/^[a-z0-9._-]+\/[a-z0-9._-]+(\/[a-z0-9._-]+)?$/i.test(p)) throw new UsageError(`--platform: "${p}" is not OS/ARCH[/VARIANT], e.g. linux/amd64`);
  }
  return out.length > 0 ? out : undefined;
}

function oneImage(positionals: string[], what = 'IMAGE'): string {
  if (positionals.length === 0) throw new UsageError(`missing ${what}`);
  if (positionals.length > 1) throw new UsageError(`one ${what} only, got ${positionals.length}: ${positionals.join(' ')}`);
  return positionals[0]!;
}

function noPositionals(positionals: string[]): void {
  if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
}

/** IMAGE or --repository REPO, exactly one of them. */
function imageOrRepository(values: Values, positionals: string[]): { image: string } | { repository: string } {
  const repository = str(values, 'repository');
  if (repository !== undefined) {
    if (positionals.length > 0) throw new UsageError('give either IMAGE or --repository, not both');
    return { repository };
  }
  if (positionals.length === 0) throw new UsageError('missing IMAGE or --repository REPO');
  return { image: oneImage(positionals) };
}

/** `--file` lines: one reference each, `#` starts a comment, blank lines ignored. */
export function parseImageList(text: string): string[] {
  return text
    .split('\n')
    .map((line) => line.replace(/#.*/, '').trim())
    .filter((line) => line !== '');
}

async function readImageFile(file: string, io: CliIo): Promise<string[]> {
  try {
    if (file === '-') {
      let text = '';
      for await (const chunk of io.stdin) text += typeof chunk === 'string' ? chunk : chunk.toString('utf8');
      return parseImageList(text);
    }
    return parseImageList(await readFile(file, 'utf8'));
  } catch (e) {
    throw new UsageError(`--file: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

// ---- human renderings -----------------------------------------------------------------------

function imageName(i: { registry: string; repository: string }): string {
  return `${i.registry}/${i.repository}`;
}

function pinState(i: CachedImage): string {
  const parts: string[] = [];
  if (i.pinned) parts.push('pinned');
  if (i.frozenTags?.length) parts.push(`frozen ${i.frozenTags.join(',')}`);
  return parts.length > 0 ? parts.join(', ') : '-';
}

export function renderImages(images: CachedImage[], now = Date.now()): string {
  const sorted = [...images].sort((a, b) => imageName(a).localeCompare(imageName(b)) || (a.tags?.[0] ?? '').localeCompare(b.tags?.[0] ?? ''));
  return renderTable(
    [
      { header: 'IMAGE' },
      { header: 'TAGS' },
      { header: 'DIGEST' },
      { header: 'SIZE', align: 'right' },
      { header: 'BLOBS', align: 'right' },
      { header: 'LAST ACCESS' },
      { header: 'PINNED/FROZEN' },
    ],
    sorted.map((i) => [
      imageName(i),
      i.tags?.length ? i.tags.join(',') : '<none>',
      shortDigest(i.digest),
      formatBytes(i.size),
      `${i.cachedBlobs}/${(i.cachedBlobs ?? 0) + (i.missingBlobs ?? 0)}`,
      formatAge(i.lastAccess, now),
      pinState(i),
    ]),
  );
}

export function renderStats(s: Stats): string {
  const r = s.requests;
  const total = r ? r.hit + r.miss + r.coalesced + r.stale : undefined;
  const disk = s.disk;
  const diskShare = disk && disk.maxBytes > 0 ? ` (${formatPercent(disk.bytes / disk.maxBytes)})` : '';
  const pairs: Array<[string, string]> = [
    ['requests', r ? `${total} (hit ${r.hit}, miss ${r.miss}, coalesced ${r.coalesced}, stale ${r.stale})` : '-'],
    ['hit ratio', formatPercent(s.hitRatio)],
    ['served from cache', formatBytes(s.bytesServed?.cache)],
    ['served from upstream', formatBytes(s.bytesServed?.upstream)],
    ['received from upstreams', formatBytes(s.upstreamBytes)],
    ['egress saved', formatBytes(s.egressSavedBytes)],
    ['disk usage', disk ? `${formatBytes(disk.bytes)} of ${disk.maxBytes > 0 ? formatBytes(disk.maxBytes) : 'no budget'}${diskShare}` : '-'],
    ['disk entries', disk ? `${disk.entries} (${formatBytes(disk.pinnedBytes)} pinned)${disk.writable === false ? ', NOT WRITABLE' : ''}` : '-'],
    ['memory', s.memory ? `${formatBytes(s.memory.bytes)} of ${formatBytes(s.memory.maxBytes)}, ${s.memory.entries} entries` : '-'],
    ['evictions', s.evictions ? `${s.evictions.unreferenced} unreferenced, ${s.evictions.lru} lru` : '-'],
  ];
  const limits = Object.entries(s.rateLimits ?? {}).sort(([a], [b]) => a.localeCompare(b));
  if (limits.length === 0) pairs.push(['rate limit', 'none reported by the upstreams']);
  for (const [registry, l] of limits) pairs.push([`rate limit ${registry}`, `${l.remaining} of ${l.limit} pulls left`]);
  return renderKeyValues(pairs);
}

export function renderHistory(entries: HistoryEntry[]): string {
  const repos = new Set(entries.map((e) => imageName(e)));
  // One repository (the usual case): the tag alone; several: say which repository.
  const tagOf = (e: HistoryEntry) => (repos.size > 1 ? `${imageName(e)}:${e.tag}` : e.tag);
  return renderTable(
    [{ header: 'TIME' }, { header: 'TAG' }, { header: 'OLD' }, { header: 'NEW' }, { header: 'SOURCE' }],
    entries.map((e) => [formatTime(e.time), tagOf(e), shortDigest(e.oldDigest), shortDigest(e.newDigest), e.source]),
  );
}

export function renderJob(job: PrefetchJob): string {
  const table = renderTable(
    [{ header: 'IMAGE' }, { header: 'STATE' }, { header: 'DIGEST' }, { header: 'SIZE', align: 'right' }, { header: 'ERROR' }],
    job.images.map((i) => [i.image, i.state, shortDigest(i.digest), i.bytes === undefined ? '-' : formatBytes(i.bytes), i.error ?? '']),
  );
  const took = job.finishedAt ? ` in ${formatElapsed(Date.parse(job.finishedAt) - Date.parse(job.createdAt))}` : '';
  let summary: string;
  if (job.state === 'running') summary = `prefetch ${job.id} running: ${job.done + job.failed} of ${job.total} images finished, ${formatBytes(job.bytesDone)} so far`;
  else if (job.state === 'failed') summary = `prefetch ${job.id} failed: ${job.failed} of ${job.total} images failed (the others are cached)${took}`;
  else summary = `prefetch ${job.id} done: ${job.done} of ${job.total} images, ${formatBytes(job.bytesDone)}${took}`;
  return `${table}${summary}\n`;
}

// ---- the commands ---------------------------------------------------------------------------

const COMMANDS: Record<string, Command> = {
  ls: {
    synopsis: ['ls [--registry R] [--repository N]'],
    summary: 'cached images: tags, digest, size, blobs cached/total, last access, pinned/frozen',
    options: { registry: { type: 'string' }, repository: { type: 'string' } },
    async prepare(values, positionals) {
      noPositionals(positionals);
      const filter = { registry: str(values, 'registry'), repository: str(values, 'repository') };
      return async (ctx) => {
        const answer = await ctx.client.listImages(filter);
        if (!ctx.json && answer.images.length === 0) {
          ctx.io.stderr.write('no cached images\n');
          return EXIT.OK;
        }
        ctx.print(answer, () => renderImages(answer.images));
        return EXIT.OK;
      };
    },
  },

  stats: {
    synopsis: ['stats'],
    summary: 'hit ratio, bytes served from cache and upstream, egress saved, disk vs budget, rate limits',
    options: {},
    async prepare(_values, positionals) {
      noPositionals(positionals);
      return async (ctx) => {
        const answer = await ctx.client.stats();
        ctx.print(answer, () => renderStats(answer));
        return EXIT.OK;
      };
    },
  },

  pin: {
    synopsis: ['pin IMAGE [--platform OS/ARCH]... [--freeze]'],
    summary: 'fetch what is missing and keep the image (never evicted); --freeze also freezes its tag',
    flags: `  --platform OS/ARCH  pin only these platforms of an index (repeat, or comma-separate); default all
  --freeze            also freeze the tag to the digest it resolves to now
`,
    options: { platform: { type: 'string', multiple: true }, freeze: { type: 'boolean' } },
    async prepare(values, positionals) {
      const image = oneImage(positionals);
      const p = platforms(values);
      const body = { image, ...(p ? { platforms: p } : {}), freeze: flag(values, 'freeze') };
      return async (ctx) => {
        const answer = await ctx.client.pin(body);
        ctx.print(answer, () => {
          // `digests`: everything pinned, the manifests and the blobs they reference.
          const n = answer.pinned.digests?.length ?? 1;
          const frozen = answer.frozen ? `frozen tag ${answer.frozen.tag} at ${answer.frozen.digest}\n` : '';
          return `pinned ${answer.pinned.image ?? image} at ${answer.pinned.digest} (${n} manifests and blobs, ${formatBytes(answer.pinned.bytes)})\n${frozen}`;
        });
        return EXIT.OK;
      };
    },
  },

  unpin: {
    synopsis: ['unpin IMAGE [--keep-frozen]'],
    summary: 'remove the pins of IMAGE, and its tag freeze unless --keep-frozen',
    options: { 'keep-frozen': { type: 'boolean' } },
    async prepare(values, positionals) {
      const image = oneImage(positionals);
      const keepFrozen = flag(values, 'keep-frozen');
      return async (ctx) => {
        const answer = await ctx.client.unpin({ image, unfreeze: !keepFrozen });
        ctx.print(answer, () => {
          const tag = keepFrozen ? 'tag freeze kept' : answer.unfrozen ? 'tag unfrozen' : 'tag was not frozen';
          return `unpinned ${image} (${answer.unpinned} pin${answer.unpinned === 1 ? '' : 's'} removed; ${tag})\n`;
        });
        return EXIT.OK;
      };
    },
  },

  freeze: {
    synopsis: ['freeze IMAGE [--digest sha256:...]'],
    summary: "serve one digest for the tag whatever the upstream says; rollback: an earlier digest from 'history'",
    options: { digest: { type: 'string' } },
    async prepare(values, positionals) {
      const image = oneImage(positionals);
      const digest = str(values, 'digest');
      if (digest !== undefined && !/^sha256:[a-f0-9]{64}$/.test(digest)) throw new UsageError(`--digest: "${digest}" is not sha256:<64 hex>`);
      return async (ctx) => {
        const answer = await ctx.client.freeze({ image, ...(digest !== undefined ? { digest } : {}) });
        ctx.print(answer, () => {
          const f = answer.frozen;
          return `frozen ${f.registry}/${f.repository}:${f.tag} at ${f.digest}\n`;
        });
        return EXIT.OK;
      };
    },
  },

  unfreeze: {
    synopsis: ['unfreeze IMAGE'],
    summary: 'follow the upstream for the tag again',
    options: {},
    async prepare(_values, positionals) {
      const image = oneImage(positionals);
      return async (ctx) => {
        const answer = await ctx.client.unfreeze({ image });
        ctx.print(answer, () => `unfrozen ${image}\n`);
        return EXIT.OK;
      };
    },
  },

  prefetch: {
    synopsis: ['prefetch IMAGE... [--file FILE] [--platform OS/ARCH]... [--no-wait]', 'prefetch --job ID [--no-wait]'],
    summary: 'pull images into the cache as a job and follow it (progress on stderr); exit 1 if any image failed',
    flags: `  --file FILE         one reference a line, # starts a comment; - reads stdin
  --platform OS/ARCH  only these platforms of an index (repeat, or comma-separate)
  --no-wait           start the job, print its id and return
  --job ID            follow an existing job (with --no-wait: show it once)
  --timeout D         stop following after D (the job goes on in the server)
`,
    options: { platform: { type: 'string', multiple: true }, file: { type: 'string' }, 'no-wait': { type: 'boolean' }, job: { type: 'string' } },
    async prepare(values, positionals, io) {
      const jobId = str(values, 'job');
      const noWait = flag(values, 'no-wait');
      const file = str(values, 'file');
      let body: { images: string[]; platforms?: string[] } | undefined;
      if (jobId !== undefined) {
        if (positionals.length > 0 || file !== undefined || values.platform !== undefined) throw new UsageError('--job follows an existing job: no IMAGE, --file or --platform with it');
      } else {
        const images = [...positionals, ...(file !== undefined ? await readImageFile(file, io) : [])];
        if (images.length === 0) throw new UsageError(file !== undefined ? `--file ${file} lists no image` : 'missing IMAGE (or --file FILE)');
        const p = platforms(values);
        body = { images, ...(p ? { platforms: p } : {}) };
      }
      return async (ctx) => {
        const answer = body ? await ctx.client.startPrefetch(body) : await ctx.client.prefetchJob(jobId!);
        const job = answer.job;
        const failedExit = (j: PrefetchJob) => (j.state === 'failed' ? EXIT.FAILED : EXIT.OK);
        if (noWait) {
          ctx.print(answer, () =>
            job.state === 'running'
              ? `prefetch ${job.id} ${body ? 'started' : 'running'}: ${job.done + job.failed} of ${job.total} images finished\nfollow it with: ocirelay prefetch --job ${job.id}\n`
              : renderJob(job),
          );
          return failedExit(job);
        }
        const progress = createJobProgress(ctx.io.stderr, { tty: ctx.io.stderr.isTTY === true });
        let final: PrefetchJob;
        try {
          final = await waitForJob(ctx.client, job, { signal: ctx.signal, onUpdate: (j) => progress.update(j) });
        } catch (e) {
          progress.end();
          if (e instanceof AdminTimeoutError) throw new AdminTimeoutError(`prefetch ${job.id} still running after ${ctx.timeoutText} (--timeout); it goes on in the server: ocirelay prefetch --job ${job.id}`);
          if (e instanceof InterruptedError) ctx.io.stderr.write(`prefetch ${job.id} goes on in the server; follow it with: ocirelay prefetch --job ${job.id}\n`);
          throw e;
        }
        progress.end();
        ctx.print({ job: final }, () => renderJob(final));
        return failedExit(final);
      };
    },
  },

  purge: {
    synopsis: ['purge IMAGE | --repository REPO [--force]'],
    summary: 'remove from the cache, with every blob nothing else references; pinned content only with --force',
    options: { repository: { type: 'string' }, force: { type: 'boolean' } },
    async prepare(values, positionals) {
      const target = imageOrRepository(values, positionals);
      const force = flag(values, 'force');
      return async (ctx) => {
        const answer = await ctx.client.purge({ ...target, force });
        ctx.print(answer, () => {
          const what = 'image' in target ? target.image : target.repository;
          const kept = answer.removedManifests === 0 && !force ? ' (pinned content is kept without --force)' : '';
          return `purged ${what}: ${answer.removedManifests} manifests, ${answer.removedBlobs} blobs, ${formatBytes(answer.freedBytes)} freed${kept}\n`;
        });
        return EXIT.OK;
      };
    },
  },

  history: {
    synopsis: ['history IMAGE | --repository REPO'],
    summary: 'recorded changes of tag -> digest, oldest first (source: upstream, freeze, unfreeze, replication)',
    options: { repository: { type: 'string' } },
    async prepare(values, positionals) {
      const query = imageOrRepository(values, positionals);
      return async (ctx) => {
        const answer = await ctx.client.history(query);
        if (!ctx.json && answer.history.length === 0) {
          ctx.io.stderr.write('no recorded tag changes\n');
          return EXIT.OK;
        }
        ctx.print(answer, () => renderHistory(answer.history));
        return EXIT.OK;
      };
    },
  },

  ...REPLICATION_COMMANDS,
};

export function isAdminCommand(name: string): boolean {
  return Object.hasOwn(COMMANDS, name);
}

const GLOBAL_HELP = `admin flags (every admin command):
  --admin URL         the admin API, default ${DEFAULT_ADMIN_URL} (env OCIRELAY_ADMIN)
  --token T           bearer token (env OCIRELAY_ADMIN_TOKEN); prefer the env or --token-file,
                      other users can see flags in ps
  --token-file F      read the token from a file
  --json              print the API's JSON answer (pretty) on stdout instead of a table
  --timeout D         give up after D (500ms, 90s, 30m, 1h), default ${DEFAULT_TIMEOUT}

IMAGE is registry/repository:tag or registry/repository@sha256:...; without a configured
registry in front it means docker.io (alpine:3.19 = docker.io/library/alpine:3.19).
`;

/** The admin part of `ocirelay --help`. */
export function adminUsage(): string {
  const lines = Object.values(COMMANDS).flatMap((c) => c.synopsis.map((s, i) => ({ s, summary: i === 0 ? c.summary : '' })));
  const commands = lines.map(({ s, summary }) => `  ocirelay ${s}${summary ? `\n      ${summary}` : ''}\n`).join('');
  return `admin commands, over the admin API of a running ocirelay:\n${commands}\n${GLOBAL_HELP}\n${EXIT_CODES_HELP}  130 interrupted (Ctrl-C)\n`;
}

function commandUsage(name: string): string {
  const c = COMMANDS[name]!;
  const flags = c.flags ? `\n${c.flags}` : '';
  return `usage: ${c.synopsis.map((s) => `ocirelay ${s}`).join('\n       ')}\n  ${c.summary}\n${flags}\n${GLOBAL_HELP}\n${EXIT_CODES_HELP}`;
}

// ---- running one command ---------------------------------------------------------------------

/** Replaces the token wherever it would appear in text we print; it must never be shown. */
function redactor(token: string | undefined): (text: string) => string {
  return token ? (text) => text.split(token).join('***') : (text) => text;
}

async function resolveToken(values: Values, env: CliIo['env']): Promise<string | undefined> {
  const flagToken = str(values, 'token');
  const file = str(values, 'token-file');
  if (flagToken !== undefined && file !== undefined) throw new UsageError('give either --token or --token-file, not both');
  if (flagToken !== undefined) return flagToken;
  if (file !== undefined) {
    let text: string;
    try {
      text = await readFile(file, 'utf8');
    } catch (e) {
      throw new UsageError(`--token-file: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    const token = text.trim();
    if (token === '') throw new UsageError(`--token-file: ${file} is empty`);
    return token;
  }
  return env.OCIRELAY_ADMIN_TOKEN?.trim() || undefined;
}

export async function runAdminCommand(name: string, argv: string[], io: CliIo): Promise<number> {
  const command = COMMANDS[name];
  if (!command) {
    io.stderr.write(`ocirelay: unknown command "${name}"\n`);
    return EXIT.USAGE;
  }
  let redact = redactor(undefined);
  const fail = (code: number, message: string): number => {
    io.stderr.write(redact(message.endsWith('\n') ? message : `${message}\n`));
    return code;
  };

  let run: (ctx: Context) => Promise<number>;
  let values: Values;
  let token: string | undefined;
  let baseUrl: URL;
  let timeoutMs: number;
  let timeoutText: string;
  try {
    let positionals: string[];
    try {
      ({ values, positionals } = parseArgs({ args: argv, options: { ...GLOBAL_OPTIONS, ...command.options }, allowPositionals: true, strict: true }));
    } catch (e) {
      // Node's text goes on about positionals starting with '-'; the first sentence is the point.
      throw new UsageError((e as Error).message.replace(/\. To specify a positional.*$/s, ''));
    }
    // Whatever went wrong, a token typed on this command line is not echoed back.
    redact = redactor(typeof values.token === 'string' && values.token !== '' ? values.token : undefined);
    if (flag(values, 'help')) {
      io.stdout.write(commandUsage(name));
      return EXIT.OK;
    }
    token = await resolveToken(values, io.env);
    redact = redactor(token);
    try {
      const flagUrl = str(values, 'admin');
      const envUrl = io.env.OCIRELAY_ADMIN?.trim();
      baseUrl = flagUrl !== undefined ? parseAdminUrl(flagUrl) : envUrl ? parseAdminUrl(envUrl, 'OCIRELAY_ADMIN') : new URL(DEFAULT_ADMIN_URL);
    } catch (e) {
      throw new UsageError((e as Error).message);
    }
    timeoutText = str(values, 'timeout') ?? DEFAULT_TIMEOUT;
    const parsed = parseDuration(timeoutText);
    if (parsed === undefined) throw new UsageError(`--timeout: "${timeoutText}" is not a duration like 90s, 30m or 1h`);
    timeoutMs = parsed;
    run = await command.prepare(values, positionals, io);
  } catch (e) {
    if (e instanceof UsageError) return fail(EXIT.USAGE, `ocirelay ${name}: ${e.message}\n${commandUsage(name).split('\n\n')[0]}\n(ocirelay ${name} --help for the flags)`);
    throw e;
  }

  // One signal bounds the whole command: its deadline and Ctrl-C.
  const controller = new AbortController();
  // Not unref'd: cleared in `finally`, and it must fire even if nothing else holds the loop open.
  const timer = setTimeout(() => controller.abort(new AdminTimeoutError(`no answer within ${timeoutText} (--timeout)`)), timeoutMs);
  const onInterrupt = () => controller.abort(new InterruptedError());
  if (io.interrupt?.aborted) onInterrupt();
  io.interrupt?.addEventListener('abort', onInterrupt, { once: true });

  const json = flag(values, 'json');
  const ctx: Context = {
    client: new AdminClient({ baseUrl, ...(token !== undefined ? { token } : {}), signal: controller.signal }),
    io,
    json,
    signal: controller.signal,
    timeoutText,
    print: (answer, human) => io.stdout.write(redact(json ? `${JSON.stringify(answer, null, 2)}\n` : human())),
  };
  try {
    return await run(ctx);
  } catch (e) {
    if (e instanceof AdminApiError) {
      const hint =
        e.status === 401
          ? token === undefined
            ? '\n(the admin API wants a token: --token-file FILE or env OCIRELAY_ADMIN_TOKEN)'
            : '\n(the token was refused)'
          : '';
      return fail(exitCodeForStatus(e.status), `${e.errors.map((err) => `ocirelay ${name}: ${err.code}: ${err.message}`).join('\n')}${hint}`);
    }
    if (e instanceof AdminUnreachableError) return fail(EXIT.UNREACHABLE, `ocirelay ${name}: ${e.message}\n(is ocirelay running with its admin listener there? set --admin URL or env OCIRELAY_ADMIN)`);
    if (e instanceof AdminTimeoutError || e instanceof AdminProtocolError) return fail(EXIT.FAILED, `ocirelay ${name}: ${e.message}`);
    if (e instanceof InterruptedError) return fail(EXIT_INTERRUPTED, `ocirelay ${name}: interrupted`);
    return fail(EXIT.FAILED, `ocirelay ${name}: ${(e as Error).message ?? String(e)}`);
  } finally {
    clearTimeout(timer);
    io.interrupt?.removeEventListener('abort', onInterrupt);
  }
}
