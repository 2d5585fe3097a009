import type { Clock } from '../../../../drivers/types.js';

/**
 * A clock that runs `speed` times faster than real time: timeouts keep their
 * production values while tests run fast. Records every sleep requested, in
 * virtual milliseconds.
 */
export function fastClock(speed: number): Clock & { sleeps: number[] } {
  const t0 = Date.now();
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => t0 + (Date.now() - t0) * speed,
    sleep: (ms, signal) => {
      sleeps.push(ms);
      return new Promise<void>((resolve, reject) => {
        if (signal?.aborted) return reject(signal.reason);
        const onAbort = () => {
          clearTimeout(timer);
          reject(signal!.reason);
        };
        const timer = setTimeout(() => {
          signal?.removeEventListener('abort', onAbort);
          resolve();
        }, ms / speed);
        signal?.addEventListener('abort', onAbort, { once: true });
      });
    },
  };
}

/** Polls `cond` every few ms until true, or fails after `ms` of real time. */
export async function until(cond: () => boolean, ms = 3000, what = 'condition'): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}
