import { describe, expect, it } from 'vitest';
import { makeApp } from '../helpers/etsi-app.js';
import { KEY_A } from '../helpers/fake-pool.js';

const ENC = '/api/v1/keys/SAE_B/enc_keys';
const defaults = { caller: 'SAE_A', slave: 'SAE_B', additional: [], number: 1, size: 256 };

describe('POST enc_keys', () => {
  it('empty body without Content-Type means one key of the default size', async () => {
    const t = makeApp();
    const r = await t.send(ENC, { method: 'POST' });
    expect(r.status).toBe(200);
    expect(r.res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(r.body).toEqual({ keys: [KEY_A] });
    expect(t.pool.calls).toEqual([{ op: 'enc_keys', args: defaults }]);
  });

  it('empty body with a JSON Content-Type and `{}` both mean defaults', async () => {
    const t = makeApp();
    expect((await t.send(ENC, { method: 'POST', headers: { 'content-type': 'application/json' } })).status).toBe(200);
    expect((await t.postJson(ENC, {})).status).toBe(200);
    expect(t.pool.calls.map((c) => c.args)).toEqual([defaults, defaults]);
  });

  it('passes number, size and additional slaves on', async () => {
    const t = makeApp();
    const r = await t.postJson(ENC, { number: 3, size: 1024, additional_slave_SAE_IDs: ['SAE_C', 'SAE_D'] });
    expect(r.status).toBe(200);
    expect(t.pool.calls[0]!.args).toEqual({ ...defaults, number: 3, size: 1024, additional: ['SAE_C', 'SAE_D'] });
  });

  it('accepts a Content-Type with parameters', async () => {
    const t = makeApp();
    const r = await t.send(ENC, { method: 'POST', headers: { 'content-type': 'Application/JSON; charset=utf-8' }, body: '{"number":2}' });
    expect(r.status).toBe(200);
  });

  it('answers only key_ID and key for each key', async () => {
    const t = makeApp();
    t.pool.answer = () => ({ keys: [{ ...KEY_A, block: 7, offset: 3 }], extra: 1 });
    const r = await t.postJson(ENC, {});
    expect(r.text).toBe(JSON.stringify({ keys: [KEY_A] }));
  });

  it('refuses malformed JSON with "Malformed JSON supplied"', async () => {
    const t = makeApp();
    for (const body of ['{', '{"number": 1,}', 'nope', '\xff']) {
      const r = await t.send(ENC, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message: 'Malformed JSON supplied' });
    }
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });

  it('refuses a non-empty body with a missing or wrong Content-Type', async () => {
    const t = makeApp();
    for (const headers of [{}, { 'content-type': 'text/plain' }, { 'content-type': 'application/jsonx' }] as Record<string, string>[]) {
      const r = await t.send(ENC, { method: 'POST', headers, body: '{}' });
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message: 'Content-Type must be application/json' });
    }
  });

  it('refuses a body that is not a JSON object', async () => {
    const t = makeApp();
    for (const body of [[], null, 3, 'x', true]) {
      const r = await t.postJson(ENC, body);
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message: 'request body must be a JSON object' });
    }
  });

  it('refuses unknown fields', async () => {
    const t = makeApp();
    const r = await t.postJson(ENC, { number: 1, Size: 512 });
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'unknown field "Size"' });
    const p = await t.send(ENC, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"__proto__":{}}' });
    expect(p.status).toBe(400);
  });

  it('validates number: integers 1..max_key_per_request only', async () => {
    const t = makeApp();
    for (const number of ['1', 1.5, true, null, 0, -1, 129, 2 ** 31 + 1, 2 ** 53, 1e300, {}, []]) {
      const r = await t.postJson(ENC, { number });
      expect(r.status, JSON.stringify(number)).toBe(400);
      expect(r.body).toEqual({ message: 'number must be an integer between 1 and 128' });
    }
    expect((await t.postJson(ENC, { number: 128 })).status).toBe(200);
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toHaveLength(1);
  });

  it('validates size: integer, multiple of 8 (exact ETSI message), within [min, max]', async () => {
    const t = makeApp();
    for (const size of [100, 257, 1023]) {
      const r = await t.postJson(ENC, { size });
      expect(r.status).toBe(400);
      expect(r.body).toEqual({ message: 'size shall be a multiple of 8' });
    }
    for (const size of ['256', 255.5, false, null, 56, 8200, 0, -64, 2 ** 31 + 8]) {
      const r = await t.postJson(ENC, { size });
      expect(r.status, JSON.stringify(size)).toBe(400);
      expect(r.body).toEqual({ message: 'size must be an integer between 64 and 8192' });
    }
    expect((await t.postJson(ENC, { size: 64 })).status).toBe(200);
    expect((await t.postJson(ENC, { size: 8192 })).status).toBe(200);
  });

  it('validates additional_slave_SAE_IDs', async () => {
    const t = makeApp();
    const cases: Array<[unknown, string]> = [
      ['SAE_C', 'additional_slave_SAE_IDs must be an array of SAE IDs'],
      [[1], 'additional_slave_SAE_IDs must be an array of SAE IDs'],
      [[''], 'additional_slave_SAE_IDs must be an array of SAE IDs'],
      [[' '], 'additional_slave_SAE_IDs must be an array of SAE IDs'],
      [[' SAE_C'], 'additional_slave_SAE_IDs must be an array of SAE IDs'],
      [['SAE_C', 'SAE_C'], 'additional_slave_SAE_IDs contains duplicates'],
      [['SAE_B'], 'additional_slave_SAE_IDs must not repeat slave_SAE_ID'],
      [['SAE_A'], 'additional_slave_SAE_IDs must not contain the caller itself'],
      [['C1', 'C2', 'C3', 'C4', 'C5'], 'additional_slave_SAE_IDs has more than 4 entries'],
    ];
    for (const [ids, message] of cases) {
      const r = await t.postJson(ENC, { additional_slave_SAE_IDs: ids });
      expect(r.status, JSON.stringify(ids)).toBe(400);
      expect(r.body).toEqual({ message });
    }
    expect((await t.postJson(ENC, { additional_slave_SAE_IDs: ['C1', 'C2', 'C3', 'C4'] })).status).toBe(200);
    expect((await t.postJson(ENC, { additional_slave_SAE_IDs: [] })).status).toBe(200);
    expect(t.pool.calls.filter((c) => c.op !== 'whoami').map((c) => (c.args as { additional: string[] }).additional)).toEqual([['C1', 'C2', 'C3', 'C4'], []]);
  });

  it('refuses additional slaves when multicast is off (max_SAE_ID_count 0)', async () => {
    const t = makeApp({ limits: { max_SAE_ID_count: 0 } });
    const r = await t.postJson(ENC, { additional_slave_SAE_IDs: ['SAE_C'] });
    expect(r.status).toBe(400);
    expect(r.body).toEqual({ message: 'additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)' });
  });

  it('refuses every extension_mandatory entry with the exact ETSI message and details', async () => {
    const t = makeApp();
    const r = await t.postJson(ENC, { extension_mandatory: [{ abc_route_type: 'direct' }, { abc_transfer_method: 'qkd', abc_x: 1 }] });
    expect(r.status).toBe(400);
    expect(r.text).toBe(
      JSON.stringify({
        message: 'not all extension_mandatory parameters are supported',
        details: [
          { extension_mandatory_unsupported: 'abc_route_type is not supported' },
          { extension_mandatory_unsupported: 'abc_transfer_method is not supported' },
          { extension_mandatory_unsupported: 'abc_x is not supported' },
        ],
      }),
    );
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
    expect((await t.postJson(ENC, { extension_mandatory: [] })).status).toBe(200);
  });

  it('checks extension shapes and ignores extension_optional', async () => {
    const t = makeApp();
    for (const ext of ['x', ['abc_x'], [null], {}, [[]]]) {
      const m = await t.postJson(ENC, { extension_mandatory: ext });
      expect(m.status).toBe(400);
      expect(m.body).toEqual({ message: 'extension_mandatory must be an array of objects' });
      const o = await t.postJson(ENC, { extension_optional: ext });
      expect(o.status).toBe(400);
      expect(o.body).toEqual({ message: 'extension_optional must be an array of objects' });
    }
    const r = await t.postJson(ENC, { extension_optional: [{ abc_route_type: 'direct' }] });
    expect(r.status).toBe(200);
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')[0]!.args).toEqual(defaults);
  });
});

