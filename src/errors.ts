// One table maps every OCI error code to its HTTP status; every error a client sees
// is a RegistryError rendered by the one error handler in http/error-handler.ts.

export const OCI_ERROR_STATUS = {
  BLOB_UNKNOWN: 404,
  BLOB_UPLOAD_UNKNOWN: 404,
  MANIFEST_UNKNOWN: 404,
  MANIFEST_INVALID: 400,
  MANIFEST_BLOB_UNKNOWN: 404,
  NAME_INVALID: 400,
  NAME_UNKNOWN: 404,
  DIGEST_INVALID: 400,
  SIZE_INVALID: 400,
  TAG_INVALID: 400,
  RANGE_INVALID: 416,
  UNAUTHORIZED: 401,
  DENIED: 403,
  UNSUPPORTED: 405,
  TOOMANYREQUESTS: 429,
  UNAVAILABLE: 503,
  UNKNOWN: 500,
  // Admin API only
  NOT_FOUND: 404,
  BAD_REQUEST: 400,
} as const;

export type OciErrorCode = keyof typeof OCI_ERROR_STATUS;

export class RegistryError extends Error {
  readonly code: OciErrorCode;
  readonly status: number;
  readonly detail: unknown;
  readonly headers: Record<string, string>;

  constructor(
    code: OciErrorCode,
    message: string,
    opts: { detail?: unknown; status?: number; headers?: Record<string, string> } = {},
  ) {
    super(message);
    this.name = 'RegistryError';
    this.code = code;
    this.status = opts.status ?? OCI_ERROR_STATUS[code];
    this.detail = opts.detail;
    this.headers = opts.headers ?? {};
  }

  toBody(): { errors: Array<{ code: string; message: string; detail?: unknown }> } {
    const e: { code: string; message: string; detail?: unknown } = { code: this.code, message: this.message };
    if (this.detail !== undefined) e.detail = this.detail;
    return { errors: [e] };
  }
}

export function isRegistryError(e: unknown): e is RegistryError {
  return e instanceof RegistryError;
}
