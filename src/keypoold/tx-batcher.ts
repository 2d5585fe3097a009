/**
 * Group commit. Work items queued in the same turn of the event loop run in
 * one SQLite transaction, each inside its own savepoint (a failing item rolls
 * back alone), and one fsync covers them all. A promise settles only after the
 * commit is durable.
 */
import { KmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Db } from './store.js';

interface Item {
  work: () => unknown;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  ok: boolean;
  value: unknown;
}

export class TxBatcher {
  #queue: Item[] = [];
  #scheduled = false;
  readonly #db: Db;
  readonly #logger: Logger;
  readonly #runOne: (w: () => unknown) => unknown;
  readonly #runAll: (items: Item[]) => void;

  constructor(db: Db, logger: Logger) {
    this.#db = db;
    this.#logger = logger;
    this.#runOne = db.transaction((w: () => unknown) => w());
    this.#runAll = db.transaction((items: Item[]) => {
      for (const it of items) {
        try {
          it.value = this.#runOne(it.work);
          it.ok = true;
        } catch (e) {
          it.value = e;
        }
      }
    });
  }

  run<T>(work: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ work, resolve: resolve as (v: unknown) => void, reject, ok: false, value: undefined });
      if (!this.#scheduled) {
        this.#scheduled = true;
        setImmediate(() => this.#flush());
      }
    });
  }

  #flush(): void {
    this.#scheduled = false;
    const items = this.#queue;
    this.#queue = [];
    if (items.length === 0) return;
    try {
      this.#runAll(items);
    } catch (e) {
      this.#logger.error({ err: (e as Error).message }, 'store commit failed');
      const err = new KmeError('UNAVAILABLE', 'key store unavailable', undefined, { cause: e });
      for (const it of items) it.reject(err);
      return;
    }
    for (const it of items) (it.ok ? it.resolve : it.reject)(it.value);
  }

  get db(): Db {
    return this.#db;
  }
}
