/**
 * The store's data keys. Each generation is kept in the store only wrapped by
 * the master key (with the id of the master key that wrapped it) and is
 * unwrapped into memory at start. Rotation:
 *
 * - master key: the provider makes a new master key; every data key is
 *   rewrapped under it in one durable commit; only then are the old master
 *   keys retired. A crash between those steps leaves rows that name an older
 *   master key, which the next start rewraps and retires (`open`).
 * - data key: a new generation is wrapped and committed as current before the
 *   sealer uses it; rekey.ts then re-seals every record in the background and,
 *   once none of an older generation is left, erases that generation's row.
 *   An interrupted re-encryption resumes at the next start.
 *
 * Meta rows: `data_key:<generation>` = JSON {master_key_id, wrapped (base64)},
 * `data_key_current` = the generation new records are sealed with.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from '../common/logger.js';
import { Sealer } from './seal.js';
import type { Store } from './store.js';

/** What the data keys need of a master-key provider (see master-key.ts). */
export interface WrappingKey {
  readonly currentKeyId: string;
  wrap(dataKey: Buffer): Promise<{ keyId: string; wrapped: Buffer }>;
  unwrap(wrapped: Buffer, keyId: string): Promise<Buffer>;
  rotate(): Promise<string>;
  retire(keyId: string): Promise<void>;
}

/** Runs `work` in a durable store commit (TxBatcher.run). */
export type Commit = <T>(work: () => T) => Promise<T>;

interface Row {
  master_key_id: string;
  wrapped: string;
}

const PREFIX = 'data_key:';
const CURRENT = 'data_key_current';

export class DataKeyRing {
  readonly sealer: Sealer;
  readonly #store: Store;
  readonly #master: WrappingKey;
  readonly #commit: Commit;
  readonly #logger: Logger;

  private constructor(sealer: Sealer, store: Store, master: WrappingKey, commit: Commit, logger: Logger) {
    this.sealer = sealer;
    this.#store = store;
    this.#master = master;
    this.#commit = commit;
    this.#logger = logger;
  }

  /**
   * Unwrap every data key generation into a sealer (creating generation 1 in
   * a fresh store), and finish an interrupted master-key rotation.
   */
  static async open(store: Store, master: WrappingKey, commit: Commit, logger: Logger): Promise<DataKeyRing> {
    let rows = readRows(store);
    if (rows.size === 0) {
      const key = randomBytes(32);
      try {
        const { keyId, wrapped } = await master.wrap(key);
        await commit(() => {
          putRow(store, 1, { master_key_id: keyId, wrapped: wrapped.toString('base64') });
          store.putMeta(CURRENT, Buffer.from('1'));
        });
      } finally {
        key.fill(0);
      }
      rows = readRows(store);
    }
    const current = Number(store.getMeta(CURRENT)?.toString() ?? Math.max(...rows.keys()));
    let sealer: Sealer | undefined;
    try {
      for (const [gen, row] of rows) {
        const key = await master.unwrap(Buffer.from(row.wrapped, 'base64'), row.master_key_id);
        try {
          if (sealer) sealer.addKey(gen, key);
          else sealer = new Sealer(key, gen);
        } finally {
          key.fill(0);
        }
      }
      sealer!.useGeneration(current);
    } catch (e) {
      sealer?.destroy();
      throw e;
    }
    const ring = new DataKeyRing(sealer!, store, master, commit, logger);
    if ([...rows.values()].some((r) => r.master_key_id !== master.currentKeyId)) {
      logger.warn('data keys wrapped by an older master key: finishing the master key rotation');
      await ring.rotateMaster(false);
    }
    return ring;
  }

  /** Generations that still have records to re-encrypt (all but the current one). */
  get olderGenerations(): number[] {
    return this.sealer.generations.filter((g) => g !== this.sealer.current);
  }

  /**
   * Rewrap every data key under a new master key (or, with `fresh` false,
   * under the provider's current one), then retire the master keys no longer
   * used. Returns the new master key's id.
   */
  async rotateMaster(fresh = true): Promise<{ master_key_id: string; retired: string[] }> {
    const newId = fresh ? await this.#master.rotate() : this.#master.currentKeyId;
    const rows = readRows(this.#store);
    const old = new Set<string>();
    const next = new Map<number, Row>();
    for (const [gen, row] of rows) {
      if (row.master_key_id === newId) continue;
      old.add(row.master_key_id);
      const key = await this.#master.unwrap(Buffer.from(row.wrapped, 'base64'), row.master_key_id);
      try {
        const { keyId, wrapped } = await this.#master.wrap(key);
        next.set(gen, { master_key_id: keyId, wrapped: wrapped.toString('base64') });
      } finally {
        key.fill(0);
      }
    }
    await this.#commit(() => {
      for (const [gen, row] of next) putRow(this.#store, gen, row);
    });
    const retired: string[] = [];
    for (const id of old) {
      await this.#master.retire(id);
      retired.push(id);
    }
    this.#logger.info({ master_key_id: newId, retired }, 'data keys rewrapped under the new master key');
    return { master_key_id: newId, retired };
  }

  /** Make a new data key generation current; records are re-sealed by rekey.ts. */
  async newGeneration(): Promise<number> {
    const gen = Math.max(...this.sealer.generations) + 1;
    const key = randomBytes(32);
    try {
      const { keyId, wrapped } = await this.#master.wrap(key);
      await this.#commit(() => {
        putRow(this.#store, gen, { master_key_id: keyId, wrapped: wrapped.toString('base64') });
        this.#store.putMeta(CURRENT, Buffer.from(String(gen)));
      });
      this.sealer.addKey(gen, key);
      this.sealer.useGeneration(gen);
    } finally {
      key.fill(0);
    }
    this.#logger.info({ generation: gen }, 'new data key generation');
    return gen;
  }

  /** Erase the rows of generations no record uses any more, and forget those keys. */
  async dropGenerations(gens: number[]): Promise<void> {
    await this.#commit(() => {
      for (const g of gens) this.#store.deleteMeta(PREFIX + g);
    });
    for (const g of gens) this.sealer.dropKey(g);
  }
}

function readRows(store: Store): Map<number, Row> {
  const out = new Map<number, Row>();
  for (const { k, v } of store.metaWithPrefix(PREFIX)) out.set(Number(k.slice(PREFIX.length)), JSON.parse(v.toString('utf8')) as Row);
  return new Map([...out].sort((a, b) => a[0] - b[0]));
}

function putRow(store: Store, gen: number, row: Row): void {
  store.putMeta(PREFIX + gen, Buffer.from(JSON.stringify(row)));
}
