/**
 * The PKCS#11 master-key provider against a real SoftHSM2 token.
 */
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import pkcs11js from 'pkcs11js';
import { createSoftHsm } from '../helpers/softhsm.js';
import { silentLogger } from '../../src/common/logger.js';
import { MasterKeyError, openMasterKeyProvider, type MasterKeyProvider } from '../../src/keypoold/master-key.js';
import {
  Pkcs11MasterKeyProvider, createMasterKeyIfAbsent, openTokenSession, type Pkcs11MasterKeyConfig,
} from '../../drivers/hsm/pkcs11-master-key.js';
import { masterKeySearch } from '../../drivers/hsm/templates.js';

const hsm = createSoftHsm(); // sets SOFTHSM2_CONF before anything initialises the library
afterAll(() => hsm.cleanup());

const log = silentLogger();
const open: MasterKeyProvider[] = [];
afterEach(async () => {
  while (open.length) await open.pop()!.close();
});

async function provider(cfg: Pkcs11MasterKeyConfig = hsm.masterKey()): Promise<Pkcs11MasterKeyProvider> {
  const p = await Pkcs11MasterKeyProvider.open(cfg, log, hsm.env);
  open.push(p);
  return p;
}

/** The MasterKeyError a promise rejects with. */
async function failure(p: Promise<unknown>): Promise<MasterKeyError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(MasterKeyError);
  return e as MasterKeyError;
}

const dataKey = () => Buffer.from('00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff', 'hex');

describe('provisioning', () => {
  it('keypoold does not create a missing master key: open says KEY_MISSING and names the init command', async () => {
    const e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey(), log, hsm.env));
    expect(e.code).toBe('KEY_MISSING');
    expect(e.message).toContain(`master key 'kme-master' not on token '${hsm.label}'`);
    expect(e.message).toContain('node dist/scripts/kme-hsm.js init --config');
  });

  it('createMasterKeyIfAbsent creates the key once, then finds the same one', async () => {
    const first = await createMasterKeyIfAbsent(hsm.masterKey(), log, hsm.env);
    expect(first.created).toBe(true);
    expect(first.keyId).toMatch(/^[0-9a-f]{16}$/);
    const again = await createMasterKeyIfAbsent(hsm.masterKey(), log, hsm.env);
    expect(again).toEqual({ created: false, keyId: first.keyId });
    const p = await provider();
    expect(p.kind).toBe('pkcs11');
    expect(p.currentKeyId).toBe(first.keyId);
    expect(await p.keyIds()).toEqual([first.keyId]);
  });
});

describe('wrap and unwrap', () => {
  it('round-trips a data key as iv | ciphertext | tag under the current key', async () => {
    const p = await provider();
    const { keyId, wrapped } = await p.wrap(dataKey());
    expect(keyId).toBe(p.currentKeyId);
    expect(wrapped.length).toBe(12 + 32 + 16);
    expect(wrapped.includes(dataKey())).toBe(false);
    expect(await p.unwrap(wrapped, keyId)).toEqual(dataKey());
    const again = await p.wrap(dataKey());
    expect(again.wrapped.subarray(0, 12)).not.toEqual(wrapped.subarray(0, 12)); // a fresh IV each time
  });

  it('serialises concurrent operations on the one session', async () => {
    const p = await provider();
    const keys = Array.from({ length: 12 }, (_, i) => Buffer.alloc(32, i));
    const wrapped = await Promise.all(keys.map((k) => p.wrap(k)));
    const back = await Promise.all(wrapped.map((w) => p.unwrap(w.wrapped, w.keyId)));
    expect(back).toEqual(keys);
  });

  it('a tampered or truncated blob is UNWRAP_FAILED, and the session still works afterwards', async () => {
    const p = await provider();
    const { keyId, wrapped } = await p.wrap(dataKey());
    for (const i of [0, 20, wrapped.length - 1]) {
      const bad = Buffer.from(wrapped);
      bad[i]! ^= 1;
      const e = await failure(p.unwrap(bad, keyId));
      expect(e.code).toBe('UNWRAP_FAILED');
      expect(e.message).toMatch(/does not authenticate under master key [0-9a-f]{16}.*restore the store from backup/);
    }
    expect((await failure(p.unwrap(wrapped.subarray(0, 20), keyId))).code).toBe('UNWRAP_FAILED');
    expect(await p.unwrap(wrapped, keyId)).toEqual(dataKey());
    expect(await p.health()).toEqual({ ok: true });
  });

  it('a blob naming a key that is not on the token is KEY_MISSING', async () => {
    const p = await provider();
    const { wrapped } = await p.wrap(dataKey());
    const e = await failure(p.unwrap(wrapped, '0000000000000001'));
    expect(e.code).toBe('KEY_MISSING');
    expect(e.message).toContain(`master key 0000000000000001 ('kme-master') is not on token '${hsm.label}'`);
    expect((await failure(p.unwrap(wrapped, 'file-key'))).code).toBe('KEY_MISSING');
  });
});

