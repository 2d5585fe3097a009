/**
 * The master key in a PKCS#11 token: AES-256 secret keys labelled
 * `key_label`, told apart by an 8-byte CKA_ID (big-endian milliseconds << 16
 * plus a counter, so ids sort by creation); the highest id is current. Data
 * keys are wrapped inside the token with C_Encrypt/C_Decrypt and CKM_AES_GCM:
 * wrapped = iv(12) | ciphertext | tag(16), AAD 'kme-data-key-v1'.
 *
 * keypoold never creates a missing master key (open() -> KEY_MISSING); the
 * provisioning command does, through createMasterKeyIfAbsent().
 */
import { randomBytes } from 'node:crypto';
import { endianness } from 'node:os';
import pkcs11js from 'pkcs11js';
import type { Handle, PKCS11 } from 'pkcs11js';
import type { MasterKeyConfig } from '../../src/common/config.js';
import type { Logger } from '../../src/common/logger.js';
import { MasterKeyError, type MasterKeyProvider } from '../../src/keypoold/master-key.js';
import { BAD_CIPHERTEXT_CKRS, GONE_CKRS, describeError, hsmError, isCkr } from './errors.js';
import { pinSourceName, readPin } from './pin.js';
import { Pkcs11Session } from './pkcs11-session.js';
import { AES_KEY_GEN, GCM_IV_BYTES, GCM_TAG_BYTES, MASTER_KEY_READBACK, gcm, masterKeySearch, masterKeyTemplate } from './templates.js';

export type Pkcs11MasterKeyConfig = Extract<MasterKeyConfig, { provider: 'pkcs11' }>;

const ID_BYTES = 8;
const KEY_ID_RE = /^[0-9a-f]{16}$/;

interface FoundKey {
  id: string;
  handle: Handle;
}

/** Opens a logged-in session for `cfg`; the PIN is zeroed as soon as C_Login has it. */
export function openTokenSession(cfg: Pkcs11MasterKeyConfig, env: NodeJS.ProcessEnv = process.env): Pkcs11Session {
  const pin = readPin(cfg, env);
  try {
    return Pkcs11Session.open({ module: cfg.module, tokenLabel: cfg.token_label, pin, pinSource: pinSourceName(cfg) });
  } finally {
    pin.fill(0);
  }
}

/** The master keys labelled `label` on the token, oldest first; refuses any that could leave the token. */
async function findKeys(s: Pkcs11Session, label: string, id?: string): Promise<FoundKey[]> {
  return s.run((lib, session) => {
    const handles: Handle[] = [];
    lib.C_FindObjectsInit(session, masterKeySearch(label, id === undefined ? undefined : Buffer.from(id, 'hex')));
    try {
      for (let batch = lib.C_FindObjects(session, 32); batch.length > 0; batch = lib.C_FindObjects(session, 32)) handles.push(...batch);
    } finally {
      lib.C_FindObjectsFinal(session);
    }
    return handles.map((h) => checkKey(lib, session, h, label, s.tokenLabel)).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  });
}

function checkKey(lib: PKCS11, session: Handle, handle: Handle, label: string, token: string): FoundKey {
  const [id, sensitive, extractable, encrypt, decrypt, len] = lib.C_GetAttributeValue(session, handle, MASTER_KEY_READBACK).map((a) => a.value as Buffer);
  const yes = (b: Buffer | undefined) => b !== undefined && b.length > 0 && b[0] !== 0;
  const where = `key '${label}' (CKA_ID ${id?.toString('hex') || 'empty'}) on token '${token}'`;
  if (!id || id.length !== ID_BYTES) {
    throw new MasterKeyError('HSM_ERROR', `${where} has no ${ID_BYTES}-byte CKA_ID, so kme-hsm did not make it: relabel or remove it`);
  }
  if (!yes(sensitive) || yes(extractable)) {
    throw new MasterKeyError('HSM_ERROR', `${where} could leave the token (sensitive ${yes(sensitive)}, extractable ${yes(extractable)}): destroy it and run kme-hsm init`);
  }
  if (!yes(encrypt) || !yes(decrypt) || !len || ulong(len) !== 32) {
    throw new MasterKeyError('HSM_ERROR', `${where} is not an AES-256 key allowed to encrypt and decrypt: destroy it and run kme-hsm init`);
  }
  return { id: id.toString('hex'), handle };
}

/** A CK_ULONG attribute value (native byte order). */
function ulong(b: Buffer): number {
  const le = endianness() === 'LE';
  if (b.length === 8) return Number(le ? b.readBigUInt64LE() : b.readBigUInt64BE());
  if (b.length === 4) return le ? b.readUInt32LE() : b.readUInt32BE();
  return -1;
}

