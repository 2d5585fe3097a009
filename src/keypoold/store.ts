/**
 * The durable key store: SQLite in WAL mode, every commit made durable by an
 * fsync of the WAL before anything that depends on it is answered (see
 * tx-batcher.ts), and secure_delete (freed pages are overwritten). Key material is only ever stored sealed (see seal.ts). This
 * file is data access only: no key logic.
 */
import Database from 'better-sqlite3';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';

export type Db = Database.Database;

export type ReservationRole = 'owner' | 'peer' | 'local';
export type ReservationState = 'pending' | 'committed' | 'voided';

/** A slice of link key: bits [offset, offset+bits) of one block. */
export type Slice = [blockId: number, offset: number, bits: number];

export interface ReservationRow {
  seq: number;
  rid: string;
  link: string | null;
  role: ReservationRole;
  state: ReservationState;
  master: string;
  slaves: string; // JSON string[]
  key_ids: string; // JSON string[]
  size: number;
  expires_at: number;
  created_at: number;
  peer_acked: number;
  /** Lowest and highest block id the reservation's slices lie in (null for same-node keys). */
  first_block: number | null;
  last_block: number | null;
}

/** A block's bookkeeping; its sealed material is in block_data, read only when carved from. */
export interface BlockMeta {
  link: string;
  block_id: number;
  bits: number;
  mine: number;
  start_bit: number;
}