describe('the key on the token', () => {
  it('is a sensitive, never-extractable, private AES-256 token object whose value cannot be read', async () => {
    const p = await provider();
    const s = openTokenSession(hsm.masterKey(), hsm.env);
    try {
      await s.run((lib, session) => {
        lib.C_FindObjectsInit(session, masterKeySearch('kme-master', Buffer.from(p.currentKeyId, 'hex')));
        const [key] = lib.C_FindObjects(session, 2);
        lib.C_FindObjectsFinal(session);
        expect(key).toBeDefined();
        let err: unknown;
        try {
          lib.C_GetAttributeValue(session, key!, [{ type: pkcs11js.CKA_VALUE }]);
        } catch (e) {
          err = e;
        }
        expect(err).toBeInstanceOf(pkcs11js.Pkcs11Error);
        expect((err as { code: number }).code).toBe(pkcs11js.CKR_ATTRIBUTE_SENSITIVE);
        const attrs = lib.C_GetAttributeValue(session, key!, [
          { type: pkcs11js.CKA_SENSITIVE }, { type: pkcs11js.CKA_EXTRACTABLE }, { type: pkcs11js.CKA_NEVER_EXTRACTABLE },
          { type: pkcs11js.CKA_ALWAYS_SENSITIVE }, { type: pkcs11js.CKA_TOKEN }, { type: pkcs11js.CKA_PRIVATE },
          { type: pkcs11js.CKA_ENCRYPT }, { type: pkcs11js.CKA_DECRYPT }, { type: pkcs11js.CKA_WRAP },
        ]).map((a) => (a.value as Buffer)[0]);
        expect(attrs).toEqual([1, 0, 1, 1, 1, 1, 1, 1, 0]);
        const [cls, type, len, label, id] = lib.C_GetAttributeValue(session, key!, [
          { type: pkcs11js.CKA_CLASS }, { type: pkcs11js.CKA_KEY_TYPE }, { type: pkcs11js.CKA_VALUE_LEN },
          { type: pkcs11js.CKA_LABEL }, { type: pkcs11js.CKA_ID },
        ]).map((a) => a.value as Buffer);
        expect(cls!.readUInt32LE()).toBe(pkcs11js.CKO_SECRET_KEY);
        expect(type!.readUInt32LE()).toBe(pkcs11js.CKK_AES);
        expect(len!.readUInt32LE()).toBe(32);
        expect(label!.toString()).toBe('kme-master');
        expect(id!.toString('hex')).toBe(p.currentKeyId);
      });
    } finally {
      await s.close();
    }
  });
});

describe('rotation', () => {
  it('rotate makes a newer key current, old blobs still unwrap, and retire destroys the old key', async () => {
    const p = await provider();
    const old = await p.wrap(dataKey());
    const oldId = p.currentKeyId;
    const newId = await p.rotate();
    expect(newId > oldId).toBe(true);
    expect(p.currentKeyId).toBe(newId);
    const fresh = await p.wrap(dataKey());
    expect(fresh.keyId).toBe(newId);
    expect(await p.unwrap(old.wrapped, oldId)).toEqual(dataKey());
    expect(await p.keyIds()).toEqual([oldId, newId]);

    const other = await provider(); // a restart picks the highest CKA_ID
    expect(other.currentKeyId).toBe(newId);
    expect(await other.unwrap(old.wrapped, oldId)).toEqual(dataKey());

    await expect(p.retire(newId)).rejects.toThrow(RangeError);
    await p.retire(oldId);
    expect(await p.keyIds()).toEqual([newId]);
    const e = await failure(p.unwrap(old.wrapped, oldId));
    expect(e.code).toBe('KEY_MISSING');
    expect((await failure(p.retire(oldId))).code).toBe('KEY_MISSING');
    expect(await p.unwrap(fresh.wrapped, newId)).toEqual(dataKey());
    const id3 = await p.rotate();
    expect(id3 > newId).toBe(true);
  });

  it('a health check that overlaps a rotation and retirement tests the key that is current, never the retired one', async () => {
    const p = await provider();
    for (let i = 0; i < 5; i++) {
      const old = p.currentKeyId;
      // Checked while the rotation and the retirement are queued on the session.
      const checks = [p.health()];
      const rotated = p.rotate().then(async () => {
        checks.push(p.health());
        await p.retire(old);
      });
      checks.push(p.health());
      await rotated;
      for (const h of await Promise.all(checks)) expect(h).toEqual({ ok: true });
    }
  });
});

