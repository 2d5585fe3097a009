/**
 * The agreement between two keypoolds, in one process but over the real
 * KME-to-KME HTTPS channel with real certificates and real SQLite stores:
 * commit, fail-closed on a dead peer, VOID delivery and tombstones, and the
 * recovery of reservations left pending by a crash.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import { systemClock } from '../../drivers/types.js';
import { KmeError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/logger.js';
import { keyAad } from '../../src/keypoold/block-aad.js';
import { LinkPool } from '../../src/keypoold/link-pool.js';
import { LinkSync } from '../../src/keypoold/link-sync.js';
import { PeerClient } from '../../src/keypoold/peer-client.js';
import type { PeerReservation } from '../../src/keypoold/peer-protocol.js';
import { startPeerServer, type PeerServer } from '../../src/keypoold/peer-server.js';
import { Registry } from '../../src/keypoold/registry.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';
import { createCa, issueCert } from '../../src/pki/x509.js';

const LINK = 'KME_A-KME_B';
const logger = silentLogger();

interface Node {
  id: string;
  store: Store;
  sealer: Sealer;
  pool: LinkPool;
  sync: LinkSync;
  server: PeerServer;
  links: Map<string, LinkSync>;
  tls: { cert: Buffer; key: Buffer; ca: Buffer };
}

let dir: string;
let A: Node;
let B: Node;

async function makeNode(id: string, peer: string, ca: { cert: string; key: string }, registry: Registry) {
  const pem = await issueCert(ca, { cn: id, usage: 'both', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const tls = { cert: Buffer.from(pem.cert), key: Buffer.from(pem.key), ca: Buffer.from(ca.cert) };
  const store = new Store(openDb(join(dir, `${id}.sqlite`)));
  const sealer = new Sealer(randomBytes(32));
  const pool = new LinkPool({ linkId: LINK, myKmeId: id, peerKmeId: peer, capacityBits: 1 << 30 }, store, sealer);
  const links = new Map<string, LinkSync>();
  const server = await startPeerServer({ host: '127.0.0.1', port: 0, tls, links, logger });
  return { id, peer, store, sealer, pool, links, server, tls, registry };
}

function connect(me: Awaited<ReturnType<typeof makeNode>>, other: Awaited<ReturnType<typeof makeNode>>, timeoutMs = 1000, maxOwnedBits?: number): Node {
  const client = new PeerClient({ baseUrl: `https://127.0.0.1:${other.server.port}`, linkId: LINK, peerKmeId: other.id, tls: me.tls, timeoutMs, logger });
  const sync = new LinkSync({
    pool: me.pool, store: me.store, batcher: new TxBatcher(me.store.db, logger), client, registry: me.registry,
    clock: systemClock, logger, ttlMs: 60_000, skewMs: 5000, peerTimeoutMs: timeoutMs, myKmeId: me.id, maxOwnedBits,
  });
  me.links.set(LINK, sync);
  return { ...me, sync };
}

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kme-sync-'));
  writeFileSync(join(dir, 'registry.json'), JSON.stringify({
    saes: [{ sae_id: 'SAE_A1', kme_id: 'KME_A' }, { sae_id: 'SAE_B1', kme_id: 'KME_B' }],
  }));
  const registry = await Registry.open(join(dir, 'registry.json'));
  const ca = await createCa({ cn: 'test CA' });
  const a = await makeNode('KME_A', 'KME_B', ca, registry);
  const b = await makeNode('KME_B', 'KME_A', ca, registry);
  // Each side keeps at most four blocks' worth of its own unused key (all it gets here at first).
  A = connect(a, b, 1000, 4 * 2048);
  B = connect(b, a, 1000, 4 * 2048);
  const sim = new SimQkdModule({ linkId: LINK, moduleId: 'm', seed: Buffer.alloc(32, 9), rateBps: 1e6, blockBits: 2048, epochMs: 0, clock: systemClock });
  const blocks = Array.from({ length: 8 }, (_, i) => ({ blockId: i, bits: 2048, material: sim.material(i) }));
  for (const n of [A, B]) n.store.db.transaction(() => n.pool.ingest(blocks))();
  await A.sync.maintain();
  await B.sync.maintain();
});

afterEach(async () => {
  for (const n of [A, B]) {
    await n.server.close();
    n.store.close();
  }
  rmSync(dir, { recursive: true, force: true });
});

const req = { master: 'SAE_A1', slaves: ['SAE_B1'], number: 2, size: 256 };
const state = (n: Node, rid: string) => n.store.s.resGet.get(rid);

/** What the owner does before it calls the peer: carve and record `pending`. Returns the message it would send. */
function carvePending(n: Node): { res: PeerReservation; material: Buffer[] } {
  return n.store.db.transaction(() => {
    const c = n.pool.carve([{ number: 1, size: 256 }], n.sync.peerHw)[0];
    if (c instanceof KmeError || !c) throw new Error('carve failed');
    const res: PeerReservation = {
      rid: randomUUID(), master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: [randomUUID()], slices: c.slices, size: 256, expires_at: Date.now() + 60_000,
    };
    n.store.s.resPut.run({
      rid: res.rid, link: LINK, role: 'owner', state: 'pending', master: res.master, slaves: '["SAE_B1"]',
      key_ids: JSON.stringify(res.key_ids), size: 256, expires_at: res.expires_at, created_at: Date.now() - 10_000, peer_acked: 1, first_block: c.slices[0]![0]![0], last_block: c.slices[0]![0]![0],
    });
    return { res, material: c.material };
  })();
}

