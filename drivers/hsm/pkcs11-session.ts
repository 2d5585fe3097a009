/**
 * One logged-in read/write session on the token with a given label. The only
 * place (with templates.ts and errors.ts) that touches pkcs11js.
 *
 * A PKCS#11 library is initialised once per process and its login state is
 * shared by every session on a token, so both are reference-counted here:
 * C_Initialize tolerates CKR_CRYPTOKI_ALREADY_INITIALIZED, C_Login tolerates
 * CKR_USER_ALREADY_LOGGED_IN, and close() is logout (last session on the
 * token) -> close session -> finalize (last user of the library).
 * Operations on one session are serialised (run()); a multi-call operation
 * such as C_EncryptInit + C_EncryptAsync must not interleave with another.
 */
import { realpathSync } from 'node:fs';
import pkcs11js from 'pkcs11js';
import type { Handle, PKCS11, TokenInfo } from 'pkcs11js';
import { MasterKeyError } from '../../src/keypoold/master-key.js';
import { describeError, hsmError, isCkr, loginError } from './errors.js';

export interface SessionOptions {
  /** Path of the PKCS#11 library. */
  module: string;
  tokenLabel: string;
  /** The user PIN; read, not kept (the caller zeroes it). */
  pin: Buffer;
  /** Where the PIN came from, for messages. */
  pinSource: string;
}

interface Library {
  lib: PKCS11;
  key: string;
  refs: number;
  /** We called C_Initialize (and so call C_Finalize). */
  initialized: boolean;
  /** Sessions logged in, per slot. */
  logins: Map<string, number>;
}

const libraries = new Map<string, Library>();

function acquireLibrary(module: string): Library {
  let key = module;
  try {
    key = realpathSync(module);
  } catch {
    /* a bare soname is resolved by the loader */
  }
  const known = libraries.get(key);
  if (known) {
    known.refs++;
    return known;
  }
  const lib = new pkcs11js.PKCS11();
  try {
    lib.load(module);
  } catch (e) {
    throw new MasterKeyError(
      'LIBRARY_NOT_FOUND',
      `cannot load the PKCS#11 library ${module} (${describeError(e)}): install it or fix master_key.module`,
      { cause: e },
    );
  }
  let initialized = true;
  try {
    lib.C_Initialize({ flags: pkcs11js.CKF_OS_LOCKING_OK });
  } catch (e) {
    if (isCkr(e, pkcs11js.CKR_CRYPTOKI_ALREADY_INITIALIZED)) initialized = false;
    else {
      closeQuietly(lib);
      throw hsmError(`C_Initialize of ${module}`, e, 'check the library configuration (for SoftHSM2: SOFTHSM2_CONF and its tokendir)');
    }
  }
  const entry: Library = { lib, key, refs: 1, initialized, logins: new Map() };
  libraries.set(key, entry);
  return entry;
}

function releaseLibrary(l: Library): void {
  if (--l.refs > 0) return;
  libraries.delete(l.key);
  if (l.initialized) {
    try {
      l.lib.C_Finalize();
    } catch {
      /* already finalised */
    }
  }
  closeQuietly(l.lib);
}

function closeQuietly(lib: PKCS11): void {
  try {
    lib.close();
  } catch {
    /* not loaded */
  }
}

