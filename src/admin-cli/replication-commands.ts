// `ocirelay replication` (each replicating peer: pending jobs, lag, last success and error,
// DR readiness) and `ocirelay replicate --peer NAME (--all | REF...)` (backfill what was cached
// before the peer was added, with a progress line until the peer's outbox is empty).
import type { PeerStatus, ReplicationStatus } from './admin-client.ts';
import type { Command } from './commands.ts';
import { EXIT, UsageError } from './exit-codes.ts';
import { formatAge, formatPercent } from './human.ts';
import { renderTable } from './table.ts';

export function renderReplication(s: ReplicationStatus, now = Date.now()): string {
  const head = `region ${s.region ?? '?'}\n`;
  if (s.peers.length === 0) return `${head}no replicating peers\n`;
  const rows = s.peers.map((p: PeerStatus) => [
    p.name,
    p.kind,
    String(p.pending),
    `${p.lagSeconds}s`,
    p.lastSuccess ? formatAge(p.lastSuccess, now) : '-',
    formatPercent(p.readiness.images),
    formatPercent(p.readiness.bytes),
    p.backingOff ? `backing off: ${p.lastError?.message ?? ''}` : p.lastError ? `${formatAge(p.lastError.at, now)}: ${p.lastError.message}` : '-',
  ]);
  return (
    head +
    renderTable(
      [
        { header: 'PEER' },
        { header: 'KIND' },
        { header: 'PENDING', align: 'right' },
        { header: 'LAG', align: 'right' },
        { header: 'LAST SUCCESS' },
        { header: 'READY IMAGES', align: 'right' },
        { header: 'READY BYTES', align: 'right' },
        { header: 'LAST ERROR' },
      ],
      rows,
    )
  );
}

export const REPLICATION_COMMANDS: Record<string, Command> = {
  replication: {
    synopsis: ['replication'],
    summary: 'replicating peers: pending jobs, lag, last success and error, DR readiness',
    options: {},
    async prepare(_values, positionals) {
      if (positionals.length > 0) throw new UsageError(`unexpected argument "${positionals[0]}"`);
      return async (ctx) => {
        const answer = await ctx.client.replication();
        ctx.print(answer, () => renderReplication(answer));
        return EXIT.OK;
      };
    },
  },

  replicate: {
    synopsis: ['replicate --peer NAME (--all | IMAGE...)'],
    summary: 'send cached images to a peer (what was cached before it was added), then wait until its outbox is empty',
    flags: `  --peer NAME   a replicating peer (config peers:)
  --all         every cached image
  --no-wait     queue the jobs and return
`,
    options: { peer: { type: 'string' }, all: { type: 'boolean' }, 'no-wait': { type: 'boolean' } },
    async prepare(values, positionals) {
      const peer = typeof values.peer === 'string' ? values.peer.trim() : '';
      if (peer === '') throw new UsageError('missing --peer NAME');
      const all = values.all === true;
      if (all && positionals.length > 0) throw new UsageError('give either --all or IMAGE..., not both');
      if (!all && positionals.length === 0) throw new UsageError('missing --all or IMAGE...');
      const body = all ? { peer, all: true as const } : { peer, images: positionals };
      const wait = values['no-wait'] !== true;
      return async (ctx) => {
        const answer = await ctx.client.replicate(body);
        if (!wait || ctx.json) {
          ctx.print(answer, () => `queued ${answer.queued} jobs for ${answer.images} images to ${peer} (${answer.duplicate} already pending${answer.full ? `, ${answer.full} dropped: outbox full` : ''})\n`);
          return answer.full > 0 ? EXIT.FAILED : EXIT.OK;
        }
        const tty = ctx.io.stderr.isTTY === true;
        let lastLine = 0;
        const total = Math.max(1, answer.queued + answer.duplicate);
        // Bounded by the command's --timeout (ctx.signal).
        for (;;) {
          const s = await ctx.client.replication();
          const p = s.peers.find((x) => x.name === peer);
          const pending = p?.pending ?? 0;
          const done = Math.max(0, Math.min(total, total - pending));
          const width = 30;
          const filled = Math.round((done / total) * width);
          const line = `${peer}: [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${pending} jobs pending${p?.backingOff ? ' (peer unavailable: backing off)' : ''}`;
          if (tty) ctx.io.stderr.write(`\r${line}\x1b[K`);
          else if (Date.now() - lastLine > 5000 || pending === 0) {
            ctx.io.stderr.write(`${line}\n`);
            lastLine = Date.now();
          }
          if (pending === 0) break;
          await new Promise<void>((resolve, reject) => {
            const t = setTimeout(resolve, 500);
            ctx.signal.addEventListener('abort', () => (clearTimeout(t), reject(ctx.signal.reason as Error)), { once: true });
          });
        }
        if (tty) ctx.io.stderr.write('\n');
        ctx.io.stdout.write(`replicated ${answer.images} images to ${peer}\n`);
        return answer.full > 0 ? EXIT.FAILED : EXIT.OK;
      };
    },
  },
};
