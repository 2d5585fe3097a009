/**
 * Background re-encryption of the store under the current data key: every
 * sealed block and key record of an older generation is opened and sealed
 * again, a chunk per durable commit, with a pause between chunks so serving
 * keys goes on. Records written meanwhile are sealed with the current key
 * already, so one pass in a stable order (rowid, key_id) finds every old one.
 * When the pass is done the older generations' wrapped keys are erased.
 * Progress is visible to tools; an interrupted pass starts again at the next
 * start (records already done are skipped cheaply).
 */
import type { Logger } from '../common/logger.js';
import type { RotationStatus } from '../ipc/pool-protocol.js';
import type { Clock } from '../../drivers/types.js';
import { blockAad, keyAad } from './block-aad.js';
import type { DataKeyRing } from './data-key.js';
import { Sealer } from './seal.js';
import type { Store } from './store.js';
import type { TxBatcher } from './tx-batcher.js';

/** The progress of a pass, as the maintenance tools see it (pool-protocol.ts). */
export type RekeyProgress = RotationStatus['data_key'];

export interface RekeyDeps {
  store: Store;
  ring: DataKeyRing;
  batcher: TxBatcher;
  clock: Clock;
  logger: Logger;
  /** Records per commit. */
  chunk?: number;
  /** Pause between commits, so the pass leaves room for serving keys. */
  pauseMs?: number;
  /** Told when a pass ends (audit trail). */
  onFinished?: (p: RekeyProgress) => void;
}

export class Rekeyer {
  readonly #d: RekeyDeps;
  #progress: RekeyProgress;
  #running: Promise<void> | undefined;
  #stopped = false;

  constructor(deps: RekeyDeps) {
    this.#d = deps;
    this.#progress = { state: 'idle', generation: deps.ring.sealer.current, replacing: [], done: 0, total: 0, resealed: 0 };
  }

  get progress(): RekeyProgress {
    return { ...this.#progress, replacing: [...this.#progress.replacing] };
  }

  get running(): boolean {
    return this.#running !== undefined;
  }

  /** Start a pass in the background if older generations exist; false if there is nothing to do or one runs. */
  start(): boolean {
    if (this.#running || this.#d.ring.olderGenerations.length === 0) return false;
    this.#running = this.#pass()
      .catch((e) => {
        this.#progress.state = 'failed';
        this.#progress.error = (e as Error).message;
        this.#d.logger.error({ err: (e as Error).message }, 'store re-encryption failed; it resumes at the next start');
      })
      .finally(() => {
        this.#running = undefined;
        this.#d.onFinished?.(this.progress);
      });
    return true;
  }

  /** Wait for the running pass, if any. */
  async wait(): Promise<void> {
    await this.#running;
  }

  /** Stop after the current chunk (shutdown); the pass resumes at the next start. */
  async stop(): Promise<void> {
    this.#stopped = true;
    await this.#running;
  }

  /** Records looked at; those written during the pass raise the total with them, so done never passes it. */
  #count(n: number): void {
    const p = this.#progress;
    p.done += n;
    if (p.done > p.total) p.total = p.done;
  }

  async #pass(): Promise<void> {
    const { store, ring, batcher, clock, logger } = this.#d;
    const chunk = this.#d.chunk ?? 256;
    const pauseMs = this.#d.pauseMs ?? 5;
    const replacing = ring.olderGenerations;
    const gen = ring.sealer.current;
    const total = store.s.countBlockData.get()!.n + store.s.countKeys.get()!.n;
    this.#progress = { state: 'running', generation: gen, replacing, done: 0, total, resealed: 0, started_at: new Date(clock.now()).toISOString() };
    logger.info({ generation: gen, replacing, records: total }, 'store re-encryption started');
    const sealer = ring.sealer;
    const stale = (sealed: Buffer) => Sealer.generationOf(sealed) !== sealer.current;

    let lastRow = 0;
    for (;;) {
      if (this.#stopped) return;
      const n = await batcher.run(() => {
        const rows = store.s.rekeyBlocks.all(lastRow, chunk);
        for (const r of rows) {
          if (stale(r.sealed)) {
            store.s.rekeyBlockPut.run(sealer.reseal(r.sealed, blockAad(r.link, r.block_id, r.start_bit)), r.r);
            this.#progress.resealed++;
          }
        }
        if (rows.length > 0) lastRow = rows[rows.length - 1]!.r;
        return rows.length;
      });
      this.#count(n);
      if (n < chunk) break;
      await clock.sleep(pauseMs);
    }
    let lastKey = '';
    for (;;) {
      if (this.#stopped) return;
      const n = await batcher.run(() => {
        const rows = store.s.rekeyKeys.all(lastKey, chunk);
        for (const r of rows) {
          if (stale(r.sealed)) {
            store.s.rekeyKeyPut.run(sealer.reseal(r.sealed, keyAad(r.key_id)), r.key_id);
            this.#progress.resealed++;
          }
        }
        if (rows.length > 0) lastKey = rows[rows.length - 1]!.key_id;
        return rows.length;
      });
      this.#count(n);
      if (n < chunk) break;
      await clock.sleep(pauseMs);
    }
    await ring.dropGenerations(replacing);
    // Records erased during the pass (keys fetched, blocks used up) count as done.
    this.#progress.done = this.#progress.total;
    this.#progress.state = 'done';
    this.#progress.finished_at = new Date(clock.now()).toISOString();
    logger.info({ generation: gen, resealed: this.#progress.resealed }, 'store re-encryption finished; older data keys erased');
  }
}
