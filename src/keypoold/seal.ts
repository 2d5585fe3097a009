/**
 * AES-256-GCM sealing of key material at rest. The associated data binds a
 * record to its identity (a block cannot be swapped for another block, nor a
 * key for another key). Format: generation(4, big-endian) | iv(12) | tag(16) |
 * ciphertext. The generation names the data key that sealed the record, so
 * the store can be re-encrypted under a new data key while the node serves
 * (see rekey.ts): records of both generations open until the old key is dropped.
 */
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { KmeError } from '../common/errors.js';

const GEN = 4;
const IV = 12;
const TAG = 16;
const HEADER = GEN + IV + TAG;

export class Sealer {
  readonly #keys = new Map<number, Buffer>();
  #current: number;

  /** A sealer with one data key, of generation `generation`. */
  constructor(dataKey: Buffer, generation = 1) {
    this.#current = generation;
    this.addKey(generation, dataKey);
  }

  /** The generation new records are sealed with. */
  get current(): number {
    return this.#current;
  }

  get generations(): number[] {
    return [...this.#keys.keys()].sort((a, b) => a - b);
  }

  /** Keep a copy of `dataKey` as generation `generation` (the caller zeroes its own copy). */
  addKey(generation: number, dataKey: Buffer): void {
    if (dataKey.length !== 32) throw new Error('data key must be 32 bytes');
    if (!Number.isInteger(generation) || generation < 1 || generation > 0xffffffff) throw new Error('bad data key generation');
    this.#keys.get(generation)?.fill(0);
    this.#keys.set(generation, Buffer.from(dataKey));
  }

  /** Seal new records with generation `generation` from now on. */
  useGeneration(generation: number): void {
    if (!this.#keys.has(generation)) throw new Error(`no data key of generation ${generation}`);
    this.#current = generation;
  }

  /** Zero and forget an old data key (records sealed with it no longer open). */
  dropKey(generation: number): void {
    if (generation === this.#current) throw new Error('cannot drop the current data key');
    this.#keys.get(generation)?.fill(0);
    this.#keys.delete(generation);
  }

  /** The generation a sealed record was sealed with. */
  static generationOf(sealed: Buffer): number {
    return sealed.length >= GEN ? sealed.readUInt32BE(0) : 0;
  }

  seal(plain: Buffer, aad: string): Buffer {
    const key = this.#keys.get(this.#current)!;
    const out = Buffer.allocUnsafe(HEADER + plain.length);
    out.writeUInt32BE(this.#current, 0);
    const iv = randomBytes(IV);
    iv.copy(out, GEN);
    const c = createCipheriv('aes-256-gcm', key, iv);
    c.setAAD(Buffer.from(aad));
    const n = c.update(plain).copy(out, HEADER);
    c.final();
    c.getAuthTag().copy(out, GEN + IV);
    if (n !== plain.length) throw new Error('unexpected GCM output length');
    return out;
  }

  open(sealed: Buffer, aad: string): Buffer {
    if (sealed.length < HEADER) throw new KmeError('INTERNAL', 'sealed record too short');
    const gen = sealed.readUInt32BE(0);
    const key = this.#keys.get(gen);
    if (!key) throw new KmeError('INTERNAL', `sealed record of data key generation ${gen}, which this node does not hold`);
    const d = createDecipheriv('aes-256-gcm', key, sealed.subarray(GEN, GEN + IV));
    d.setAAD(Buffer.from(aad));
    d.setAuthTag(sealed.subarray(GEN + IV, HEADER));
    // GCM's final() yields no bytes: return update()'s buffer itself, so no
    // second copy of the plaintext is left behind for the garbage collector.
    const plain = d.update(sealed.subarray(HEADER));
    try {
      d.final();
      return plain;
    } catch (e) {
      plain.fill(0);
      throw new KmeError('INTERNAL', 'sealed record failed authentication', undefined, { cause: e });
    }
  }

  /** Open a record and seal it again with the current data key (same associated data). */
  reseal(sealed: Buffer, aad: string): Buffer {
    const plain = this.open(sealed, aad);
    try {
      return this.seal(plain, aad);
    } finally {
      plain.fill(0);
    }
  }

  /** Zero every data key; the sealer is unusable afterwards. */
  destroy(): void {
    for (const k of this.#keys.values()) k.fill(0);
    this.#keys.clear();
  }
}
