// Per-upstream circuit breaker (the Verdaccio max_fails / fail_timeout idea).
//
// closed: requests pass; `maxFails` consecutive failures open it.
// open: requests are refused without touching the upstream, for `resetMs`.
// half-open: once `resetMs` has passed, exactly one trial request passes; its success
// closes the circuit, its failure opens it for another `resetMs`. Others are refused
// while the trial is in flight.

export type CircuitState = 'closed' | 'open' | 'half-open';
export type Outcome = 'success' | 'failure' | 'neutral';

export interface CircuitTicket {
  /** Report how the request went; only the first call counts. */
  settle(outcome: Outcome): void;
}

export interface CircuitBreakerOptions {
  maxFails: number;
  resetMs: number;
  onChange?: (state: 'open' | 'closed', info: { fails: number; resetMs: number }) => void;
  now?: () => number;
}

export class CircuitBreaker {
  readonly #maxFails: number;
  readonly #resetMs: number;
  readonly #onChange: CircuitBreakerOptions['onChange'];
  readonly #now: () => number;
  #fails = 0;
  #openedAt: number | undefined;
  #trialInFlight = false;

  constructor(opts: CircuitBreakerOptions) {
    this.#maxFails = Math.max(1, opts.maxFails);
    this.#resetMs = opts.resetMs;
    this.#onChange = opts.onChange;
    this.#now = opts.now ?? Date.now;
  }

  state(): CircuitState {
    if (this.#openedAt === undefined) return 'closed';
    return this.#now() - this.#openedAt >= this.#resetMs ? 'half-open' : 'open';
  }

  /** Milliseconds until a trial may pass (0 when closed or half-open). */
  retryAfterMs(): number {
    if (this.#openedAt === undefined) return 0;
    return Math.max(0, this.#openedAt + this.#resetMs - this.#now());
  }

  /** A ticket for one request, or undefined when the circuit refuses it. */
  enter(): CircuitTicket | undefined {
    const state = this.state();
    if (state === 'open') return undefined;
    if (state === 'half-open') {
      if (this.#trialInFlight) return undefined;
      this.#trialInFlight = true;
      return this.#ticket(true);
    }
    return this.#ticket(false);
  }

  #ticket(trial: boolean): CircuitTicket {
    let settled = false;
    return {
      settle: (outcome) => {
        if (settled) return;
        settled = true;
        if (trial) this.#trialInFlight = false;
        this.#record(outcome, trial);
      },
    };
  }

  #record(outcome: Outcome, trial: boolean): void {
    if (outcome === 'neutral') return;
    if (this.#openedAt !== undefined) {
      // Requests that began before the circuit opened say nothing about the upstream now;
      // only the trial decides.
      if (!trial) return;
      if (outcome === 'success') {
        this.#fails = 0;
        this.#openedAt = undefined;
        this.#onChange?.('closed', { fails: 0, resetMs: this.#resetMs });
      } else {
        this.#openedAt = this.#now();
        this.#onChange?.('open', { fails: this.#fails, resetMs: this.#resetMs });
      }
      return;
    }
    if (outcome === 'success') {
      this.#fails = 0;
      return;
    }
    this.#fails++;
    if (this.#fails >= this.#maxFails) {
      this.#openedAt = this.#now();
      this.#onChange?.('open', { fails: this.#fails, resetMs: this.#resetMs });
    }
  }
}
