/**
 * kme-api over real HTTPS with real certificates on 127.0.0.1:0: the handshake
 * refuses bad clients, and the SAE ID comes from the verified certificate only.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Server } from 'node:https';
import { Agent } from 'node:https';
import { connect } from 'node:tls';
import type { IdentityConfig } from '../../src/common/config.js';
import { silentLogger } from '../../src/common/logger.js';
import { createEtsiApp } from '../../src/api/app.js';
import { identityFromSocket } from '../../src/api/mtls.js';
import { createEtsiServer, listen } from '../../src/api/server.js';
import { createCa, issueCert, type Pem } from '../../src/pki/x509.js';
import { FakePool } from '../helpers/fake-pool.js';
import { LIMITS } from '../helpers/etsi-app.js';
import { httpsRequest } from '../helpers/tls-client.js';

interface Pki {
  ca: Pem;
  server: Pem;
  saeA: Pem;
  saeUri: Pem;
  rogue: Pem;
  expired: Pem;
}
let pki: Pki;
/** How a server-side handshake refusal looks to the client (alert or hang-up), not a client-side trust error. */
const REFUSED = /certificate required|socket hang up|ECONNRESET|alert/i;

interface Running {
  server: Server;
  port: number;
  pool: FakePool;
}

async function start(identity: IdentityConfig, maxBodyBytes = 65536): Promise<Running> {
  const logger = silentLogger();
  const pool = new FakePool();
  const app = createEtsiApp({ pool, limits: LIMITS, kmeId: 'KME_A', identityOf: identityFromSocket(identity), logger, maxBodyBytes });
  const server = createEtsiServer(app, { key: pki.server.key, cert: pki.server.cert, ca: pki.ca.cert }, logger);
  const port = await listen(server, 0, '127.0.0.1');
  return { server, port, pool };
}
function stop(r: Running): Promise<void> {
  return new Promise((resolve) => {
    r.server.close(() => resolve());
    r.server.closeAllConnections();
  });
}

beforeAll(async () => {
  const ca = await createCa({ cn: 'KME test CA' });
  const otherCa = await createCa({ cn: 'Rogue CA' });
  const day = 86_400_000;
  pki = {
    ca,
    server: await issueCert(ca, { cn: 'KME_A', usage: 'server', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }),
    saeA: await issueCert(ca, { cn: 'SAE_A', usage: 'client' }),
    saeUri: await issueCert(ca, { cn: 'some device', usage: 'client', uris: ['https://example.net/x', 'urn:kme:sae:SAE_U'] }),
    rogue: await issueCert(otherCa, { cn: 'SAE_A', usage: 'client' }),
    expired: await issueCert(ca, { cn: 'SAE_A', usage: 'client', notBefore: new Date(Date.now() - 10 * day), notAfter: new Date(Date.now() - day) }),
  };
});

