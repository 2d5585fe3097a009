/**
 * Master-key providers wrap and unwrap the store's data keys. The PKCS#11
 * provider (drivers/hsm/pkcs11-master-key.ts) keeps the master key in an HSM;
 * the file provider is for boards without one: 32 random bytes in a file only
 * the daemon's user may read.
 *
 * Rotation: rotate() makes a new master key current; older keys still unwrap
 * until retire() destroys them, so a caller rotates, rewraps every data key
 * under the new key, commits, then retires the old key.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import {
  closeSync, fsyncSync, linkSync, openSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeSync, constants as fsc,
} from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { MasterKeyConfig } from '../common/config.js';
import type { Logger } from '../common/logger.js';

export interface MasterKeyProvider {
  readonly kind: 'file' | 'pkcs11';
  /** Opaque id of the master key new wraps use (pkcs11: CKA_ID in hex; file: a short fingerprint of the key, never the key). */
  readonly currentKeyId: string;
  wrap(dataKey: Buffer): Promise<{ keyId: string; wrapped: Buffer }>;
  /** Unwraps with the master key `keyId`; MasterKeyError KEY_MISSING if that key is not there, UNWRAP_FAILED if it does not authenticate. */
  unwrap(wrapped: Buffer, keyId: string): Promise<Buffer>;
  /** Creates a new master key which becomes current; older keys still unwrap until retired. Returns its id. */
  rotate(): Promise<string>;
  /** Destroys an older master key that no wrapped data key needs any more (never the current one: RangeError). */
  retire(keyId: string): Promise<void>;
  /** A cheap real operation against the key (e.g. encrypt one block with the current key): ok, or why not. */
  health(): Promise<{ ok: true } | { ok: false; reason: string }>;
  close(): Promise<void>;
}

export type MasterKeyErrorCode =
  | 'LIBRARY_NOT_FOUND'
  | 'TOKEN_NOT_FOUND'
  | 'WRONG_PIN'
  | 'PIN_LOCKED'
  | 'PIN_UNREADABLE'
  | 'KEY_MISSING'
  | 'UNWRAP_FAILED'
  | 'FILE_PERMISSIONS'
  | 'HSM_ERROR';

