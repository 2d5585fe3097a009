/** Reconnect delays: capped exponential backoff with jitter. Pure. */

export interface BackoffOptions {
  /** First delay (default 250 ms). */
  initialMs: number;
  /** Cap (default 30 s). */
  maxMs: number;
  /** Fraction of the delay added or removed at random, in [0, 1] (default 0.2). */
  jitter: number;
  /** Consecutive failed attempts before giving up (default 8). */
  maxAttempts: number;
}

export const DEFAULT_BACKOFF: BackoffOptions = { initialMs: 250, maxMs: 30_000, jitter: 0.2, maxAttempts: 8 };

/** Delay before attempt `attempt` (0-based); `r` is uniform in [0, 1). */
export function backoffDelay(attempt: number, o: BackoffOptions, r: number): number {
  const base = Math.min(o.maxMs, o.initialMs * 2 ** Math.min(attempt, 30));
  const d = base * (1 + o.jitter * (2 * r - 1));
  return Math.max(0, Math.min(o.maxMs, Math.round(d)));
}
