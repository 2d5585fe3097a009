/**
 * The demo network's real processes: key round trips between the two KMEs
 * and on one KME, keypoold restarts, one-shot delivery, multicast, races,
 * fail-closed behaviour when the peer is down, and no key bytes at rest or
 * in logs.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NdjsonPoolClient } from '../../src/ipc/ndjson-client.js';
import { silentLogger } from '../../src/common/logger.js';
import { useDemoNet } from '../helpers/demo-net.js';

const demoNet = useDemoNet({}, 50);
const seen: string[] = []; // every key (base64) handed out in this file

async function enc(master: string, slave: string, body?: unknown) {
  const r = await demoNet().sae(master).post(`/api/v1/keys/${slave}/enc_keys`, body ?? {});
  expect(r.status, r.text).toBe(200);
  for (const k of r.body.keys) seen.push(k.key);
  return r.body.keys as Array<{ key_ID: string; key: string }>;
}

async function dec(slave: string, master: string, ids: string[]) {
  return demoNet().sae(slave).post(`/api/v1/keys/${master}/dec_keys`, { key_IDs: ids.map((key_ID) => ({ key_ID })) });
}

async function roundTrip(master: string, slave: string, number = 3, size = 256) {
  const keys = await enc(master, slave, { number, size });
  expect(keys).toHaveLength(number);
  for (const k of keys) expect(Buffer.from(k.key, 'base64')).toHaveLength(size / 8);
  const r = await dec(slave, master, keys.map((k) => k.key_ID));
  expect(r.status, r.text).toBe(200);
  expect(r.body.keys).toEqual(keys);
  return keys;
}

describe('two-node demo network', () => {
  it('serves round trips A1->B1, B1->A1 and A1->A2 with identical bytes at both ends', async () => {
    await roundTrip('SAE_A1', 'SAE_B1');
    await roundTrip('SAE_B1', 'SAE_A1', 2, 1024);
    await roundTrip('SAE_A1', 'SAE_A2', 4, 512);
    const status = await demoNet().sae('SAE_A1').get('/api/v1/keys/SAE_A2/status');
    expect(status.body).toMatchObject({ source_KME_ID: 'KME_A', target_KME_ID: 'KME_A', status_extension: { key_source: 'local_csprng' } });
    const remote = await demoNet().sae('SAE_A1').get('/api/v1/keys/SAE_B1/status');
    expect(remote.body).toMatchObject({ target_KME_ID: 'KME_B', status_extension: { key_source: 'qkd_link' } });
  });

  it('keeps every undelivered key and keeps serving across keypoold restarts on both nodes', async () => {
    const ab = await enc('SAE_A1', 'SAE_B1', { number: 2 });
    const ba = await enc('SAE_B1', 'SAE_A1', { number: 2 });
    const aa = await enc('SAE_A1', 'SAE_A2', { number: 2 });
    await demoNet().restart('KME_A', 'kme-keypoold');
    await demoNet().restart('KME_B', 'kme-keypoold', 'SIGKILL');
    await demoNet().waitForStock('SAE_A1', 'SAE_B1', 5);
    await demoNet().waitForStock('SAE_B1', 'SAE_A1', 5);
    for (const [slave, master, keys] of [['SAE_B1', 'SAE_A1', ab], ['SAE_A1', 'SAE_B1', ba], ['SAE_A2', 'SAE_A1', aa]] as const) {
      const r = await dec(slave, master, keys.map((k) => k.key_ID));
      expect(r.status, r.text).toBe(200);
      expect(r.body.keys).toEqual(keys);
    }
    await roundTrip('SAE_A1', 'SAE_B1');
    await roundTrip('SAE_B1', 'SAE_A1');
    await roundTrip('SAE_A1', 'SAE_A2');
  });

  it('serves a key to its slave once, and never to an SAE that is not its slave', async () => {
    const [k] = await enc('SAE_A1', 'SAE_B1');
    const other = await dec('SAE_B2', 'SAE_A1', [k!.key_ID]);
    expect(other.status).toBe(401);
    expect(typeof other.body.message).toBe('string');
    const get = await demoNet().sae('SAE_B1').get(`/api/v1/keys/SAE_A1/dec_keys?key_ID=${k!.key_ID}`);
    expect(get.status).toBe(200);
    expect(get.body.keys).toEqual([k]);
    const again = await dec('SAE_B1', 'SAE_A1', [k!.key_ID]);
    expect(again.status).toBe(400);
    expect(again.body).toEqual({ message: 'one or more keys specified are not found on KME' });
  });

  it('delivers a batch all or nothing', async () => {
    const keys = await enc('SAE_A1', 'SAE_B1', { number: 2 });
    const bad = await dec('SAE_B1', 'SAE_A1', [keys[0]!.key_ID, '00000000-0000-4000-8000-000000000000']);
    expect(bad.status).toBe(400);
    const good = await dec('SAE_B1', 'SAE_A1', keys.map((k) => k.key_ID));
    expect(good.status).toBe(200);
    expect(good.body.keys).toEqual(keys);
  });

  it('multicast: every named slave gets the same key once; slaves on two KMEs are refused', async () => {
    const keys = await enc('SAE_A1', 'SAE_B1', { number: 2, additional_slave_SAE_IDs: ['SAE_B2'] });
    expect((await dec('SAE_B3', 'SAE_A1', [keys[0]!.key_ID])).status).toBe(401);
    for (const slave of ['SAE_B1', 'SAE_B2']) {
      const r = await dec(slave, 'SAE_A1', keys.map((k) => k.key_ID));
      expect(r.status, r.text).toBe(200);
      expect(r.body.keys).toEqual(keys);
      expect((await dec(slave, 'SAE_A1', keys.map((k) => k.key_ID))).status).toBe(400);
    }
    // fetched by its last slave: erased
    expect((await dec('SAE_B3', 'SAE_A1', [keys[0]!.key_ID])).status).toBe(400);
    const local = await enc('SAE_A1', 'SAE_A2', { additional_slave_SAE_IDs: ['SAE_A3'] });
    expect((await dec('SAE_A3', 'SAE_A1', [local[0]!.key_ID])).body.keys).toEqual(local);
    const mixed = await demoNet().sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', { additional_slave_SAE_IDs: ['SAE_A2'] });
    expect(mixed.status).toBe(400);
    expect(mixed.body.message).toMatch(/same KME/);
  });

  it('concurrent fetches of one key: exactly one wins', async () => {
    const [k] = await enc('SAE_A1', 'SAE_B1');
    const results = await Promise.all(Array.from({ length: 12 }, () => dec('SAE_B1', 'SAE_A1', [k!.key_ID])));
    expect(results.filter((r) => r.status === 200)).toHaveLength(1);
    expect(results.filter((r) => r.status === 400)).toHaveLength(11);
  });

  it('concurrent requests from both ends never hand out the same key twice', async () => {
    const batches = await Promise.all([
      ...Array.from({ length: 20 }, () => enc('SAE_A1', 'SAE_B1', { number: 4 })),
      ...Array.from({ length: 20 }, () => enc('SAE_B1', 'SAE_A1', { number: 4 })),
      ...Array.from({ length: 10 }, () => enc('SAE_A2', 'SAE_B2', { number: 4 })),
    ]);
    const all = batches.flat();
    expect(new Set(all.map((k) => k.key_ID)).size).toBe(all.length);
    expect(new Set(all.map((k) => k.key)).size).toBe(all.length);
    const fetched = await Promise.all(
      batches.map((keys, i) => (i < 20 ? dec('SAE_B1', 'SAE_A1', keys.map((k) => k.key_ID)) : i < 40 ? dec('SAE_A1', 'SAE_B1', keys.map((k) => k.key_ID)) : dec('SAE_B2', 'SAE_A2', keys.map((k) => k.key_ID)))),
    );
    fetched.forEach((r, i) => {
      expect(r.status, r.text).toBe(200);
      expect(r.body.keys).toEqual(batches[i]);
    });
  });

  it('fails closed with 503 while the peer keypoold is down, and recovers by itself', async () => {
    await demoNet().proc('KME_B', 'kme-keypoold').stop();
    const r = await demoNet().sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', {});
    expect(r.status).toBe(503);
    expect(typeof r.body.message).toBe('string');
    expect(r.body.keys).toBeUndefined();
    // same-node pairs do not need the peer
    await roundTrip('SAE_A1', 'SAE_A2', 1);
    // the peer's own API has no pool behind it either
    const atB = await demoNet().sae('SAE_B1').post('/api/v1/keys/SAE_A1/enc_keys', {});
    expect(atB.status).toBe(503);
    await demoNet().startProc('KME_B', 'kme-keypoold');
    await demoNet().waitForStock('SAE_A1', 'SAE_B1', 5);
    await roundTrip('SAE_A1', 'SAE_B1');
  });

  it('reports each link for technicians through the local API (diag), without key material', async () => {
    const client = new NdjsonPoolClient({ path: demoNet().path(demoNet().node('KME_A').admin_socket), logger: silentLogger() });
    try {
      const d = await client.call('diag', {});
      expect(d.kme_id).toBe('KME_A');
      expect(d.links).toHaveLength(1);
      const l = d.links[0]!;
      expect(l).toMatchObject({ link_id: 'KME_A-KME_B', peer_kme_id: 'KME_B', peer_reachable: true });
      expect(l.module.state).toBe('ready');
      expect(l.high_water).toBeGreaterThan(0);
      expect(l.owned_available_bits).toBeGreaterThan(0);
      expect(JSON.stringify(d)).not.toMatch(/material|"key"/);
    } finally {
      await client.close();
    }
    // kme-api's socket serves the SAE-facing operations only.
    const apiSide = new NdjsonPoolClient({ path: demoNet().path(demoNet().node('KME_A').keypoold_socket), logger: silentLogger() });
    try {
      await expect(apiSide.call('diag', {})).rejects.toMatchObject({ code: 'BAD_REQUEST', message: expect.stringMatching(/maintenance socket/) });
      await expect(apiSide.call('rotate', { what: 'data' })).rejects.toMatchObject({ code: 'BAD_REQUEST' });
      await expect(apiSide.call('health', {})).resolves.toMatchObject({ kme_id: 'KME_A', serving: true });
    } finally {
      await apiSide.close();
    }
  });

  it('keeps no key bytes in plaintext under the state folders and writes none to the logs', async () => {
    await roundTrip('SAE_A1', 'SAE_B1');
    const files: string[] = [];
    const walk = (d: string) => {
      for (const f of readdirSync(d)) {
        const p = join(d, f);
        const st = statSync(p);
        if (st.isDirectory()) walk(p);
        else if (st.isFile()) files.push(p);
      }
    };
    walk(demoNet().dir);
    const blobs = files.map((f) => readFileSync(f));
    const logs = [...demoNet().procs.values()].flatMap((p) => [...p.output('stdout'), ...p.output('stderr')]).join('\n');
    // Every line both daemons of both nodes wrote, across all their restarts in this file.
    const daemonLines = ['KME_A', 'KME_B'].flatMap((id) =>
      (['kme-keypoold', 'kme-api'] as const).flatMap((d) => demoNet().history(id, d).filter((l) => !l.startsWith('#### start'))),
    );
    expect(daemonLines.length).toBeGreaterThan(20);
    // Structured logs for journald: one JSON object per line, with a numeric level, a time and a message.
    for (const line of daemonLines) {
      let o: { level?: unknown; time?: unknown; msg?: unknown };
      try {
        o = JSON.parse(line) as typeof o;
      } catch {
        throw new Error(`not a JSON log line: ${line}`);
      }
      expect([typeof o.level, typeof o.time, typeof o.msg], line).toEqual(['number', 'number', 'string']);
    }
    const allLogs = `${logs}\n${daemonLines.join('\n')}`;
    expect(seen.length).toBeGreaterThan(50);
    for (const b64 of seen) {
      const raw = Buffer.from(b64, 'base64');
      for (const blob of blobs) expect(blob.includes(raw)).toBe(false);
      expect(allLogs.includes(b64)).toBe(false);
      const hex = raw.toString('hex');
      expect(allLogs.includes(hex) || allLogs.includes(hex.toUpperCase())).toBe(false);
    }
    // Nor the HSM PIN (when the demo keeps its master keys on SoftHSM2 tokens).
    for (const id of ['KME_A', 'KME_B']) {
      const pinFile = join(demoNet().path(demoNet().node(id).config), '..', 'hsm.pin');
      if (!existsSync(pinFile)) continue;
      const pin = readFileSync(pinFile, 'utf8').trim();
      expect(pin.length).toBeGreaterThan(3);
      expect(allLogs.includes(pin)).toBe(false);
    }
  });
});