/** A master-key failure; `message` says what is wrong and what to do, and never holds a PIN or key bytes. */
export class MasterKeyError extends Error {
  override readonly name = 'MasterKeyError';
  constructor(
    readonly code: MasterKeyErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/**
 * Process exit codes, one per failure class (keypoold and `kme-hsm`):
 *
 * | code              | exit | meaning                                                       |
 * |-------------------|------|---------------------------------------------------------------|
 * | LIBRARY_NOT_FOUND | 20   | the PKCS#11 library cannot be loaded                          |
 * | TOKEN_NOT_FOUND   | 21   | no token with master_key.token_label                          |
 * | WRONG_PIN         | 22   | the token refused the PIN                                     |
 * | PIN_LOCKED        | 23   | the user PIN is locked on the token                           |
 * | KEY_MISSING       | 24   | the master key (or the one a blob names) is not there          |
 * | UNWRAP_FAILED     | 25   | a wrapped data key does not authenticate                      |
 * | PIN_UNREADABLE    | 26   | PIN file or systemd credential missing, empty or unreadable   |
 * | FILE_PERMISSIONS  | 27   | a PIN or key file is accessible to group or others            |
 * | HSM_ERROR         | 28   | any other token or library failure                            |
 */
export const MASTER_KEY_EXIT_CODES: Readonly<Record<MasterKeyErrorCode, number>> = {
  LIBRARY_NOT_FOUND: 20,
  TOKEN_NOT_FOUND: 21,
  WRONG_PIN: 22,
  PIN_LOCKED: 23,
  KEY_MISSING: 24,
  UNWRAP_FAILED: 25,
  PIN_UNREADABLE: 26,
  FILE_PERMISSIONS: 27,
  HSM_ERROR: 28,
};

export function masterKeyExitCode(code: MasterKeyErrorCode): number {
  return MASTER_KEY_EXIT_CODES[code];
}

/** Opens the provider `cfg` names. The PKCS#11 code (and pkcs11js) is loaded only when configured. */
export async function openMasterKeyProvider(cfg: MasterKeyConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<MasterKeyProvider> {
  if (cfg.provider === 'file') return FileMasterKeyProvider.open(cfg.path, logger);
  const { Pkcs11MasterKeyProvider } = await import('../../drivers/hsm/pkcs11-master-key.js');
  return Pkcs11MasterKeyProvider.open(cfg, logger, env);
}


// ---------------------------------------------------------------------------
// File provider
// ---------------------------------------------------------------------------

const AAD = Buffer.from('kme-data-key-v1');
const ID_DOMAIN = Buffer.from('kme-file-master-key-id-v1\0');
const KEY_ID_RE = /^[0-9a-f]{16}$/;
const IV_LEN = 12;
const TAG_LEN = 16;

/** The id of a file master key: the first 16 hex digits of SHA-256 over a domain prefix and the key. */
export function fileKeyId(key: Buffer): string {
  return createHash('sha256').update(ID_DOMAIN).update(key).digest('hex').slice(0, 16);
}

/**
 * The points of a rotation at which its writes have reached the disk, in order.
 * A test may throw from `afterStep` to stand for a crash there.
 */
export type FileRotationStep = 'old-key-archived' | 'new-key-written' | 'current-replaced';

export interface FileMasterKeyOptions {
  afterStep?: (step: FileRotationStep) => void;
}

/**
 * The current master key is the file `<path>`; each older key still needed is
 * `<path>.<keyId>`. Every write goes to a temporary file that is fsynced, then
 * renamed (or linked) into place, then the folder is fsynced. rotate():
 *   1. copy the current key K1 to `<path>.<id1>`   (crash after: K1 current, a spare copy of it)
 *   2. write K2 to `<path>.<rand>.tmp`, fsync       (crash after: K1 current; the temp is removed at open)
 *   3. rename it over `<path>`, fsync the folder    (K2 current, K1 archived: both unwrap)
 * retire() unlinks `<path>.<id>` and fsyncs the folder. At no point is a key
 * that a wrapped data key may name absent from the disk.
 */
export class FileMasterKeyProvider implements MasterKeyProvider {
  readonly kind = 'file';
  readonly #path: string;
  readonly #logger: Logger;
  readonly #afterStep: (step: FileRotationStep) => void;
  #key: Buffer;
  #id: string;
  #closed = false;

  private constructor(path: string, key: Buffer, logger: Logger, opts: FileMasterKeyOptions) {
    this.#path = path;
    this.#key = key;
    this.#id = fileKeyId(key);
    this.#logger = logger;
    this.#afterStep = opts.afterStep ?? (() => {});
  }

  get currentKeyId(): string {
    return this.#id;
  }

  /** Opens the key file, creating it (0600) if absent; refuses a file others can access. */
  static open(path: string, logger: Logger, opts: FileMasterKeyOptions = {}): FileMasterKeyProvider {
    logger.warn({ path }, 'master key kept in a file, not an HSM: use an HSM in production');
    removeStrayTemps(path, logger);
    let key = readKeyFile(path);
    if (!key) {
      key = randomBytes(32);
      writeDurably(path, key, false);
      logger.info({ path, keyId: fileKeyId(key) }, 'created a new master key file');
    }
    return new FileMasterKeyProvider(path, key, logger, opts);
  }

  async wrap(dataKey: Buffer): Promise<{ keyId: string; wrapped: Buffer }> {
    this.#open();
    const iv = randomBytes(IV_LEN);
    const c = createCipheriv('aes-256-gcm', this.#key, iv);
    c.setAAD(AAD);
    const ct = Buffer.concat([c.update(dataKey), c.final()]);
    return { keyId: this.#id, wrapped: Buffer.concat([iv, c.getAuthTag(), ct]) };
  }

  async unwrap(wrapped: Buffer, keyId: string): Promise<Buffer> {
    this.#open();
    const key = keyId === this.#id ? this.#key : this.#readArchived(keyId);
    try {
      if (wrapped.length < IV_LEN + TAG_LEN + 1) throw new Error(`${wrapped.length} bytes is too short`);
      const d = createDecipheriv('aes-256-gcm', key, wrapped.subarray(0, IV_LEN));
      d.setAAD(AAD);
      d.setAuthTag(wrapped.subarray(IV_LEN, IV_LEN + TAG_LEN));
      const out = d.update(wrapped.subarray(IV_LEN + TAG_LEN));
      try {
        d.final();
      } catch (e) {
        out.fill(0);
        throw e;
      }
      return out;
    } catch (e) {
      throw new MasterKeyError(
        'UNWRAP_FAILED',
        `the wrapped data key does not authenticate under master key ${keyId} (${this.#path}): the store's copy is damaged ` +
          'or was wrapped by another master key; restore the store and its master key files together from one backup',
        { cause: e },
      );
    } finally {
      if (key !== this.#key) key.fill(0);
    }
  }

  async rotate(): Promise<string> {
    this.#open();
    const old = this.#key;
    const oldId = this.#id;
    writeDurably(`${this.#path}.${oldId}`, old, true);
    this.#afterStep('old-key-archived');
    const key = randomBytes(32);
    try {
      writeDurably(this.#path, key, true, () => this.#afterStep('new-key-written'));
      this.#afterStep('current-replaced');
    } catch (e) {
      key.fill(0);
      throw e;
    }
    this.#key = key;
    this.#id = fileKeyId(key);
    old.fill(0);
    this.#logger.info({ path: this.#path, keyId: this.#id, previous: oldId }, 'master key rotated');
    return this.#id;
  }

  async retire(keyId: string): Promise<void> {
    this.#open();
    if (keyId === this.#id) throw new RangeError(`refusing to retire master key ${keyId}: it is the current one (rotate first)`);
    const p = this.#archivedPath(keyId);
    try {
      unlinkSync(p);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') {
        throw new MasterKeyError('KEY_MISSING', `master key ${keyId} is not in ${dirname(p)} (no ${basename(p)}): it is already retired`, { cause: e });
      }
      throw e;
    }
    fsyncDir(dirname(p));
    this.#logger.info({ path: p, keyId }, 'master key retired');
  }

  async health(): Promise<{ ok: true } | { ok: false; reason: string }> {
    if (this.#closed) return { ok: false, reason: 'the master key provider is closed' };
    let onDisk: Buffer | undefined;
    try {
      onDisk = readKeyFile(this.#path);
    } catch (e) {
      return { ok: false, reason: (e as Error).message };
    }
    if (!onDisk) return { ok: false, reason: `master key file ${this.#path} is gone: restore it from backup before keypoold restarts` };
    const id = fileKeyId(onDisk);
    onDisk.fill(0);
    if (id !== this.#id) {
      return { ok: false, reason: `master key file ${this.#path} now holds key ${id}, not the current key ${this.#id}: restore it from backup` };
    }
    const c = createCipheriv('aes-256-gcm', this.#key, randomBytes(IV_LEN));
    c.update(Buffer.alloc(16));
    c.final();
    return { ok: true };
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#key.fill(0);
  }

  #open(): void {
    if (this.#closed) throw new Error('the file master key provider is closed');
  }

  #archivedPath(keyId: string): string {
    if (!KEY_ID_RE.test(keyId)) {
      throw new MasterKeyError('KEY_MISSING', `'${keyId}' is not a file master key id (16 hex digits): the store names a key of another provider`);
    }
    return `${this.#path}.${keyId}`;
  }

  #readArchived(keyId: string): Buffer {
    const p = this.#archivedPath(keyId);
    const key = readKeyFile(p);
    if (!key) {
      throw new MasterKeyError('KEY_MISSING', `master key ${keyId} is not there (no ${p}): it was retired or lost; restore it from backup`);
    }
    const held = fileKeyId(key);
    if (held !== keyId) {
      key.fill(0);
      throw new MasterKeyError('KEY_MISSING', `${p} holds master key ${held}, not ${keyId}: restore the file from backup`);
    }
    return key;
  }
}

/** The 32-byte key in `path`, or undefined if there is no such file. */
function readKeyFile(path: string): Buffer | undefined {
  let st;
  try {
    st = statSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new MasterKeyError('HSM_ERROR', `cannot read master key file ${path}: ${(e as Error).message}`, { cause: e });
  }
  if (!st.isFile()) throw new MasterKeyError('KEY_MISSING', `master key file ${path} is not a regular file: restore it from backup`);
  if ((st.mode & 0o077) !== 0) {
    throw new MasterKeyError(
      'FILE_PERMISSIONS',
      `master key file ${path} is accessible to group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run: chmod 600 ${path}`,
    );
  }
  const key = readFileSync(path);
  if (key.length !== 32) {
    key.fill(0);
    throw new MasterKeyError('KEY_MISSING', `master key file ${path} holds ${key.length} bytes, not 32: it is damaged; restore it from backup`);
  }
  return key;
}

/** Writes `data` to `dest` through an fsynced temporary file; `replace` false fails if `dest` exists. */
function writeDurably(dest: string, data: Buffer, replace: boolean, beforeRename?: () => void): void {
  const tmp = `${dest}.${randomBytes(6).toString('hex')}.tmp`;
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
  try {
    for (let off = 0; off < data.length; ) off += writeSync(fd, data, off, data.length - off);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  beforeRename?.();
  try {
    if (replace) renameSync(tmp, dest);
    else {
      linkSync(tmp, dest);
      unlinkSync(tmp);
    }
  } catch (e) {
    unlinkQuietly(tmp);
    throw e;
  }
  fsyncDir(dirname(dest));
}

/** Temporary files left by a crash hold a key nothing was wrapped with: remove them. */
function removeStrayTemps(path: string, logger: Logger): void {
  const dir = dirname(path);
  const prefix = `${basename(path)}.`;
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return; // no folder yet: creating the key file will say so
  }
  for (const n of names) {
    if (n.startsWith(prefix) && /^([0-9a-f]{16}\.)?[0-9a-f]{12}\.tmp$/.test(n.slice(prefix.length))) {
      unlinkQuietly(join(dir, n));
      logger.info({ file: join(dir, n) }, 'removed a temporary master key file left by an interrupted write');
    }
  }
}

function unlinkQuietly(p: string): void {
  try {
    unlinkSync(p);
  } catch {
    /* already gone */
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, fsc.O_RDONLY | fsc.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
