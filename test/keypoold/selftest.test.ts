/**
 * The link self-test in one process, over real stores: the owner's test key
 * and the peer's (named by slices only) compared by HMAC, both erased and
 * voided; the failures a technician must be told apart (different material,
 * refused slices, an empty pool, the peer unreachable, a node not serving).
 */
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../drivers/types.js';
import { silentLogger } from '../../src/common/logger.js';
import type { AuditEvent } from '../../src/common/audit-chain.js';
import type { Audit } from '../../src/keypoold/audit-sink.js';
import { blockAad } from '../../src/keypoold/block-aad.js';
import { LinkPool } from '../../src/keypoold/link-pool.js';
import type { LinkSync } from '../../src/keypoold/link-sync.js';
import type { PeerClient } from '../../src/keypoold/peer-client.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { LinkSelftest } from '../../src/keypoold/selftest.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

const LINK = 'KME_A-KME_B';
const BITS = 4096;
const logger = silentLogger();

interface Side {
  store: Store;
  sealer: Sealer;
  pool: LinkPool;
  batcher: TxBatcher;
  events: AuditEvent[];
  selftest: LinkSelftest;
  sync: { peerReachable: boolean; peerHw: number; peerKmeId: string; linkId: string };
  sent: Array<Record<string, unknown>>;
  stop?: string;
}

let dir: string;
let A: Side;
let B: Side;

function side(id: string, peer: string, peerSide: () => Side): Side {
  const store = new Store(openDb(join(dir, `${id}.sqlite`)));
  const sealer = new Sealer(randomBytes(32));
  const pool = new LinkPool({ linkId: LINK, myKmeId: id, peerKmeId: peer, capacityBits: 1 << 30 }, store, sealer);
  const batcher = new TxBatcher(store.db, logger);
  const events: AuditEvent[] = [];
  const sent: Array<Record<string, unknown>> = [];
  const sync = { peerReachable: true, peerHw: 3, peerKmeId: peer, linkId: LINK };
  const client = {
    call: async (op: string, args: Record<string, unknown>) => {
      sent.push({ op, ...args });
      return peerSide().selftest.onPeer(LINK, { link: LINK, ...args });
    },
  };
  const s: Side = { store, sealer, pool, batcher, events, sync, sent, selftest: undefined as unknown as LinkSelftest };
  s.selftest = new LinkSelftest({
    kmeId: id, keyBits: 256, ttlMs: 60_000, store, batcher, sealer, clock: systemClock, logger,
    links: new Map([[LINK, { sync: sync as unknown as LinkSync, pool, client: client as unknown as PeerClient }]]),
    audit: { record: (e: AuditEvent) => events.push(e) } as unknown as Audit,
    stopReason: () => s.stop,
  });
  return s;
}

function ingest(s: Side, blocks: Array<[number, Buffer]>): void {
  s.store.db.transaction(() => s.pool.ingest(blocks.map(([blockId, m]) => ({ blockId, bits: BITS, material: Buffer.from(m) }))))();
}

const material = [0, 1, 2, 3].map(() => randomBytes(BITS / 8));

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-selftest-'));
  A = side('KME_A', 'KME_B', () => B);
  B = side('KME_B', 'KME_A', () => A);
  ingest(A, material.map((m, i) => [i, m]));
  ingest(B, material.map((m, i) => [i, m]));
});

afterEach(() => {
  A.store.close();
  B.store.close();
  rmSync(dir, { recursive: true, force: true });
});

const keyCount = (s: Side) => (s.store.db.prepare('SELECT count(*) AS n FROM keys').get() as { n: number }).n;

