/**
 * kmectl sae list|add|remove|reissue against a running demo network: the
 * registry edited and reloaded by keypoold (in effect at once, over the ETSI
 * API), certificates issued from the CA key, from an SAE's CSR, a CSR printed
 * when the CA is offline, a certificate signed elsewhere checked, and refusals.
 */
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { httpsCall, useDemoNet } from '../helpers/demo-net.js';
import { newCsr } from '../../src/kmectl/certs.js';
import { kmectl, kmectlConfig } from './run.js';

const net = useDemoNet();
const A = 'KME_A';
const tmp = mkdtempSync(join(tmpdir(), 'kmectl-sae-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const mode = (p: string) => statSync(p).mode & 0o777;

/** An ETSI call at `kme` with the given client certificate files. */
function etsi(kme: string, cert: string, key: string, path: string) {
  const n = net().node(kme);
  return httpsCall(n.etsi_url + path, 'GET', { cert: readFileSync(cert), key: readFileSync(key), ca: readFileSync(net().path(net().demo.ca_cert)) });
}

const registered = async (kme: string) => ((await kmectl(net(), kme, ['sae', 'list', '--json'])).json.saes as Array<{ sae_id: string }>).map((s) => s.sae_id);

describe('kmectl sae', () => {
  it('list: every SAE of the registry, where it is attached, its allow-list and certificate expiry', async () => {
    const r = await kmectl(net(), A, ['sae', 'list']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^SAE +KME +MAY REQUEST KEYS FOR +CERTIFICATE\n/);
    expect(r.stdout).toMatch(/\nSAE_A1 +KME_A \(here\) +any SAE +expires \d{4}-\d\d-\d\d \(824 days\)\n/);
    expect(r.stdout).toMatch(/\nSAE_B3 +KME_B +any SAE\n/);
    expect(r.stdout).toMatch(/6 SAEs, 3 at KME_A \(\S+registry\.json\)\n$/);
    const j = await kmectl(net(), A, ['sae', 'list', '--json']);
    expect(j.json.saes).toHaveLength(6);
    expect(j.json.saes[0]).toMatchObject({ sae_id: 'SAE_A1', kme_id: 'KME_A', allowed_slaves: ['*'], here: true, certificate: { days_left: 824 } });
    expect(j.json.saes[3]).toMatchObject({ sae_id: 'SAE_B1', kme_id: 'KME_B', here: false });
  });

  it('add --issue: a client certificate from the CA, the registry reloaded; with the SAE added at the peer too, it gets keys at once', async () => {
    const r = await kmectl(net(), A, ['sae', 'add', 'SAE_A4', '--issue', '--allow', 'SAE_B1', '--json']);
    expect(r.code).toBe(0);
    expect(r.json).toMatchObject({
      ok: true, action: 'added',
      sae: { sae_id: 'SAE_A4', kme_id: 'KME_A', allowed_slaves: ['SAE_B1'] },
      certificate: { mode: 'issued' },
      reload: { reloaded: true, saes: 7 },
    });
    const [key, crt] = r.json.certificate.files as string[];
    expect(key).toMatch(/SAE_A4\.key$/);
    expect(mode(key!)).toBe(0o600);
    const c = new X509Certificate(readFileSync(crt!));
    expect(c.subject).toBe('CN=SAE_A4');
    expect(c.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(c.checkIssued(new X509Certificate(readFileSync(net().path(net().demo.ca_cert))))).toBe(true);
    expect(await registered(A)).toContain('SAE_A4');

    // KME_B does not know SAE_A4 yet: it refuses the reservation.
    expect((await etsi(A, crt!, key!, '/api/v1/keys/SAE_B1/enc_keys')).status).toBe(503);
    const b = await kmectl(net(), 'KME_B', ['sae', 'add', 'SAE_A4', '--kme', 'KME_A']);
    expect(b.code).toBe(0);
    expect(b.stdout).toMatch(/^added SAE_A4 at KME_A, may request keys for any SAE\n/);
    expect(b.stdout).toMatch(/keypoold reloaded the registry \(7 SAEs\): in effect now\n/);

    const enc = await etsi(A, crt!, key!, '/api/v1/keys/SAE_B1/enc_keys');
    expect(enc.status).toBe(200);
    const { key_ID, key: material } = enc.body.keys[0];
    const dec = await net().sae('SAE_B1').get(`/api/v1/keys/SAE_A4/dec_keys?key_ID=${key_ID}`);
    expect(dec.status).toBe(200);
    expect(dec.body.keys[0]).toEqual({ key_ID, key: material });
    // The allow-list holds.
    const other = await etsi(A, crt!, key!, '/api/v1/keys/SAE_B2/enc_keys');
    expect(other.status).toBe(401);
    expect(other.body.message).toBe('SAE SAE_A4 may not request keys for SAE_B2');
  });

  it('refuses an SAE ID that is a KME ID (own or a peer\'s), one already registered, or not an ID, and leaves the registry alone', async () => {
    const before = await registered(A);
    for (const id of ['KME_A', 'KME_B']) {
      const r = await kmectl(net(), A, ['sae', 'add', id]);
      expect(r.code).toBe(1);
      expect(r.stderr).toBe(`kmectl: ${id} is a KME ID: an SAE may not have the ID of a KME\n  what to do: choose another SAE ID\n`);
    }
    const dup = await kmectl(net(), A, ['sae', 'add', 'SAE_B1', '--json']);
    expect(dup.code).toBe(1);
    expect(dup.json).toEqual({ ok: false, error: { code: 'EXISTS', message: 'SAE_B1 is already registered (at KME_B)', hint: 'to change it: kmectl sae remove SAE_B1, then add it again' } });
    const bad = await kmectl(net(), A, ['sae', 'add', 'two words ']);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/^kmectl: "two words " is not a valid SAE ID/);
    const kme = await kmectl(net(), A, ['sae', 'add', 'SAE_X', '--kme', 'KME_Z']);
    expect(kme.code).toBe(2);
    expect(kme.stderr).toMatch(/--kme KME_Z is neither this KME nor a peer of it\n {2}what to do: use one of: KME_A, KME_B\n/);
    const remoteCert = await kmectl(net(), A, ['sae', 'add', 'SAE_X', '--kme', 'KME_B', '--issue']);
    expect(remoteCert.code).toBe(2);
    expect(remoteCert.stderr).toMatch(/SAE_X is attached to KME_B: its certificate is made there/);
    expect(await registered(A)).toEqual(before);
  });

  it('CA offline: --issue writes a key and prints a CSR; an SAE\'s CSR is signed with the CA key; a certificate signed elsewhere is checked', async () => {
    const cfg = net().path(net().node(A).config);
    const out = join(tmp, 'offline');
    // --config (not the demo): no CA key at hand.
    const noCa = await kmectlConfig(net(), cfg, ['sae', 'add', 'SAE_A5', '--issue', '--out', out]);
    expect(noCa.code).toBe(0);
    expect(noCa.stdout).toMatch(/the CA key is not here \(give --ca-key <file> when it is\): wrote a new key \S+SAE_A5\.key \(mode 0600\) and a CSR; have your CA sign it/);
    expect(noCa.stdout).toContain('-----BEGIN CERTIFICATE REQUEST-----');
    expect(mode(join(out, 'SAE_A5.key'))).toBe(0o600);
    const csr = readFileSync(join(out, 'SAE_A5.csr'), 'utf8');
    expect(noCa.stdout).toContain(csr.trim());

    // "At the CA": sign that CSR with the CA key (the demo's, through --node).
    const signed = join(tmp, 'signed');
    const s = await kmectl(net(), A, ['sae', 'reissue', 'SAE_A5', '--csr', join(out, 'SAE_A5.csr'), '--out', signed, '--json']);
    expect(s.code).toBe(0);
    expect(s.json.certificate).toMatchObject({ mode: 'signed_csr', files: [join(signed, 'SAE_A5.crt')] });

    // Back on the node: the signed certificate is checked and accepted.
    const wrong = await kmectlConfig(net(), cfg, ['sae', 'reissue', 'SAE_A5', '--cert', net().path(net().node(A).saes[0]!.cert), '--out', out]);
    expect(wrong.code).toBe(1);
    expect(wrong.stderr).toMatch(/will not do for SAE_A5: its CN is SAE_A1, not SAE_A5\n/);
    const ok = await kmectlConfig(net(), cfg, ['sae', 'reissue', 'SAE_A5', '--cert', join(signed, 'SAE_A5.crt'), '--out', out]);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toMatch(/certificate \S+SAE_A5\.crt {2}\(expires \d{4}-\d\d-\d\d; checked: issued by the API's CA\)/);
    // The SAE's key (from the CSR step) and the CA-signed certificate work at the ETSI API.
    const st = await etsi(A, join(out, 'SAE_A5.crt'), join(out, 'SAE_A5.key'), '/api/v1/keys/SAE_A1/status');
    expect(st.status).toBe(200);
    expect(st.body).toMatchObject({ master_SAE_ID: 'SAE_A5', slave_SAE_ID: 'SAE_A1' });

    // A CSR for another name is refused.
    const other = await newCsr('SAE_Q');
    writeFileSync(join(tmp, 'q.csr'), other.csr);
    const q = await kmectl(net(), A, ['sae', 'reissue', 'SAE_A5', '--csr', join(tmp, 'q.csr'), '--out', join(tmp, 'q')]);
    expect(q.code).toBe(1);
    expect(q.stderr).toMatch(/the CSR \S+q\.csr is for CN=SAE_Q, not SAE_A5\n/);
  });

  it('reissue with the CA key: a new key and certificate that work at once', async () => {
    const n = net().node(A).saes.find((s) => s.sae_id === 'SAE_A2')!;
    const oldKey = readFileSync(net().path(n.key), 'utf8');
    const r = await kmectl(net(), A, ['sae', 'reissue', 'SAE_A2']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/certificate \S+SAE_A2\.crt {2}\(expires \d{4}-\d\d-\d\d; issued by the CA, new key \S+SAE_A2\.key \(mode 0600\)\)/);
    expect(r.stdout).toMatch(/the previous certificate stays valid until it expires/);
    expect(readFileSync(net().path(n.key), 'utf8')).not.toBe(oldKey);
    expect((await net().sae('SAE_A2').get('/api/v1/keys/SAE_A1/status')).status).toBe(200);
    const remote = await kmectl(net(), A, ['sae', 'reissue', 'SAE_B1']);
    expect(remote.code).toBe(1);
    expect(remote.stderr).toMatch(/SAE_B1 is attached to KME_B\n {2}what to do: reissue it there/);
  });

  it('remove: out of the registry and refused by keypoold at once; an unknown SAE is refused', async () => {
    const pki = join(net().path(net().demo.ca_key), '..');
    const r = await kmectl(net(), A, ['sae', 'remove', 'SAE_A4', '--json']);
    expect(r.code).toBe(0);
    expect(r.json).toMatchObject({ ok: true, action: 'removed', sae: { sae_id: 'SAE_A4', kme_id: 'KME_A' }, reload: { reloaded: true, saes: 7 } });
    expect(await registered(A)).not.toContain('SAE_A4');
    const enc = await etsi(A, join(pki, 'SAE_A4.crt'), join(pki, 'SAE_A4.key'), '/api/v1/keys/SAE_B1/enc_keys');
    expect(enc.status).toBe(401);
    const h = await kmectl(net(), 'KME_B', ['sae', 'remove', 'SAE_A4']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/^removed SAE_A4 \(was at KME_A\)\nkeypoold reloaded the registry \(6 SAEs\): in effect now\n$/);
    const again = await kmectl(net(), A, ['sae', 'remove', 'SAE_A4']);
    expect(again.code).toBe(1);
    expect(again.stderr).toBe('kmectl: SAE_A4 is not registered\n  what to do: kmectl sae list shows the SAEs\n');
  });

  it('a registry file that does not validate: exit 2, saying to fix or restore it', async () => {
    const f = net().path(net().node('KME_B').registry_file);
    const good = readFileSync(f, 'utf8');
    try {
      writeFileSync(f, JSON.stringify({ saes: [{ sae_id: 'SAE_B1', kme_id: 'KME_B' }, { sae_id: 'SAE_B1', kme_id: 'KME_B' }] }));
      const r = await kmectl(net(), 'KME_B', ['sae', 'add', 'SAE_B4']);
      expect(r.code).toBe(2);
      expect(r.stderr).toMatch(/^kmectl: SAE registry \S+ lists SAE_B1 twice\n {2}what to do: fix the file by hand \(it is JSON\), or restore it: kmectl restore <backup>\n$/);
    } finally {
      writeFileSync(f, good);
    }
  });
});