describe('failures, each with its class', () => {
  it('a library path that does not exist, or is not PKCS#11, is LIBRARY_NOT_FOUND', async () => {
    let e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ module: '/nonexistent/libpkcs11.so' }), log, hsm.env));
    expect(e.code).toBe('LIBRARY_NOT_FOUND');
    expect(e.message).toMatch(/cannot load the PKCS#11 library \/nonexistent\/libpkcs11.so .*fix master_key.module/);
    e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ module: hsm.confPath }), log, hsm.env));
    expect(e.code).toBe('LIBRARY_NOT_FOUND');
  });

  it('an unknown token label is TOKEN_NOT_FOUND, listing the tokens seen', async () => {
    const e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ token_label: 'no-such' }), log, hsm.env));
    expect(e.code).toBe('TOKEN_NOT_FOUND');
    expect(e.message).toContain(`token 'no-such' not found in ${hsm.module}; slots seen: '${hsm.label}', 1 uninitialised;`);
    expect(e.message).toContain('initialise it or fix master_key.token_label');
  });

  it('a wrong PIN is WRONG_PIN and the message names the file, not the PIN', async () => {
    const wrong = join(hsm.dir, 'wrong.pin');
    writeFileSync(wrong, 'not-the-pin-4711\n', { mode: 0o600 });
    const e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ pin_file: wrong }), log, hsm.env));
    expect(e.code).toBe('WRONG_PIN');
    expect(e.message).toContain(`refused the user PIN from PIN file ${wrong}`);
    expect(e.message).not.toContain('not-the-pin-4711');
    expect(e.message).not.toContain(hsm.pin);
    expect(JSON.stringify(e) + String(e.stack)).not.toContain('not-the-pin-4711');
  });

  it('a PIN file others can read is FILE_PERMISSIONS; a missing one is PIN_UNREADABLE', async () => {
    const loose = join(hsm.dir, 'loose.pin');
    writeFileSync(loose, hsm.pin);
    chmodSync(loose, 0o644);
    let e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ pin_file: loose }), log, hsm.env));
    expect(e.code).toBe('FILE_PERMISSIONS');
    expect(e.message).toContain(`run: chmod 600 ${loose}`);
    e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ pin_file: join(hsm.dir, 'absent.pin') }), log, hsm.env));
    expect(e.code).toBe('PIN_UNREADABLE');
  });

  it('the PIN comes from a systemd credential; a missing variable or credential is PIN_UNREADABLE', async () => {
    const creds = join(hsm.dir, 'creds');
    mkdirSync(creds, { mode: 0o700 });
    writeFileSync(join(creds, 'hsm-pin'), hsm.pin, { mode: 0o400 });
    const cfg = hsm.masterKey({ pin_file: undefined, pin_credential: 'hsm-pin' });
    const { CREDENTIALS_DIRECTORY: _, ...noCreds } = hsm.env;
    let e = await failure(Pkcs11MasterKeyProvider.open(cfg, log, noCreds));
    expect(e.code).toBe('PIN_UNREADABLE');
    expect(e.message).toContain('CREDENTIALS_DIRECTORY is not set: add LoadCredential=hsm-pin:<file>');
    e = await failure(Pkcs11MasterKeyProvider.open({ ...cfg, pin_credential: 'other' }, log, { ...hsm.env, CREDENTIALS_DIRECTORY: creds }));
    expect(e.code).toBe('PIN_UNREADABLE');
    expect(e.message).toContain(`the systemd credential 'other' is missing from ${creds}`);
    const ok = await Pkcs11MasterKeyProvider.open(cfg, log, { ...hsm.env, CREDENTIALS_DIRECTORY: creds });
    open.push(ok);
    expect((await ok.health()).ok).toBe(true);
  });

  it('openMasterKeyProvider opens the pkcs11 provider from its configuration', async () => {
    const p = await openMasterKeyProvider(hsm.masterKey(), log, hsm.env);
    open.push(p);
    expect(p.kind).toBe('pkcs11');
    const w = await p.wrap(dataKey());
    expect(await p.unwrap(w.wrapped, w.keyId)).toEqual(dataKey());
  });
});

describe('two providers in one process', () => {
  it('share the library and login; closing one leaves the other working', async () => {
    const a = await provider();
    const b = await Pkcs11MasterKeyProvider.open(hsm.masterKey(), log, hsm.env);
    const w = await b.wrap(dataKey());
    await b.close();
    await b.close(); // idempotent
    expect(await a.unwrap(w.wrapped, w.keyId)).toEqual(dataKey());
    expect(await a.health()).toEqual({ ok: true });
  });
});

describe('health when the token goes away', () => {
  it('reports ok:false with the reason once another process deletes the token', async () => {
    hsm.addToken('kme-gone');
    const cfg = hsm.masterKey({ token_label: 'kme-gone' });
    await createMasterKeyIfAbsent(cfg, log, hsm.env);
    const p = await provider(cfg);
    const w = await p.wrap(dataKey());
    expect(await p.health()).toEqual({ ok: true });

    hsm.deleteToken('kme-gone'); // softhsm2-util --delete-token, from another process

    const h = await p.health();
    expect(h.ok).toBe(false);
    expect(h.ok === false && h.reason).toMatch(/token 'kme-gone' is gone from .*libsofthsm2\.so; put it back \(or restore it\) and restart keypoold/);
    expect((await failure(p.wrap(dataKey()))).code).toBe('TOKEN_NOT_FOUND');
    expect((await failure(p.unwrap(w.wrapped, w.keyId))).code).not.toBe('UNWRAP_FAILED');
    await p.close(); // closing a provider whose token vanished does not throw
    expect((await failure(Pkcs11MasterKeyProvider.open(cfg, log, hsm.env))).code).toBe('TOKEN_NOT_FOUND');
  });
});
