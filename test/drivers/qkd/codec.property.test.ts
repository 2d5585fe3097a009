import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { FrameDecoder, encodeFrame } from '../../../drivers/qkd/codec.js';
import { MAX_BLOCK_BITS, type Frame, type Message } from '../../../drivers/qkd/messages.js';

const u8 = fc.integer({ min: 0, max: 0xff });
const u16 = fc.integer({ min: 0, max: 0xffff });
const u32 = fc.integer({ min: 0, max: 0xffffffff });
const id = fc.maxSafeNat();
const ppm = fc.integer({ min: 0, max: 1_000_000 });
const text = fc.string({ unit: 'grapheme', maxLength: 40 });
const material = fc.oneof(
  { arbitrary: fc.uint8Array({ minLength: 1, maxLength: 300 }), weight: 10 },
  { arbitrary: fc.constant(new Uint8Array(MAX_BLOCK_BITS / 8).fill(0x51)), weight: 1 },
);

const messageArb: fc.Arbitrary<Message> = fc.oneof(
  fc.record({ type: fc.constant('hello' as const), hostVersion: u8, hostId: text }),
  fc.constant({ type: 'status_request' as const }),
  fc.record({ type: fc.constant('credit' as const), upToBlockId: id }),
  fc.record({ type: fc.constant('ack' as const), blockId: id }),
  fc.record({ type: fc.constant('resend' as const), fromBlockId: id }),
  fc.constant({ type: 'reset' as const }),
  fc
    .record({ a: id, b: id })
    .map(({ a, b }): Message => ({ type: 'alarm_ack', firstBlockId: Math.min(a, b), lastBlockId: Math.max(a, b) })),
  fc.record({
    type: fc.constant('identify' as const),
    protocolVersion: u8,
    moduleSerial: text,
    firmware: text,
    linkId: text,
    peerModuleId: text,
    firstBlockId: id,
  }),
  fc.record({ type: fc.constant('link_status' as const), up: fc.boolean(), qberPpm: ppm, keyRateBps: id, bufferFill: u32, bufferCapacity: u32 }),
  fc.record({ blockId: id, m: material }).map(({ blockId, m }): Message => ({ type: 'key_block', blockId, bits: m.length * 8, material: Buffer.from(m) })),
  fc
    .record({ kind: u8, a: id, b: id, qberPpm: ppm })
    .map(({ kind, a, b, qberPpm }): Message => ({ type: 'alarm', kind, firstBlockId: Math.min(a, b), lastBlockId: Math.max(a, b), qberPpm })),
  fc.record({ type: fc.constant('error' as const), code: u16, text }),
);

const framesArb = fc.array(fc.record({ seq: u32, message: messageArb }), { minLength: 1, maxLength: 6 });
const chunkSizes = fc.array(fc.integer({ min: 1, max: 97 }), { minLength: 1, maxLength: 20 });

/** Push `bytes` in chunks of the given sizes (cycled), then give up any partial frame left. */
function feed(bytes: Buffer, sizes: number[]): { frames: Frame[]; d: FrameDecoder } {
  const frames: Frame[] = [];
  const d = new FrameDecoder((f) => frames.push(f));
  for (let off = 0, i = 0; off < bytes.length; i++) {
    const n = sizes[i % sizes.length]!;
    d.push(bytes.subarray(off, off + n));
    off += n;
  }
  while (d.flushPartial());
  return { frames, d };
}

/** Garbage that looks like the start of frames as often as it looks like noise. */
const garbage = fc.array(
  fc.oneof(
    fc.uint8Array({ maxLength: 40 }),
    fc.constant(Uint8Array.of(0x51)),
    fc.constant(Uint8Array.of(0x51, 0x4b)),
    fc.tuple(u8, u8, u32).map(([v, t, len]) => {
      const h = Buffer.alloc(12);
      h.writeUInt16BE(0x514b, 0);
      h[2] = v & 1 ? 1 : v;
      h[3] = t;
      h.writeUInt32BE(len % 3 === 0 ? len : len % 200, 8);
      return new Uint8Array(h);
    }),
  ),
  { maxLength: 4 },
).map((parts) => Buffer.concat(parts));

describe('codec properties', () => {
  it('every message round-trips through encodeFrame and the decoder, whatever the chunking', () => {
    fc.assert(
      fc.property(framesArb, chunkSizes, (frames, sizes) => {
        const bytes = Buffer.concat(frames.map((f) => encodeFrame(f.seq, f.message)));
        const { frames: out, d } = feed(bytes, sizes);
        expect(out).toEqual(frames);
        expect(d.counters).toMatchObject({ frames: frames.length, crcErrors: 0, resyncs: 0, discardedBytes: 0 });
      }),
      { numRuns: 300 },
    );
  });

  it('garbage between valid frames never loses one of them', () => {
    fc.assert(
      fc.property(framesArb, fc.array(garbage, { minLength: 7, maxLength: 7 }), chunkSizes, (frames, junk, sizes) => {
        const parts: Buffer[] = [];
        frames.forEach((f, i) => parts.push(junk[i]!, encodeFrame(f.seq, f.message)));
        parts.push(junk[6]!);
        const { frames: out } = feed(Buffer.concat(parts), sizes);
        expect(out).toEqual(frames);
      }),
      { numRuns: 300 },
    );
  });

  it('a single flipped bit anywhere in a frame is detected, and the next frame still arrives', () => {
    const next: Frame = { seq: 99, message: { type: 'ack', blockId: 42 } };
    fc.assert(
      fc.property(messageArb, u32, fc.nat(), chunkSizes, (message, seq, bitSeed, sizes) => {
        const f = encodeFrame(seq, message);
        const bit = bitSeed % (f.length * 8);
        f[bit >> 3]! ^= 1 << (bit & 7);
        const { frames: out, d } = feed(Buffer.concat([f, encodeFrame(next.seq, next.message)]), sizes);
        expect(out).toEqual([next]);
        const c = d.counters;
        expect(c.crcErrors + c.badVersions + c.oversized + c.truncated + c.discardedBytes).toBeGreaterThan(0);
      }),
      { numRuns: 500 },
    );
  });
});
