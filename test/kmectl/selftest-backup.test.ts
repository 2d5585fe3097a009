/**
 * kmectl selftest (a test key through both KMEs of the link, checked by an
 * HMAC, erased on both sides, never deliverable, in both audit trails) and
 * backup/restore (configuration only; TLS keys only encrypted; restore
 * validates first and never replaces a different file without --force).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/common/config.js';
import { useDemoNet } from '../helpers/demo-net.js';
import { kmectl, kmectlConfig } from './run.js';

const net = useDemoNet();
const A = 'KME_A';
const tmp = mkdtempSync(join(tmpdir(), 'kmectl-sb-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const mode = (p: string) => statSync(p).mode & 0o777;

/** Audit lines of a node that name `rid` (read straight from the trail). */
function auditLines(kme: string, rid: string): Array<Record<string, unknown>> {
  const dir = join(net().path(net().node(kme).state_dir), 'audit');
  return readFileSync(join(dir, 'audit-000001.jsonl'), 'utf8')
    .split('\n')
    .filter((l) => l.includes(rid))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}

function keyRecords(kme: string, keyIds: string[]): number {
  const db = new Database(join(net().path(net().node(kme).state_dir), 'keystore.sqlite'), { readonly: true, fileMustExist: true });
  try {
    const q = db.prepare('SELECT count(*) AS n FROM keys WHERE key_id = ?');
    return keyIds.reduce((n, id) => n + (q.get(id) as { n: number }).n, 0);
  } finally {
    db.close();
  }
}

describe('kmectl selftest', () => {
  it('OK on the link: the same key at both ends (by HMAC), timings, exit 0', async () => {
    const r = await kmectl(net(), A, ['selftest']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^LINK +PEER +RESULT +TIME +DETAIL\nKME_A-KME_B +KME_B +OK +[\d.]+ ms +256-bit test key agreed \(carve [\d.]+ ms, peer [\d.]+ ms\); erased on both sides\n$/);
    // From the other end too (KME_B carves from the blocks it owns).
    const b = await kmectl(net(), 'KME_B', ['selftest', '--link', 'KME_A-KME_B', '--json']);
    expect(b.code).toBe(0);
    expect(b.json).toMatchObject({ ok: true, kme_id: 'KME_B', links: [{ link_id: 'KME_A-KME_B', peer_kme_id: 'KME_A', ok: true, key_size: 256 }] });
    expect(b.json.links[0].elapsed_ms).toBeGreaterThan(0);
    expect(b.json.links[0].peer_ms).toBeGreaterThan(0);
  });

  it('the test key is never deliverable: voided and erased on both sides, reserved+voided "selftest" lines in both audit trails, no delivery', async () => {
    const r = await kmectl(net(), A, ['selftest', '--json']);
    expect(r.code).toBe(0);
    const { rid } = r.json.links[0];
    expect(rid).toMatch(/^[0-9a-f-]{36}$/);
    const rows = [A, 'KME_B'].map((k) => net().reservationRows(k).find((x) => x.rid === rid));
    expect(rows[0]).toMatchObject({ role: 'owner', state: 'voided', master: 'selftest' });
    expect(rows[1]).toMatchObject({ role: 'peer', state: 'voided', master: 'selftest' });
    const keyIds = rows[0]!.key_ids;
    expect(keyIds).toHaveLength(1);
    expect(rows[1]!.key_ids).toEqual(keyIds);
    expect(keyRecords(A, keyIds) + keyRecords('KME_B', keyIds)).toBe(0);
    for (const k of [A, 'KME_B']) {
      const lines = await waitForLines(k, rid, 2);
      expect(lines.map((l) => l.event)).toEqual(['reserved', 'voided']);
      for (const l of lines) {
        expect(l.reason).toMatch(/^selftest: /);
        expect(l.key_ids).toEqual(keyIds);
      }
    }
    // No SAE can fetch it at the peer.
    const dec = await net().sae('SAE_B1').get(`/api/v1/keys/selftest/dec_keys?key_ID=${keyIds[0]}`);
    expect([400, 401]).toContain(dec.status);
    const verify = await kmectl(net(), 'KME_B', ['audit', 'verify']);
    expect(verify.code).toBe(0);
  });

  it('an unknown link is a usage error (exit 2)', async () => {
    const r = await kmectl(net(), A, ['selftest', '--link', 'KME_A-KME_Z']);
    expect(r.code).toBe(2);
    expect(r.stderr).toBe('kmectl: no link KME_A-KME_Z at KME_A\n  what to do: links here: KME_A-KME_B\n');
  });
});

