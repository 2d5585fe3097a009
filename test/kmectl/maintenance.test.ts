/**
 * kmectl pki, hsm and audit against a running demo network: renewing the
 * node's certificates (key kept or rolled) and the node working with them
 * after a restart, init refusing to overwrite, HSM check/init/rotate with
 * progress, and the audit trail verified, exported, and found broken in a
 * tampered copy.
 */
import { X509Certificate, createPublicKey } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { useDemoNet } from '../helpers/demo-net.js';
import { kmectl, kmectlConfig, waitFor } from './run.js';

const net = useDemoNet();
const A = 'KME_A';
const tmp = mkdtempSync(join(tmpdir(), 'kmectl-maint-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const mode = (p: string) => statSync(p).mode & 0o777;
const spki = (pem: string | Buffer) => createPublicKey(pem).export({ type: 'spki', format: 'der' }).toString('hex');
const certSpki = (p: string) => new X509Certificate(readFileSync(p)).publicKey.export({ type: 'spki', format: 'der' }).toString('hex');
const cfgA = () => JSON.parse(readFileSync(net().path(net().node(A).config), 'utf8'));
const inNode = (p: string) => join(dirname(net().path(net().node(A).config)), p);
const files = () => {
  const c = cfgA();
  return { apiCert: inNode(c.api.tls.cert), apiKey: inNode(c.api.tls.key), kmeCert: inNode(c.peer.tls.cert), kmeKey: inNode(c.peer.tls.key) };
};
const peerUp = () => waitFor('the peer reachable', () => kmectl(net(), A, ['status', '--json']), (r) => r.json.links?.[0]?.peer_reachable === true, 30_000);

describe('kmectl pki', () => {
  it('renew keeps both keys by default; the node works with the renewed certificates after a restart', async () => {
    const f = files();
    const keys = { api: readFileSync(f.apiKey, 'utf8'), kme: readFileSync(f.kmeKey, 'utf8') };
    const serials = [f.apiCert, f.kmeCert].map((p) => new X509Certificate(readFileSync(p)).serialNumber);
    const r = await kmectl(net(), A, ['pki', 'renew', '--days', '400', '--json']);
    expect(r.code).toBe(0);
    expect(r.json.certificates.map((c: { name: string; key: string; subject: string }) => [c.name, c.key, c.subject])).toEqual([
      ['api', 'kept', 'CN=KME_A ETSI API'],
      ['kme', 'kept', 'CN=KME_A'],
    ]);
    expect(readFileSync(f.apiKey, 'utf8')).toBe(keys.api);
    expect(readFileSync(f.kmeKey, 'utf8')).toBe(keys.kme);
    expect(certSpki(f.apiCert)).toBe(spki(keys.api));
    expect(certSpki(f.kmeCert)).toBe(spki(keys.kme));
    const renewed = [f.apiCert, f.kmeCert].map((p) => new X509Certificate(readFileSync(p)));
    expect(renewed.map((c) => c.serialNumber)).not.toEqual(serials);
    // The same names as before (the API certificate answers to the loopback address).
    expect(renewed[0]!.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1');
    expect(Math.round((Date.parse(renewed[1]!.validTo) - Date.now()) / 86_400_000)).toBe(400);
    const h = await kmectl(net(), A, ['pki', 'renew', '--only', 'api']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^CERT +FILE +EXPIRES +KEY\napi +\S+KME_A\.api\.crt +\d{4}-\d\d-\d\d +kept \S+KME_A\.api\.key\nrestart kme-api to use it \(systemctl restart kme-api\)\n$/);

    await net().restart(A, 'kme-keypoold');
    await net().restart(A, 'kme-api');
    await peerUp();
    const tlsCert = await net().sae('SAE_A1').get('/api/v1/keys/SAE_B1/status');
    expect(tlsCert.status).toBe(200);
  });

  it('renew --new-key rolls the key (mode 0600) and says so; the peer accepts the new KME certificate', async () => {
    const f = files();
    const old = readFileSync(f.kmeKey, 'utf8');
    const r = await kmectl(net(), A, ['pki', 'renew', '--only', 'kme', '--new-key']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\nkme +\S+KME_A\.kme\.crt +\d{4}-\d\d-\d\d +new key \S+KME_A\.kme\.key \(0600\)\nrestart kme-keypoold to use it/);
    const now = readFileSync(f.kmeKey, 'utf8');
    expect(now).not.toBe(old);
    expect(mode(f.kmeKey)).toBe(0o600);
    expect(certSpki(f.kmeCert)).toBe(spki(now));
    await net().restart(A, 'kme-keypoold');
    await peerUp();
  });

  it('init refuses to replace existing files (exit 1); with --force it issues new keys with the names asked', async () => {
    const refused = await kmectl(net(), A, ['pki', 'init']);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/already exist\n {2}what to do: to renew keep them and run kmectl pki renew; to start over add --force\n$/);
    const f = files();
    const r = await kmectl(net(), A, ['pki', 'init', '--only', 'api', '--dns', 'kme-a.example,localhost', '--ip', '127.0.0.1', '--force', '--json']);
    expect(r.code).toBe(0);
    expect(r.json.certificates).toEqual([expect.objectContaining({ name: 'api', key: 'new', subject: 'CN=KME_A ETSI API' })]);
    expect(new X509Certificate(readFileSync(f.apiCert)).subjectAltName).toBe('DNS:kme-a.example, DNS:localhost, IP Address:127.0.0.1');
    expect(mode(f.apiKey)).toBe(0o600);
    await net().restart(A, 'kme-api');
    expect((await net().sae('SAE_A1').get('/api/v1/keys/SAE_B1/status')).status).toBe(200);
  });

  it('needs a CA key that matches the CA certificate (exit 2, saying what to give)', async () => {
    const cfg = net().path(net().node(A).config);
    const none = await kmectlConfig(net(), cfg, ['pki', 'renew']);
    expect(none.code).toBe(2);
    expect(none.stderr).toMatch(/^kmectl: the node's certificates are issued from a CA key: give --ca-key <file>\n/);
    const wrong = await kmectl(net(), A, ['pki', 'renew', '--ca-key', net().path(net().node(A).saes[0]!.key)]);
    expect(wrong.code).toBe(2);
    expect(wrong.stderr).toMatch(/^kmectl: \S+ is not a CA certificate|does not belong to the CA certificate/);
  });
});

describe('kmectl hsm', () => {
  it('check and init: the master key works; init finds it and does nothing', async () => {
    const st = await kmectl(net(), A, ['status', '--json']);
    const c = await kmectl(net(), A, ['hsm', 'check']);
    expect(c.code).toBe(0);
    expect(c.stdout).toMatch(/^OK master key .* id [0-9a-f]+, works\n/);
    const cj = await kmectl(net(), A, ['hsm', 'check', '--json']);
    expect(cj.json).toMatchObject({ ok: true, command: 'check', provider: st.json.master_key.provider, keyId: st.json.master_key.key_id });
    const i = await kmectl(net(), A, ['hsm', 'init', '--json']);
    expect(i.code).toBe(0);
    expect(i.json).toMatchObject({ ok: true, command: 'init', created: false, keyId: st.json.master_key.key_id });
    expect(i.json.message).toMatch(/nothing to do$/);
  });

  it('check of a broken HSM set-up exits with kme-hsm\'s code and says what to do', async () => {
    const raw = cfgA();
    const broken = inNode('config-broken-hsm.json');
    let expected: number;
    if (raw.master_key.provider === 'pkcs11') {
      raw.master_key.token_label = 'NO_SUCH_TOKEN';
      expected = 21;
    } else {
      raw.master_key.path = join(tmp, 'loose.key');
      writeFileSync(raw.master_key.path, Buffer.alloc(32, 7), { mode: 0o644 });
      expected = 27;
    }
    writeFileSync(broken, JSON.stringify(raw));
    try {
      const env = { SOFTHSM2_CONF: join(net().dir, 'softhsm', 'softhsm2.conf') };
      const r = await kmectlConfig(net(), broken, ['hsm', 'check'], { env });
      expect(r.code).toBe(expected);
      expect(r.stderr).toMatch(expected === 21 ? /token 'NO_SUCH_TOKEN' not found.*\n {2}what to do: check the HSM is plugged in/ : /accessible to group or others.*\n {2}what to do: chmod 600/);
    } finally {
      rmSync(broken, { force: true });
    }
  });

  it('rotate: a new master key, then a new data key with the store re-encrypted; progress until done', async () => {
    const before = (await kmectl(net(), A, ['status', '--json'])).json;
    const r = await kmectl(net(), A, ['hsm', 'rotate', '--json'], { timeoutMs: 120_000 });
    expect(r.code).toBe(0);
    expect(r.json.master_key.before).toBe(before.master_key.key_id);
    expect(r.json.master_key.after).not.toBe(before.master_key.key_id);
    expect(r.json.data_key).toMatchObject({ generation: 2, state: 'done' });
    expect(r.json.data_key.done).toBe(r.json.data_key.total);
    expect(r.json.data_key.total).toBeGreaterThan(0);
    const after = (await kmectl(net(), A, ['status', '--json'])).json;
    expect(after.data_key).toMatchObject({ generation: 2, state: 'done' });
    expect(after.master_key.key_id).toBe(r.json.master_key.after);
    // Human: what happened, and the re-encryption's final count (the bar itself only on a terminal).
    const h = await kmectl(net(), A, ['hsm', 'rotate', '--only', 'data'], { timeoutMs: 120_000 });
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^data key: generation 2 -> 3; new records are sealed with it now, re-encrypting the rest\.\.\.\nre-encrypting: (\d+)\/\1 {2}done\nOK data key generation 3: \d+ records re-encrypted, the old data key erased\n$/);
    expect((await net().sae('SAE_A1').get('/api/v1/keys/SAE_B1/enc_keys')).status).toBe(200);
  });
});

describe('kmectl audit', () => {
  it('verify: intact against the store\'s anchor (exit 0); export shows the rotations', async () => {
    // The anchor is noted every minute and at shutdown: the restarts above left one.
    const v = await kmectl(net(), A, ['audit', 'verify']);
    expect(v.code).toBe(0);
    expect(v.stdout).toMatch(/^OK audit trail intact: \d+ lines in 1 segment \(\S+audit\)\nseq 1\.\.\d+, last hash [0-9a-f]{64}\nanchor from \S+keystore\.sqlite: seq \d+ matches\n$/);
    const vj = await kmectl(net(), A, ['audit', 'verify', '--json']);
    expect(vj.json).toMatchObject({ ok: true, first_seq: 1 });
    const e = await kmectl(net(), A, ['audit', 'export', '--event', 'rotation']);
    expect(e.code).toBe(0);
    expect(e.stdout).toMatch(/^SEQ +TIME +EVENT +LINK +SAES +KEYS +REASON\n/);
    expect(e.stdout).toMatch(/ rotation +new master key\n/);
    expect(e.stdout).toMatch(/ rotation +new data key\n/);
    const ej = await kmectl(net(), A, ['audit', 'export', '--event', 'rotation', '--since', '2000-01-01', '--json']);
    expect(ej.code).toBe(0);
    expect(ej.json.lines.length).toBeGreaterThanOrEqual(4);
    expect(new Set(ej.json.lines.map((l: { event: string }) => l.event))).toEqual(new Set(['rotation']));
    const bad = await kmectl(net(), A, ['audit', 'export', '--event', 'nonsense']);
    expect(bad.code).toBe(2);
  });

  it('verify: a tampered copy of the trail is found broken (exit 1), naming the line', async () => {
    const raw = cfgA();
    const src = join(net().path(net().node(A).state_dir), 'audit');
    const copy = join(tmp, 'audit-copy');
    cpSync(src, copy, { recursive: true });
    const seg = join(copy, readdirSync(copy).find((n) => n.endsWith('.jsonl'))!);
    const lines = readFileSync(seg, 'utf8').split('\n');
    // One character of the second line changed: its year.
    lines[1] = lines[1]!.replace(/"ts":"(\d{4})/, (_m, y: string) => `"ts":"${Number(y) + 1}`);
    writeFileSync(seg, lines.join('\n'));
    raw.audit = { ...raw.audit, dir: copy };
    const f = inNode('config-audit-copy.json');
    writeFileSync(f, JSON.stringify(raw));
    try {
      const r = await kmectlConfig(net(), f, ['audit', 'verify', '--anchor', `0:${'0'.repeat(64)}`]);
      expect(r.code).toBe(1);
      expect(r.stdout).toMatch(/^AUDIT TRAIL BROKEN at \S+audit-000001\.jsonl line 2 \(seq 2\): altered: altered line: content does not match its hash/);
      expect(r.stdout).toMatch(/-> keep the trail as it is \(evidence\), report it to the security officer/);
    } finally {
      rmSync(f, { force: true });
    }
  });
});
