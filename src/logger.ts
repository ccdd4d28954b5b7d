import pino, { type Logger } from 'pino';

export type { Logger };

/** JSON logs on stdout. Credentials are redacted wherever they might appear. */
export function createLogger(opts: { level?: string; destination?: pino.DestinationStream } = {}): Logger {
  return pino(
    {
      level: opts.level ?? 'info',
      base: { svc: 'ocirelay' },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: {
        paths: ['password', '*.password', 'authorization', '*.authorization', 'headers.authorization', 'token', '*.token'],
        censor: '[redacted]',
      },
    },
    opts.destination ?? pino.destination({ fd: 1, sync: false }),
  );
}
