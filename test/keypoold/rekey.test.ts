/**
 * Data key generations and rotation over a real SQLite store: the sealed
 * format names its generation, a new data key re-encrypts the store in the
 * background while ingestion goes on, an interrupted pass resumes, and a new
 * master key rewraps the data keys (finishing an interrupted rotation at open).
 * The master key here is an in-memory stand-in; the real providers are tested
 * in test/hsm and through keypoold in test/e2e.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import { systemClock, type KeyBlock } from '../../drivers/types.js';
import { createLogger } from '../../src/common/logger.js';
import { blockAad, keyAad } from '../../src/keypoold/block-aad.js';
import { DataKeyRing, type WrappingKey } from '../../src/keypoold/data-key.js';
import { LinkPool, storeKeyRecords } from '../../src/keypoold/link-pool.js';
import { Rekeyer } from '../../src/keypoold/rekey.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

const logger = createLogger('test', 'silent');
const BLOCK_BITS = 1024;

/** AES-GCM under keys held in memory, with rotate/retire like the real providers. */
class MemoryMaster implements WrappingKey {
  readonly kind = 'memory';
  keys = new Map<string, Buffer>();
  currentKeyId = '';
  retired: string[] = [];
  constructor() {
    void this.rotate();
  }
  async rotate(): Promise<string> {
    this.currentKeyId = `m${this.keys.size + 1}`;
    this.keys.set(this.currentKeyId, randomBytes(32));
    return this.currentKeyId;
  }
  async retire(id: string): Promise<void> {
    if (id === this.currentKeyId) throw new Error('cannot retire the current key');
    this.keys.delete(id);
    this.retired.push(id);
  }
  async wrap(k: Buffer) {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.keys.get(this.currentKeyId)!, iv);
    const ct = Buffer.concat([c.update(k), c.final()]);
    return { keyId: this.currentKeyId, wrapped: Buffer.concat([iv, c.getAuthTag(), ct]) };
  }
  async unwrap(w: Buffer, id: string) {
    const key = this.keys.get(id);
    if (!key) throw new Error(`master key ${id} missing`);
    const d = createDecipheriv('aes-256-gcm', key, w.subarray(0, 12));
    d.setAuthTag(w.subarray(12, 28));
    return Buffer.concat([d.update(w.subarray(28)), d.final()]);
  }
}

let dir: string;
let store: Store;
let batcher: TxBatcher;
const sim = new SimQkdModule({ linkId: 'L', moduleId: 'm', seed: Buffer.alloc(32, 3), rateBps: 1e6, blockBits: BLOCK_BITS, epochMs: 0, clock: systemClock });
const blocks = (from: number, n: number): KeyBlock[] =>
  Array.from({ length: n }, (_, i) => ({ blockId: from + i, bits: BLOCK_BITS, material: sim.material(from + i) }));