/** The trail is flushed within a second of an event recorded outside a commit. */
async function waitForLines(kme: string, rid: string, n: number) {
  for (let i = 0; i < 30; i++) {
    const l = auditLines(kme, rid);
    if (l.length >= n) return l;
    await new Promise((r) => setTimeout(r, 200));
  }
  return auditLines(kme, rid);
}

describe('kmectl backup and restore', () => {
  const pass = join(tmp, 'pass');
  const noKeys = join(tmp, 'a-plain.bak');
  const withKeys = join(tmp, 'a-keys.bak');
  const nodeDir = () => dirname(net().path(net().node(A).config));

  it('backup: configuration, registry and certificates; never the key store, master key, PIN or (without a passphrase) TLS keys', async () => {
    const r = await kmectl(net(), A, ['backup', noKeys, '--json']);
    expect(r.code).toBe(0);
    expect(mode(noKeys)).toBe(0o600);
    expect(r.json.files.map((f: { role: string }) => f.role)).toEqual(['config', 'registry', 'api_cert', 'api_ca', 'kme_cert']);
    expect(r.json.encrypted_keys).toEqual([]);
    const what = r.json.excluded.map((x: { what: string }) => x.what);
    expect(what).toEqual(expect.arrayContaining(['key store', 'audit trail', 'TLS private key (api_key)', 'TLS private key (kme_key)']));
    expect(what.some((w: string) => w === 'HSM token' || w === 'master key file')).toBe(true);
    const text = readFileSync(noKeys, 'utf8');
    expect(text).not.toMatch(/PRIVATE KEY/);
    const cfg = loadConfig(net().path(net().node(A).config));
    if (cfg.master_key.provider === 'pkcs11') {
      expect(what).toContain('HSM PIN file');
      expect(text).not.toContain(readFileSync(cfg.master_key.pin_file!, 'utf8').trim());
    }
    const h = await kmectl(net(), A, ['backup', noKeys]);
    expect(h.code).toBe(1);
    expect(h.stderr).toMatch(/already exists\n {2}what to do: choose another file, or add --force to replace it\n$/);
  });

  it('backup --passphrase-file: the TLS keys encrypted (the file must be 0600)', async () => {
    writeFileSync(pass, 'correct horse battery staple\n', { mode: 0o644 });
    const loose = await kmectl(net(), A, ['backup', withKeys, '--passphrase-file', pass]);
    expect(loose.code).toBe(2);
    expect(loose.stderr).toMatch(/accessible to group or others.*\n {2}what to do: chmod 600 /);
    expect(existsSync(withKeys)).toBe(false);
    rmSync(pass);
    writeFileSync(pass, 'correct horse battery staple\n', { mode: 0o600 });
    const r = await kmectl(net(), A, ['backup', withKeys, '--passphrase-file', pass]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/ {2}api_key \(encrypted\) +\S+KME_A\.api\.key\n/);
    const text = readFileSync(withKeys, 'utf8');
    expect(text).not.toMatch(/PRIVATE KEY/);
    const doc = JSON.parse(text);
    expect(doc.secrets).toMatchObject({ cipher: 'aes-256-gcm', kdf: { name: 'scrypt' }, roles: ['api_key', 'kme_key'] });
  });

  it('restore to a new node folder: validated, every file where the configuration names it, keys 0600', async () => {
    const target = join(tmp, 'r1', 'node', 'config.json');
    const r = await kmectlConfig(net(), target, ['restore', withKeys, '--passphrase-file', pass, '--json']);
    expect(r.code).toBe(0);
    expect(r.json.skipped_keys).toEqual([]);
    const restored = loadConfig(target);
    expect(restored.kme_id).toBe('KME_A');
    const orig = loadConfig(net().path(net().node(A).config));
    for (const [a, b] of [
      [restored.api.tls.cert, orig.api.tls.cert], [restored.api.tls.key, orig.api.tls.key], [restored.peer.tls.key, orig.peer.tls.key],
      [restored.registry_file, orig.registry_file], [restored.api.tls.ca, orig.api.tls.ca],
    ] as Array<[string, string]>) {
      expect(readFileSync(a, 'utf8')).toBe(readFileSync(b, 'utf8'));
    }
    expect(mode(restored.api.tls.key)).toBe(0o600);
    expect(mode(restored.peer.tls.key)).toBe(0o600);
    expect(existsSync(join(restored.state_dir, 'keystore.sqlite'))).toBe(false);
  });

  it('restore never replaces a different file without --force; with it, does', async () => {
    const target = join(tmp, 'r1', 'node', 'config.json');
    const reg = loadConfig(target).registry_file;
    const good = readFileSync(reg, 'utf8');
    writeFileSync(reg, '{"saes": []}\n');
    const r = await kmectlConfig(net(), target, ['restore', withKeys, '--passphrase-file', pass]);
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `kmectl: restore would replace 1 file(s) that differ: ${reg}\n  what to do: nothing was written; add --force to replace them (keep a backup of the current ones first: kmectl backup <file>)\n`,
    );
    expect(readFileSync(reg, 'utf8')).toBe('{"saes": []}\n');
    const f = await kmectlConfig(net(), target, ['restore', withKeys, '--passphrase-file', pass, '--force']);
    expect(f.code).toBe(0);
    expect(f.stdout).toMatch(new RegExp(`${reg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} +registry +replaced\n`));
    expect(f.stdout).toMatch(/config\.json +config +unchanged\n/);
    expect(readFileSync(reg, 'utf8')).toBe(good);
  });

  it('restore: keys not restored without the passphrase (exit 1 when the node has none), a wrong passphrase is refused', async () => {
    const target = join(tmp, 'r2', 'node', 'config.json');
    const r = await kmectlConfig(net(), target, ['restore', withKeys]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/TLS keys not restored \(api_key, kme_key\): give --passphrase-file to decrypt them; the node has no keys at those paths yet\n/);
    expect(existsSync(target)).toBe(true);
    const wrong = join(tmp, 'wrong');
    writeFileSync(wrong, 'not the right passphrase', { mode: 0o600 });
    const w = await kmectlConfig(net(), join(tmp, 'r3', 'node', 'config.json'), ['restore', withKeys, '--passphrase-file', wrong]);
    expect(w.code).toBe(1);
    expect(w.stderr).toMatch(/^kmectl: the TLS keys in the backup do not decrypt: wrong passphrase, or the backup was altered\n/);
    expect(existsSync(join(tmp, 'r3'))).toBe(false);
  });

  it('restore validates the configuration first and writes nothing when it does not (exit 1); a damaged backup is refused', async () => {
    const doc = JSON.parse(readFileSync(noKeys, 'utf8'));
    const cfg = doc.files.find((f: { role: string }) => f.role === 'config');
    const raw = JSON.parse(cfg.text);
    raw.peer.port = 'not a port';
    cfg.text = JSON.stringify(raw);
    cfg.sha256 = createHash('sha256').update(cfg.text).digest('hex');
    const bad = join(tmp, 'bad-config.bak');
    writeFileSync(bad, JSON.stringify(doc));
    const target = join(tmp, 'r4', 'node', 'config.json');
    const r = await kmectlConfig(net(), target, ['restore', bad]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^kmectl: the configuration in the backup does not validate: invalid configuration:\n {2}peer\.port: .*\n {2}what to do: nothing was written\n$/);
    expect(existsSync(join(tmp, 'r4'))).toBe(false);
    cfg.text += ' ';
    writeFileSync(bad, JSON.stringify(doc));
    const damaged = await kmectlConfig(net(), target, ['restore', bad]);
    expect(damaged.code).toBe(1);
    expect(damaged.stderr).toMatch(/config \(config\.json\) is damaged \(checksum\)/);
    mkdirSync(join(tmp, 'junk'));
    writeFileSync(join(tmp, 'junk', 'x.bak'), 'not json');
    const junk = await kmectlConfig(net(), target, ['restore', join(tmp, 'junk', 'x.bak')]);
    expect(junk.code).toBe(2);
  });

  it('restore onto the running node from its own backup changes nothing (exit 0)', async () => {
    const before = readFileSync(join(nodeDir(), 'config.json'), 'utf8');
    const r = await kmectl(net(), A, ['restore', withKeys, '--passphrase-file', pass, '--json']);
    expect(r.code).toBe(0);
    expect(r.json.written).toEqual([]);
    expect(r.json.unchanged).toHaveLength(7);
    expect(readFileSync(join(nodeDir(), 'config.json'), 'utf8')).toBe(before);
  });
});
