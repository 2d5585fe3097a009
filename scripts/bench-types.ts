/**
 * What scripts/bench.ts (the orchestrator) and scripts/bench-load.ts (the load
 * generator, run as its own process) exchange: a job file named on the load
 * generator's command line, and one JSON result line on its stdout.
 */

export type LoadMode = 'enc' | 'dec' | 'status';

export interface LoadJob {
  /** Shown in messages. */
  label: string;
  host: string;
  port: number;
  /** Absolute paths of the client certificate, its key and the CA that signed the server. */
  cert: string;
  key: string;
  ca: string;
  clients: number;
  warmupMs: number;
  durationMs: number;
  /**
   * enc: GET `path` (fixed) and, when `collectKeys`, keep every returned
   * key_ID with its key (each must decode to `keyBytes` bytes).
   * dec: GET `path` + encodeURIComponent(key_ID) for the key_IDs in `keys`
   * (each taken exactly once), or for fresh random UUIDs when `keys` is absent
   * (the bare baseline); with `keys`, every answer must carry the same key.
   */
  mode: LoadMode;
  path: string;
  collectKeys?: boolean;
  keyBytes?: number;
  /** dec only: [key_ID, base64 key] pairs from the enc phase. */
  keys?: Array<[string, string]>;
  /** Stop after this many requests in all (enc against a finite key pool). */
  maxRequests?: number;
}

export interface LatencySummary {
  p50: number;
  p90: number;
  p99: number;
  max: number;
  mean: number;
}

export interface LoadResult {
  label: string;
  ok: boolean;
  /** Requests completed inside the measured window (after warm-up), any status. */
  requests: number;
  warmupRequests: number;
  /** Length of the measured window in seconds (shorter if the work ran out). */
  seconds: number;
  /** requests / seconds over the measured window, 200s only. */
  rps: number;
  /** Latency in ms of the measured 200 responses. */
  latencyMs: LatencySummary | null;
  /** Non-200 answers and transport failures (warm-up included). */
  errors: number;
  errorSamples: string[];
  /** Bad bodies (not one key, wrong length, not a UUID, key differs from enc). */
  mismatches: number;
  mismatchSamples: string[];
  /** TLS connections opened (should equal `clients` with keep-alive). */
  connections: number;
  /** Why the run ended before the duration, if it did. */
  stoppedEarly?: string;
  /** dec: key_IDs never asked for (the duration ended first). */
  unusedKeys?: number;
  /** enc with collectKeys: every key_ID obtained (warm-up included) with its key. */
  keys?: Array<[string, string]>;
  /** CPU seconds the load generator itself used (user + system). */
  cpuSeconds: number;
}
