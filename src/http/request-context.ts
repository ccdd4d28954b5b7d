import type { CacheResult } from '../metrics.ts';

/** What a handler learned about a request, for its one access-log line and the metrics. */
export interface RequestInfo {
  id: string;
  kind: string;
  cache?: CacheResult;
  registry?: string;
  repository?: string;
  source?: string;
  bytes: number;
  /** Set when the response body failed after the headers were sent. */
  aborted?: string;
}

export type AppEnv = {
  Variables: { info: RequestInfo };
};
