// The one error type the upstream client throws. HTTP statuses are never errors here
// (they come back as responses); an UpstreamError means no usable response arrived.

export type UpstreamErrorKind =
  | 'unreachable'
  | 'timeout'
  | 'circuit_open'
  | 'too_many_redirects'
  | 'bad_redirect'
  /** A redirect or token realm pointed somewhere the policy forbids (address-policy.ts). */
  | 'target_refused'
  | 'auth_failed'
  | 'aborted';

export class UpstreamError extends Error {
  readonly kind: UpstreamErrorKind;
  readonly registry: string;
  /** For 'auth_failed': the token endpoint's HTTP status, when it answered at all. */
  readonly status: number | undefined;
  /** For 'circuit_open': how long until the breaker lets a trial request through. */
  readonly retryAfterMs: number | undefined;

  constructor(
    kind: UpstreamErrorKind,
    registry: string,
    message: string,
    opts: { cause?: unknown; status?: number; retryAfterMs?: number } = {},
  ) {
    // Messages are built by this module only, from registry names, origins and paths:
    // never from credentials, tokens or signed query strings.
    super(message, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'UpstreamError';
    this.kind = kind;
    this.registry = registry;
    this.status = opts.status;
    this.retryAfterMs = opts.retryAfterMs;
  }
}

export function isUpstreamError(e: unknown): e is UpstreamError {
  return e instanceof UpstreamError;
}
