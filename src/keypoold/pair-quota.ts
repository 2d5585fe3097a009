/**
 * An optional quota per (master, slaves) SAE pair, so one SAE cannot drain a
 * link: a token bucket of `keys` keys refilled evenly over `per_seconds`.
 * Keys are taken before a request is served and given back if it fails, so
 * a refused or failed request costs nothing.
 */
import { unavailable } from '../common/errors.js';
import type { Clock } from '../../drivers/types.js';

export interface PairQuotaConfig {
  keys: number;
  per_seconds: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/** Buckets idle this long are full again and are forgotten. */
const FORGET_AFTER_FULL = 2;

export class PairQuota {
  readonly #cfg: PairQuotaConfig;
  readonly #clock: Clock;
  readonly #buckets = new Map<string, Bucket>();
  readonly #ratePerMs: number;

  constructor(cfg: PairQuotaConfig, clock: Clock) {
    this.#cfg = cfg;
    this.#clock = clock;
    this.#ratePerMs = cfg.keys / (cfg.per_seconds * 1000);
  }

  static pairKey(master: string, slaves: string[]): string {
    return JSON.stringify([master, [...slaves].sort()]);
  }

  #bucket(pair: string): Bucket {
    const now = this.#clock.now();
    let b = this.#buckets.get(pair);
    if (!b) {
      b = { tokens: this.#cfg.keys, at: now };
      this.#buckets.set(pair, b);
      if (this.#buckets.size > 4096) this.#forgetFull(now);
    } else {
      b.tokens = Math.min(this.#cfg.keys, b.tokens + (now - b.at) * this.#ratePerMs);
      b.at = now;
    }
    return b;
  }

  /** Take `n` keys from the pair's quota, or refuse (503) saying when to try again. */
  take(master: string, slaves: string[], n: number): void {
    const b = this.#bucket(PairQuota.pairKey(master, slaves));
    if (b.tokens >= n) {
      b.tokens -= n;
      return;
    }
    if (n > this.#cfg.keys) {
      throw unavailable(`the quota of SAE ${master} towards ${slaves.join(', ')} is ${this.#cfg.keys} keys per ${this.#cfg.per_seconds} s; ask for fewer keys at a time`);
    }
    const waitS = Math.ceil((n - b.tokens) / this.#ratePerMs / 1000);
    throw unavailable(
      `the quota of SAE ${master} towards ${slaves.join(', ')} (${this.#cfg.keys} keys per ${this.#cfg.per_seconds} s) is used up; try again in ${waitS} s`,
    );
  }

  /** Give back keys a failed request did not use. */
  giveBack(master: string, slaves: string[], n: number): void {
    const b = this.#bucket(PairQuota.pairKey(master, slaves));
    b.tokens = Math.min(this.#cfg.keys, b.tokens + n);
  }

  #forgetFull(now: number): void {
    const fullAfterMs = (FORGET_AFTER_FULL * this.#cfg.keys) / this.#ratePerMs;
    for (const [k, b] of this.#buckets) if (now - b.at > fullAfterMs) this.#buckets.delete(k);
  }
}
