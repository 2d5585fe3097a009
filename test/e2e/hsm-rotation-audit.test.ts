/**
 * The key store's trust anchors on the real demo processes: the master keys
 * on SoftHSM2 tokens, rotation of the data key and the master key under load
 * without stopping, the audit trail verified by kme-audit (and a cut-off
 * trail caught by the anchor in the store), a pulled token stopping service
 * with a reason, and keypoold refusing to start, with distinct exit codes,
 * when its HSM set-up is wrong.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, readdirSync, truncateSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/common/logger.js';
import { NdjsonPoolClient } from '../../src/ipc/ndjson-client.js';
import type { RotationStatus } from '../../src/ipc/pool-protocol.js';
import { MASTER_KEY_EXIT_CODES } from '../../src/keypoold/master-key.js';
import { repoRoot, useDemoNet, type DemoNet } from '../helpers/demo-net.js';

const demoNet = useDemoNet({}, 20);

type Key = { key_ID: string; key: string };

async function enc(net: DemoNet, master: string, slave: string, number = 2): Promise<Key[]> {
  const r = await net.sae(master).post(`/api/v1/keys/${slave}/enc_keys`, { number });
  expect(r.status, r.text).toBe(200);
  return r.body.keys;
}

async function dec(net: DemoNet, slave: string, master: string, keys: Key[]): Promise<void> {
  const r = await net.sae(slave).post(`/api/v1/keys/${master}/dec_keys`, { key_IDs: keys.map((k) => ({ key_ID: k.key_ID })) });
  expect(r.status, r.text).toBe(200);
  expect(r.body.keys).toEqual(keys);
}

async function admin<T>(net: DemoNet, kmeId: string, op: string, args: object): Promise<T> {
  const c = new NdjsonPoolClient({ path: net.path(net.node(kmeId).admin_socket), logger: silentLogger() });
  try {
    return (await c.call(op as never, args as never)) as T;
  } finally {
    await c.close();
  }
}

function softhsmEnv(net: DemoNet): NodeJS.ProcessEnv {
  const argv = net.node('KME_A').processes[0]!.argv;
  const conf = argv.find((a) => a.startsWith('SOFTHSM2_CONF='));
  if (!conf) throw new Error('the demo is not using SoftHSM2 (is softhsm2 installed?)');
  return { ...process.env, SOFTHSM2_CONF: conf.slice('SOFTHSM2_CONF='.length) };
}

function kmeAudit(net: DemoNet, kmeId: string, ...args: string[]) {
  return spawnSync(process.execPath, ['dist/scripts/kme-audit.js', ...args, '--config', net.path(net.node(kmeId).config)], { cwd: repoRoot, encoding: 'utf8' });
}

describe('master keys, rotation and the audit trail on the demo network', () => {
  it('keeps each node master key on its own SoftHSM2 token', () => {
    const net = demoNet();
    for (const id of ['KME_A', 'KME_B']) {
      expect(net.history(id, 'kme-keypoold').join('\n')).toMatch(new RegExp(`"token":"${id}".*master key found in the HSM`));
      const cfg = JSON.parse(readFileSync(net.path(net.node(id).config), 'utf8'));
      expect(cfg.master_key).toMatchObject({ provider: 'pkcs11', token_label: id, pin_file: 'hsm.pin' });
    }
    // The PIN never reaches a log.
    const pin = readFileSync(join(net.path(net.node('KME_A').state_dir), '..', 'hsm.pin'), 'utf8').trim();
    expect(net.history('KME_A', 'kme-keypoold').join('\n')).not.toContain(pin);
  });

  it('re-encrypts the store under a new data key and rewraps it under a new master key while serving, and keeps every key across a restart', async (ctx) => {
    const net = demoNet();
    ctx.onTestFailed(() => {
      for (const id of ['KME_A', 'KME_B']) console.log(`=== ${id}\n` + net.history(id, 'kme-keypoold', (l) => /"level":[456]0|peer|ready/.test(l)).join('\n'));
    });
    // Keys waiting for their slaves, sealed under the first data key.
    const early = [await enc(net, 'SAE_A1', 'SAE_B1', 4), await enc(net, 'SAE_B1', 'SAE_A1', 4), await enc(net, 'SAE_A1', 'SAE_A2', 4)];
    let stopLoad = false;
    const served: Key[][] = [];
    const load = (async () => {
      while (!stopLoad) {
        const k = await enc(net, 'SAE_A1', 'SAE_B1', 2);
        await dec(net, 'SAE_B1', 'SAE_A1', k);
        served.push(k);
      }
    })();
    try {
      for (const id of ['KME_A', 'KME_B']) {
        const before = await admin<RotationStatus>(net, id, 'rotation_status', {});
        expect(before.master_key.provider).toBe('pkcs11');
        const started = await admin<RotationStatus>(net, id, 'rotate', { what: 'data' });
        expect(started.data_key.generation).toBe(before.data_key.generation + 1);
        let st = started;
        const end = Date.now() + 30_000;
        while (st.data_key.state !== 'done' && Date.now() < end) {
          await new Promise((r) => setTimeout(r, 100));
          st = await admin<RotationStatus>(net, id, 'rotation_status', {});
        }
        expect(st.data_key).toMatchObject({ state: 'done', replacing: [before.data_key.generation] });
        expect(st.data_key.done).toBeGreaterThanOrEqual(st.data_key.total);
        const m = await admin<RotationStatus>(net, id, 'rotate', { what: 'master' });
        expect(m.master_key.key_id).not.toBe(before.master_key.key_id);
      }
    } finally {
      stopLoad = true;
      await load.catch(() => {});
    }
    stopLoad = true;
    await load;
    expect(served.length).toBeGreaterThan(0);
    // The provisioning tool finds the new master key working on each token.
    const env = softhsmEnv(net);
    for (const id of ['KME_A', 'KME_B']) {
      const check = spawnSync(process.execPath, ['dist/scripts/kme-hsm.js', 'check', '--config', net.path(net.node(id).config)], { cwd: repoRoot, env, encoding: 'utf8' });
      expect(check.status, check.stderr).toBe(0);
    }
    // A restart unwraps the new data key with the new master key; the early keys are still served.
    await net.restart('KME_A', 'kme-keypoold');
    await net.restart('KME_B', 'kme-keypoold', 'SIGKILL');
    await net.waitForStock('SAE_A1', 'SAE_B1', 2);
    await net.waitForStock('SAE_B1', 'SAE_A1', 2); // B's kme-api is connected to its new keypoold
    await dec(net, 'SAE_B1', 'SAE_A1', early[0]!);
    await dec(net, 'SAE_A1', 'SAE_B1', early[1]!);
    await dec(net, 'SAE_A2', 'SAE_A1', early[2]!);
    await dec(net, 'SAE_B1', 'SAE_A1', await enc(net, 'SAE_A1', 'SAE_B1', 2));
    const after = await admin<RotationStatus>(net, 'KME_A', 'rotation_status', {});
    expect(after.data_key.state === 'idle' || after.data_key.state === 'done').toBe(true);
  });

  it('keeps an audit trail that kme-audit verifies, with each key event and no key bytes, and catches a cut-off trail', async () => {
    const net = demoNet();
    const keys = await enc(net, 'SAE_A1', 'SAE_B1', 3);
    await dec(net, 'SAE_B1', 'SAE_A1', keys);
    const refused = await net.sae('SAE_B1').post('/api/v1/keys/SAE_A1/dec_keys', { key_IDs: [{ key_ID: keys[0]!.key_ID }] });
    expect(refused.status).toBe(400);
    // Wait for the trail to be flushed (within a second) and the anchor to be written (at shutdown).
    await new Promise((r) => setTimeout(r, 1500));
    const ids = keys.map((k) => k.key_ID);
    const lines = (id: string) => {
      const dir = join(net.path(net.node(id).state_dir), 'audit');
      return readdirSync(dir).sort().flatMap((f) => readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean));
    };
    const a = lines('KME_A').map((l) => JSON.parse(l));
    const b = lines('KME_B').map((l) => JSON.parse(l));
    expect(a.find((l) => l.event === 'delivered' && l.key_ids?.[0] === ids[0])).toMatchObject({ master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: ids });
    expect(b.find((l) => l.event === 'reserved' && l.key_ids?.[0] === ids[0])).toMatchObject({ master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: ids });
    expect(b.find((l) => l.event === 'fetched' && l.key_ids?.[0] === ids[0])).toMatchObject({ sae: 'SAE_B1', master: 'SAE_A1' });
    expect(b.filter((l) => l.event === 'refused').at(-1)).toMatchObject({ sae: 'SAE_B1', reason: expect.stringMatching(/not found/) });
    const text = [...lines('KME_A'), ...lines('KME_B')].join('\n');
    for (const k of keys) expect(text).not.toContain(k.key);

    for (const id of ['KME_A', 'KME_B']) {
      const v = kmeAudit(net, id, 'verify');
      expect(v.status, v.stdout + v.stderr).toBe(0);
    }
    // Stop KME_B (the anchor is written at shutdown), cut the trail's last lines: the verifier
    // sees that the trail no longer reaches the anchor.
    await net.proc('KME_B', 'kme-keypoold').stop({ signal: 'SIGTERM', graceMs: 5000 });
    const v1 = kmeAudit(net, 'KME_B', 'verify', '--json');
    expect(v1.status, v1.stderr).toBe(0);
    expect(JSON.parse(v1.stdout)).toMatchObject({ ok: true, anchor: expect.anything() });
    const dir = join(net.path(net.node('KME_B').state_dir), 'audit');
    const newest = join(dir, readdirSync(dir).sort().at(-1)!);
    const content = readFileSync(newest, 'utf8');
    const cut = content.slice(0, content.lastIndexOf('\n', content.length - 2) + 1);
    truncateSync(newest, Buffer.byteLength(cut));
    const v2 = kmeAudit(net, 'KME_B', 'verify');
    expect(v2.status).toBe(1);
    expect(v2.stdout + v2.stderr).toMatch(/truncat|anchor/i);
    // Put it back as it was and start again.
    writeFileSync(newest, content, { mode: statSync(newest).mode });
    await net.startProc('KME_B', 'kme-keypoold');
    await net.waitForStock('SAE_A1', 'SAE_B1', 1);
  });

  it('refuses to start with a distinct exit code and a clear message for each broken HSM set-up', () => {
    const net = demoNet();
    const env = softhsmEnv(net);
    const cfgPath = net.path(net.node('KME_A').config);
    const base = JSON.parse(readFileSync(cfgPath, 'utf8'));
    const variant = (name: string, patch: (mk: any) => void) => {
      const cfg = structuredClone(base);
      patch(cfg.master_key);
      // Its own state and sockets: the running node is not disturbed.
      cfg.state_dir = `state-${name}`;
      cfg.keypoold = { socket: `${name}.sock`, admin_socket: `${name}-admin.sock` };
      const f = join(net.path(net.node('KME_A').config), '..', `config-${name}.json`);
      writeFileSync(f, JSON.stringify(cfg));
      return spawnSync(process.execPath, ['dist/src/keypoold/main.js', '--config', f], { cwd: repoRoot, env, encoding: 'utf8', timeout: 20_000 });
    };
    const wrongPin = join(net.path(net.node('KME_A').config), '..', 'wrong.pin');
    writeFileSync(wrongPin, '000000\n', { mode: 0o600 });
    const cases: Array<[string, (mk: any) => void, keyof typeof MASTER_KEY_EXIT_CODES, RegExp]> = [
      ['nolib', (mk) => (mk.module = '/nonexistent/libpkcs11.so'), 'LIBRARY_NOT_FOUND', /libpkcs11\.so/],
      ['notoken', (mk) => (mk.token_label = 'NO_SUCH_TOKEN'), 'TOKEN_NOT_FOUND', /NO_SUCH_TOKEN/],
      ['wrongpin', (mk) => (mk.pin_file = 'wrong.pin'), 'WRONG_PIN', /PIN/],
      ['nokey', (mk) => (mk.key_label = 'no-such-key'), 'KEY_MISSING', /kme-hsm.*init/],
      ['nocred', (mk) => { delete mk.pin_file; mk.pin_credential = 'hsm-pin'; }, 'PIN_UNREADABLE', /CREDENTIALS_DIRECTORY|credential/],
    ];
    const pin = readFileSync(join(net.path(net.node('KME_A').config), '..', 'hsm.pin'), 'utf8').trim();
    for (const [name, patch, code, message] of cases) {
      const r = variant(name, patch);
      expect(r.status, `${name}: ${r.stderr}`).toBe(MASTER_KEY_EXIT_CODES[code]);
      expect(r.stderr, name).toMatch(message);
      expect(r.stdout + r.stderr).not.toContain(pin);
    }
  });

  it('stops serving keys, saying why, when its token goes away', async () => {
    const net = demoNet();
    await net.waitForStock('SAE_A1', 'SAE_B1', 1);
    execFileSync('softhsm2-util', ['--delete-token', '--token', 'KME_A'], { env: softhsmEnv(net), stdio: 'ignore' });
    let r = await net.sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', { number: 1 });
    const end = Date.now() + 15_000;
    while (r.status === 200 && Date.now() < end) {
      await new Promise((res) => setTimeout(res, 200));
      r = await net.sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', { number: 1 });
    }
    expect(r.status).toBe(503);
    // The SAE hears a short reason; the technician's health answer has the detail.
    expect(r.body.message).toBe('KME_A is not serving keys: its master key (HSM) is unavailable');
    const health = await admin<{ serving: boolean; stop_reason: string }>(net, 'KME_A', 'health', {});
    expect(health).toMatchObject({ serving: false, stop_reason: expect.stringMatching(/master key unavailable .*token 'KME_A' is gone/) });
    expect((await net.sae('SAE_B1').get('/api/v1/keys/SAE_A1/status')).status).toBe(200); // the other node serves on
  });
});
