import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes, randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import { systemClock, type KeyBlock } from '../../drivers/types.js';
import { KmeError } from '../../src/common/errors.js';
import { LinkPool } from '../../src/keypoold/link-pool.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { keyAad } from '../../src/keypoold/block-aad.js';

const BLOCK_BITS = 1024;
let dir: string;
let stores: Store[] = [];

function node(me: string, peer: string) {
  const store = new Store(openDb(join(dir, `${me}.sqlite`)));
  stores.push(store);
  const sealer = new Sealer(randomBytes(32));
  const pool = new LinkPool({ linkId: 'L', myKmeId: me, peerKmeId: peer, capacityBits: 1 << 30 }, store, sealer);
  return { store, sealer, pool };
}

function blocks(from: number, n: number): KeyBlock[] {
  const sim = new SimQkdModule({ linkId: 'L', moduleId: 'm', seed: Buffer.alloc(32, 7), rateBps: 1e6, blockBits: BLOCK_BITS, epochMs: 0, clock: systemClock });
  return Array.from({ length: n }, (_, i) => ({ blockId: from + i, bits: BLOCK_BITS, material: sim.material(from + i) }));
}

function accept(n: ReturnType<typeof node>, r: Parameters<LinkPool['acceptAll']>[0][number]) {
  return n.store.db.transaction(() => n.pool.acceptAll([r], () => undefined)[0]!)();
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-pool-'));
});
afterEach(() => {
  stores.forEach((s) => s.close());
  stores = [];
  rmSync(dir, { recursive: true, force: true });
});

describe('LinkPool', () => {
  it('gives each KME the blocks of one parity: the smaller KME id owns the even ones', () => {
    const a = node('KME_A', 'KME_B').pool;
    const b = node('KME_B', 'KME_A').pool;
    expect([0, 1, 2, 3].map((i) => a.isMine(i))).toEqual([true, false, true, false]);
    expect([0, 1, 2, 3].map((i) => b.isMine(i))).toEqual([false, true, false, true]);
  });

  it('ingests blocks once each, accepts a gap the module reports, and refuses a block of the wrong size', () => {
    const { pool, store } = node('KME_A', 'KME_B');
    store.db.transaction(() => pool.ingest(blocks(0, 4)))();
    expect(pool.highWater()).toBe(3);
    expect(pool.ownedAvailableBits(3)).toBe(2 * BLOCK_BITS);
    store.db.transaction(() => pool.ingest(blocks(2, 2)))(); // again: ignored
    expect(pool.stats().blocks).toBe(4);
    store.db.transaction(() => pool.ingest(blocks(6, 1)))();
    expect(pool.highWater()).toBe(6);
    expect(pool.ownedAvailableBits(6)).toBe(3 * BLOCK_BITS);
    const bad = { blockId: 7, bits: BLOCK_BITS, material: Buffer.alloc(3) };
    expect(() => store.db.transaction(() => pool.ingest([bad]))()).toThrow(/3 bytes for 1024 bits/);
  });

  it('carves owned bits only up to the peer high-water mark and never twice', () => {
    const { pool, store } = node('KME_A', 'KME_B');
    store.db.transaction(() => pool.ingest(blocks(0, 6)))();
    const first = store.db.transaction(() => pool.carve([{ number: 4, size: 256 }], 1))()[0];
    expect(first).not.toBeInstanceOf(KmeError);
    const c1 = first as Exclude<typeof first, KmeError | undefined>;
    expect(c1.slices.flat().every(([b]) => b === 0)).toBe(true);
    // block 0 exhausted, only block 0 was <= peer hw 1 and owned: nothing left
    const second = store.db.transaction(() => pool.carve([{ number: 1, size: 256 }], 1))()[0];
    expect(second).toBeInstanceOf(KmeError);
    const third = store.db.transaction(() => pool.carve([{ number: 1, size: 512 }], 5))()[0] as { slices: number[][][] };
    expect(third.slices).toEqual([[[2, 0, 512]]]);
    const all = [...c1.slices.flat(), ...third.slices.flat()];
    const keysOf = new Set(all.map(([b, o]) => `${b}:${o}`));
    expect(keysOf.size).toBe(all.length);
  });

  it('a key can span two blocks, and a request that cannot be met takes nothing', () => {
    const { pool, store } = node('KME_A', 'KME_B');
    store.db.transaction(() => pool.ingest(blocks(0, 4)))();
    store.db.transaction(() => pool.carve([{ number: 1, size: 768 }], 3))();
    const [big, span] = store.db.transaction(() => pool.carve([{ number: 2, size: 1024 }, { number: 1, size: 512 }], 3))();
    expect(big).toBeInstanceOf(KmeError);
    expect((span as { slices: unknown }).slices).toEqual([[[0, 768, 256], [2, 0, 256]]]);
    expect(pool.ownedAvailableBits(3)).toBe(768);
  });

  it('the peer materialises the same bytes the owner carved, and refuses reuse and foreign blocks', () => {
    const A = node('KME_A', 'KME_B');
    const B = node('KME_B', 'KME_A');
    A.store.db.transaction(() => A.pool.ingest(blocks(0, 4)))();
    B.store.db.transaction(() => B.pool.ingest(blocks(0, 4)))();
    const c = A.store.db.transaction(() => A.pool.carve([{ number: 2, size: 256 }], 3))()[0] as { slices: [number, number, number][][]; material: Buffer[] };
    const keyIds = [randomUUID(), randomUUID()];
    const r = { rid: randomUUID(), master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: keyIds, slices: c.slices, size: 256, expires_at: Date.now() + 60000 };
    expect(accept(B, r)).toMatchObject({ state: 'committed' });
    for (const [i, id] of keyIds.entries()) {
      const row = B.store.s.keyGet.get(id)!;
      expect(B.sealer.open(row.sealed, keyAad(id)).equals(c.material[i]!)).toBe(true);
    }
    // the peer keeps only the unused tail of the block at rest
    expect(B.store.s.blockGet.get('L', 0)).toMatchObject({ start_bit: 512 });
    expect(B.sealer.open(B.store.s.dataGet.get('L', 0)!.sealed, 'blk|L|0|512')).toHaveLength((BLOCK_BITS - 512) / 8);
    // same rid again: idempotent
    expect(accept(B, r)).toMatchObject({ state: 'committed' });
    // same slices under a new rid: refused
    const again = accept(B, { ...r, rid: randomUUID(), key_ids: [randomUUID(), randomUUID()] });
    expect(again.state).toBe('refused');
    // a block B owns itself: refused
    const foreign = accept(B, { ...r, rid: randomUUID(), key_ids: [randomUUID()], slices: [[[1, 0, 256]]] });
    expect(foreign).toMatchObject({ state: 'refused' });
    expect(foreign.reason).toMatch(/not the sender/);
  });

  it('the peer erases the owner blocks the owner says are fully carved, and only those', () => {
    const B = node('KME_B', 'KME_A');
    B.store.db.transaction(() => B.pool.ingest(blocks(0, 6)))();
    B.store.db.transaction(() => B.pool.erasePeerBlocksBelow(4))();
    const left = B.store.db.prepare('SELECT block_id FROM blocks ORDER BY block_id').all().map((r: any) => r.block_id);
    expect(left).toEqual([1, 3, 4, 5]);
    const data = B.store.db.prepare('SELECT block_id FROM block_data ORDER BY block_id').all().map((r: any) => r.block_id);
    expect(data).toEqual([1, 3, 4, 5]);
  });
});
