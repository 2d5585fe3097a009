/** Group commit over a real SQLite file: one transaction per turn, savepoints, durability, fsync failure. */
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/common/logger.js';
import { openDb } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-batch-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

describe('TxBatcher', () => {
  it('runs the work of one turn in one transaction, each item in its own savepoint', async () => {
    const db = openDb(join(dir, 's.sqlite'));
    db.exec('CREATE TABLE t (v INTEGER UNIQUE)');
    const b = new TxBatcher(db, silentLogger());
    const ins = db.prepare('INSERT INTO t VALUES (?)');
    const results = await Promise.allSettled([
      b.run(() => ins.run(1)),
      b.run(() => {
        ins.run(2);
        ins.run(1); // unique violation: this item alone rolls back
      }),
      b.runVolatile(() => ins.run(3)),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(db.prepare('SELECT v FROM t ORDER BY v').all()).toEqual([{ v: 1 }, { v: 3 }]);
    await b.drain();
    b.close();
    db.close();
  });

  it('settles durable work only after the fsync, and a failed fsync stops the daemon', async () => {
    const path = join(dir, 'r.sqlite');
    // A database without a WAL file: the batcher cannot flush it, and must say so.
    const db = new Database(path);
    db.pragma('journal_mode = DELETE');
    db.exec('CREATE TABLE t (v INTEGER)');
    const errors: unknown[] = [];
    const b = new TxBatcher(db, silentLogger(), (e) => errors.push(e));
    await expect(b.run(() => db.prepare('INSERT INTO t VALUES (1)').run())).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    expect(errors).toHaveLength(1);
    db.close();
  });
});
