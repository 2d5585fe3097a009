/**
 * The timers of one open link, in one loop on the injected clock: expire a
 * partial frame left idle, poll the link status, and react to silence (first
 * a nudge, then, at twice the silence timeout, give the link up).
 */
import type { Clock } from '../types.js';
import type { FrameDecoder } from './codec.js';
import type { Link } from './link.js';

export interface WatchdogTimes {
  partialFrameMs: number;
  statusPollMs: number;
  silenceMs: number;
}

export interface WatchdogActions {
  /** Time to poll LINK_STATUS. */
  poll(): void;
  /** No frame for silenceMs. */
  silent(idleMs: number): void;
  /** Still nothing at twice silenceMs: the link is given up (closed) after this. */
  dead(idleMs: number): void;
}

export async function watchLink(link: Link, decoder: FrameDecoder, clock: Clock, t: WatchdogTimes, act: WatchdogActions): Promise<void> {
  const tick = Math.max(5, Math.min(t.partialFrameMs, t.statusPollMs, t.silenceMs) / 2);
  let lastPoll = clock.now();
  let nudged = false;
  while (!link.closed) {
    try {
      await clock.sleep(tick, link.signal);
    } catch {
      return;
    }
    if (link.closed) return;
    const now = clock.now();
    const idle = now - link.lastRxAt;
    while (decoder.buffered > 0 && idle >= t.partialFrameMs && decoder.flushPartial());
    if (now - lastPoll >= t.statusPollMs) {
      lastPoll = now;
      act.poll();
    }
    if (idle < t.silenceMs) nudged = false;
    else if (!nudged) {
      nudged = true;
      act.silent(idle);
    } else if (idle >= 2 * t.silenceMs) {
      act.dead(idle);
      await link.close();
      return;
    }
  }
}
