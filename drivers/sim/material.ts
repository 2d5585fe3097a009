/**
 * Key material of a simulated QKD link: block `id` is the AES-256-CTR
 * keystream of the link's 32-byte seed with the id as the high 64 bits of the
 * counter block. Deterministic in (seed, id, bits), so both modules of a link
 * (and every simulator incarnation) emit the same bits under the same id.
 * Not a source of secrecy: a simulator.
 */
import { createCipheriv, createHash } from 'node:crypto';

export function blockMaterial(seed: Buffer, id: number, blockBits: number): Buffer {
  if (seed.length !== 32) throw new Error('simulated link seed must be 32 bytes');
  if (blockBits % 8 !== 0) throw new Error('block_bits must be a multiple of 8');
  if (!Number.isSafeInteger(id) || id < 0) throw new Error(`block id ${id} is not a safe non-negative integer`);
  const iv = Buffer.alloc(16);
  iv.writeBigUInt64BE(BigInt(id), 0);
  const c = createCipheriv('aes-256-ctr', seed, iv);
  const out = c.update(Buffer.alloc(blockBits / 8));
  c.final();
  return out;
}

/** A uniform number in [0, 1) derived from the seed, a label and an integer: deterministic, not secret. */
export function seededUniform(seed: Buffer, label: string, n: number): number {
  const h = createHash('sha256').update(seed).update(label).update(String(n)).digest();
  return h.readUInt32BE(0) / 2 ** 32;
}

/** A small deterministic PRNG (mulberry32) for fault decisions; returns numbers in [0, 1). */
export function prng(seed32: number): () => number {
  let a = seed32 >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}
