// How an upstream request's failure is named (kind and message) and weighed (circuit breaker).
import type { Readable } from 'node:stream';
import { TargetRefusedError } from './address-policy.ts';
import type { Outcome } from './circuit-breaker.ts';
import { SlowBodyError } from './metered-body.ts';
import { UpstreamError, type UpstreamErrorKind } from './upstream-error.ts';

/**
 * undici notices a request's signal only once the request has a connection: one queued for a
 * busy pool would wait regardless. This settles on abort at once; a response that still
 * arrives later is dropped (and a queued request is cancelled by undici when it is dispatched).
 */
export function untilAborted<T extends { body: Readable }>(p: Promise<T>, signal: AbortSignal): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    let settled = false;
    const onAbort = (): void => {
      if (settled) return;
      settled = true;
      reject(signal.reason);
    };
    p.then(
      (res) => {
        signal.removeEventListener('abort', onAbort);
        if (settled) res.body.destroy();
        else {
          settled = true;
          resolve(res);
        }
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        if (!settled) {
          settled = true;
          reject(err);
        }
      },
    );
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
  });
}

/** No response headers within the deadline (queueing for a connection included). */
export class HeadersDeadlineError extends Error {
  readonly code = 'OCIRELAY_HEADERS_DEADLINE';
  constructor(ms: number) {
    super(`no response headers within ${ms} ms (waiting for a connection, connecting, or for the headers)`);
    this.name = 'HeadersDeadlineError';
  }
}

const TIMEOUT_CODES = new Set(['UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_CONNECT_TIMEOUT', 'OCIRELAY_HEADERS_DEADLINE', 'OCIRELAY_SLOW_BODY']);

function errorCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

export function classify(err: unknown, signal: AbortSignal | undefined): UpstreamErrorKind {
  if (signal?.aborted) return 'aborted';
  if (err instanceof TargetRefusedError) return 'target_refused';
  const code = errorCode(err);
  if (code !== undefined && TIMEOUT_CODES.has(code)) return 'timeout';
  if ((err as Error | null)?.name === 'AbortError' || code === 'UND_ERR_ABORTED') return 'aborted';
  return 'unreachable';
}

export function causeText(err: unknown, kind: UpstreamErrorKind): string {
  const code = errorCode(err);
  if (err instanceof HeadersDeadlineError || err instanceof SlowBodyError || err instanceof TargetRefusedError) return err.message;
  if (kind === 'aborted') return 'aborted';
  // Socket, TLS and parser messages name the address, the syscall or the framing, never request headers.
  return typeof code === 'string' ? `${code} (${(err as Error).message})` : (err as Error | null)?.message ?? String(err);
}

/** How a request()'s error reflects on the upstream's health. */
export function outcomeOf(err: unknown): Outcome {
  if (!(err instanceof UpstreamError)) return 'neutral';
  switch (err.kind) {
    case 'unreachable':
    case 'timeout':
      return 'failure';
    case 'auth_failed':
      // The token service being down is an outage; it refusing credentials is not.
      return err.status === undefined || err.status >= 500 ? 'failure' : 'success';
    case 'too_many_redirects':
    case 'bad_redirect':
    case 'target_refused':
      return 'success';
    default:
      return 'neutral';
  }
}
