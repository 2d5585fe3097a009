/**
 * The key pool of one QKD link, as stored at this KME: block ingestion, the
 * ownership rule, carving slices from owned blocks (owner side) and checking
 * and materialising a peer's reservation (peer side). Everything here runs
 * synchronously inside a store transaction (see tx-batcher.ts); the network
 * side of the agreement is in link-sync.ts.
 */
import { KmeError } from '../common/errors.js';
import type { KeyBlock } from '../../drivers/types.js';
import { blockAad, keyAad } from './block-aad.js';
import type { Sealer } from './seal.js';
import type { BlockMeta, Slice, Store } from './store.js';
import type { PeerReservation, PeerRidState } from './peer-protocol.js';

export interface LinkPoolOptions {
  linkId: string;
  myKmeId: string;
  peerKmeId: string;
  /** Ingestion pauses when the link's stored bits reach this. */
  capacityBits: number;
}

/** A request to carve `number` keys of `size` bits. */
export interface CarveRequest {
  number: number;
  size: number;
}

export interface Carved {
  slices: Slice[][];
  /** Secret; the caller zeroes each buffer once it is encoded. */
  material: Buffer[];
}

interface OpenBlock {
  row: BlockMeta;
  /** Bits [row.start_bit, row.bits), decrypted only once something is carved from it. */
  plain?: Buffer;
  pos: number; // next uncarved bit
}

export class LinkPool {
  readonly opts: LinkPoolOptions;
  readonly #store: Store;
  readonly #sealer: Sealer;
  /** Parity of the block ids this KME owns: the smaller KME id owns the even blocks. */
  readonly #myParity: number;

  constructor(opts: LinkPoolOptions, store: Store, sealer: Sealer) {
    this.opts = opts;
    this.#store = store;
    this.#sealer = sealer;
    this.#myParity = opts.myKmeId < opts.peerKmeId ? 0 : 1;
  }

  get linkId(): string {
    return this.opts.linkId;
  }

  isMine(blockId: number): boolean {
    return blockId % 2 === this.#myParity;
  }

  highWater(): number {
    return this.#store.highWater(this.opts.linkId);
  }

  /** Bits this KME may carve now: owned, uncarved, and held by the peer too. */
  ownedAvailableBits(peerHw: number): number {
    return this.#store.s.ownedBits.get(this.opts.linkId, peerHw)?.n ?? 0;
  }

  stats(): { blocks: number; bits: number } {
    const r = this.#store.s.blockStats.get(this.opts.linkId);
    return { blocks: r?.n ?? 0, bits: r?.bits ?? 0 };
  }

  isFull(): boolean {
    return this.stats().bits >= this.opts.capacityBits;
  }

  /** Block ranges an alarm said never to use (loaded once, kept in step by discard()). */
  #discarded: Array<{ first_block: number; last_block: number }> | undefined;

