/**
 * PIN_LOCKED. SoftHSM2 2.6 never locks a user PIN: after any number of wrong
 * PINs it only sets CKF_USER_PIN_COUNT_LOW and keeps answering
 * CKR_PIN_INCORRECT (checked below), then accepts the right PIN. Real HSMs
 * lock: they raise CKF_USER_PIN_LOCKED in the token flags and answer C_Login
 * with CKR_PIN_LOCKED. So this file (its own process, so the library is
 * initialised after the edit) (1) sets CKF_USER_PIN_LOCKED in a SoftHSM token's
 * stored flags, as a locking HSM would, and checks the provider refuses before
 * trying the PIN; and (2) maps a real pkcs11js CKR_PIN_LOCKED error.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import pkcs11js from 'pkcs11js';
import { afterAll, describe, expect, it } from 'vitest';
import { createSoftHsm } from '../helpers/softhsm.js';
import { silentLogger } from '../../src/common/logger.js';
import { MasterKeyError } from '../../src/keypoold/master-key.js';
import { Pkcs11MasterKeyProvider, createMasterKeyIfAbsent } from '../../drivers/hsm/pkcs11-master-key.js';
import { loginError } from '../../drivers/hsm/errors.js';

const hsm = createSoftHsm({ label: 'kme-lock' });
afterAll(() => hsm.cleanup());
const log = silentLogger();

/** SoftHSM2's file object store: u64 header, then records (u64 type, u64 kind, value), big-endian. */
const CKA_OS_TOKENFLAGS = 0x8000534bn;

function setStoredTokenFlag(tokenDir: string, flag: number): void {
  const [folder] = readdirSync(tokenDir);
  const file = join(tokenDir, folder!, 'token.object');
  const b = readFileSync(file);
  for (let i = 8; i < b.length; ) {
    const type = b.readBigUInt64BE(i);
    const kind = b.readBigUInt64BE(i + 8);
    i += 16;
    if (kind === 1n) i += 1; // boolean
    else if (kind === 2n) {
      if (type === CKA_OS_TOKENFLAGS) {
        b.writeBigUInt64BE(b.readBigUInt64BE(i) | BigInt(flag), i);
        writeFileSync(file, b);
        return;
      }
      i += 8; // unsigned long
    } else if (kind === 3n) i += 8 + Number(b.readBigUInt64BE(i)); // byte string
    else break;
  }
  throw new Error(`no token flags record in ${file}`);
}

async function failure(p: Promise<unknown>): Promise<MasterKeyError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(MasterKeyError);
  return e as MasterKeyError;
}

describe('a locked user PIN', () => {
  it('SoftHSM2 itself never locks: twelve wrong PINs stay WRONG_PIN and the right one still works', async () => {
    await createMasterKeyIfAbsent(hsm.masterKey(), log, hsm.env);
    const wrong = join(hsm.dir, 'wrong.pin');
    writeFileSync(wrong, 'wrong-pin', { mode: 0o600 });
    for (let i = 0; i < 12; i++) {
      expect((await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey({ pin_file: wrong }), log, hsm.env))).code).toBe('WRONG_PIN');
    }
    const p = await Pkcs11MasterKeyProvider.open(hsm.masterKey(), log, hsm.env);
    expect(await p.health()).toEqual({ ok: true });
    await p.close();
  });

  it('a token flagged CKF_USER_PIN_LOCKED is PIN_LOCKED, refused before the PIN is tried', async () => {
    setStoredTokenFlag(hsm.tokenDir, pkcs11js.CKF_USER_PIN_LOCKED); // the library is finalised: the last provider closed
    const e = await failure(Pkcs11MasterKeyProvider.open(hsm.masterKey(), log, hsm.env));
    expect(e.code).toBe('PIN_LOCKED');
    expect(e.message).toBe(
      "the user PIN of token 'kme-lock' is locked: the security officer must unlock it (C_InitPIN) before keypoold can start",
    );
  });

  it('C_Login answering CKR_PIN_LOCKED maps to PIN_LOCKED; CKR_PIN_INCORRECT to WRONG_PIN', () => {
    const locked = loginError(new pkcs11js.Pkcs11Error('CKR_PIN_LOCKED:164', 0, 'C_Login'), 'kme', 'PIN file /etc/kme/hsm.pin');
    expect(locked.code).toBe('PIN_LOCKED');
    expect(locked.message).toContain("the user PIN of token 'kme' is locked (CKR_PIN_LOCKED)");
    const wrong = loginError(new pkcs11js.Pkcs11Error('CKR_PIN_INCORRECT:160', 0, 'C_Login'), 'kme', 'PIN file /etc/kme/hsm.pin');
    expect(wrong.code).toBe('WRONG_PIN');
    expect(wrong.message).toContain('refused the user PIN from PIN file /etc/kme/hsm.pin (CKR_PIN_INCORRECT)');
  });
});
