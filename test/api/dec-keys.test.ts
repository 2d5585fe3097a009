import { describe, expect, it } from 'vitest';
import { makeApp } from '../helpers/etsi-app.js';
import { KEY_A } from '../helpers/fake-pool.js';

const DEC = '/api/v1/keys/SAE_A/dec_keys';
const U1 = 'bc490419-7d60-487f-adc1-4ddcc177c139';
const U2 = '550e8400-e29b-41d4-a716-446655440000';
const asB = 'SAE_B';

describe('POST dec_keys', () => {
  it('passes the key IDs, the path master and the caller on', async () => {
    const t = makeApp();
    const r = await t.postJson(DEC, { key_IDs: [{ key_ID: U1 }, { key_ID: U2, key_ID_extension: {} }], key_IDs_extension: {} }, asB);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ keys: [KEY_A] });
    expect(t.pool.calls).toEqual([{ op: 'dec_keys', args: { caller: 'SAE_B', master: 'SAE_A', key_ids: [U1, U2] } }]);
  });

  it('refuses key_IDs given as bare strings, empty, missing or not an array', async () => {
    const t = makeApp();
    const cases: Array<[unknown, string]> = [
      [{ key_IDs: [U1] }, 'key_IDs must be a non-empty array of objects with a key_ID'],
      [{ key_IDs: [] }, 'key_IDs must be a non-empty array of objects with a key_ID'],
      [{ key_IDs: { key_ID: U1 } }, 'key_IDs must be a non-empty array of objects with a key_ID'],
      [{ key_IDs: [{}] }, 'key_IDs must be a non-empty array of objects with a key_ID'],
      [{}, 'key_IDs is required'],
      [[{ key_ID: U1 }], 'request body must be a JSON object'],
    ];
    for (const [body, message] of cases) {
      const r = await t.postJson(DEC, body, asB);
      expect(r.status, JSON.stringify(body)).toBe(400);
      expect(r.body).toEqual({ message });
    }
    const empty = await t.send(DEC, { method: 'POST' }, asB);
    expect(empty.status).toBe(400);
    expect(empty.body).toEqual({ message: 'key_IDs is required' });
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });

  it('requires canonical lowercase UUIDs', async () => {
    const t = makeApp();
    for (const id of [U1.toUpperCase(), `{${U1}}`, U1.replace(/-/g, ''), `${U1} `, 'x', 7, null]) {
      const r = await t.postJson(DEC, { key_IDs: [{ key_ID: id }] }, asB);
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message: 'key_ID must be a canonical lowercase UUID' });
    }
  });

  it('refuses duplicate key IDs', async () => {
    const t = makeApp();
    const r = await t.postJson(DEC, { key_IDs: [{ key_ID: U1 }, { key_ID: U2 }, { key_ID: U1 }] }, asB);
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'key_IDs contains duplicates' });
  });

  it('bounds the number of key IDs by max_key_per_request', async () => {
    const t = makeApp({ limits: { max_key_per_request: 2 } });
    const ids = [U1, U2, 'a0000000-0000-4000-8000-000000000000'].map((key_ID) => ({ key_ID }));
    const r = await t.postJson(DEC, { key_IDs: ids }, asB);
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'key_IDs has more than 2 entries' });
    expect((await t.postJson(DEC, { key_IDs: ids.slice(0, 2) }, asB)).status).toBe(200);
  });

  it('refuses unknown fields and non-object extensions', async () => {
    const t = makeApp();
    const cases: Array<[unknown, string]> = [
      [{ key_IDs: [{ key_ID: U1 }], number: 1 }, 'unknown field "number"'],
      [{ key_IDs: [{ key_ID: U1, key: 'x' }] }, 'unknown field "key"'],
      [{ key_IDs: [{ key_ID: U1 }], key_IDs_extension: [] }, 'key_IDs_extension must be an object'],
      [{ key_IDs: [{ key_ID: U1, key_ID_extension: 'x' }] }, 'key_ID_extension must be an object'],
    ];
    for (const [body, message] of cases) {
      const r = await t.postJson(DEC, body, asB);
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message });
    }
  });

  it('refuses a master that is the caller itself', async () => {
    const t = makeApp();
    const r = await t.postJson(DEC, { key_IDs: [{ key_ID: U1 }] }, 'SAE_A');
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'master_SAE_ID must not be the caller itself' });
  });

  it('refuses malformed JSON and a wrong Content-Type', async () => {
    const t = makeApp();
    const bad = await t.send(DEC, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"key_IDs":[' }, asB);
    expect(bad.body).toEqual({ message: 'Malformed JSON supplied' });
    const ct = await t.send(DEC, { method: 'POST', headers: { 'content-type': 'text/plain' }, body: '{}' }, asB);
    expect(ct.body).toEqual({ message: 'Content-Type must be application/json' });
  });

  it('maps the ETSI "not found" refusal from keypoold to 400', async () => {
    const { KmeError, EtsiMessage } = await import('../../src/common/errors.js');
    const t = makeApp();
    t.pool.answer = () => {
      throw new KmeError('BAD_REQUEST', EtsiMessage.keysNotFound);
    };
    const r = await t.postJson(DEC, { key_IDs: [{ key_ID: U1 }] }, asB);
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'one or more keys specified are not found on KME' });
  });
});

describe('GET dec_keys', () => {
  it('takes exactly one key_ID', async () => {
    const t = makeApp();
    const r = await t.send(`${DEC}?key_ID=${U1}`, {}, asB);
    expect(r.status).toBe(200);
    expect(t.pool.calls[0]!.args).toEqual({ caller: 'SAE_B', master: 'SAE_A', key_ids: [U1] });
  });

  it('refuses no key_ID, two key_IDs, or any other parameter', async () => {
    const t = makeApp();
    for (const q of ['', '?', `?key_ID=${U1}&key_ID=${U2}`, `?key_ID=${U1}&number=1`, `?key_id=${U1}`, `?key_IDs=${U1}`]) {
      const r = await t.send(`${DEC}${q}`, {}, asB);
      expect(r.status, q).toBe(400);
      expect(r.body).toEqual({ message: 'GET dec_keys takes exactly one key_ID query parameter; use POST otherwise' });
    }
    const bad = await t.send(`${DEC}?key_ID=${U1.toUpperCase()}`, {}, asB);
    expect(bad.body).toEqual({ message: 'key_ID must be a canonical lowercase UUID' });
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });
});
