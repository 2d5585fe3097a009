/**
 * A simulated QKD module. Both ends of a simulated link share a seed; block
 * `n` is the AES-256-CTR keystream of that seed at counter n, so both modules
 * emit identical material under identical ids without talking to each other.
 * Block n becomes available at `epochMs + (n + 1) * blockPeriod`, which gives
 * the configured secret key rate. Not a source of secrecy: a simulator.
 */
import type { Clock, DriverState, KeyBlock, QkdModuleDriver, QkdModuleInfo } from '../types.js';
import { blockMaterial } from './material.js';

export interface SimModuleOptions {
  linkId: string;
  moduleId: string;
  /** 32-byte shared seed. */
  seed: Buffer;
  rateBps: number;
  blockBits: number;
  epochMs: number;
  clock: Clock;
  /** Most blocks handed over in one batch. */
  maxBatch?: number;
  /** Hand blocks over at most this often (the module buffers in between), unless a batch fills up. */
  batchIntervalMs?: number;
}

export class SimQkdModule implements QkdModuleDriver {
  #state: DriverState = 'closed';
  readonly #opts: Required<SimModuleOptions>;
  readonly #periodMs: number;
  #closer = new AbortController();

  constructor(opts: SimModuleOptions) {
    if (opts.seed.length !== 32) throw new Error('simulated link seed must be 32 bytes');
    if (opts.blockBits % 8 !== 0) throw new Error('block_bits must be a multiple of 8');
    this.#opts = { maxBatch: 64, batchIntervalMs: 100, ...opts, seed: Buffer.from(opts.seed) };
    this.#periodMs = (opts.blockBits / opts.rateBps) * 1000;
  }

  get state(): DriverState {
    return this.#state;
  }

  async open(): Promise<QkdModuleInfo> {
    this.#state = 'ready';
    this.#closer = new AbortController();
    return { moduleId: this.#opts.moduleId, linkId: this.#opts.linkId, firmware: 'sim-1' };
  }

  async close(): Promise<void> {
    this.#state = 'closed';
    this.#closer.abort(new Error('module closed'));
  }

  async linkStatus() {
    return { up: this.#state === 'ready', qber: 0.02, keyRateBps: this.#opts.rateBps };
  }

  /** Highest block id produced by now (-1 before the first). */
  producedUpTo(now = this.#opts.clock.now()): number {
    return Math.floor((now - this.#opts.epochMs) / this.#periodMs) - 1;
  }

  /** The material of block `id`: deterministic in (seed, id). */
  material(id: number): Buffer {
    return blockMaterial(this.#opts.seed, id, this.#opts.blockBits);
  }

  async *blocks(fromId: number, signal?: AbortSignal): AsyncIterable<KeyBlock[]> {
    const { clock, blockBits, maxBatch, batchIntervalMs } = this.#opts;
    const stop = signal ? AbortSignal.any([signal, this.#closer.signal]) : this.#closer.signal;
    let next = fromId;
    let lastYield = -Infinity;
    while (!stop.aborted) {
      const upTo = this.producedUpTo();
      const ready = upTo - next + 1;
      // Wait for the first block, then let blocks gather for batchIntervalMs unless a batch is full.
      const waitMs = ready <= 0
        ? this.#opts.epochMs + (next + 1) * this.#periodMs - clock.now()
        : ready < maxBatch ? lastYield + batchIntervalMs - clock.now() : 0;
      if (waitMs > 0) {
        try {
          await clock.sleep(Math.max(1, Math.ceil(waitMs)), stop);
        } catch {
          return;
        }
        if (ready <= 0 || clock.now() < lastYield + batchIntervalMs) continue;
      }
      const last = Math.min(this.producedUpTo(), next + maxBatch - 1);
      if (last < next) continue;
      const batch: KeyBlock[] = [];
      for (let id = next; id <= last; id++) batch.push({ blockId: id, bits: blockBits, material: this.material(id) });
      next = last + 1;
      lastYield = clock.now();
      yield batch;
    }
  }

  ack(): void {
    /* The simulator keeps nothing to release. */
  }
}
