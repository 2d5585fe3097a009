/**
 * Ingestion against a real store: blocks are committed before they are
 * acknowledged, and a full pool (max_key_count) stops the pull from the
 * module until keys are used. (That a driver which is not pulled grants the
 * module no credit is tested with the protocol driver in test/drivers/qkd.)
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import { systemClock } from '../../drivers/types.js';
import { silentLogger } from '../../src/common/logger.js';
import { runIngest } from '../../src/keypoold/ingest.js';
import { LinkPool } from '../../src/keypoold/link-pool.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

const BLOCK_BITS = 1024;
const logger = silentLogger();
let dir: string;
let store: Store;
let batcher: TxBatcher;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-ingest-'));
  store = new Store(openDb(join(dir, 'k.sqlite')));
  batcher = new TxBatcher(store.db, logger);
});
afterEach(() => {
  batcher.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const until = async (cond: () => boolean, ms = 10_000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 20));
  }
};

describe('ingestion', () => {
  it('stops pulling blocks once the pool holds max_key_count keys each way, and pulls again once keys are used', async () => {
    // 2 x 16 keys of 256 bits: 8 blocks of 1024 bits.
    const capacityBits = 2 * 16 * 256;
    const pool = new LinkPool({ linkId: 'L', myKmeId: 'A', peerKmeId: 'B', capacityBits }, store, new Sealer(randomBytes(32)));
    // 400 blocks a second are on offer; the module would hand over up to 4 per batch.
    const module = new SimQkdModule({
      linkId: 'L', moduleId: 'm', seed: Buffer.alloc(32, 9), rateBps: 400 * BLOCK_BITS, blockBits: BLOCK_BITS,
      epochMs: Date.now(), clock: systemClock, maxBatch: 4, batchIntervalMs: 5,
    });
    await module.open();
    const stop = new AbortController();
    const acked: number[] = [];
    const driver = Object.assign(Object.create(module) as SimQkdModule, {
      blocks: module.blocks.bind(module),
      ack: (hw: number) => acked.push(hw),
    });
    const ingesting = runIngest({ driver, pool, batcher, clock: systemClock, logger, fullPollMs: 20, gatherMs: 0 }, stop.signal);
    try {
      await until(() => pool.isFull());
      await new Promise((r) => setTimeout(r, 300)); // 120 more blocks were on offer meanwhile
      const held = pool.stats();
      // Full, overshooting by at most the batch that filled it.
      expect(held.bits).toBeGreaterThanOrEqual(capacityBits);
      expect(held.bits).toBeLessThanOrEqual(capacityBits + 4 * BLOCK_BITS);
      const hw = pool.highWater();
      expect(acked.at(-1)).toBe(hw); // acknowledged only what is stored
      // Keys used: blocks erased. The pull resumes and fills the pool again.
      await batcher.run(() => {
        for (let id = 0; id <= 3; id++) store.eraseBlock('L', id);
      });
      await until(() => pool.highWater() > hw);
      await until(() => pool.isFull());
      expect(pool.stats().bits).toBeLessThanOrEqual(capacityBits + 4 * BLOCK_BITS);
    } finally {
      stop.abort();
      await module.close();
      await ingesting;
    }
  });
});
