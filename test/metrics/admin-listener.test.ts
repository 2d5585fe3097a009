/**
 * The admin listener and the metrics of both daemons without the demo network:
 * the config schema keeps the listener on loopback; the listener's endpoints,
 * methods and Host check; kme-api's request metrics through the real ETSI app
 * (labelled by endpoint, never by SAE ID); keypoold's gauges from its state.
 */
import { request } from 'node:http';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/common/config.js';
import { silentLogger } from '../../src/common/logger.js';
import { startAdminHttp, type AdminHttp, type Readiness } from '../../src/common/admin-http.js';
import { apiMetrics, apiReadiness, endpointOf } from '../../src/api/metrics.js';
import { keypooldMetrics, keypooldReadiness } from '../../src/keypoold/metrics.js';
import { createEtsiApp } from '../../src/api/app.js';
import { DEFAULT_LIMITS } from '../../src/common/config.js';
import type { DiagResult, HealthResult } from '../../src/ipc/pool-protocol.js';
import { createCa } from '../../src/pki/x509.js';
import { FakePool } from '../helpers/fake-pool.js';
import { parsePromText, samples, value } from './prom-text.js';

const tls = { cert: 'c.crt', key: 'c.key', ca: 'ca.crt' };
const base = () => ({
  kme_id: 'KME_A', state_dir: 'state', registry_file: 'registry.json', keypoold: { socket: 'k.sock' } as Record<string, unknown>,
  api: { port: 8443, tls } as Record<string, unknown>, peer: { port: 8444, tls }, master_key: { provider: 'file', path: 'master.key' },
});

function get(port: number, path: string, opts: { method?: string; host?: string } = {}) {
  return new Promise<{ status: number; type: string; text: string; body: any }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method: opts.method ?? 'GET', headers: opts.host ? { host: opts.host } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body: unknown;
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
        resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), text, body });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('admin listener configuration', () => {
  it('is absent unless configured, and takes 127.0.0.1 (default), ::1 and port 0', () => {
    const none = parseConfig(base(), '/etc/kme');
    expect(none.keypoold.metrics).toBeUndefined();
    expect(none.api.metrics).toBeUndefined();
    const raw = base();
    raw.keypoold.metrics = { port: 0 };
    raw.api.metrics = { host: '::1', port: 8446 };
    const c = parseConfig(raw, '/etc/kme');
    expect(c.keypoold.metrics).toEqual({ host: '127.0.0.1', port: 0 });
    expect(c.api.metrics).toEqual({ host: '::1', port: 8446 });
  });

  it('refuses any host but loopback, with a message that says why and what to do', () => {
    for (const host of ['0.0.0.0', '192.168.1.20', '::', 'localhost', '127.0.0.2', 'kme.example']) {
      const raw = base();
      raw.keypoold.metrics = { host, port: 8445 };
      expect(() => parseConfig(raw, '/')).toThrow(ConfigError);
      expect(() => parseConfig(raw, '/')).toThrow(
        new RegExp(`keypoold\\.metrics\\.host: the metrics listener is plain HTTP without authentication, so its host must be 127\\.0\\.0\\.1 or ::1 \\(loopback\\), not "${host.replace(/\./g, '\\.')}"; .*TLS proxy`),
      );
      const rawApi = base();
      rawApi.api.metrics = { host, port: 8446 };
      expect(() => parseConfig(rawApi, '/')).toThrow(/api\.metrics\.host: the metrics listener is plain HTTP/);
    }
    const raw = base();
    raw.api.metrics = { port: 8446, path: '/x' };
    expect(() => parseConfig(raw, '/')).toThrow(ConfigError);
  });
});

