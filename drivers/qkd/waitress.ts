/**
 * Waits for a message matching a predicate, with a timeout on the injected
 * clock (the herdsman waitress). The caller's stack is captured at wait()
 * so a timeout says who was waiting.
 */
import type { Clock } from '../types.js';
import { DriverError } from './errors.js';

interface Waiter<T> {
  match: (m: T) => boolean;
  resolve: (m: T) => void;
  reject: (e: Error) => void;
}

export class Waitress<T> {
  readonly #waiters = new Set<Waiter<T>>();

  constructor(readonly clock: Clock) {}

  wait(match: (m: T) => boolean, timeoutMs: number, what: string): Promise<T> {
    const stack = new Error().stack;
    const timer = new AbortController();
    return new Promise<T>((resolve, reject) => {
      const w: Waiter<T> = {
        match,
        resolve: (m) => {
          this.#waiters.delete(w);
          timer.abort();
          resolve(m);
        },
        reject: (e) => {
          this.#waiters.delete(w);
          timer.abort();
          reject(e);
        },
      };
      this.#waiters.add(w);
      this.clock.sleep(timeoutMs, timer.signal).then(
        () => {
          const e = new DriverError('QKD_TIMEOUT', `${what}: no answer within ${timeoutMs} ms`);
          e.stack = `${e.name}: ${e.message}\n${stack?.split('\n').slice(1).join('\n') ?? ''}`;
          w.reject(e);
        },
        () => {}, // cancelled
      );
    });
  }

  /** Hands `m` to the first waiter it matches; returns whether one took it. */
  dispatch(m: T): boolean {
    for (const w of this.#waiters) {
      if (w.match(m)) {
        w.resolve(m);
        return true;
      }
    }
    return false;
  }

  rejectAll(e: Error): void {
    for (const w of [...this.#waiters]) w.reject(e);
  }
}