export class Pkcs11Session {
  readonly module: string;
  readonly tokenLabel: string;
  readonly #l: Library;
  readonly #slot: Handle;
  readonly #session: Handle;
  #tail: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(module: string, tokenLabel: string, l: Library, slot: Handle, session: Handle) {
    this.module = module;
    this.tokenLabel = tokenLabel;
    this.#l = l;
    this.#slot = slot;
    this.#session = session;
  }

  /** Loads and initialises the library, finds the token by label, opens a R/W session and logs in as user. */
  static open(opts: SessionOptions): Pkcs11Session {
    const l = acquireLibrary(opts.module);
    let session: Handle | undefined;
    let slotKey: string | undefined;
    try {
      const slot = findSlot(l.lib, opts.module, opts.tokenLabel);
      session = l.lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
      try {
        l.lib.C_Login(session, pkcs11js.CKU_USER, opts.pin.toString('utf8'));
      } catch (e) {
        if (!isCkr(e, pkcs11js.CKR_USER_ALREADY_LOGGED_IN)) throw loginError(e, opts.tokenLabel, opts.pinSource);
      }
      slotKey = slot.toString('hex');
      l.logins.set(slotKey, (l.logins.get(slotKey) ?? 0) + 1);
      return new Pkcs11Session(opts.module, opts.tokenLabel, l, slot, session);
    } catch (e) {
      if (session) {
        try {
          l.lib.C_CloseSession(session);
        } catch {
          /* gone */
        }
      }
      releaseLibrary(l);
      if (e instanceof MasterKeyError) throw e;
      throw hsmError(`opening a session on token '${opts.tokenLabel}'`, e, 'check the token with the HSM tools');
    }
  }

  /** Runs `fn` with the library and session once every earlier run() has finished. */
  run<R>(fn: (lib: PKCS11, session: Handle) => R | Promise<R>): Promise<R> {
    const next = this.#tail.then(() => {
      if (this.#closed) throw new Error(`the PKCS#11 session on token '${this.tokenLabel}' is closed`);
      return fn(this.#l.lib, this.#session);
    });
    this.#tail = next.catch(() => {});
    return next;
  }

  /** The token's info now (throws if the token is gone). */
  tokenInfo(): TokenInfo {
    return this.#l.lib.C_GetTokenInfo(this.#slot);
  }

  /** Logout (if the last session logged in on this token) -> close session -> finalize (if the last user). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#tail;
    this.#closed = true;
    const slotKey = this.#slot.toString('hex');
    const left = (this.#l.logins.get(slotKey) ?? 1) - 1;
    if (left > 0) this.#l.logins.set(slotKey, left);
    else {
      this.#l.logins.delete(slotKey);
      try {
        this.#l.lib.C_Logout(this.#session);
      } catch {
        /* not logged in any more, or the token is gone */
      }
    }
    try {
      this.#l.lib.C_CloseSession(this.#session);
    } catch {
      /* the token is gone */
    }
    releaseLibrary(this.#l);
  }
}

function findSlot(lib: PKCS11, module: string, label: string): Handle {
  const seen: string[] = [];
  let empty = 0;
  const matches: Array<{ slot: Handle; info: TokenInfo }> = [];
  for (const slot of lib.C_GetSlotList(true)) {
    let info: TokenInfo;
    try {
      info = lib.C_GetTokenInfo(slot);
    } catch {
      continue; // a token going away while we look
    }
    const l = info.label.trimEnd();
    if ((info.flags & pkcs11js.CKF_TOKEN_INITIALIZED) === 0) {
      empty++;
      continue;
    }
    seen.push(`'${l}'`);
    if (l === label) matches.push({ slot, info });
  }
  const [m, other] = matches;
  if (empty > 0) seen.push(`${empty} uninitialised`);
  if (!m) {
    throw new MasterKeyError(
      'TOKEN_NOT_FOUND',
      `token '${label}' not found in ${module}; slots seen: ${seen.length ? seen.join(', ') : 'none'}; ` +
        'initialise it or fix master_key.token_label',
    );
  }
  if (other) {
    throw new MasterKeyError(
      'TOKEN_NOT_FOUND',
      `two tokens are labelled '${label}' in ${module} (serials ${m.info.serialNumber.trim()}, ${other.info.serialNumber.trim()}): relabel or remove one`,
    );
  }
  if ((m.info.flags & pkcs11js.CKF_USER_PIN_LOCKED) !== 0) {
    throw new MasterKeyError(
      'PIN_LOCKED',
      `the user PIN of token '${label}' is locked: the security officer must unlock it (C_InitPIN) before keypoold can start`,
    );
  }
  if ((m.info.flags & pkcs11js.CKF_USER_PIN_INITIALIZED) === 0) {
    throw new MasterKeyError(
      'HSM_ERROR',
      `token '${label}' has no user PIN yet: initialise it (e.g. softhsm2-util --init-pin, or the HSM's tools)`,
    );
  }
  return m.slot;
}