function open() {
  store = new Store(openDb(join(dir, 'k.sqlite')));
  batcher = new TxBatcher(store.db, logger);
}
const commit = <T>(w: () => T) => batcher.run(w);

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-rekey-'));
  open();
});
afterEach(() => {
  batcher.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

/** Every sealed record's generation, and whether each opens to what was stored. */
function audit(sealer: Sealer, keys: Map<string, Buffer>) {
  const gens = new Set<number>();
  for (const r of store.db.prepare<[], { link: string; block_id: number; sealed: Buffer; start_bit: number }>(
    'SELECT d.link, d.block_id, d.sealed, b.start_bit FROM block_data d JOIN blocks b USING (link, block_id)',
  ).all()) {
    gens.add(Sealer.generationOf(r.sealed));
    expect(sealer.open(r.sealed, blockAad(r.link, r.block_id, r.start_bit)).equals(sim.material(r.block_id))).toBe(true);
  }
  for (const r of store.db.prepare<[], { key_id: string; sealed: Buffer }>('SELECT key_id, sealed FROM keys').all()) {
    gens.add(Sealer.generationOf(r.sealed));
    expect(sealer.open(r.sealed, keyAad(r.key_id)).equals(keys.get(r.key_id)!)).toBe(true);
  }
  return [...gens].sort();
}

function fill(ring: DataKeyRing, from: number, n: number, keys: Map<string, Buffer>) {
  const pool = new LinkPool({ linkId: 'L', myKmeId: 'A', peerKmeId: 'B', capacityBits: 1 << 30 }, store, ring.sealer);
  return commit(() => {
    pool.ingest(blocks(from, n));
    const ids = Array.from({ length: n }, (_, i) => `k${from + i}`);
    const mats = ids.map(() => randomBytes(32));
    ids.forEach((id, i) => keys.set(id, Buffer.from(mats[i]!)));
    storeKeyRecords(store, ring.sealer, `r${from}`, 'SAE_1', ['SAE_2'], ids, mats, Date.now() + 60_000);
  });
}

describe('Sealer generations', () => {
  it('writes its generation into each record and opens records of every generation it holds', () => {
    const s = new Sealer(randomBytes(32), 1);
    const a = s.seal(Buffer.from('one'), 'x');
    s.addKey(2, randomBytes(32));
    s.useGeneration(2);
    const b = s.seal(Buffer.from('two'), 'x');
    expect([Sealer.generationOf(a), Sealer.generationOf(b)]).toEqual([1, 2]);
    expect(s.open(a, 'x').toString()).toBe('one');
    expect(Sealer.generationOf(s.reseal(a, 'x'))).toBe(2);
    s.dropKey(1);
    expect(() => s.open(a, 'x')).toThrow(/generation 1/);
    expect(() => s.dropKey(2)).toThrow(/current/);
    expect(() => s.open(b, 'y')).toThrow(/authentication/);
  });
});

describe('DataKeyRing and Rekeyer', () => {
  it('creates one data key in a fresh store and unwraps the same one at the next open', async () => {
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    const sealed = ring.sealer.seal(Buffer.from('material'), 'aad');
    const again = await DataKeyRing.open(store, master, commit, logger);
    expect(again.sealer.generations).toEqual([1]);
    expect(again.sealer.open(sealed, 'aad').toString()).toBe('material');
    expect(JSON.parse(store.getMeta('data_key:1')!.toString())).toMatchObject({ master_key_id: 'm1' });
  });

  it('re-encrypts every block and key under a new data key while ingestion goes on, then erases the old one', async () => {
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    const keys = new Map<string, Buffer>();
    for (let i = 0; i < 10; i++) await fill(ring, i * 100, 100, keys);
    expect(audit(ring.sealer, keys)).toEqual([1]);

    await ring.newGeneration();
    const rekeyer = new Rekeyer({ store, ring, batcher, clock: systemClock, logger, chunk: 50, pauseMs: 1 });
    expect(rekeyer.start()).toBe(true);
    expect(rekeyer.start()).toBe(false); // one pass at a time
    // Ingestion and new key records go on during the pass, sealed with generation 2.
    await fill(ring, 1000, 100, keys);
    expect(rekeyer.progress.state).toBe('running');
    await rekeyer.wait();
    const p = rekeyer.progress;
    expect(p).toMatchObject({ state: 'done', generation: 2, replacing: [1] });
    expect(p.total).toBeGreaterThanOrEqual(2000);
    expect(p.done).toBeGreaterThanOrEqual(p.total);
    expect(p.resealed).toBeGreaterThanOrEqual(2000);
    expect(audit(ring.sealer, keys)).toEqual([2]);
    expect(ring.sealer.generations).toEqual([2]);
    expect(store.getMeta('data_key:1')).toBeUndefined();
    // A restart unwraps only generation 2.
    const again = await DataKeyRing.open(store, master, commit, logger);
    expect(again.sealer.generations).toEqual([2]);
    expect(audit(again.sealer, keys)).toEqual([2]);
  });

  it('resumes an interrupted re-encryption at the next open', async () => {
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    const keys = new Map<string, Buffer>();
    for (let i = 0; i < 4; i++) await fill(ring, i * 100, 100, keys);
    await ring.newGeneration();
    const first = new Rekeyer({ store, ring, batcher, clock: systemClock, logger, chunk: 20, pauseMs: 5 });
    first.start();
    await new Promise((r) => setTimeout(r, 30));
    await first.stop();
    expect(first.progress.done).toBeLessThan(first.progress.total);
    expect(audit(ring.sealer, keys)).toEqual([1, 2]); // half done

    const ring2 = await DataKeyRing.open(store, master, commit, logger);
    expect(ring2.sealer.current).toBe(2);
    expect(ring2.olderGenerations).toEqual([1]);
    const second = new Rekeyer({ store, ring: ring2, batcher, clock: systemClock, logger, chunk: 100, pauseMs: 0 });
    expect(second.start()).toBe(true);
    await second.wait();
    expect(audit(ring2.sealer, keys)).toEqual([2]);
    expect(ring2.sealer.generations).toEqual([2]);
  });

  it('rewraps every data key under a new master key and retires the old master key', async () => {
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    await ring.newGeneration(); // two generations wrapped
    const keys = new Map<string, Buffer>();
    await fill(ring, 0, 10, keys);
    const { master_key_id, retired } = await ring.rotateMaster();
    expect(master_key_id).toBe('m2');
    expect(retired).toEqual(['m1']);
    expect([...master.keys.keys()]).toEqual(['m2']);
    const again = await DataKeyRing.open(store, master, commit, logger);
    expect(again.sealer.generations).toEqual([1, 2]);
    expect(audit(again.sealer, keys)).toEqual([2]);
  });

  it('finishes a master key rotation a crash interrupted before the data keys were rewrapped', async () => {
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    const keys = new Map<string, Buffer>();
    await fill(ring, 0, 10, keys);
    await master.rotate(); // the new master key exists; the rewrap never happened
    expect(JSON.parse(store.getMeta('data_key:1')!.toString()).master_key_id).toBe('m1');
    const again = await DataKeyRing.open(store, master, commit, logger);
    expect(JSON.parse(store.getMeta('data_key:1')!.toString()).master_key_id).toBe('m2');
    expect(master.retired).toEqual(['m1']);
    expect(audit(again.sealer, keys)).toEqual([1]);
  });
});

describe('Rotation', () => {
  it('runs one rotation at a time and reports the master key and the re-encryption progress', async () => {
    const { Rotation } = await import('../../src/keypoold/rotation.js');
    const master = new MemoryMaster();
    const ring = await DataKeyRing.open(store, master, commit, logger);
    const keys = new Map<string, Buffer>();
    for (let i = 0; i < 4; i++) await fill(ring, i * 100, 100, keys);
    const rekeyer = new Rekeyer({ store, ring, batcher, clock: systemClock, logger, chunk: 10, pauseMs: 5 });
    const events: string[] = [];
    const rotation = new Rotation({ ring, rekeyer, master, onRotated: (what, d) => events.push(`${what}:${JSON.stringify(d)}`) });
    expect(rotation.status()).toMatchObject({ master_key: { key_id: 'm1' }, data_key: { state: 'idle', generation: 1 } });
    const st = await rotation.rotate('data');
    expect(st.data_key).toMatchObject({ state: 'running', generation: 2, replacing: [1] });
    await expect(rotation.rotate('master')).rejects.toThrow(/already running/);
    await expect(rotation.rotate('data')).rejects.toThrow(/already running/);
    await rekeyer.wait();
    expect(rotation.status().data_key).toMatchObject({ state: 'done', resealed: 800 });
    const m = await rotation.rotate('master');
    expect(m.master_key.key_id).toBe('m2');
    expect(events).toEqual(['data:{"generation":2}', 'master:{"master_id":"m2","retired":"m1"}']);
    expect(audit(ring.sealer, keys)).toEqual([2]);
  });
});