describe('link self-test', () => {
  it('OK when both ends hold the same bits: nothing but slices and a nonce is sent; the key is erased and voided on both sides', async () => {
    const r = await A.selftest.run();
    expect(r.kme_id).toBe('KME_A');
    expect(r.links).toHaveLength(1);
    const l = r.links[0]!;
    expect(l).toMatchObject({ link_id: LINK, peer_kme_id: 'KME_B', ok: true, key_size: 256 });
    expect(l.elapsed_ms).toBeGreaterThan(0);
    expect(A.sent).toHaveLength(1);
    expect(Object.keys(A.sent[0]!).sort()).toEqual(['from', 'key_id', 'nonce', 'op', 'rid', 'size', 'slices']);
    expect(A.sent[0]!.slices).toEqual([[0, 0, 256]]);
    expect(JSON.stringify(A.sent[0])).not.toContain(material[0]!.subarray(0, 32).toString('hex'));
    expect(JSON.stringify(A.sent[0])).not.toContain(material[0]!.subarray(0, 32).toString('base64'));
    for (const s of [A, B]) {
      expect(s.store.s.resGet.get(l.rid!)).toMatchObject({ state: 'voided', master: 'selftest' });
      expect(keyCount(s)).toBe(0);
      expect(s.events.map((e) => e.event)).toEqual(['reserved', 'voided']);
      expect(s.events.every((e) => e.rid === l.rid && /^selftest: /.test(e.reason!))).toBe(true);
      // The slice is burnt at both ends: block 0's cursor moved past it.
      expect(s.store.s.blockGet.get(LINK, 0)!.start_bit).toBe(256);
    }
    expect(A.events[1]).toMatchObject({ reason: 'selftest: passed; test key erased on both sides', detail: { ok: true } });
    // Run again: the next slice.
    const again = await A.selftest.run(LINK);
    expect(again.links[0]!.ok).toBe(true);
    expect(A.sent[1]!.slices).toEqual([[0, 256, 256]]);
  });

  it('FAIL when the peer holds other bits for the same slices', async () => {
    B.store.s.dataPut.run(LINK, 0, B.sealer.seal(randomBytes(BITS / 8), blockAad(LINK, 0, 0)));
    const l = (await A.selftest.run()).links[0]!;
    expect(l).toMatchObject({ ok: false, reason: 'peer KME KME_B holds different key material for the same slices' });
    expect(A.events[1]).toMatchObject({ event: 'voided', reason: 'selftest: failed; test key burnt', detail: { ok: false } });
    expect(keyCount(B)).toBe(0);
  });

  it('FAIL when the peer refuses the slices (already used there)', async () => {
    // Those bits were already used at the peer (here: by another test key A never carved).
    const used = { from: 'KME_A', rid: '1d7b7c0e-6c1d-4e8a-9c52-2d6a4f0f4b11', key_id: '2b8f3c2e-5d7a-4f3e-8a1b-9c0d1e2f3a4b', slices: [[0, 0, 256]], size: 256, nonce: 'cd'.repeat(32) };
    expect((await B.selftest.onPeer(LINK, used)).state).toBe('ok');
    const l = (await A.selftest.run()).links[0]!;
    expect(l.ok).toBe(false);
    expect(l.reason).toBe('peer KME KME_B refused the test key: slice 0:0+256 not free');
  });

  it('FAIL before carving when the pool has no key, the peer is unreachable or the node does not serve', async () => {
    A.sync.peerHw = -1;
    expect((await A.selftest.run()).links[0]).toMatchObject({ ok: false, reason: expect.stringMatching(/^no 256-bit key available on the link yet/) });
    A.sync.peerHw = 3;
    A.sync.peerReachable = false;
    expect((await A.selftest.run()).links[0]).toMatchObject({ ok: false, reason: 'peer KME KME_B is unreachable' });
    A.sync.peerReachable = true;
    A.stop = 'its master key (HSM) is unavailable';
    expect((await A.selftest.run()).links[0]).toMatchObject({ ok: false, reason: 'KME_A is not serving keys: its master key (HSM) is unavailable' });
    A.stop = undefined;
    B.stop = 'its master key (HSM) is unavailable';
    expect((await A.selftest.run()).links[0]).toMatchObject({ ok: false, reason: 'peer KME KME_B refused the test key: KME_B is not serving keys: its master key (HSM) is unavailable' });
    expect(A.sent).toHaveLength(1);
    await expect(A.selftest.run('NO_LINK')).rejects.toThrow(/no link NO_LINK at KME_A/);
  });

  it('the peer refuses a request not from its peer or out of shape, and a replayed rid', async () => {
    const ok = { from: 'KME_A', rid: '6f1f7e0c-6c1d-4e8a-9c52-2d6a4f0f4b11', key_id: '0b8f3c2e-5d7a-4f3e-8a1b-9c0d1e2f3a4b', slices: [[0, 0, 256]], size: 256, nonce: 'ab'.repeat(32) };
    expect(await B.selftest.onPeer(LINK, { ...ok, from: 'KME_C' })).toEqual({ state: 'refused', reason: 'sender is not the peer of this link' });
    expect(await B.selftest.onPeer(LINK, { ...ok, nonce: 'xyz' })).toEqual({ state: 'refused', reason: 'bad nonce' });
    expect(await B.selftest.onPeer(LINK, { ...ok, slices: [[0, 0]] })).toEqual({ state: 'refused', reason: 'bad slice' });
    expect((await B.selftest.onPeer(LINK, ok)).state).toBe('ok');
    expect(await B.selftest.onPeer(LINK, { ...ok, slices: [[0, 256, 256]] })).toEqual({ state: 'refused', reason: 'rid in use' });
  });
});