describe('admin listener', () => {
  const open: AdminHttp[] = [];
  afterAll(async () => {
    for (const a of open) await a.close();
  });
  let ready: Readiness = { ready: true, detail: { kme_id: 'KME_A' } };
  const start = async (readiness: () => Readiness | Promise<Readiness> = () => ready) => {
    const a = await startAdminHttp({
      host: '127.0.0.1', port: 0, logger: silentLogger(), readiness,
      metrics: async () => ({ contentType: 'text/plain; version=0.0.4; charset=utf-8', body: '# HELP up Up.\n# TYPE up gauge\nup 1\n' }),
    });
    open.push(a);
    return a;
  };

  it('answers liveness, readiness (200 or 503 with a reason) and metrics', async () => {
    const a = await start();
    expect(a.port).toBeGreaterThan(0);
    expect(await get(a.port, '/healthz')).toMatchObject({ status: 200, body: { alive: true } });
    expect(await get(a.port, '/readyz')).toMatchObject({ status: 200, body: { ready: true, kme_id: 'KME_A' } });
    ready = { ready: false, reason: 'not serving keys: its master key (HSM) is unavailable' };
    expect(await get(a.port, '/readyz')).toMatchObject({ status: 503, body: { ready: false, reason: 'not serving keys: its master key (HSM) is unavailable' } });
    const m = await get(a.port, '/metrics');
    expect(m.status).toBe(200);
    expect(m.type).toBe('text/plain; version=0.0.4; charset=utf-8');
    expect(value(parsePromText(m.text), 'up')).toBe(1);
    const head = await get(a.port, '/healthz', { method: 'HEAD' });
    expect([head.status, head.text]).toEqual([200, '']);
  });

  it('answers 404 elsewhere, 405 to other methods, 403 to a non-loopback Host header', async () => {
    const a = await start();
    expect((await get(a.port, '/')).status).toBe(404);
    expect((await get(a.port, '/metrics/x')).status).toBe(404);
    expect((await get(a.port, '/metrics?x=1')).status).toBe(200);
    expect((await get(a.port, '/metrics', { method: 'POST' })).status).toBe(405);
    expect((await get(a.port, '/metrics', { host: 'evil.example:80' })).status).toBe(403);
    expect((await get(a.port, '/healthz', { host: 'localhost:9' })).status).toBe(200);
    expect((await get(a.port, '/healthz', { host: '[::1]:9' })).status).toBe(200);
  });

  it('answers 503 when the readiness check throws or hangs', async () => {
    const a = await start(() => {
      throw new Error('boom');
    });
    expect(await get(a.port, '/readyz')).toMatchObject({ status: 503, body: { ready: false, reason: 'readiness check failed: boom' } });
    const b = await start(() => new Promise<Readiness>(() => {}));
    const t0 = Date.now();
    expect(await get(b.port, '/readyz')).toMatchObject({ status: 503, body: { reason: expect.stringMatching(/no answer within/) } });
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it('refuses to bind a non-loopback address and says so when the port is taken', async () => {
    const opts = { port: 0, logger: silentLogger(), readiness: () => ready, metrics: async () => ({ contentType: 'text/plain', body: '' }) };
    await expect(startAdminHttp({ ...opts, host: '0.0.0.0' })).rejects.toThrow(/loopback only/);
    const a = await start();
    await expect(startAdminHttp({ ...opts, host: '127.0.0.1', port: a.port })).rejects.toThrow(new RegExp(`cannot listen on 127\\.0\\.0\\.1:${a.port}: .*EADDRINUSE`));
  });
});

describe('kme-api metrics', () => {
  it('labels requests by ETSI endpoint, never by path', () => {
    expect(endpointOf('/api/v1/keys/SAE_B1/status')).toBe('status');
    expect(endpointOf('/api/v1/keys/SAE_B1/enc_keys')).toBe('enc_keys');
    expect(endpointOf('/api/v1/keys/SAE_A1/dec_keys')).toBe('dec_keys');
    expect(endpointOf('/api/v1/keys//enc_keys')).toBe('enc_keys');
    expect(endpointOf('/api/v1/keys/a/b/enc_keys')).toBe('other');
    expect(endpointOf('/api/v1/keys/SAE_B1/enc_keysx')).toBe('other');
    expect(endpointOf('/')).toBe('other');
  });

  it('counts requests by endpoint and status, observes latency, reports keypoold and the certificate', async () => {
    const ca = await createCa({ cn: 'test', days: 30 });
    const pool = new FakePool();
    const m = apiMetrics({ kmeId: 'KME_A', serverCertPem: ca.cert, pool });
    const app = createEtsiApp({
      pool, limits: DEFAULT_LIMITS, kmeId: 'KME_A', logger: silentLogger(), maxBodyBytes: 65536, observe: m.middleware,
      identityOf: (c) => (c.env as { sae?: string } | undefined)?.sae ?? null,
    });
    const send = (path: string, init: RequestInit = {}) => app.request(path, init, { sae: 'SAE_SECRET_A' });
    for (let i = 0; i < 3; i++) expect((await send('/api/v1/keys/SAE_SECRET_B/enc_keys')).status).toBe(200);
    expect((await send('/api/v1/keys/SAE_SECRET_B/status')).status).toBe(200);
    expect((await send('/api/v1/keys/SAE_SECRET_B/enc_keys?number=0')).status).toBe(400);
    expect((await send('/api/v1/keys/SAE_SECRET_B/enc_keys', { method: 'PUT' })).status).toBe(405);
    expect((await send('/nowhere/SAE_SECRET_B')).status).toBe(404);
    pool.answer = () => {
      throw Object.assign(new Error('key pool daemon unavailable'), { code: 'UNAVAILABLE' });
    };
    const unavailable = await send('/api/v1/keys/SAE_SECRET_A/dec_keys?key_ID=550e8400-e29b-41d4-a716-446655440000');
    const { body, contentType } = await m.scrape();
    expect(contentType).toMatch(/^text\/plain; version=0\.0\.4/);
    expect(body).not.toContain('SAE_SECRET');
    const s = parsePromText(body);
    const req = (endpoint: string, code: number) => value(s, 'kme_api_requests_total', { endpoint, code: String(code), kme_id: 'KME_A' });
    expect(req('enc_keys', 200)).toBe(3);
    expect(req('status', 200)).toBe(1);
    expect(req('enc_keys', 400)).toBe(1);
    expect(req('enc_keys', 405)).toBe(1);
    expect(req('other', 404)).toBe(1);
    expect(req('dec_keys', unavailable.status)).toBe(1);
    expect(value(s, 'kme_api_request_duration_seconds_count', { endpoint: 'enc_keys' })).toBe(5);
    expect(value(s, 'kme_api_request_duration_seconds_bucket', { endpoint: 'enc_keys', le: '+Inf' })).toBe(5);
    expect(value(s, 'kme_api_requests_in_flight')).toBe(0);
    // keypoold's health fails now (the fake pool throws): down.
    expect(value(s, 'kme_api_keypoold_up')).toBe(0);
    const days = value(s, 'kme_certificate_expiry_days', { cert: 'api' });
    expect(days).toBeGreaterThan(29);
    expect(days).toBeLessThanOrEqual(30.01);
    expect(samples(s, 'process_resident_memory_bytes').length + samples(s, 'nodejs_heap_size_used_bytes').length).toBeGreaterThan(0);
  });

  it('is ready while listening and keypoold answers', async () => {
    const pool = new FakePool((op) => (op === 'health' ? { kme_id: 'KME_A', ok: true, serving: true, links: [] } : undefined));
    let listening = true;
    const r = apiReadiness({ listening: () => listening, pool });
    expect(await r()).toEqual({ ready: true, detail: { keypoold_serving: true } });
    pool.answer = () => {
      throw new Error('key pool daemon unavailable');
    };
    expect(await r()).toEqual({ ready: false, reason: 'keypoold unavailable: key pool daemon unavailable' });
    listening = false;
    expect(await r()).toMatchObject({ ready: false, reason: 'the ETSI listener is not up' });
  });
});

describe('keypoold metrics', () => {
  const health = (serving = true): HealthResult => ({
    kme_id: 'KME_A', ok: serving, serving, ...(serving ? {} : { stop_reason: 'master key unavailable (token gone)' }),
    links: [{ link_id: 'KME_A-KME_B', peer_kme_id: 'KME_B', peer_reachable: true, owned_available_bits: 2560, blocks: 3, available_keys: 10, low: false }],
  });
  const diag = async (): Promise<DiagResult> => ({
    kme_id: 'KME_A',
    links: [{
      link_id: 'KME_A-KME_B', peer_kme_id: 'KME_B', peer_reachable: true, peer_high_water: 7, high_water: 7, blocks: 3, stored_bits: 196608, owned_available_bits: 2560,
      module: { state: 'degraded', status: { up: true, qber: 0.021, keyRateBps: 1_000_000 }, counters: { framesIn: 120, crcErrors: 2, reconnects: 1, alarms: 0, qberPpm: 21000 } },
    }],
  });

  it('reports pool, link, driver, HSM, data key, audit and certificate state at scrape time', async () => {
    const ca = await createCa({ cn: 'kme', days: 100 });
    let ok = true;
    const m = keypooldMetrics({
      kmeId: 'KME_A', defaultKeySize: 256, health: () => health(ok), diag,
      masterKey: { provider: 'pkcs11', ok: () => ok }, dataKey: () => ({ generation: 3, reencrypting: false }), auditSeq: () => 42, kmeCertPem: ca.cert,
    });
    const read = async () => parsePromText((await m.scrape()).body);
    let s = await read();
    const link = { link: 'KME_A-KME_B' };
    expect(value(s, 'kme_pool_available_keys', link)).toBe(10);
    expect(value(s, 'kme_pool_stored_bits', link)).toBe(196608);
    expect(value(s, 'kme_pool_blocks', link)).toBe(3);
    expect(value(s, 'kme_peer_reachable', { ...link, peer_kme_id: 'KME_B' })).toBe(1);
    expect(value(s, 'kme_qkd_link_up', link)).toBe(1);
    expect(value(s, 'kme_qkd_key_rate_bps', link)).toBe(1_000_000);
    expect(value(s, 'kme_qkd_qber_ratio', link)).toBe(0.021);
    expect(samples(s, 'kme_qkd_driver_state', link).map((x) => [x.labels.state, x.value]).sort()).toEqual(
      [['closed', 0], ['degraded', 1], ['failed', 0], ['opening', 0], ['ready', 0]],
    );
    expect(value(s, 'kme_qkd_frames_received_total', link)).toBe(120);
    expect(value(s, 'kme_qkd_crc_errors_total', link)).toBe(2);
    expect(value(s, 'kme_qkd_reconnects_total', link)).toBe(1);
    expect(value(s, 'kme_qkd_alarms_total', link)).toBe(0);
    expect(samples(s, 'kme_qkd_timeouts_total')).toEqual([]); // not reported by this driver
    expect(value(s, 'kme_serving')).toBe(1);
    expect(value(s, 'kme_master_key_ok', { provider: 'pkcs11' })).toBe(1);
    expect(value(s, 'kme_data_key_generation')).toBe(3);
    expect(value(s, 'kme_data_key_reencryption_running')).toBe(0);
    expect(value(s, 'kme_audit_last_seq')).toBe(42);
    expect(value(s, 'kme_certificate_expiry_days', { cert: 'kme' })).toBeGreaterThan(99);
    expect(s.every((x) => x.labels.kme_id === 'KME_A')).toBe(true);
    // A second scrape shows the driver's totals as they are, not added up.
    s = await read();
    expect(value(s, 'kme_qkd_frames_received_total', link)).toBe(120);
    ok = false;
    s = await read();
    expect(value(s, 'kme_serving')).toBe(0);
    expect(value(s, 'kme_master_key_ok', { provider: 'pkcs11' })).toBe(0);
  });

  it('is ready while serving keys with a readable store, and says why not', () => {
    let serving = true;
    let storeError: Error | undefined;
    let stopping = false;
    const r = keypooldReadiness({
      health: () => health(serving),
      checkStore: () => {
        if (storeError) throw storeError;
      },
      stopping: () => stopping,
    });
    expect(r()).toMatchObject({ ready: true, detail: { kme_id: 'KME_A', links: [{ link_id: 'KME_A-KME_B', available_keys: 10 }] } });
    serving = false;
    expect(r()).toEqual({ ready: false, reason: 'not serving keys: master key unavailable (token gone)', detail: { kme_id: 'KME_A' } });
    storeError = new Error('database is closed');
    expect(r()).toEqual({ ready: false, reason: 'key store unavailable: database is closed' });
    stopping = true;
    expect(r()).toEqual({ ready: false, reason: 'stopping' });
  });
});