/** A new CKA_ID: now in ms << 16, and above `after`. */
function nextKeyId(after?: string): Buffer {
  let v = BigInt(Date.now()) << 16n;
  if (after !== undefined && v <= BigInt(`0x${after}`)) v = BigInt(`0x${after}`) + 1n;
  const b = Buffer.alloc(ID_BYTES);
  b.writeBigUInt64BE(v);
  return b;
}

async function generateKey(s: Pkcs11Session, label: string, after?: string): Promise<FoundKey> {
  const id = nextKeyId(after);
  const handle = await s.run((lib, session) => lib.C_GenerateKeyAsync(session, AES_KEY_GEN, masterKeyTemplate(label, id)));
  return { id: id.toString('hex'), handle };
}

/**
 * Provisioning: logs in and creates the master key unless one exists.
 * Idempotent; says whether it created the key, and its id.
 */
export async function createMasterKeyIfAbsent(
  cfg: Pkcs11MasterKeyConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env,
): Promise<{ created: boolean; keyId: string }> {
  const s = openTokenSession(cfg, env);
  try {
    const keys = await findKeys(s, cfg.key_label);
    const last = keys.at(-1);
    if (last) return { created: false, keyId: last.id };
    const k = await generateKey(s, cfg.key_label);
    logger.info({ token: cfg.token_label, label: cfg.key_label, keyId: k.id }, 'created the master key');
    return { created: true, keyId: k.id };
  } catch (e) {
    throw e instanceof MasterKeyError ? e : hsmError(`creating master key '${cfg.key_label}' on token '${cfg.token_label}'`, e, 'check the token with the HSM tools');
  } finally {
    await s.close();
  }
}

export class Pkcs11MasterKeyProvider implements MasterKeyProvider {
  readonly kind = 'pkcs11';
  readonly #s: Pkcs11Session;
  readonly #label: string;
  readonly #logger: Logger;
  #current: FoundKey;

  private constructor(s: Pkcs11Session, label: string, current: FoundKey, logger: Logger) {
    this.#s = s;
    this.#label = label;
    this.#current = current;
    this.#logger = logger;
  }

  get currentKeyId(): string {
    return this.#current.id;
  }

  /** Logs in and finds the master key; KEY_MISSING if there is none (it is never created here). */
  static async open(cfg: Pkcs11MasterKeyConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Pkcs11MasterKeyProvider> {
    const s = openTokenSession(cfg, env);
    try {
      const keys = await findKeys(s, cfg.key_label);
      const current = keys.at(-1);
      if (!current) {
        throw new MasterKeyError(
          'KEY_MISSING',
          `master key '${cfg.key_label}' not on token '${cfg.token_label}': run \`node dist/scripts/kme-hsm.js init --config <path>\``,
        );
      }
      logger.info({ token: cfg.token_label, label: cfg.key_label, keyId: current.id, keys: keys.length }, 'master key found in the HSM');
      return new Pkcs11MasterKeyProvider(s, cfg.key_label, current, logger);
    } catch (e) {
      await s.close();
      throw e instanceof MasterKeyError ? e : hsmError(`finding master key '${cfg.key_label}' on token '${cfg.token_label}'`, e, 'check the token with the HSM tools');
    }
  }

  /** Ids of every master key on the token, oldest first. */
  async keyIds(): Promise<string[]> {
    return (await findKeys(this.#s, this.#label)).map((k) => k.id);
  }

  async wrap(dataKey: Buffer): Promise<{ keyId: string; wrapped: Buffer }> {
    const k = this.#current;
    const iv = randomBytes(GCM_IV_BYTES);
    try {
      const ct = await this.#s.run(async (lib, session) => {
        lib.C_EncryptInit(session, gcm(iv), k.handle);
        return lib.C_EncryptAsync(session, dataKey, Buffer.alloc(dataKey.length + GCM_TAG_BYTES));
      });
      return { keyId: k.id, wrapped: Buffer.concat([iv, ct]) };
    } catch (e) {
      throw this.#opError(`wrapping a data key with master key ${k.id}`, e);
    }
  }

  async unwrap(wrapped: Buffer, keyId: string): Promise<Buffer> {
    const k = await this.#find(keyId);
    if (wrapped.length < GCM_IV_BYTES + GCM_TAG_BYTES + 1) throw this.#unwrapFailed(keyId, `${wrapped.length} bytes is too short`);
    const out = Buffer.alloc(wrapped.length);
    try {
      const pt = await this.#s.run(async (lib, session) => {
        lib.C_DecryptInit(session, gcm(wrapped.subarray(0, GCM_IV_BYTES)), k.handle);
        return lib.C_DecryptAsync(session, wrapped.subarray(GCM_IV_BYTES), out);
      });
      return Buffer.from(pt);
    } catch (e) {
      // A bad tag is CKR_GENERAL_ERROR in SoftHSM2: call it a failed unwrap only if the key still works.
      if (isCkr(e, ...BAD_CIPHERTEXT_CKRS) && (await this.#keyWorks(k))) throw this.#unwrapFailed(keyId, describeError(e), e);
      throw this.#opError(`unwrapping a data key with master key ${keyId}`, e);
    } finally {
      out.fill(0);
    }
  }

  async rotate(): Promise<string> {
    try {
      const keys = await findKeys(this.#s, this.#label);
      const k = await generateKey(this.#s, this.#label, keys.at(-1)?.id ?? this.#current.id);
      const previous = this.#current.id;
      this.#current = k;
      this.#logger.info({ token: this.#s.tokenLabel, label: this.#label, keyId: k.id, previous }, 'master key rotated');
      return k.id;
    } catch (e) {
      throw this.#opError(`creating a new master key on token '${this.#s.tokenLabel}'`, e);
    }
  }

  async retire(keyId: string): Promise<void> {
    if (keyId === this.#current.id) throw new RangeError(`refusing to retire master key ${keyId}: it is the current one (rotate first)`);
    const k = await this.#find(keyId);
    try {
      await this.#s.run((lib, session) => lib.C_DestroyObject(session, k.handle));
    } catch (e) {
      throw this.#opError(`destroying master key ${keyId}`, e);
    }
    this.#logger.info({ token: this.#s.tokenLabel, label: this.#label, keyId }, 'master key retired');
  }

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    try {
      await this.#encryptBlock(this.#current);
      return { ok: true };
    } catch (e) {
      return { ok: false, reason: this.#opError(`a test encryption with master key ${this.#current.id}`, e).message };
    }
  }

  async close(): Promise<void> {
    await this.#s.close();
  }

  /** Encrypts one block with `k`: proves the token, the session, the login and the key are there. */
  async #encryptBlock(k: FoundKey): Promise<void> {
    const block = Buffer.alloc(16);
    await this.#s.run(async (lib, session) => {
      lib.C_EncryptInit(session, gcm(randomBytes(GCM_IV_BYTES)), k.handle);
      await lib.C_EncryptAsync(session, block, Buffer.alloc(block.length + GCM_TAG_BYTES));
    });
  }

  async #keyWorks(k: FoundKey): Promise<boolean> {
    try {
      await this.#encryptBlock(k);
      return true;
    } catch {
      return false;
    }
  }

