/**
 * AES-256-GCM sealing of key material at rest. The associated data binds a
 * record to its identity (a block cannot be swapped for another block, nor a
 * key for another key). Format: iv(12) | tag(16) | ciphertext.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KmeError } from '../common/errors.js';

const IV = 12;
const TAG = 16;

export class Sealer {
  readonly #key: Buffer;

  constructor(dataKey: Buffer) {
    if (dataKey.length !== 32) throw new Error('data key must be 32 bytes');
    this.#key = Buffer.from(dataKey);
  }

  seal(plain: Buffer, aad: string): Buffer {
    const iv = randomBytes(IV);
    const c = createCipheriv('aes-256-gcm', this.#key, iv);
    c.setAAD(Buffer.from(aad));
    const ct = Buffer.concat([c.update(plain), c.final()]);
    return Buffer.concat([iv, c.getAuthTag(), ct]);
  }

  open(sealed: Buffer, aad: string): Buffer {
    if (sealed.length < IV + TAG) throw new KmeError('INTERNAL', 'sealed record too short');
    const d = createDecipheriv('aes-256-gcm', this.#key, sealed.subarray(0, IV));
    d.setAAD(Buffer.from(aad));
    d.setAuthTag(sealed.subarray(IV, IV + TAG));
    // GCM's final() yields no bytes: return update()'s buffer itself, so no
    // second copy of the plaintext is left behind for the garbage collector.
    const plain = d.update(sealed.subarray(IV + TAG));
    try {
      d.final();
      return plain;
    } catch (e) {
      plain.fill(0);
      throw new KmeError('INTERNAL', 'sealed record failed authentication', undefined, { cause: e });
    }
  }

  /** Zero the data key; the sealer is unusable afterwards. */
  destroy(): void {
    this.#key.fill(0);
  }
}