  #isDiscarded(blockId: number): boolean {
    this.#discarded ??= this.#store.s.discardList.all(this.opts.linkId);
    return this.#discarded.some((d) => blockId >= d.first_block && blockId <= d.last_block);
  }

  /**
   * An alarm: blocks [first, last] must never give key. Erase those held here
   * (either owner's) and remember the part not received yet, so it is never
   * stored. Run in a transaction. Returns how many held blocks were erased.
   */
  discard(first: number, last: number): number {
    const link = this.opts.linkId;
    const held = this.#store.s.blocksInRange.all(link, first, last);
    for (const b of held) this.#store.eraseBlock(link, b.block_id);
    const from = Math.max(first, this.highWater() + 1);
    if (last >= from) {
      this.#store.s.discardAdd.run(link, from, last);
      this.#discarded = undefined;
    }
    return held.length;
  }

  /** Store blocks sealed and advance the high-water mark. Run in a transaction. */
  ingest(blocks: KeyBlock[]): number {
    const link = this.opts.linkId;
    let hw = this.highWater();
    for (const b of blocks) {
      if (b.blockId <= hw) continue; // already held
      if (!Number.isSafeInteger(b.bits) || b.bits <= 0 || b.bits % 8 !== 0 || b.material.length * 8 !== b.bits) {
        throw new KmeError('INTERNAL', `block ${b.blockId} has ${b.material.length} bytes for ${b.bits} bits`);
      }
      // A gap means blocks the module no longer has (it restarted, or its buffer overflowed):
      // both ends of the link see the same gap, and the peer refuses any slice it does not hold.
      hw = b.blockId;
      if (this.#isDiscarded(b.blockId)) continue; // an alarm named it before it arrived
      this.#store.s.blockPut.run({ link, block_id: b.blockId, bits: b.bits, mine: this.isMine(b.blockId) ? 1 : 0, start_bit: 0 });
      this.#store.s.dataPut.run(link, b.blockId, this.#sealer.seal(b.material, blockAad(link, b.blockId, 0)));
    }
    // Discarded ranges wholly behind us can go.
    if (this.#discarded?.some((d) => d.last_block <= hw)) {
      this.#store.s.discardDrop.run(link, hw);
      this.#discarded = undefined;
    }
    this.#store.s.hwPut.run(link, hw);
    return hw;
  }

  /**
   * Carve keys for each request in order, from owned blocks the peer holds
   * (id <= peerHw). A request that cannot be met in full gets an error and
   * takes nothing. Cursors advance in the store; exhausted blocks are erased
   * and partly carved ones resealed without the carved bits. Run in a transaction.
   */
  carve(requests: CarveRequest[], peerHw: number): Array<Carved | KmeError> {
    const link = this.opts.linkId;
    const open: OpenBlock[] = [];
    let lastLoaded = -1;
    let exhausted = false;
    const available = () => open.reduce((n, b) => n + (b.row.bits - b.pos), 0);
    const loadUntil = (need: number) => {
      while (!exhausted && available() < need) {
        const rows = this.#store.s.ownedBlocks.all(link, peerHw, lastLoaded, 4);
        if (rows.length < 4) exhausted = true;
        for (const row of rows) {
          lastLoaded = row.block_id;
          open.push({ row, pos: row.start_bit });
        }
      }
    };
    const out: Array<Carved | KmeError> = [];
    try {
      for (const req of requests) {
        const need = req.number * req.size;
        loadUntil(need);
        if (available() < need) {
          out.push(new KmeError('UNAVAILABLE', 'not enough key material in the pool for this request'));
          continue;
        }
        const carved: Carved = { slices: [], material: [] };
        let bi = open.findIndex((b) => b.pos < b.row.bits);
        for (let k = 0; k < req.number; k++) {
          const slices: Slice[] = [];
          const parts: Buffer[] = [];
          let left = req.size;
          while (left > 0) {
            const b = open[bi]!;
            b.plain ??= this.#openData(b.row, b.row.start_bit);
            const take = Math.min(left, b.row.bits - b.pos);
            const from = (b.pos - b.row.start_bit) / 8;
            parts.push(b.plain.subarray(from, from + take / 8));
            slices.push([b.row.block_id, b.pos, take]);
            b.pos += take;
            left -= take;
            if (b.pos === b.row.bits) bi++;
          }
          carved.slices.push(slices);
          carved.material.push(Buffer.concat(parts));
        }
        out.push(carved);
      }
      for (const b of open) {
        if (b.pos === b.row.start_bit) continue;
        this.#keepTail(b.row, b.plain!, b.pos);
      }
    } catch (e) {
      for (const c of out) if (!(c instanceof KmeError)) c.material.forEach((m) => m.fill(0));
      throw e;
    } finally {
      for (const b of open) b.plain?.fill(0);
    }
    return out;
  }

  /**
   * Burn (erase) this side's oldest owned blocks while it holds more than `maxBits` uncarved
   * bits in owned blocks the peer holds too (up to `peerHw`): key nobody asked for in time is
   * dropped, as a full module would.
   * Owned blocks are only ever erased oldest first, so erasableBelow() stays true. Run in a
   * transaction. Returns the number of blocks burnt.
   */
  trimOwned(maxBits: number, peerHw: number): number {
    const link = this.opts.linkId;
    // Counted as ownedAvailableBits counts (blocks the peer holds too): what this side can promise.
    let excess = (this.#store.s.ownedBits.get(link, peerHw)?.n ?? 0) - maxBits;
    let burnt = 0;
    let after = -1;
    while (excess > 0) {
      const rows = this.#store.s.ownedBlocks.all(link, peerHw, after, 64);
      if (rows.length === 0) break;
      for (const r of rows) {
        if (excess <= 0) break;
        this.#store.eraseBlock(link, r.block_id);
        excess -= r.bits - r.start_bit;
        after = r.block_id;
        burnt++;
      }
    }
    return burnt;
  }

  /** Lowest owned block still holding uncarved bits (all owned blocks below it are gone). */
  erasableBelow(): number {
    return this.#store.s.lowestOwned.get(this.opts.linkId)?.b ?? this.highWater() + 1;
  }

  /** The owner says every block it owns below `below` is fully carved and sent. */
  erasePeerBlocksBelow(below: number): void {
    this.#store.s.erasePeerData.run({ link: this.opts.linkId, below });
    this.#store.s.erasePeerBlocks.run({ link: this.opts.linkId, below });
  }

  /**
   * Keep only bits [from, bits) of a block whose decrypted material from
   * row.start_bit is `plain`: reseal the tail, or erase the block when
   * nothing is left. Carved (or skipped) bits are never kept at rest.
   */
  #keepTail(row: BlockMeta, plain: Buffer, from: number): void {
    if (from === row.start_bit) return;
    if (from >= row.bits) return this.#store.eraseBlock(row.link, row.block_id);
    const tail = plain.subarray((from - row.start_bit) / 8);
    this.#store.s.blockCursor.run(from, row.link, row.block_id);
    this.#store.s.dataPut.run(row.link, row.block_id, this.#sealer.seal(tail, blockAad(row.link, row.block_id, from)));
  }

  /** Decrypt a block's stored material, sealed when its first bit was `sealedFrom`. */
  #openData(row: BlockMeta, sealedFrom: number): Buffer {
    const d = this.#store.s.dataGet.get(row.link, row.block_id);
    if (!d) throw new KmeError('INTERNAL', `block ${row.block_id} has no material`);
    return this.#sealer.open(d.sealed, blockAad(row.link, row.block_id, sealedFrom));
  }

  /**
   * Peer side: check the reservations of one message from the owner, in order,
   * and commit each that passes, materialising its keys as sealed records.
   * `precheck` vets what this pool cannot (shape, SAEs); a reservation is then
   * refused unless every slice lies in a block held here, owned by the sender,
   * at or beyond that block's cursor (the owner carves in order, so all bits
   * below a cursor are used or burnt). Each block touched is opened once and
   * afterwards keeps only its unused tail at rest. Idempotent on rid. Run in a
   * transaction; a refused reservation changes nothing.
   */
  acceptAll(rs: PeerReservation[], precheck: (r: PeerReservation) => string | undefined): Array<{ rid: string; state: PeerRidState; reason?: string }> {
    const s = this.#store.s;
    const link = this.opts.linkId;
    const opened = new Map<number, { row: BlockMeta; plain: Buffer; cursor: number }>();
    const open = (blockId: number) => {
      let b = opened.get(blockId);
      if (!b) {
        const row = s.blockGet.get(link, blockId);
        if (!row) return undefined;
        b = { row, plain: this.#openData(row, row.start_bit), cursor: row.start_bit };
        opened.set(blockId, b);
      }
      return b;
    };
    const one = (r: PeerReservation): { state: PeerRidState; reason?: string } => {
      const bad = precheck(r);
      if (bad) return { state: 'refused', reason: bad };
      const known = s.resGet.get(r.rid);
      if (known) return known.role === 'peer' ? { state: known.state } : { state: 'refused', reason: 'rid in use' };
      if (r.key_ids.length !== r.slices.length) return { state: 'refused', reason: 'key_ids and slices differ in length' };
      const cursors = new Map<number, number>();
      const keys: Buffer[] = [];
      try {
        for (const [i, slices] of r.slices.entries()) {
          const parts: Buffer[] = [];
          let bits = 0;
          for (const [blockId, offset, n] of slices) {
            if (this.isMine(blockId)) return { state: 'refused', reason: `block ${blockId} is not the sender's` };
            const b = open(blockId);
            if (!b) return { state: 'refused', reason: `block ${blockId} not held` };
            const cursor = cursors.get(blockId) ?? b.cursor;
            if (n <= 0 || n % 8 !== 0 || offset % 8 !== 0 || offset < cursor || offset + n > b.row.bits) {
              return { state: 'refused', reason: `slice ${blockId}:${offset}+${n} not free` };
            }
            const from = (offset - b.row.start_bit) / 8;
            parts.push(b.plain.subarray(from, from + n / 8));
            cursors.set(blockId, offset + n);
            bits += n;
          }
          if (bits !== r.size) return { state: 'refused', reason: `key ${i} has ${bits} bits, not ${r.size}` };
          keys.push(Buffer.concat(parts));
        }
        this.#store.db.transaction(() => {
          storeKeyRecords(this.#store, this.#sealer, r.rid, r.master, r.slaves, r.key_ids, keys, r.expires_at);
          s.resPut.run({
            rid: r.rid, link, role: 'peer', state: 'committed', master: r.master, slaves: JSON.stringify(r.slaves),
            key_ids: JSON.stringify(r.key_ids), size: r.size, expires_at: r.expires_at, created_at: Date.now(), peer_acked: 1,
            ...blockSpan(r.slices),
          });
        })();
        for (const [blockId, c] of cursors) opened.get(blockId)!.cursor = c;
        return { state: 'committed' };
      } catch (e) {
        return { state: 'refused', reason: (e as Error).message };
      } finally {
        for (const k of keys) k.fill(0);
      }
    };
    try {
      return rs.map((r) => ({ rid: String(r?.rid), ...one(r) }));
    } finally {
      for (const b of opened.values()) {
        this.#keepTail(b.row, b.plain, b.cursor);
        b.plain.fill(0);
      }
    }
  }
}

/** The lowest and highest block a reservation's slices lie in. */
export function blockSpan(slices: Slice[][]): { first_block: number; last_block: number } {
  let first = Infinity;
  let last = -Infinity;
  for (const list of slices) for (const [b] of list) (first = Math.min(first, b)), (last = Math.max(last, b));
  return { first_block: first, last_block: last };
}

/** Write sealed key records for the slaves to fetch (peer side, and same-node pairs). */
export function storeKeyRecords(
  store: Store, sealer: Sealer, rid: string, master: string, slaves: string[],
  keyIds: string[], keys: Buffer[], expiresAt: number,
): void {
  const slaveList = JSON.stringify(slaves);
  for (const [i, keyId] of keyIds.entries()) {
    store.s.keyPut.run(keyId, rid, master, slaveList, sealer.seal(keys[i]!, keyAad(keyId)), expiresAt);
  }
}
