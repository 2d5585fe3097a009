/**
 * KeyService policy against a real store, registry and audit trail: the SAE
 * pair quota, refusing to serve while the master key is unavailable, the
 * audit events of a key's life (never key material), low-watermark events,
 * and erasure (a fetched key's sealed record is gone from the store's files
 * after a checkpoint).
 */
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmeError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/logger.js';
import { verifyAuditLog } from '../../src/common/audit-verify.js';
import { AuditLog } from '../../src/keypoold/audit-log.js';
import { Audit } from '../../src/keypoold/audit-sink.js';
import { KeyService } from '../../src/keypoold/key-service.js';
import { LowWatermark, type LowWatermarkEvent } from '../../src/keypoold/low-watermark.js';
import { PairQuota } from '../../src/keypoold/pair-quota.js';
import { Registry } from '../../src/keypoold/registry.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

const limits = { default_key_size: 256, min_key_size: 64, max_key_size: 1024, max_key_per_request: 8, max_key_count: 1000, max_SAE_ID_count: 2 };
const logger = silentLogger();
let dir: string;
let store: Store;
let auditLog: AuditLog;
let batcher: TxBatcher;
let stop: string | undefined;
const clock = { t: 1_000_000, now: () => clock.t, sleep: async () => {} };

async function makeService(quota?: PairQuota) {
  const registry = await Registry.open(join(dir, 'registry.json'));
  return new KeyService({
    kmeId: 'K', limits, ttlMs: 10_000, graceMs: 0, registry, store, sealer: new Sealer(randomBytes(32)),
    batcher, links: new Map(), clock, logger,
    audit: new Audit(auditLog, logger), quota, stopReason: () => stop,
  });
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-policy-'));
  writeFileSync(join(dir, 'registry.json'), JSON.stringify({
    saes: [
      { sae_id: 'M', kme_id: 'K', allowed_slaves: ['*'] },
      { sae_id: 'S1', kme_id: 'K' },
      { sae_id: 'S2', kme_id: 'K' },
    ],
  }));
  store = new Store(openDb(join(dir, 'ks.sqlite')));
  auditLog = AuditLog.open(join(dir, 'audit'), { segmentBytes: 1 << 20, clock, logger });
  batcher = new TxBatcher(store.db, logger, () => {}, () => auditLog.flush());
  stop = undefined;
});

afterEach(async () => {
  await auditLog.close();
  batcher.close();
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const failure = async (p: Promise<unknown>) => {
  try {
    await p;
  } catch (e) {
    return e instanceof KmeError ? `${e.code}: ${e.message}` : String(e);
  }
  return 'ok';
};

function trail(): Array<Record<string, unknown>> {
  const d = join(dir, 'audit');
  return readdirSync(d)
    .sort()
    .flatMap((f) => readFileSync(join(d, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

describe('SAE pair quota', () => {
  it('refuses a pair past its quota with 503 and when to retry, refills over time, and leaves other pairs alone', async () => {
    const service = await makeService(new PairQuota({ keys: 10, per_seconds: 10 }, clock));
    await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 8, size: 256 });
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 3, size: 256 }))).toMatch(
      /^UNAVAILABLE: the quota of SAE M towards S1 \(10 keys per 10 s\) is used up; try again in 1 s/,
    );
    // Another pair has its own quota.
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S2', additional: [], number: 8, size: 256 }))).toBe('ok');
    clock.t += 1000; // one key back
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 3, size: 256 }))).toBe('ok');
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 256 }))).toMatch(/used up/);
    clock.t += 60_000; // full again, never above the quota
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 8, size: 256 }))).toBe('ok');
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 3, size: 256 }))).toMatch(/used up/);
  });

  it('gives the quota back when a request fails after taking it', async () => {
    const quota = new PairQuota({ keys: 4, per_seconds: 3600 }, clock);
    const service = await makeService(quota);
    store.db.exec('DROP TABLE keys'); // the commit fails
    for (let i = 0; i < 3; i++) expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 4, size: 256 }))).toMatch(/no such table/);
    expect(() => quota.take('M', ['S1'], 4)).not.toThrow();
  });

  it('tells an SAE that asks for more than its whole quota to ask for fewer', () => {
    const quota = new PairQuota({ keys: 4, per_seconds: 60 }, clock);
    expect(() => quota.take('M', ['S1'], 5)).toThrow(/ask for fewer keys at a time/);
  });
});

describe('serving stops while the master key is unavailable', () => {
  it('answers 503 saying why for status, enc_keys and dec_keys, and serves again afterwards', async () => {
    const service = await makeService();
    const { keys } = await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 256 });
    stop = 'master key unavailable (token removed)';
    const why = /^UNAVAILABLE: K is not serving keys: master key unavailable \(token removed\)/;
    expect(await failure(Promise.resolve().then(() => service.status({ caller: 'M', slave: 'S1' })))).toMatch(why);
    expect(await failure(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 256 }))).toMatch(why);
    expect(await failure(service.decKeys({ caller: 'S1', master: 'M', key_ids: [keys[0]!.key_ID] }))).toMatch(why);
    expect(service.health()).toMatchObject({ ok: false, serving: false, stop_reason: stop });
    stop = undefined;
    expect((await service.decKeys({ caller: 'S1', master: 'M', key_ids: [keys[0]!.key_ID] })).keys).toEqual(keys);
    expect(service.health()).toMatchObject({ serving: true });
  });
});