  async #find(keyId: string): Promise<FoundKey> {
    if (!KEY_ID_RE.test(keyId)) {
      throw new MasterKeyError('KEY_MISSING', `'${keyId}' is not a PKCS#11 master key id (16 hex digits): the store names a key of another provider`);
    }
    let keys: FoundKey[];
    try {
      keys = await findKeys(this.#s, this.#label, keyId);
    } catch (e) {
      throw this.#opError(`looking for master key ${keyId}`, e);
    }
    const k = keys[0];
    if (!k) {
      throw new MasterKeyError(
        'KEY_MISSING',
        `master key ${keyId} ('${this.#label}') is not on token '${this.#s.tokenLabel}': it was retired or the token was replaced; restore the token from backup`,
      );
    }
    return k;
  }

  #unwrapFailed(keyId: string, why: string, cause?: unknown): MasterKeyError {
    return new MasterKeyError(
      'UNWRAP_FAILED',
      `the wrapped data key does not authenticate under master key ${keyId} on token '${this.#s.tokenLabel}' (${why}): ` +
        "the store's copy is damaged or was wrapped by another token; restore the store from backup",
      { cause },
    );
  }

  /** A failed operation, said in terms of what went away if the token, session or key did. */
  #opError(what: string, e: unknown): MasterKeyError {
    if (e instanceof MasterKeyError) return e;
    const token = this.#s.tokenLabel;
    let tokenThere = true;
    try {
      this.#s.tokenInfo();
    } catch {
      tokenThere = false;
    }
    if (!tokenThere) {
      return new MasterKeyError(
        'TOKEN_NOT_FOUND',
        `${what} failed (${describeError(e)}): token '${token}' is gone from ${this.#s.module}; put it back (or restore it) and restart keypoold`,
        { cause: e },
      );
    }
    if (isCkr(e, pkcs11js.CKR_OBJECT_HANDLE_INVALID, pkcs11js.CKR_KEY_HANDLE_INVALID)) {
      return new MasterKeyError(
        'KEY_MISSING',
        `${what} failed (${describeError(e)}): the master key is no longer on token '${token}' (destroyed, or the token was re-initialised); restore it and restart keypoold`,
        { cause: e },
      );
    }
    if (isCkr(e, ...GONE_CKRS)) {
      return hsmError(what, e, `the session with token '${token}' was lost; restart keypoold`);
    }
    return hsmError(what, e, `check token '${token}' with the HSM tools`);
  }
}
