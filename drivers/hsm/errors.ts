/**
 * PKCS#11 return values (CKR_*) -> MasterKeyError. pkcs11js throws
 * Pkcs11Error{code, method} for a CKR, NativeError for its own failures and a
 * plain Error when the library cannot be loaded.
 */
import pkcs11js from 'pkcs11js';
import { MasterKeyError, type MasterKeyErrorCode } from '../../src/keypoold/master-key.js';

const CKR_NAMES = new Map<number, string>();
for (const [k, v] of Object.entries(pkcs11js)) if (k.startsWith('CKR_') && typeof v === 'number' && !CKR_NAMES.has(v)) CKR_NAMES.set(v, k);

/** The CKR of a pkcs11js error, or undefined for any other error. */
export function ckrOf(e: unknown): number | undefined {
  return e instanceof pkcs11js.Pkcs11Error ? e.code : undefined;
}

/** `CKR_PIN_INCORRECT` for a Pkcs11Error, else the error's message. */
export function describeError(e: unknown): string {
  const rv = ckrOf(e);
  if (rv !== undefined) return CKR_NAMES.get(rv) ?? `CKR 0x${rv.toString(16)}`;
  return e instanceof Error ? e.message : String(e);
}

export function isCkr(e: unknown, ...codes: number[]): boolean {
  const rv = ckrOf(e);
  return rv !== undefined && codes.includes(rv);
}

/** CKRs that mean the token, the session or the key object went away under us. */
export const GONE_CKRS: readonly number[] = [
  pkcs11js.CKR_DEVICE_REMOVED,
  pkcs11js.CKR_TOKEN_NOT_PRESENT,
  pkcs11js.CKR_TOKEN_NOT_RECOGNIZED,
  pkcs11js.CKR_SESSION_HANDLE_INVALID,
  pkcs11js.CKR_SESSION_CLOSED,
  pkcs11js.CKR_OBJECT_HANDLE_INVALID,
  pkcs11js.CKR_KEY_HANDLE_INVALID,
  pkcs11js.CKR_USER_NOT_LOGGED_IN,
  pkcs11js.CKR_CRYPTOKI_NOT_INITIALIZED,
];

/**
 * CKRs a decryption returns when the ciphertext or its GCM tag is wrong.
 * SoftHSM2 2.6 answers a bad tag with CKR_GENERAL_ERROR, so that one is only
 * taken as an authentication failure once the token has been seen to work.
 */
export const BAD_CIPHERTEXT_CKRS: readonly number[] = [
  pkcs11js.CKR_ENCRYPTED_DATA_INVALID,
  pkcs11js.CKR_ENCRYPTED_DATA_LEN_RANGE,
  pkcs11js.CKR_GENERAL_ERROR,
];

/** C_Login failures (PIN_INCORRECT, PIN_LOCKED, ...) as MasterKeyError; anything else is HSM_ERROR. */
export function loginError(e: unknown, token: string, pinSource: string): MasterKeyError {
  const rv = ckrOf(e);
  let code: MasterKeyErrorCode = 'HSM_ERROR';
  let msg = `login to token '${token}' failed (${describeError(e)}): check the token with the HSM's own tools`;
  if (rv === pkcs11js.CKR_PIN_INCORRECT || rv === pkcs11js.CKR_PIN_INVALID || rv === pkcs11js.CKR_PIN_LEN_RANGE) {
    code = 'WRONG_PIN';
    msg = `token '${token}' refused the user PIN from ${pinSource} (${describeError(e)}): put the right PIN there; ` +
      'repeated wrong PINs may lock the token';
  } else if (rv === pkcs11js.CKR_PIN_LOCKED) {
    code = 'PIN_LOCKED';
    msg = `the user PIN of token '${token}' is locked (${describeError(e)}): the security officer must unlock it (C_InitPIN) before keypoold can start`;
  } else if (rv === pkcs11js.CKR_PIN_EXPIRED) {
    msg = `the user PIN of token '${token}' has expired (CKR_PIN_EXPIRED): set a new PIN with the HSM's tools and update ${pinSource}`;
  } else if (rv === pkcs11js.CKR_USER_PIN_NOT_INITIALIZED) {
    msg = `token '${token}' has no user PIN yet (CKR_USER_PIN_NOT_INITIALIZED): initialise it (e.g. softhsm2-util --init-pin or the HSM's tools)`;
  }
  return new MasterKeyError(code, msg, { cause: e });
}

/** Any other PKCS#11 failure during `what`. */
export function hsmError(what: string, e: unknown, hint: string): MasterKeyError {
  return new MasterKeyError('HSM_ERROR', `${what} failed (${describeError(e)}): ${hint}`, { cause: e });
}