describe('audit trail of key events', () => {
  it('records delivered, fetched, refused and expired events with SAE identities and key IDs, never key bytes, in a chain that verifies', async () => {
    const service = await makeService();
    const a = await service.encKeys({ caller: 'M', slave: 'S1', additional: ['S2'], number: 2, size: 256 });
    await service.decKeys({ caller: 'S1', master: 'M', key_ids: a.keys.map((k) => k.key_ID) });
    await failure(service.decKeys({ caller: 'S1', master: 'M', key_ids: [a.keys[0]!.key_ID] })); // twice: refused
    await failure(service.encKeys({ caller: 'M', slave: 'NOBODY', additional: [], number: 1, size: 256 }));
    const b = await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 256 });
    clock.t += 10_001;
    await service.sweep();
    await auditLog.flush();

    const lines = trail();
    const ids = a.keys.map((k) => k.key_ID);
    expect(lines.find((l) => l.event === 'delivered')).toMatchObject({ master: 'M', slaves: ['S1', 'S2'], key_ids: ids, size: 256 });
    expect(lines.find((l) => l.event === 'fetched')).toMatchObject({ sae: 'S1', master: 'M', key_ids: ids });
    const refused = lines.filter((l) => l.event === 'refused');
    expect(refused).toHaveLength(2);
    expect(refused[0]).toMatchObject({ sae: 'S1', master: 'M', reason: expect.stringMatching(/^BAD_REQUEST: one or more keys/) });
    expect(refused[1]).toMatchObject({ master: 'M', slaves: ['NOBODY'], reason: expect.stringMatching(/not known/) });
    // The first reservation still had S2's copies; the second was never fetched.
    const expired = lines.filter((l) => l.event === 'expired');
    expect(expired.flatMap((l) => l.key_ids as string[]).sort()).toEqual([...ids, b.keys[0]!.key_ID].sort());
    const text = lines.map((l) => JSON.stringify(l)).join('\n');
    for (const k of [...a.keys, ...b.keys]) {
      expect(text).not.toContain(k.key);
      expect(text).not.toContain(Buffer.from(k.key, 'base64').toString('hex'));
    }
    const v = verifyAuditLog(join(dir, 'audit'), auditLog.durableHead);
    expect(v.ok).toBe(true);
    expect(v.last_seq).toBe(lines.length);
  });

  it('records the delivered event in a committed store transaction before enc_keys answers', async () => {
    const outbox: number[] = [];
    const log2 = AuditLog.open(join(dir, 'audit2'), {
      segmentBytes: 1 << 20, clock, logger,
      onLine: (seq) => {
        // Called inside the batcher's transaction: the outbox row commits with it.
        expect(store.db.inTransaction).toBe(true);
        outbox.push(seq);
      },
    });
    const registry = await Registry.open(join(dir, 'registry.json'));
    const service = new KeyService({
      kmeId: 'K', limits, ttlMs: 10_000, graceMs: 0, registry, store, sealer: new Sealer(randomBytes(32)),
      batcher, links: new Map(), clock, logger, audit: new Audit(log2, logger),
    });
    const { keys } = await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 256 });
    expect(outbox).toEqual([1]);
    await log2.close();
    expect(readFileSync(join(dir, 'audit2', readdirSync(join(dir, 'audit2'))[0]!), 'utf8')).toContain(keys[0]!.key_ID);
  });

  it('records an event whose free text breaks the content rules without its details, instead of failing the operation', () => {
    const audit = new Audit(auditLog, logger);
    audit.record({ event: 'refused', reason: 'peer said ' + 'ab12'.repeat(20) });
    audit.record({ event: 'refused', master: 'x'.repeat(500) });
    return auditLog.flush().then(() => {
      const lines = trail();
      expect(lines).toHaveLength(2);
      for (const l of lines) expect(l).toMatchObject({ event: 'refused', reason: expect.stringMatching(/details withheld/) });
    });
  });
});

describe('low watermark', () => {
  it('raises one event when a link falls below it and one when it has recovered past a margin', () => {
    const events: LowWatermarkEvent[] = [];
    const w = new LowWatermark(100, (e) => events.push(e));
    for (const n of [500, 150, 99, 50, 105, 109, 98, 111, 200, 80]) w.observe('L', n);
    expect(events.map((e) => `${e.kind}@${e.available}`)).toEqual(['low@99', 'recovered@111', 'low@80']);
    expect(w.isLow('L')).toBe(true);
    expect(w.isLow('OTHER')).toBe(false);
  });
});

describe('erasure', () => {
  it('leaves no copy of a fetched key record in the store or its WAL after a checkpoint', async () => {
    const service = await makeService();
    const { keys } = await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 4, size: 256 });
    const ids = keys.map((k) => k.key_ID);
    const sealed = ids.map((id) => (store.db.prepare('SELECT sealed FROM keys WHERE key_id = ?').get(id) as { sealed: Buffer }).sealed);
    const files = () => [join(dir, 'ks.sqlite'), join(dir, 'ks.sqlite-wal')].map((f) => { try { return readFileSync(f); } catch { return Buffer.alloc(0); } });
    const present = () => sealed.filter((s) => files().some((f) => f.includes(s.subarray(16, 48)))).length;
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    expect(present()).toBe(4); // the test can see records that are there
    await service.decKeys({ caller: 'S1', master: 'M', key_ids: ids });
    store.db.pragma('wal_checkpoint(TRUNCATE)');
    expect(present()).toBe(0);
  });
});
