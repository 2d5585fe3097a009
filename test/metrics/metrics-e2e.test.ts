/**
 * Health, readiness and metrics of the real daemons on the demo network: each
 * keypoold and kme-api has its loopback admin listener (demo.json's
 * metrics_urls); after enc/dec round trips the scrapes parse as Prometheus text
 * and hold the series named in README "Health and metrics" with sensible
 * values; kme-api's readiness follows its keypoold across a stop and a start.
 */
import { describe, expect, it } from 'vitest';
import { useDemoNet, type DemoNet } from '../helpers/demo-net.js';
import { parsePromText, samples, value, type Sample } from './prom-text.js';

const demoNet = useDemoNet({}, 20);
const LINK = { link: 'KME_A-KME_B' };

type Daemon = 'kme-keypoold' | 'kme-api';

function adminUrl(net: DemoNet, kmeId: string, daemon: Daemon, path: '/metrics' | '/healthz' | '/readyz'): string {
  const m = net.node(kmeId).metrics_urls?.[daemon];
  if (!m) throw new Error(`demo.json has no metrics URL for ${kmeId} ${daemon}`);
  return new URL(path, m).href;
}

async function scrape(net: DemoNet, kmeId: string, daemon: Daemon): Promise<{ text: string; s: Sample[] }> {
  const r = await fetch(adminUrl(net, kmeId, daemon, '/metrics'));
  expect(r.status).toBe(200);
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  const text = await r.text();
  return { text, s: parsePromText(text) };
}

