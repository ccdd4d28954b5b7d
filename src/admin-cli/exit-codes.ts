// The exit codes of the admin commands: a contract with scripts, listed in the usage text.
// Every failure of a command ends up here, as one of these numbers and a message on stderr.

export const EXIT = {
  OK: 0,
  /** The operation failed: a server error, a failed prefetch job, a timeout. */
  FAILED: 1,
  /** Usage: unknown command or flag, missing or invalid argument (also a 400 from the API). */
  USAGE: 2,
  NOT_FOUND: 3,
  /** 401 or 403 from the admin API. */
  DENIED: 4,
  UNREACHABLE: 5,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export const EXIT_CODES_HELP = `exit codes:
  0  ok
  1  the operation failed (server error, prefetch job failed, timeout)
  2  usage error (unknown command or flag, missing or invalid argument)
  3  not found (404)
  4  unauthorized or denied (401/403)
  5  admin API unreachable
`;

/** A command line the CLI refuses before talking to the server. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}

/** The exit code for an HTTP status the admin API answered with an error. */
export function exitCodeForStatus(status: number): ExitCode {
  if (status === 401 || status === 403) return EXIT.DENIED;
  if (status === 404) return EXIT.NOT_FOUND;
  // The API refused what we sent (a malformed reference, digest or platform): the user's input.
  if (status === 400) return EXIT.USAGE;
  return EXIT.FAILED;
}
