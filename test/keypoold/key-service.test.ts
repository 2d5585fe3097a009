/**
 * KeyService against a real SQLite store and a real registry file: same-node
 * pairs, authorisation, limits, one-shot delivery and expiry. (Two-node
 * agreement is covered by the end-to-end tests.)
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KmeError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/logger.js';
import { KeyService } from '../../src/keypoold/key-service.js';
import { Registry } from '../../src/keypoold/registry.js';
import { Sealer } from '../../src/keypoold/seal.js';
import { openDb, Store } from '../../src/keypoold/store.js';
import { TxBatcher } from '../../src/keypoold/tx-batcher.js';

const limits = { default_key_size: 256, min_key_size: 64, max_key_size: 1024, max_key_per_request: 8, max_key_count: 1000, max_SAE_ID_count: 2 };
let dir: string;
let store: Store;
let service: KeyService;
const clock = { t: 1_000_000, now: () => clock.t, sleep: async () => {} };

beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kme-svc-'));
  writeFileSync(join(dir, 'registry.json'), JSON.stringify({
    saes: [
      { sae_id: 'M', kme_id: 'K', allowed_slaves: ['*'] },
      { sae_id: 'S1', kme_id: 'K', allowed_slaves: ['S2'] },
      { sae_id: 'S2', kme_id: 'K' },
      { sae_id: 'S3', kme_id: 'K' },
      { sae_id: 'R', kme_id: 'OTHER' },
    ],
  }));
  const registry = await Registry.open(join(dir, 'registry.json'));
  store = new Store(openDb(join(dir, 'ks.sqlite')));
  const logger = silentLogger();
  service = new KeyService({
    kmeId: 'K', limits, ttlMs: 10_000, graceMs: 0, registry, store, sealer: new Sealer(randomBytes(32)),
    batcher: new TxBatcher(store.db, logger), links: new Map(), clock, logger,
  });
});

afterEach(() => {
  store.close();
  rmSync(dir, { recursive: true, force: true });
});

const code = async (p: Promise<unknown> | (() => unknown)) => {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    return e instanceof KmeError ? `${e.code}: ${e.message}` : String(e);
  }
  return 'ok';
};

describe('KeyService', () => {
  it('serves a same-node pair from local randomness, once per slave', async () => {
    const { keys } = await service.encKeys({ caller: 'M', slave: 'S1', additional: ['S2'], number: 3, size: 512 });
    expect(keys).toHaveLength(3);
    expect(keys.every((k) => Buffer.from(k.key, 'base64').length === 64)).toBe(true);
    const ids = keys.map((k) => k.key_ID);
    expect((await service.decKeys({ caller: 'S1', master: 'M', key_ids: ids })).keys).toEqual(keys);
    expect(await code(service.decKeys({ caller: 'S1', master: 'M', key_ids: ids }))).toBe('BAD_REQUEST: one or more keys specified are not found on KME');
    expect(await code(service.decKeys({ caller: 'S3', master: 'M', key_ids: ids }))).toMatch(/^UNAUTHORIZED/);
    expect(await code(service.decKeys({ caller: 'S2', master: 'S1', key_ids: ids }))).toBe('BAD_REQUEST: one or more keys specified are not found on KME');
    expect((await service.decKeys({ caller: 'S2', master: 'M', key_ids: ids })).keys).toEqual(keys);
    expect((store.db.prepare('SELECT count(*) n FROM keys').get() as { n: number }).n).toBe(0);
  });

  it('applies registration and the allow-list', async () => {
    expect(await code(() => service.status({ caller: 'NOBODY', slave: 'S1' }))).toMatch(/^UNAUTHORIZED/);
    expect(await code(() => service.status({ caller: 'R', slave: 'S1' }))).toMatch(/^UNAUTHORIZED/);
    expect(await code(() => service.status({ caller: 'S1', slave: 'S3' }))).toMatch(/^UNAUTHORIZED: SAE S1 may not request keys for S3/);
    expect(await code(() => service.status({ caller: 'S1', slave: 'S2' }))).toBe('ok');
    expect(await code(() => service.status({ caller: 'M', slave: 'UNKNOWN' }))).toMatch(/^BAD_REQUEST: slave SAE UNKNOWN is not known/);
    expect(await code(() => service.status({ caller: 'M', slave: 'R' }))).toMatch(/^BAD_REQUEST: no QKD link/);
    expect(await code(service.encKeys({ caller: 'M', slave: 'S1', additional: ['R'], number: 1, size: 256 }))).toMatch(/same KME/);
    expect(await code(service.encKeys({ caller: 'M', slave: 'S1', additional: ['S1'], number: 1, size: 256 }))).toMatch(/repeats/);
    expect(await code(service.encKeys({ caller: 'M', slave: 'M', additional: [], number: 1, size: 256 }))).toMatch(/differ/);
  });

  it('re-checks the limits it advertises', async () => {
    const status = service.status({ caller: 'M', slave: 'S1' });
    expect(status).toMatchObject({ source_KME_ID: 'K', target_KME_ID: 'K', key_size: 256, stored_key_count: 1000, max_key_count: 1000 });
    for (const [number, size] of [[0, 256], [9, 256], [1, 32], [1, 2048], [1, 100]]) {
      expect(await code(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: number!, size: size! }))).toMatch(/^BAD_REQUEST/);
    }
    expect(await code(service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 1, size: 100 }))).toMatch(/size/);
    expect(await code(service.encKeys({ caller: 'M', slave: 'S1', additional: ['S2', 'S3', 'R'], number: 1, size: 256 }))).toMatch(/additional/);
  });

  it('erases unfetched keys when they expire', async () => {
    const { keys } = await service.encKeys({ caller: 'M', slave: 'S1', additional: [], number: 2, size: 256 });
    clock.t += 10_001;
    expect(await code(service.decKeys({ caller: 'S1', master: 'M', key_ids: [keys[0]!.key_ID] }))).toMatch(/not found/);
    expect(await service.sweep()).toBe(1); // one reservation, with its two keys
    expect((store.db.prepare('SELECT count(*) n FROM keys').get() as { n: number }).n).toBe(0);
    expect((store.db.prepare('SELECT count(*) n FROM reservations').get() as { n: number }).n).toBe(0);
  });
});