async function probe(net: DemoNet, kmeId: string, daemon: Daemon, path: '/healthz' | '/readyz') {
  const r = await fetch(adminUrl(net, kmeId, daemon, path));
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

async function until<T>(what: string, f: () => Promise<T>, ok: (v: T) => boolean, timeoutMs = 20_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: T | undefined;
  let err: unknown;
  while (Date.now() < end) {
    try {
      last = await f();
      if (ok(last)) return last;
    } catch (e) {
      err = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`${what}: still ${JSON.stringify(last)} ${err ? String(err) : ''}`);
}

const requests = (s: Sample[], endpoint: string, code: number) => samples(s, 'kme_api_requests_total', { endpoint, code: String(code) }).reduce((a, x) => a + x.value, 0);
const latencyCount = (s: Sample[], endpoint: string) => samples(s, 'kme_api_request_duration_seconds_count', { endpoint }).reduce((a, x) => a + x.value, 0);

describe('health, readiness and metrics of the demo daemons', () => {
  it('answers liveness and readiness on every daemon', async () => {
    const net = demoNet();
    for (const id of ['KME_A', 'KME_B']) {
      for (const d of ['kme-keypoold', 'kme-api'] as const) {
        expect(await probe(net, id, d, '/healthz'), `${id} ${d}`).toEqual({ status: 200, body: { alive: true } });
        expect(await probe(net, id, d, '/readyz'), `${id} ${d}`).toMatchObject({ status: 200, body: { ready: true } });
      }
    }
    expect((await probe(net, 'KME_A', 'kme-keypoold', '/readyz')).body).toMatchObject({ kme_id: 'KME_A', links: [{ link_id: 'KME_A-KME_B', peer_reachable: true }] });
  });

  it('counts ETSI requests by endpoint and status code, never by SAE ID', async () => {
    const net = demoNet();
    const [a0, b0] = [(await scrape(net, 'KME_A', 'kme-api')).s, (await scrape(net, 'KME_B', 'kme-api')).s];
    const rounds = 4;
    for (let i = 0; i < rounds; i++) {
      const enc = await net.sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', { number: 2 });
      expect(enc.status, enc.text).toBe(200);
      const dec = await net.sae('SAE_B1').post('/api/v1/keys/SAE_A1/dec_keys', { key_IDs: enc.body.keys.map((k: { key_ID: string }) => ({ key_ID: k.key_ID })) });
      expect(dec.status, dec.text).toBe(200);
    }
    expect((await net.sae('SAE_A1').get('/api/v1/keys/SAE_B1/enc_keys?number=0')).status).toBe(400);
    expect((await net.sae('SAE_A1').get('/api/v1/keys/SAE_B1/status')).status).toBe(200);
    const a = await scrape(net, 'KME_A', 'kme-api');
    const b = await scrape(net, 'KME_B', 'kme-api');
    expect(requests(a.s, 'enc_keys', 200) - requests(a0, 'enc_keys', 200)).toBe(rounds);
    expect(requests(a.s, 'enc_keys', 400) - requests(a0, 'enc_keys', 400)).toBe(1);
    expect(requests(a.s, 'status', 200) - requests(a0, 'status', 200)).toBe(1);
    expect(requests(b.s, 'dec_keys', 200) - requests(b0, 'dec_keys', 200)).toBe(rounds);
    expect(latencyCount(a.s, 'enc_keys') - latencyCount(a0, 'enc_keys')).toBe(rounds + 1);
    expect(value(a.s, 'kme_api_request_duration_seconds_bucket', { endpoint: 'enc_keys', le: '+Inf' })).toBe(latencyCount(a.s, 'enc_keys'));
    expect(value(a.s, 'kme_api_request_duration_seconds_sum', { endpoint: 'enc_keys' })).toBeGreaterThan(0);
    for (const { s, text } of [a, b]) {
      expect(value(s, 'kme_api_requests_in_flight')).toBe(0);
      expect(value(s, 'kme_api_keypoold_up')).toBe(1);
      expect(value(s, 'kme_certificate_expiry_days', { cert: 'api' })).toBeGreaterThan(0);
      expect(new Set(samples(s, 'kme_api_requests_total').map((x) => x.labels.endpoint))).toEqual(new Set(['status', 'enc_keys', 'dec_keys'].filter((e) => requests(s, e, 200) > 0)));
      expect(text).not.toMatch(/SAE_/);
    }
    expect(value(a.s, 'kme_api_requests_total', { endpoint: 'enc_keys', code: '200', kme_id: 'KME_A' })).toBeGreaterThanOrEqual(rounds);
  });

  it('reports pool depth, the QKD link, the driver, the HSM, the data key, the audit trail and the KME certificate', async () => {
    const net = demoNet();
    for (const id of ['KME_A', 'KME_B']) {
      // The link status is the module's answer to the driver's last poll (every second): give a
      // freshly started keypoold its first one.
      let { s, text } = await scrape(net, id, 'kme-keypoold');
      for (const end = Date.now() + 10_000; value(s, 'kme_qkd_link_up', LINK) !== 1 && Date.now() < end; ) {
        await new Promise((r) => setTimeout(r, 200));
        ({ s, text } = await scrape(net, id, 'kme-keypoold'));
      }
      expect(value(s, 'kme_pool_available_keys', LINK), id).toBeGreaterThan(0);
      expect(value(s, 'kme_pool_stored_bits', LINK)).toBeGreaterThan(0);
      expect(value(s, 'kme_pool_blocks', LINK)).toBeGreaterThan(0);
      expect(value(s, 'kme_peer_reachable', { ...LINK, peer_kme_id: id === 'KME_A' ? 'KME_B' : 'KME_A' })).toBe(1);
      expect(value(s, 'kme_qkd_driver_state', { ...LINK, state: 'ready' })).toBe(1);
      expect(samples(s, 'kme_qkd_driver_state', LINK).filter((x) => x.value === 1)).toHaveLength(1);
      expect(value(s, 'kme_qkd_link_up', LINK)).toBe(1);
      // The demo's simulated link runs at 4 Mbit/s with a QBER around 2 %.
      expect(value(s, 'kme_qkd_key_rate_bps', LINK)).toBeGreaterThan(0);
      const qber = value(s, 'kme_qkd_qber_ratio', LINK);
      expect(qber).toBeGreaterThanOrEqual(0);
      expect(qber).toBeLessThan(0.11);
      expect(value(s, 'kme_qkd_frames_received_total', LINK)).toBeGreaterThan(0);
      expect(value(s, 'kme_qkd_blocks_received_total', LINK)).toBeGreaterThan(0);
      for (const c of ['kme_qkd_crc_errors_total', 'kme_qkd_reconnects_total', 'kme_qkd_alarms_total']) expect(value(s, c, LINK), c).toBeGreaterThanOrEqual(0);
      expect(text).toMatch(/# TYPE kme_qkd_crc_errors_total counter/);
      expect(value(s, 'kme_serving')).toBe(1);
      expect(samples(s, 'kme_master_key_ok').map((x) => [x.labels.provider, x.value])).toEqual([[expect.stringMatching(/^(pkcs11|file)$/), 1]]);
      expect(value(s, 'kme_data_key_generation')).toBeGreaterThanOrEqual(1);
      expect(value(s, 'kme_data_key_reencryption_running')).toBe(0);
      expect(value(s, 'kme_audit_last_seq')).toBeGreaterThan(0);
      const days = value(s, 'kme_certificate_expiry_days', { cert: 'kme' });
      expect(days).toBeGreaterThan(0);
      expect(days).toBeLessThan(10 * 366);
      expect(s.every((x) => x.labels.kme_id === id)).toBe(true);
      expect(text).not.toMatch(/SAE_/);
    }
  });

  it("takes kme-api out of readiness while its keypoold is stopped, and back once it is started", async () => {
    const net = demoNet();
    await net.proc('KME_B', 'kme-keypoold').stop({ signal: 'SIGTERM', graceMs: 5000 });
    try {
      const down = await until('KME_B kme-api /readyz', () => probe(net, 'KME_B', 'kme-api', '/readyz'), (r) => r.status === 503);
      expect(down.body).toEqual({ ready: false, reason: expect.stringMatching(/^keypoold unavailable: /) });
      // Still alive, and its metrics say why.
      expect((await probe(net, 'KME_B', 'kme-api', '/healthz')).status).toBe(200);
      expect(value((await scrape(net, 'KME_B', 'kme-api')).s, 'kme_api_keypoold_up')).toBe(0);
      // keypoold's own listener went with it.
      await expect(fetch(adminUrl(net, 'KME_B', 'kme-keypoold', '/healthz'))).rejects.toThrow();
      // The peer keypoold sees its peer gone; it still serves keys of its own node.
      const a = await until('KME_A peer_reachable', async () => (await scrape(net, 'KME_A', 'kme-keypoold')).s, (s) => value(s, 'kme_peer_reachable', { ...LINK, peer_kme_id: 'KME_B' }) === 0);
      expect(value(a, 'kme_serving')).toBe(1);
    } finally {
      await net.startProc('KME_B', 'kme-keypoold');
    }
    const up = await until('KME_B kme-api /readyz', () => probe(net, 'KME_B', 'kme-api', '/readyz'), (r) => r.status === 200);
    expect(up.body).toEqual({ ready: true, keypoold_serving: true });
    expect(await probe(net, 'KME_B', 'kme-keypoold', '/readyz')).toMatchObject({ status: 200, body: { ready: true, kme_id: 'KME_B' } });
    expect(value((await scrape(net, 'KME_B', 'kme-api')).s, 'kme_api_keypoold_up')).toBe(1);
    await net.waitForStock('SAE_B1', 'SAE_A1', 1);
  });
});