describe('GET enc_keys', () => {
  it('without a query asks for one default key', async () => {
    const t = makeApp();
    const r = await t.send(ENC);
    expect(r.status).toBe(200);
    expect(r.body).toEqual({ keys: [KEY_A] });
    expect(t.pool.calls[0]!.args).toEqual(defaults);
  });

  it('takes number and size as decimal strings', async () => {
    const t = makeApp();
    expect((await t.send(`${ENC}?number=3&size=1024`)).status).toBe(200);
    expect(t.pool.calls[0]!.args).toEqual({ ...defaults, number: 3, size: 1024 });
  });

  it('refuses non-digit values', async () => {
    const t = makeApp();
    for (const v of ['abc', '-1', '1.0', '1e2', '+1', '', ' 1', '0x10', '0', '129', '99999999999']) {
      const r = await t.send(`${ENC}?number=${encodeURIComponent(v)}`);
      expect(r.status, v).toBe(400);
      expect(r.body).toEqual({ message: 'number must be an integer between 1 and 128' });
    }
    const s = await t.send(`${ENC}?size=100`);
    expect(s.body).toEqual({ message: 'size shall be a multiple of 8' });
    const s2 = await t.send(`${ENC}?size=2048.0`);
    expect(s2.body).toEqual({ message: 'size must be an integer between 64 and 8192' });
  });

  it('refuses repeated and unknown query parameters', async () => {
    const t = makeApp();
    const rep = await t.send(`${ENC}?number=1&number=2`);
    expect(rep.status).toBe(400);
    expect(rep.body).toEqual({ message: 'number must be given at most once' });
    for (const q of ['foo=1', 'number=1&additional_slave_SAE_IDs=SAE_C', 'Number=1', 'extension_mandatory=x', '__proto__=1']) {
      const r = await t.send(`${ENC}?${q}`);
      expect(r.status, q).toBe(400);
      expect(r.body).toEqual({ message: 'only number and size may be given as query parameters; use POST for other fields' });
    }
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });

  it('refuses HEAD (it would consume keys) with 405', async () => {
    const t = makeApp();
    const r = await t.app.request(ENC, { method: 'HEAD' }, { sae: 'SAE_A' });
    expect(r.status).toBe(405);
    expect(r.headers.get('allow')).toBe('GET, POST');
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });
});