describe('LinkSync over the KME-to-KME channel', () => {
  it('answers only once the peer has committed the same key material', async () => {
    expect(A.sync.peerReachable).toBe(true);
    expect(A.sync.peerHw).toBe(7);
    const keys = await A.sync.request(req);
    expect(keys).toHaveLength(2);
    for (const k of keys) {
      const row = B.store.s.keyGet.get(k.keyId)!;
      expect(B.sealer.open(row.sealed, keyAad(k.keyId)).equals(k.material)).toBe(true);
    }
    // B carves from its own (odd) blocks for the other direction, concurrently
    const both = await Promise.all([A.sync.request(req), B.sync.request({ ...req, master: 'SAE_B1', slaves: ['SAE_A1'] })]);
    const all = [...keys, ...both.flat()].map((k) => k.material.toString('hex'));
    expect(new Set(all).size).toBe(all.length);
  });

  it('fails closed when the peer is down, burns the slices, and delivers the VOID later', async () => {
    const port = B.server.port;
    await B.server.close();
    // A still believes the peer is up: the call itself fails
    await expect(A.sync.request(req)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    const voided = A.store.db.prepare("SELECT * FROM reservations WHERE role = 'owner'").all() as Array<{ rid: string; state: string; peer_acked: number }>;
    expect(voided).toHaveLength(1);
    expect(voided[0]).toMatchObject({ state: 'voided', peer_acked: 0 });
    const before = A.pool.ownedAvailableBits(7);
    await A.sync.maintain();
    expect(A.sync.peerReachable).toBe(false);
    await expect(A.sync.request(req)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(A.pool.ownedAvailableBits(7)).toBe(before); // refused at once, nothing carved
    B.server = await startPeerServer({ host: '127.0.0.1', port, tls: B.tls, links: B.links, logger });
    // the channel reconnects by itself, with backoff
    for (let i = 0; i < 50 && !A.sync.peerReachable; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await A.sync.maintain();
    }
    expect(A.sync.peerReachable).toBe(true);
    expect(state(A, voided[0]!.rid)).toMatchObject({ state: 'voided', peer_acked: 1 });
    expect(state(B, voided[0]!.rid)).toMatchObject({ role: 'peer', state: 'voided' });
    expect((await A.sync.request(req))).toHaveLength(2);
  });

  it('a reservation the peer never saw is voided on both sides by recovery, and a late copy never commits', async () => {
    const { res } = carvePending(A);
    await A.sync.maintain();
    expect(state(A, res.rid)).toMatchObject({ state: 'voided', peer_acked: 0 });
    await A.sync.maintain(); // delivers the VOID
    expect(state(A, res.rid)).toMatchObject({ state: 'voided', peer_acked: 1 });
    expect(state(B, res.rid)).toMatchObject({ role: 'peer', state: 'voided' });
    const late = await B.sync.onReservations({ from: 'KME_A', hw: 7, erasable_below: 0, reservations: [res] });
    expect(late.results[0]).toMatchObject({ rid: res.rid, state: 'voided' });
    expect(B.store.s.keyGet.get(res.key_ids[0]!)).toBeUndefined();
  });

  it('a reservation the peer committed before the owner crashed stays committed: the promise is kept', async () => {
    const { res, material } = carvePending(A);
    const r = await B.sync.onReservations({ from: 'KME_A', hw: 7, erasable_below: 0, reservations: [res] });
    expect(r.results[0]!.state).toBe('committed');
    await A.sync.maintain();
    expect(state(A, res.rid)).toMatchObject({ state: 'committed' });
    const row = B.store.s.keyGet.get(res.key_ids[0]!)!;
    expect(B.sealer.open(row.sealed, keyAad(res.key_ids[0]!)).equals(material[0]!)).toBe(true);
  });

  it('the peer refuses reused slices, foreign SAEs and an expiry out of range', async () => {
    const { res } = carvePending(A);
    const send = (r: PeerReservation) => B.sync.onReservations({ from: 'KME_A', hw: 7, erasable_below: 0, reservations: [r] });
    expect((await send(res)).results[0]!.state).toBe('committed');
    expect((await send({ ...res, rid: randomUUID(), key_ids: [randomUUID()] })).results[0]!.state).toBe('refused');
    const next = carvePending(A).res;
    expect((await send({ ...next, slaves: ['SAE_A1'] })).results[0]).toMatchObject({ state: 'refused', reason: expect.stringMatching(/not attached to KME_B/) });
    expect((await send({ ...next, expires_at: Date.now() + 3_600_000 })).results[0]).toMatchObject({ state: 'refused', reason: expect.stringMatching(/clocks/) });
    await expect(B.sync.onReservations({ from: 'KME_C', hw: 7, erasable_below: 0, reservations: [next] })).rejects.toMatchObject({ code: 'UNAUTHORIZED' });
  });

  it('a VOID never touches a reservation the receiver owns', async () => {
    const keys = await B.sync.request({ ...req, master: 'SAE_B1', slaves: ['SAE_A1'] });
    const rid = B.store.db.prepare("SELECT rid FROM reservations WHERE role = 'owner'").get() as { rid: string };
    await B.sync.onVoid([rid.rid]);
    expect(state(B, rid.rid)!.state).toBe('committed');
    expect(keys).toHaveLength(2);
  });

  it('an alarm at one end discards the blocks and voids their reservations at both ends', async () => {
    const keys = await A.sync.request(req); // carved from block 0
    expect(B.store.s.keyGet.get(keys[0]!.keyId)).toBeDefined();
    await A.sync.onModuleAlarm(0, 3, 'eavesdropping');
    // the peer hears it over the channel
    for (let i = 0; i < 50 && B.store.s.keyGet.get(keys[0]!.keyId); i++) await new Promise((r) => setTimeout(r, 20));
    expect(B.store.s.keyGet.get(keys[0]!.keyId)).toBeUndefined();
    for (const n of [A, B]) {
      expect(n.store.s.blocksInRange.all(LINK, 0, 3)).toEqual([]);
      expect(n.store.db.prepare("SELECT count(*) AS c FROM reservations WHERE state != 'voided'").get()).toEqual({ c: 0 });
    }
    // new keys come from blocks after the range only
    const next = await A.sync.request(req);
    const rid = A.store.db.prepare("SELECT first_block FROM reservations WHERE state = 'committed' OR state = 'pending'").all() as Array<{ first_block: number }>;
    expect(next).toHaveLength(2);
    expect(rid.every((r) => r.first_block > 3)).toBe(true);
  });

  it('blocks an alarm names before they arrive are never stored', async () => {
    await A.sync.applyAlarm(9, 10, 'qber_threshold', 'module');
    const sim = new SimQkdModule({ linkId: LINK, moduleId: 'm', seed: Buffer.alloc(32, 9), rateBps: 1e6, blockBits: 2048, epochMs: 0, clock: systemClock });
    A.store.db.transaction(() => A.pool.ingest([8, 9, 10, 11].map((i) => ({ blockId: i, bits: 2048, material: sim.material(i) }))))();
    expect(A.pool.highWater()).toBe(11);
    expect(A.store.s.blocksInRange.all(LINK, 8, 11).map((b) => b.block_id)).toEqual([8, 11]);
    await expect(A.sync.applyAlarm(5, 2, 'x', 'peer')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    // a peer cannot stop the link for good with a range far in the future
    await expect(A.sync.applyAlarm(12, 1e12, 'x', 'peer')).rejects.toMatchObject({ code: 'BAD_REQUEST' });
    // ranges behind the high-water mark are forgotten
    expect(A.store.db.prepare('SELECT count(*) AS n FROM discarded').get()).toEqual({ n: 0 });
  });

  it('an alarm finds a reservation however many blocks it spans', async () => {
    // 2 keys of 2048 bits = 2 blocks each: one reservation from block 0 to block 2 (owned blocks are even)
    const keys = await A.sync.request({ ...req, number: 2, size: 2048 });
    const row = A.store.db.prepare("SELECT first_block, last_block FROM reservations WHERE role = 'owner'").get() as { first_block: number; last_block: number };
    expect(row.last_block - row.first_block).toBeGreaterThan(0);
    const r = await B.sync.applyAlarm(row.last_block, row.last_block, 'eavesdropping', 'module');
    expect(r.voided).toBe(1);
    expect(B.store.s.keyGet.get(keys[0]!.keyId)).toBeUndefined();
  });

  it('the peer never answers committed for a reservation an alarm voided meanwhile', async () => {
    const { res } = carvePending(A);
    const block = res.slices[0]![0]![0];
    const [answer] = await Promise.all([
      B.sync.onReservations({ from: 'KME_A', hw: 7, erasable_below: 0, reservations: [res] }),
      B.sync.applyAlarm(block, block, 'eavesdropping', 'module'),
    ]);
    expect(answer.results[0]!.state).toBe('voided');
    expect(B.store.s.keyGet.get(res.key_ids[0]!)).toBeUndefined();
  });

  it('an owner voided by an alarm also tells the peer to void', async () => {
    await A.sync.request(req);
    const rid = (A.store.db.prepare("SELECT rid FROM reservations WHERE role = 'owner'").get() as { rid: string }).rid;
    await A.sync.applyAlarm(0, 7, 'eavesdropping', 'module');
    expect(state(A, rid)).toMatchObject({ state: 'voided', peer_acked: 0 });
    await A.sync.maintain();
    expect(state(A, rid)).toMatchObject({ state: 'voided', peer_acked: 1 });
    expect(state(B, rid)).toMatchObject({ state: 'voided' });
  });

  it('one-way traffic does not starve the link: the idle side burns its oldest unused blocks and the heartbeat lets the other erase them', async () => {
    const sim = new SimQkdModule({ linkId: LINK, moduleId: 'm', seed: Buffer.alloc(32, 9), rateBps: 1e6, blockBits: 2048, epochMs: 0, clock: systemClock });
    const more = Array.from({ length: 8 }, (_, i) => ({ blockId: 8 + i, bits: 2048, material: sim.material(8 + i) }));
    for (const n of [A, B]) n.store.db.transaction(() => n.pool.ingest(more))();
    const peerBlocksAtA = () => (A.store.db.prepare('SELECT block_id FROM blocks WHERE mine = 0 ORDER BY block_id').all() as Array<{ block_id: number }>).map((r) => r.block_id);
    expect(peerBlocksAtA()).toEqual([1, 3, 5, 7, 9, 11, 13, 15]);
    // Only A's SAEs ask for keys; B keeps at most four blocks' worth of its own.
    await A.sync.request({ ...req, number: 8 });
    await B.sync.maintain();
    const ownedAtB = (B.store.db.prepare('SELECT block_id FROM blocks WHERE mine = 1 ORDER BY block_id').all() as Array<{ block_id: number }>).map((r) => r.block_id);
    expect(ownedAtB).toEqual([9, 11, 13, 15]);
    expect(B.pool.erasableBelow()).toBe(9);
    await new Promise((r) => setTimeout(r, 50)); // A erases in its next commit
    expect(peerBlocksAtA()).toEqual([9, 11, 13, 15]);
    // A's own blocks in use are untouched; B can still serve every key A promised.
    expect(A.pool.ownedAvailableBits(A.sync.peerHw)).toBe(8 * 2048 - 8 * 256);
    const keys = await A.sync.request(req);
    expect(B.store.s.keyGet.get(keys[0]!.keyId)).toBeDefined();
  });
});
