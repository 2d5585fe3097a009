/**
 * The reconnect loop: capped exponential backoff with jitter, one loop and so
 * at most one pending timer, however many times it is asked to start.
 */
import type { Logger } from '../../src/common/logger.js';
import type { Clock } from '../types.js';
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { DriverError } from './errors.js';

export interface ReconnectorDeps {
  clock: Clock;
  backoff: BackoffOptions;
  random: () => number;
  log: Logger;
  /** One attempt: resolves when connected, rejects otherwise. */
  attempt(): Promise<void>;
  /** Aborted when the driver closes. */
  signal(): AbortSignal;
  /** A failed attempt; return true to stop trying (a final error). */
  failed(err: unknown): boolean;
  /** Too many attempts. */
  giveUp(err: DriverError): void;
  /** Runs when the loop ends, whatever the outcome. */
  settled(): void;
  counters: { reconnects: number; reconnectFailures: number };
}

export class Reconnector {
  #running = false;

  constructor(readonly d: ReconnectorDeps) {}

  get running(): boolean {
    return this.#running;
  }

  /** Starts the loop unless it runs already. */
  async run(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    const d = this.d;
    let lastErr: unknown;
    try {
      for (let attempt = 0; ; attempt++) {
        if (attempt >= d.backoff.maxAttempts) {
          return d.giveUp(new DriverError('QKD_FAILED', `gave up after ${attempt} reconnect attempts`, false, { cause: lastErr }));
        }
        const delay = backoffDelay(attempt, d.backoff, d.random());
        d.log.info({ attempt: attempt + 1, delay_ms: delay }, 'qkd module reconnect scheduled');
        try {
          await d.clock.sleep(delay, d.signal());
        } catch {
          return; // closed
        }
        d.counters.reconnects++;
        try {
          await d.attempt();
          return;
        } catch (e) {
          if (d.signal().aborted) return;
          lastErr = e;
          d.counters.reconnectFailures++;
          d.log.warn({ attempt: attempt + 1, err: (e as Error).message }, 'qkd module reconnect failed');
          if (d.failed(e)) return;
        }
      }
    } finally {
      this.#running = false;
      d.settled();
    }
  }
}
