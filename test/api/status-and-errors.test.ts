import { describe, expect, it } from 'vitest';
import { KmeError } from '../../src/common/errors.js';
import { makeApp } from '../helpers/etsi-app.js';

const STATUS = '/api/v1/keys/SAE_B/status';
const STATUS_FIELDS = [
  'source_KME_ID',
  'target_KME_ID',
  'master_SAE_ID',
  'slave_SAE_ID',
  'key_size',
  'stored_key_count',
  'max_key_count',
  'max_key_per_request',
  'max_key_size',
  'min_key_size',
  'max_SAE_ID_count',
];

describe('GET status', () => {
  it('answers exactly the ETSI Status fields, from keypoold', async () => {
    const t = makeApp();
    const base = (await import('../helpers/fake-pool.js')).defaultAnswer;
    t.pool.answer = (op, args) => ({ ...(base(op, args) as object), internal_note: 'x' });
    const r = await t.send(STATUS);
    expect(r.status).toBe(200);
    expect(r.res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(Object.keys(r.body!)).toEqual(STATUS_FIELDS);
    expect(r.body).toMatchObject({ master_SAE_ID: 'SAE_A', slave_SAE_ID: 'SAE_B' });
    expect(t.pool.calls).toEqual([{ op: 'status', args: { caller: 'SAE_A', slave: 'SAE_B' } }]);
  });

  it('answers 401, not 400, to a malformed request from an SAE keypoold does not know', async () => {
    const t = makeApp();
    const base = (await import('../helpers/fake-pool.js')).defaultAnswer;
    t.pool.answer = (op, args) => (op === 'whoami' ? { registered: false } : base(op, args));
    const r = await t.send('/api/v1/keys/SAE_B/enc_keys?size=7');
    expect(r.status).toBe(401);
    expect(t.pool.calls).toEqual([{ op: 'whoami', args: { caller: 'SAE_A' } }]);
    t.pool.answer = base;
    expect((await t.send('/api/v1/keys/SAE_B/enc_keys?size=7')).status).toBe(400);
  });

  it('URL-decodes the path SAE ID exactly once', async () => {
    const t = makeApp();
    await t.send('/api/v1/keys/SAE%20B/status');
    await t.send('/api/v1/keys/a%2Fb/status');
    await t.send('/api/v1/keys/x%2541/status');
    expect(t.pool.calls.map((c) => (c.args as { slave: string }).slave)).toEqual(['SAE B', 'a/b', 'x%41']);
  });

  it('refuses a blank or invalid path ID and a slave that is the caller', async () => {
    const t = makeApp();
    for (const id of ['%20', '%20SAE_B', 'SAE_B%09', '%00']) {
      const r = await t.send(`/api/v1/keys/${id}/status`);
      expect(r.status, id).toBe(400);
      expect(r.body).toEqual({ message: 'slave_SAE_ID is not a valid SAE ID' });
    }
    for (const p of ['/api/v1/keys//status', '/api/v1/keys//enc_keys']) {
      const r = await t.send(p);
      expect(r.status, p).toBe(400);
      expect(r.body).toEqual({ message: 'slave_SAE_ID is not a valid SAE ID' });
    }
    const dec = await t.send('/api/v1/keys//dec_keys', { method: 'POST' });
    expect(dec.body).toEqual({ message: 'master_SAE_ID is not a valid SAE ID' });
    expect((await t.send('/api/v1/keys//status', {}, null)).status).toBe(401);
    const self = await t.send('/api/v1/keys/SAE_A/status');
    expect(self.status).toBe(400);
    expect(self.body).toEqual({ message: 'slave_SAE_ID must not be the caller itself' });
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });
});

describe('authentication', () => {
  it('answers 401 JSON when the certificate names no SAE, before any validation', async () => {
    const t = makeApp();
    for (const [path, init] of [
      [STATUS, {}],
      ['/api/v1/keys/%20/enc_keys?bad=1', {}],
      ['/api/v1/keys/SAE_A/dec_keys', { method: 'POST', body: 'garbage' }],
    ] as Array<[string, RequestInit]>) {
      const r = await t.send(path, init, null);
      expect(r.status).toBe(401);
      expect(r.res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(r.body).toEqual({ message: 'unauthorized' });
    }
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });

  it('takes the caller only from identityOf, never from headers, path or body', async () => {
    const t = makeApp();
    const headers = { 'x-sae-id': 'SAE_X', 'x-cert-cn': 'SAE_X', 'x-ssl-client-s-dn': 'CN=SAE_X', 'content-type': 'application/json' };
    await t.send('/api/v1/keys/SAE_B/enc_keys', { method: 'POST', headers, body: '{}' });
    expect((t.pool.calls[0]!.args as { caller: string }).caller).toBe('SAE_A');
  });
});

describe('error mapping', () => {
  const cases: Array<[unknown, number, unknown]> = [
    [new KmeError('BAD_REQUEST', 'bad', [{ a: 1 }]), 400, { message: 'bad', details: [{ a: 1 }] }],
    [new KmeError('UNAUTHORIZED', 'not allowed to use this slave'), 401, { message: 'not allowed to use this slave' }],
    [new KmeError('UNAVAILABLE', 'key pool empty', [{ x: 1 }]), 503, { message: 'key pool empty' }],
    [new KmeError('INTERNAL', 'invariant broken at /var/lib/kme'), 503, { message: 'internal error' }],
    [new Error('boom /secret/path'), 503, { message: 'internal error' }],
    ['a string', 503, { message: 'internal error' }],
  ];
  for (const [err, status, body] of cases) {
    it(`${String((err as Error).message ?? err)} -> ${status}`, async () => {
      const t = makeApp();
      t.pool.answer = () => {
        throw err;
      };
      const r = await t.send(STATUS);
      expect(r.status).toBe(status);
      expect(r.res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(r.body).toEqual(body);
      expect(r.text).not.toMatch(/at .*\.ts|secret|var\/lib/);
    });
  }

  it('unknown routes answer 404 JSON', async () => {
    const t = makeApp();
    for (const p of ['/', '/api/v1/keys', '/api/v1/keys/SAE_B', '/api/v1/keys/SAE_B/other', '/api/v1/keys/SAE_B/status/', '/api/v2/keys/SAE_B/status']) {
      const r = await t.send(p);
      expect(r.status, p).toBe(404);
      expect(r.res.headers.get('content-type')).toMatch(/^application\/json/);
      expect(r.body).toEqual({ message: 'not found' });
    }
  });

  it('a known path with a wrong method answers 405 JSON with Allow', async () => {
    const t = makeApp();
    const cases: Array<[string, string, string]> = [
      ['POST', STATUS, 'GET'],
      ['DELETE', STATUS, 'GET'],
      ['PUT', '/api/v1/keys/SAE_B/enc_keys', 'GET, POST'],
      ['PATCH', '/api/v1/keys/SAE_B/dec_keys', 'GET, POST'],
      ['HEAD', '/api/v1/keys/SAE_B/dec_keys', 'GET, POST'],
    ];
    for (const [method, path, allow] of cases) {
      const r = await t.app.request(path, { method }, { sae: 'SAE_A' });
      expect(r.status, `${method} ${path}`).toBe(405);
      expect(r.headers.get('allow')).toBe(allow);
      if (method !== 'HEAD') {
        expect(r.headers.get('content-type')).toMatch(/^application\/json/);
        expect(await r.json()).toEqual({ message: 'method not allowed' });
      }
    }
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
  });

  it('a body over maxBodyBytes answers 413 JSON, with or without Content-Length', async () => {
    const t = makeApp({ maxBodyBytes: 100 });
    const big = JSON.stringify({ extension_optional: [{ pad: 'x'.repeat(200) }] });
    const withLength = await t.send('/api/v1/keys/SAE_B/enc_keys', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'content-length': String(big.length) },
      body: big,
    });
    expect(withLength.status).toBe(413);
    expect(withLength.body).toEqual({ message: 'request body too large' });

    const enc = new TextEncoder();
    const chunked = new ReadableStream<Uint8Array>({
      start(ctl) {
        for (let i = 0; i < 10; i++) ctl.enqueue(enc.encode('x'.repeat(30)));
        ctl.close();
      },
    });
    const stream = await t.send('/api/v1/keys/SAE_B/dec_keys', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: chunked,
      duplex: 'half',
    } as RequestInit);
    expect(stream.status).toBe(413);
    expect(stream.body).toEqual({ message: 'request body too large' });
    expect(t.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);

    const small = await t.postJson('/api/v1/keys/SAE_B/enc_keys', { number: 2 });
    expect(small.status).toBe(200);
  });
});