export interface KeyRow {
  key_id: string;
  rid: string;
  master: string;
  /** JSON string[]: every slave the key was issued for. */
  slaves: string;
  /** JSON string[]: the slaves that have fetched it. */
  fetched: string;
  sealed: Buffer;
  expires_at: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS link_state (link TEXT PRIMARY KEY, high_water INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocks (
  link TEXT NOT NULL, block_id INTEGER NOT NULL, bits INTEGER NOT NULL,
  mine INTEGER NOT NULL, start_bit INTEGER NOT NULL,
  PRIMARY KEY (link, block_id)) WITHOUT ROWID;
-- Each side's blocks apart: the peer's spent blocks are erased by a range below a bound, and the
-- owner looks for its lowest unused block, without walking the other side's blocks in between.
-- Covering (bits, start_bit): counting a side's unused bits reads this index alone.
CREATE INDEX IF NOT EXISTS blocks_by_owner ON blocks(link, mine, block_id, bits, start_bit);
CREATE TABLE IF NOT EXISTS block_data (
  link TEXT NOT NULL, block_id INTEGER NOT NULL, sealed BLOB NOT NULL,
  PRIMARY KEY (link, block_id));
CREATE TABLE IF NOT EXISTS reservations (
  seq INTEGER PRIMARY KEY, rid TEXT NOT NULL UNIQUE, link TEXT, role TEXT NOT NULL, state TEXT NOT NULL,
  master TEXT NOT NULL, slaves TEXT NOT NULL, key_ids TEXT NOT NULL,
  size INTEGER NOT NULL, expires_at INTEGER NOT NULL, created_at INTEGER NOT NULL,
  peer_acked INTEGER NOT NULL DEFAULT 1, first_block INTEGER, last_block INTEGER);
CREATE INDEX IF NOT EXISTS reservations_last_block ON reservations(link, last_block) WHERE last_block IS NOT NULL;
CREATE TABLE IF NOT EXISTS discarded (link TEXT NOT NULL, first_block INTEGER NOT NULL, last_block INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS reservations_pending ON reservations(link, created_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS reservations_unacked ON reservations(link) WHERE peer_acked = 0;
CREATE TABLE IF NOT EXISTS audit_outbox (seq INTEGER PRIMARY KEY, line TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
  key_id TEXT PRIMARY KEY, rid TEXT NOT NULL, master TEXT NOT NULL, slaves TEXT NOT NULL,
  fetched TEXT NOT NULL DEFAULT '[]', sealed BLOB NOT NULL, expires_at INTEGER NOT NULL) WITHOUT ROWID;
`;

export function openDb(path: string): Db {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  // NORMAL: a commit writes the WAL without fsync; TxBatcher fsyncs the WAL
  // before any answer depends on it (off the event loop), and checkpoints
  // fsync the database file before the WAL is reused.
  db.pragma('synchronous = NORMAL');
  db.pragma('secure_delete = ON');
  db.pragma('busy_timeout = 5000');
  // Statement journals (one per savepoint) and the page cache stay in memory:
  // no temporary files with store pages in them, no page-read syscalls.
  db.pragma('temp_store = MEMORY');
  db.pragma('cache_size = -65536');
  db.exec(SCHEMA);
  return db;
}

/** Prepared statements, built once. */
export class Store {
  readonly db: Db;
  readonly #s;

  constructor(db: Db) {
    this.db = db;
    this.#s = {
      metaGet: db.prepare<[string], { v: Buffer }>('SELECT v FROM meta WHERE k = ?'),
      metaPut: db.prepare('INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)'),
      metaDelete: db.prepare('DELETE FROM meta WHERE k = ?'),
      metaPrefix: db.prepare<[string, string], { k: string; v: Buffer }>('SELECT k, v FROM meta WHERE k >= ? AND k < ? ORDER BY k'),
      /** Re-encryption passes (rekey.ts): sealed records in a stable order, a chunk at a time. */
      rekeyBlocks: db.prepare<[number, number], { r: number; link: string; block_id: number; sealed: Buffer; start_bit: number }>(
        `SELECT d.rowid AS r, d.link, d.block_id, d.sealed, b.start_bit FROM block_data d
           JOIN blocks b ON b.link = d.link AND b.block_id = d.block_id WHERE d.rowid > ? ORDER BY d.rowid LIMIT ?`,
      ),
      rekeyBlockPut: db.prepare('UPDATE block_data SET sealed = ? WHERE rowid = ?'),
      rekeyKeys: db.prepare<[string, number], { key_id: string; sealed: Buffer }>('SELECT key_id, sealed FROM keys WHERE key_id > ? ORDER BY key_id LIMIT ?'),
      rekeyKeyPut: db.prepare('UPDATE keys SET sealed = ? WHERE key_id = ?'),
      countBlockData: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM block_data'),
      countKeys: db.prepare<[], { n: number }>('SELECT count(*) AS n FROM keys'),
      /** Audit lines recorded in a transaction, kept until the trail holds them (audit-log.ts). */
      outboxPut: db.prepare('INSERT OR REPLACE INTO audit_outbox (seq, line) VALUES (?, ?)'),
      outboxAll: db.prepare<[], { line: string }>('SELECT line FROM audit_outbox ORDER BY seq'),
      outboxTrim: db.prepare('DELETE FROM audit_outbox WHERE seq <= ?'),
      hwGet: db.prepare<[string], { high_water: number }>('SELECT high_water FROM link_state WHERE link = ?'),
      hwPut: db.prepare('INSERT OR REPLACE INTO link_state (link, high_water) VALUES (?, ?)'),
      blockPut: db.prepare(
        'INSERT OR IGNORE INTO blocks (link, block_id, bits, mine, start_bit) VALUES (@link, @block_id, @bits, @mine, @start_bit)',
      ),
      dataPut: db.prepare('INSERT OR REPLACE INTO block_data (link, block_id, sealed) VALUES (?, ?, ?)'),
      dataGet: db.prepare<[string, number], { sealed: Buffer }>('SELECT sealed FROM block_data WHERE link = ? AND block_id = ?'),
      blockGet: db.prepare<[string, number], BlockMeta>('SELECT * FROM blocks WHERE link = ? AND block_id = ?'),
      blockCursor: db.prepare('UPDATE blocks SET start_bit = ? WHERE link = ? AND block_id = ?'),
      blockDelete: db.prepare('DELETE FROM blocks WHERE link = ? AND block_id = ?'),
      dataDelete: db.prepare('DELETE FROM block_data WHERE link = ? AND block_id = ?'),
      ownedBlocks: db.prepare<[string, number, number, number], BlockMeta>(
        'SELECT * FROM blocks INDEXED BY blocks_by_owner WHERE link = ? AND mine = 1 AND block_id <= ? AND block_id > ? ORDER BY block_id LIMIT ?',
      ),
      ownedBits: db.prepare<[string, number], { n: number | null }>(
        'SELECT sum(bits - start_bit) AS n FROM blocks INDEXED BY blocks_by_owner WHERE link = ? AND mine = 1 AND block_id <= ?',
      ),
      lowestOwned: db.prepare<[string], { b: number | null }>('SELECT min(block_id) AS b FROM blocks WHERE link = ? AND mine = 1'),
      blockStats: db.prepare<[string], { n: number; bits: number | null }>(
        'SELECT count(*) AS n, sum(bits - start_bit) AS bits FROM blocks WHERE link = ?',
      ),
      erasePeerData: db.prepare(
        'DELETE FROM block_data WHERE link = @link AND block_id IN (SELECT block_id FROM blocks INDEXED BY blocks_by_owner WHERE link = @link AND mine = 0 AND block_id < @below)',
      ),
      erasePeerBlocks: db.prepare(
        'DELETE FROM blocks WHERE link = @link AND block_id IN (SELECT block_id FROM blocks INDEXED BY blocks_by_owner WHERE link = @link AND mine = 0 AND block_id < @below)',
      ),
      resGet: db.prepare<[string], ReservationRow>('SELECT * FROM reservations WHERE rid = ?'),
      resPut: db.prepare(
        `INSERT INTO reservations (rid, link, role, state, master, slaves, key_ids, size, expires_at, created_at, peer_acked, first_block, last_block)
         VALUES (@rid, @link, @role, @state, @master, @slaves, @key_ids, @size, @expires_at, @created_at, @peer_acked, @first_block, @last_block)`,
      ),
      resSetState: db.prepare('UPDATE reservations SET state = ?, peer_acked = ? WHERE rid = ?'),
      resSetStateBySeq: db.prepare('UPDATE reservations SET state = ?, peer_acked = ? WHERE seq = ?'),
      resAcked: db.prepare('UPDATE reservations SET peer_acked = 1 WHERE rid = ?'),
      resPending: db.prepare<[string, number, number], { rid: string }>(
        "SELECT rid FROM reservations WHERE state = 'pending' AND link = ? AND created_at < ? LIMIT ?",
      ),
      resUnacked: db.prepare<[string, number], { rid: string }>('SELECT rid FROM reservations WHERE peer_acked = 0 AND link = ? LIMIT ?'),
      /** Oldest reservations first (expiry follows insertion order closely). */
      resOldest: db.prepare<[number, number], Pick<ReservationRow, 'seq' | 'rid' | 'key_ids' | 'expires_at' | 'state' | 'peer_acked'>>(
        'SELECT seq, rid, key_ids, expires_at, state, peer_acked FROM reservations WHERE seq > ? ORDER BY seq LIMIT ?',
      ),
      resDelete: db.prepare('DELETE FROM reservations WHERE seq = ?'),
      /** Reservations with a slice in blocks [first, last]; `from` bounds the index scan (first - longest span). */
      /** Reservations with a slice in blocks [first, last] (alarms name recent blocks: few rows end at or after `first`). */
      resInBlocks: db.prepare<{ link: string; first: number; last: number }, ReservationRow>(
        `SELECT * FROM reservations WHERE link = @link AND last_block IS NOT NULL
           AND last_block >= @first AND first_block <= @last AND state != 'voided'`,
      ),
      discardDrop: db.prepare('DELETE FROM discarded WHERE link = ? AND last_block <= ?'),
      discardAdd: db.prepare('INSERT INTO discarded (link, first_block, last_block) VALUES (?, ?, ?)'),
      discardList: db.prepare<[string], { first_block: number; last_block: number }>('SELECT first_block, last_block FROM discarded WHERE link = ?'),
      blocksInRange: db.prepare<[string, number, number], { block_id: number }>('SELECT block_id FROM blocks WHERE link = ? AND block_id BETWEEN ? AND ?'),
      keyPut: db.prepare('INSERT INTO keys (key_id, rid, master, slaves, sealed, expires_at) VALUES (?, ?, ?, ?, ?, ?)'),
      keyGet: db.prepare<[string], KeyRow>('SELECT * FROM keys WHERE key_id = ?'),
      keyFetched: db.prepare('UPDATE keys SET fetched = ? WHERE key_id = ?'),
      keyDelete: db.prepare('DELETE FROM keys WHERE key_id = ?'),
    };
  }

  get s() {
    return this.#s;
  }

  getMeta(k: string): Buffer | undefined {
    return this.#s.metaGet.get(k)?.v;
  }

  putMeta(k: string, v: Buffer): void {
    this.#s.metaPut.run(k, v);
  }

  deleteMeta(k: string): void {
    this.#s.metaDelete.run(k);
  }

  /** Meta rows whose key starts with `prefix`, in key order. */
  metaWithPrefix(prefix: string): Array<{ k: string; v: Buffer }> {
    return this.#s.metaPrefix.all(prefix, prefix + '\uffff');
  }

  highWater(link: string): number {
    return this.#s.hwGet.get(link)?.high_water ?? -1;
  }

  /** Erase a block and its sealed material. */
  eraseBlock(link: string, blockId: number): void {
    this.#s.blockDelete.run(link, blockId);
    this.#s.dataDelete.run(link, blockId);
  }

  /** Erase one key record (secure_delete overwrites it). */
  eraseKey(keyId: string): void {
    this.#s.keyDelete.run(keyId);
  }

  /** Erase the key records of a reservation; returns the ids of those that were still there. */
  eraseKeysOf(r: Pick<ReservationRow, 'key_ids'>): string[] {
    const gone: string[] = [];
    for (const id of JSON.parse(r.key_ids) as string[]) if (this.#s.keyDelete.run(id).changes > 0) gone.push(id);
    return gone;
  }

  close(): void {
    this.db.close();
  }
}
