/**
 * Master-key providers wrap and unwrap the store's data key. The file provider
 * is for boards without an HSM: the master key is 32 random bytes in a file
 * only the daemon's user may read. The PKCS#11 provider lives in drivers/hsm.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, openSync, readFileSync, statSync, writeSync, constants as fsc } from 'node:fs';
import type { Logger } from '../common/logger.js';

export interface MasterKeyProvider {
  readonly kind: string;
  wrap(dataKey: Buffer): Promise<Buffer>;
  unwrap(wrapped: Buffer): Promise<Buffer>;
  close(): Promise<void>;
}

export class MasterKeyError extends Error {
  override readonly name = 'MasterKeyError';
}

const AAD = Buffer.from('kme-data-key-v1');

export class FileMasterKeyProvider implements MasterKeyProvider {
  readonly kind = 'file';
  readonly #key: Buffer;

  private constructor(key: Buffer) {
    this.#key = key;
  }

  /** Opens the key file, creating it (0600) if absent; refuses a file others can read. */
  static open(path: string, logger: Logger): FileMasterKeyProvider {
    logger.warn({ path }, 'master key kept in a file, not an HSM: use an HSM in production');
    let st;
    try {
      st = statSync(path);
    } catch {
      st = undefined;
    }
    if (!st) {
      const key = randomBytes(32);
      const fd = openSync(path, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      try {
        writeSync(fd, key);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
      logger.info({ path }, 'created a new master key file');
      return new FileMasterKeyProvider(key);
    }
    if ((st.mode & 0o077) !== 0) {
      throw new MasterKeyError(
        `master key file ${path} is readable by group or others (mode ${(st.mode & 0o777).toString(8)}); run: chmod 600 ${path}`,
      );
    }
    const key = readFileSync(path);
    if (key.length !== 32) throw new MasterKeyError(`master key file ${path} must hold exactly 32 bytes`);
    return new FileMasterKeyProvider(key);
  }

  async wrap(dataKey: Buffer): Promise<Buffer> {
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', this.#key, iv);
    c.setAAD(AAD);
    const ct = Buffer.concat([c.update(dataKey), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), ct]);
  }

  async unwrap(wrapped: Buffer): Promise<Buffer> {
    try {
      const d = createDecipheriv('aes-256-gcm', this.#key, wrapped.subarray(0, 12));
      d.setAAD(AAD);
      d.setAuthTag(wrapped.subarray(12, 28));
      const key = d.update(wrapped.subarray(28));
      try {
        d.final();
      } catch (e) {
        key.fill(0);
        throw e;
      }
      return key;
    } catch (e) {
      throw new MasterKeyError('cannot unwrap the data key: wrong master key for this store', { cause: e });
    }
  }

  async close(): Promise<void> {
    this.#key.fill(0);
  }
}