describe('kme-api over HTTPS (subject_cn)', () => {
  let r: Running;
  beforeAll(async () => {
    r = await start({ source: 'subject_cn' });
  });
  afterAll(() => stop(r));

  const get = (path: string, client?: Pem, extra: Partial<Parameters<typeof httpsRequest>[0]> = {}) =>
    httpsRequest({ port: r.port, path, ca: pki.ca.cert, cert: client?.cert, key: client?.key, ...extra });

  it('a good certificate: the identity is its CN', async () => {
    const res = await get('/api/v1/keys/SAE_B/status', pki.saeA);
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    expect(res.json()).toMatchObject({ master_SAE_ID: 'SAE_A', slave_SAE_ID: 'SAE_B' });
    expect(r.pool.calls.at(-1)).toEqual({ op: 'status', args: { caller: 'SAE_A', slave: 'SAE_B' } });
  });

  it('refuses the handshake without a client certificate', async () => {
    const before = r.pool.calls.length;
    await expect(get('/api/v1/keys/SAE_B/status')).rejects.toThrow(REFUSED);
    expect(r.pool.calls.length).toBe(before);
  });

  it('refuses a certificate from another CA', async () => {
    await expect(get('/api/v1/keys/SAE_B/status', pki.rogue)).rejects.toThrow(REFUSED);
  });

  it('refuses an expired certificate', async () => {
    await expect(get('/api/v1/keys/SAE_B/status', pki.expired)).rejects.toThrow(REFUSED);
  });

  it('refuses TLS 1.1', async () => {
    const err = await new Promise<Error>((resolve) => {
      const s = connect({
        host: '127.0.0.1',
        port: r.port,
        ca: pki.ca.cert,
        cert: pki.saeA.cert,
        key: pki.saeA.key,
        servername: 'localhost',
        minVersion: 'TLSv1',
        maxVersion: 'TLSv1.1',
        ciphers: 'DEFAULT@SECLEVEL=0',
      });
      s.once('secureConnect', () => {
        s.destroy();
        resolve(new Error('connected'));
      });
      s.once('error', resolve);
    });
    expect(err.message).not.toBe('connected');
    expect(err.message).toMatch(/protocol|version|alert|hang up|ECONNRESET/i);
  });

  it('negotiates TLS 1.3 by default and accepts TLS 1.2', async () => {
    const proto = (max: 'TLSv1.2' | 'TLSv1.3') =>
      new Promise<string | null>((resolve, reject) => {
        const s = connect({ host: '127.0.0.1', port: r.port, ca: pki.ca.cert, cert: pki.saeA.cert, key: pki.saeA.key, servername: 'localhost', maxVersion: max });
        s.once('secureConnect', () => {
          resolve(s.getProtocol());
          s.destroy();
        });
        s.once('error', reject);
      });
    expect(await proto('TLSv1.3')).toBe('TLSv1.3');
    expect(await proto('TLSv1.2')).toBe('TLSv1.2');
  });

  it('the SAE ID cannot be overridden by a header', async () => {
    const headers = { 'X-SAE-ID': 'SAE_EVIL', 'X-Client-Cert-CN': 'SAE_EVIL', 'X-SSL-Client-S-DN': 'CN=SAE_EVIL', 'X-Forwarded-Client-Cert': 'Subject="CN=SAE_EVIL"' };
    const res = await get('/api/v1/keys/SAE_B/enc_keys', pki.saeA, { headers });
    expect(res.status).toBe(200);
    expect(r.pool.calls.at(-1)!.args).toMatchObject({ caller: 'SAE_A' });
  });

  it('serves enc_keys and dec_keys, POST and GET, on one keep-alive connection', async () => {
    const agent = new Agent({ keepAlive: true, maxSockets: 1, ca: pki.ca.cert, cert: pki.saeA.cert, key: pki.saeA.key });
    try {
      const body = JSON.stringify({ number: 2, size: 512 });
      const enc = await get('/api/v1/keys/SAE_B/enc_keys', undefined, {
        agent,
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': String(body.length) },
        body,
      });
      expect(enc.status).toBe(200);
      expect(r.pool.calls.at(-1)).toEqual({ op: 'enc_keys', args: { caller: 'SAE_A', slave: 'SAE_B', additional: [], number: 2, size: 512 } });
      const dec = await get('/api/v1/keys/SAE_C/dec_keys?key_ID=bc490419-7d60-487f-adc1-4ddcc177c139', undefined, { agent });
      expect(dec.status).toBe(200);
      expect(r.pool.calls.at(-1)).toEqual({ op: 'dec_keys', args: { caller: 'SAE_A', master: 'SAE_C', key_ids: ['bc490419-7d60-487f-adc1-4ddcc177c139'] } });
    } finally {
      agent.destroy();
    }
  });

  it('limits chunked bodies too (413 JSON)', async () => {
    const small = await start({ source: 'subject_cn' }, 256);
    try {
      const res = await httpsRequest({
        port: small.port,
        path: '/api/v1/keys/SAE_B/enc_keys',
        method: 'POST',
        headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' },
        body: JSON.stringify({ extension_optional: [{ pad: 'x'.repeat(10_000) }] }),
        ca: pki.ca.cert,
        cert: pki.saeA.cert,
        key: pki.saeA.key,
      });
      expect(res.status).toBe(413);
      expect(res.json()).toEqual({ message: 'request body too large' });
      expect(small.pool.calls.filter((c) => c.op !== 'whoami')).toEqual([]);
    } finally {
      await stop(small);
    }
  });
});

describe('kme-api over HTTPS (san_uri)', () => {
  it('takes the SAE ID from the first SAN URI with the prefix', async () => {
    const r = await start({ source: 'san_uri', prefix: 'urn:kme:sae:' });
    try {
      const res = await httpsRequest({ port: r.port, path: '/api/v1/keys/SAE_B/status', ca: pki.ca.cert, cert: pki.saeUri.cert, key: pki.saeUri.key });
      expect(res.status).toBe(200);
      expect(r.pool.calls.at(-1)!.args).toEqual({ caller: 'SAE_U', slave: 'SAE_B' });
      // A valid certificate without a matching SAN URI is authenticated by TLS but names no SAE: 401.
      const none = await httpsRequest({ port: r.port, path: '/api/v1/keys/SAE_B/status', ca: pki.ca.cert, cert: pki.saeA.cert, key: pki.saeA.key });
      expect(none.status).toBe(401);
      expect(none.json()).toEqual({ message: 'unauthorized' });
    } finally {
      await new Promise<void>((resolve) => {
        r.server.close(() => resolve());
        r.server.closeAllConnections();
      });
    }
  });
});
