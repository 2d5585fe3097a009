import { describe, expect, it } from 'vitest';
import { FrameDecoder, ProtocolError, crc32c, decodePayload, encodeFrame, encodePayload } from '../../../drivers/qkd/codec.js';
import { HEADER_BYTES, MAX_BLOCK_BITS, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, MsgType, type Frame, type Message } from '../../../drivers/qkd/messages.js';

function collect() {
  const frames: Frame[] = [];
  const errors: ProtocolError[] = [];
  const d = new FrameDecoder({ onFrame: (f) => frames.push(f), onError: (e) => errors.push(e) });
  return { d, frames, errors };
}

const block = (blockId: number, bytes = 32): Message => ({
  type: 'key_block',
  blockId,
  bits: bytes * 8,
  material: Buffer.alloc(bytes, blockId & 0xff),
});
const ack = (blockId: number): Message => ({ type: 'ack', blockId });

/** A frame with a chosen header (for malformed cases), CRC fixed up unless told. */
function rawFrame(opts: { version?: number; type?: number; seq?: number; length?: number; payload: Buffer; badCrc?: boolean }): Buffer {
  const p = opts.payload;
  const f = Buffer.alloc(HEADER_BYTES + p.length + 4);
  f.writeUInt16BE(0x514b, 0);
  f.writeUInt8(opts.version ?? 1, 2);
  f.writeUInt8(opts.type ?? MsgType.ACK, 3);
  f.writeUInt32BE(opts.seq ?? 0, 4);
  f.writeUInt32BE(opts.length ?? p.length, 8);
  p.copy(f, HEADER_BYTES);
  const end = HEADER_BYTES + p.length;
  f.writeUInt32BE((crc32c(f, 2, end) ^ (opts.badCrc ? 1 : 0)) >>> 0, end);
  return f;
}

describe('crc32c', () => {
  it('matches the CRC-32C check value and continues over pieces', () => {
    const b = Buffer.from('123456789');
    expect(crc32c(b)).toBe(0xe3069283);
    expect(crc32c(b, 5, 9, crc32c(b, 0, 5))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    expect(crc32c(Buffer.alloc(32))).toBe(0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
  });
});

describe('encodeFrame', () => {
  it('lays out header, payload and CRC big-endian', () => {
    const f = encodeFrame(0x01020304, ack(0x0102030405));
    expect(f.subarray(0, 20).toString('hex')).toBe('514b01040102030400000008' + '0000000102030405');
    expect(f.length).toBe(HEADER_BYTES + 8 + 4);
    expect(f.readUInt32BE(f.length - 4)).toBe(crc32c(f, 2, f.length - 4));
  });

  it('refuses invalid fields instead of sending garbage', () => {
    expect(() => encodeFrame(-1, ack(1))).toThrow(ProtocolError);
    expect(() => encodeFrame(2 ** 32, ack(1))).toThrow(ProtocolError);
    expect(() => encodePayload(ack(2 ** 53))).toThrow(/safe/);
    expect(() => encodePayload(ack(1.5))).toThrow(ProtocolError);
    expect(() => encodePayload({ type: 'key_block', blockId: 1, bits: 12, material: Buffer.alloc(2) })).toThrow(/multiple of 8/);
    expect(() => encodePayload({ type: 'key_block', blockId: 1, bits: 16, material: Buffer.alloc(3) })).toThrow(/3 bytes for 16 bits/);
    expect(() => encodePayload({ type: 'hello', hostVersion: 1, hostId: '\uD800' })).toThrow(/surrogate/);
    expect(() => encodePayload({ type: 'error', code: 1, text: 'x'.repeat(MAX_PAYLOAD_BYTES) })).toThrow(/exceeds/);
    expect(() => encodePayload({ type: 'alarm', kind: 1, firstBlockId: 5, lastBlockId: 4, qberPpm: 0 })).toThrow(ProtocolError);
  });

  it('does not alter the caller material', () => {
    const m = block(7);
    encodeFrame(1, m);
    expect(m.type === 'key_block' && m.material.every((b) => b === 7)).toBe(true);
  });
});

describe('decodePayload', () => {
  const code = (fn: () => unknown) => {
    try {
      fn();
    } catch (e) {
      return (e as ProtocolError).code;
    }
    return 'none';
  };
  it('rejects unknown types, wrong lengths and out-of-range fields with a typed error', () => {
    expect(code(() => decodePayload(0x7e, Buffer.alloc(0)))).toBe('UNKNOWN_TYPE');
    expect(code(() => decodePayload(MsgType.ACK, Buffer.alloc(7)))).toBe('PAYLOAD_LENGTH');
    expect(code(() => decodePayload(MsgType.ACK, Buffer.alloc(9)))).toBe('PAYLOAD_LENGTH');
    expect(code(() => decodePayload(MsgType.RESET, Buffer.alloc(1)))).toBe('PAYLOAD_LENGTH');
    expect(code(() => decodePayload(MsgType.ACK, Buffer.from('0020000000000000', 'hex')))).toBe('FIELD_RANGE');
    expect(decodePayload(MsgType.ACK, Buffer.from('001fffffffffffff', 'hex'))).toEqual({ type: 'ack', blockId: Number.MAX_SAFE_INTEGER });
    const kb = (bits: number, bytes: number) => {
      const p = Buffer.alloc(12 + bytes);
      p.writeUInt32BE(bits, 8);
      return p;
    };
    expect(code(() => decodePayload(MsgType.KEY_BLOCK, kb(12, 2)))).toBe('FIELD_RANGE');
    expect(code(() => decodePayload(MsgType.KEY_BLOCK, kb(0, 0)))).toBe('FIELD_RANGE');
    expect(code(() => decodePayload(MsgType.KEY_BLOCK, kb(64, 7)))).toBe('PAYLOAD_LENGTH');
    expect(code(() => decodePayload(MsgType.KEY_BLOCK, kb(MAX_BLOCK_BITS + 8, MAX_BLOCK_BITS / 8 + 1)))).toBe('FIELD_RANGE');
    expect(code(() => decodePayload(MsgType.KEY_BLOCK, Buffer.alloc(11)))).toBe('PAYLOAD_LENGTH');
    expect(decodePayload(MsgType.KEY_BLOCK, kb(MAX_BLOCK_BITS, MAX_BLOCK_BITS / 8))).toMatchObject({ bits: MAX_BLOCK_BITS });
    const ls = encodePayload({ type: 'link_status', up: true, qberPpm: 1, keyRateBps: 2, bufferFill: 3, bufferCapacity: 4 });
    ls[0] = 2;
    expect(code(() => decodePayload(MsgType.LINK_STATUS, ls))).toBe('FIELD_RANGE');
    ls[0] = 1;
    ls.writeUInt32BE(1_000_001, 1);
    expect(code(() => decodePayload(MsgType.LINK_STATUS, ls))).toBe('FIELD_RANGE');
    expect(code(() => decodePayload(MsgType.ERROR, Buffer.from('0001000280ff', 'hex')))).toBe('BAD_STRING');
    expect(code(() => decodePayload(MsgType.ERROR, Buffer.from('00010005414243', 'hex')))).toBe('PAYLOAD_LENGTH');
  });

  it('copies key material out of the frame buffer', () => {
    const p = encodePayload(block(3, 8));
    const m = decodePayload(MsgType.KEY_BLOCK, p);
    p.fill(0xee);
    expect(m.type === 'key_block' && m.material.every((b) => b === 3)).toBe(true);
  });
});

describe('FrameDecoder', () => {
  it('two frames in one chunk', () => {
    const { d, frames } = collect();
    d.push(Buffer.concat([encodeFrame(1, ack(10)), encodeFrame(2, block(11))]));
    expect(frames.map((f) => f.seq)).toEqual([1, 2]);
    expect(frames[1]!.message).toEqual(block(11));
  });

  it('one frame across many chunks, down to single bytes, and the CRC bytes alone', () => {
    const { d, frames } = collect();
    const f = encodeFrame(5, block(9, 100));
    for (const byte of f.subarray(0, f.length - 4)) d.push(Buffer.from([byte]));
    expect(frames).toHaveLength(0);
    d.push(f.subarray(f.length - 4, f.length - 1));
    expect(frames).toHaveLength(0);
    d.push(f.subarray(f.length - 1));
    expect(frames).toHaveLength(1);
    expect(d.buffered).toBe(0);
  });

  it('garbage before the start marker, including a lone first SOF byte', () => {
    const { d, frames } = collect();
    d.push(Buffer.from([0x00, 0x51, 0x51, 0xff, 0x4b, 0x51]));
    d.push(encodeFrame(1, ack(1)));
    expect(frames).toHaveLength(1);
    expect(d.counters).toMatchObject({ resyncs: 1, discardedBytes: 6, crcErrors: 0 });
  });

  it('drops a bad CRC, resynchronises and goes on', () => {
    const { d, frames, errors } = collect();
    const bad = encodeFrame(1, ack(1));
    bad[bad.length - 1]! ^= 0x80;
    d.push(Buffer.concat([bad, encodeFrame(2, ack(2))]));
    expect(frames.map((f) => f.seq)).toEqual([2]);
    expect(errors.map((e) => e.code)).toEqual(['BAD_CRC']);
    expect(d.counters).toMatchObject({ crcErrors: 1, resyncs: 1, frames: 1, discardedBytes: bad.length });
  });

  it('finds a frame that starts inside a rejected one (resync after its first byte)', () => {
    const { d, frames } = collect();
    const good = encodeFrame(2, ack(2));
    // A header claiming 40 bytes of payload, followed immediately by a real frame.
    const bogus = rawFrame({ payload: Buffer.alloc(0), length: 40 }).subarray(0, HEADER_BYTES);
    d.push(Buffer.concat([bogus, good, Buffer.alloc(40)]));
    expect(frames.map((f) => f.seq)).toEqual([2]);
    expect(d.counters.crcErrors).toBe(1);
  });

  it('a truncated frame followed by a new frame (long length): flushPartial recovers the new one', () => {
    const { d, frames } = collect();
    const cut = encodeFrame(1, block(1, 1000)).subarray(0, 300);
    const next = encodeFrame(2, ack(2));
    d.push(Buffer.concat([cut, next]));
    expect(frames).toHaveLength(0); // still waiting for the 1000-byte payload
    expect(d.flushPartial()).toBe(true);
    expect(frames.map((f) => f.seq)).toEqual([2]);
    expect(d.counters).toMatchObject({ truncated: 1, resyncs: 1 });
    expect(d.flushPartial()).toBe(false);
  });

  it('a truncated frame followed by a new frame (short length): the CRC check recovers it', () => {
    const { d, frames } = collect();
    const cut = encodeFrame(1, block(1, 8)).subarray(0, 20);
    d.push(Buffer.concat([cut, encodeFrame(2, ack(2)), encodeFrame(3, ack(3))]));
    expect(frames.map((f) => f.seq)).toEqual([2, 3]);
    expect(d.counters.crcErrors).toBe(1);
  });

  it('an oversized length is counted and skipped without waiting for it', () => {
    const { d, frames, errors } = collect();
    d.push(rawFrame({ payload: Buffer.alloc(0), length: MAX_PAYLOAD_BYTES + 1 }).subarray(0, HEADER_BYTES));
    d.push(encodeFrame(7, ack(7)));
    expect(frames.map((f) => f.seq)).toEqual([7]);
    expect(errors.map((e) => e.code)).toEqual(['FRAME_TOO_LARGE']);
    expect(d.counters).toMatchObject({ oversized: 1, resyncs: 1 });
  });

  it('an unknown header version is counted, reported with the version, and skipped', () => {
    const { d, frames, errors } = collect();
    d.push(Buffer.concat([rawFrame({ version: 2, payload: Buffer.alloc(8) }), encodeFrame(8, ack(8))]));
    expect(frames.map((f) => f.seq)).toEqual([8]);
    expect(errors[0]).toMatchObject({ code: 'BAD_VERSION', frame: { version: 2 } });
    expect(d.counters.badVersions).toBe(1);
  });

  it('a CRC-valid frame of unknown type or bad payload is dropped whole, reported, and alignment kept', () => {
    const { d, frames, errors } = collect();
    d.push(
      Buffer.concat([
        rawFrame({ type: 0x7e, seq: 1, payload: Buffer.from('514b514b', 'hex') }),
        rawFrame({ type: MsgType.ACK, seq: 2, payload: Buffer.alloc(3) }),
        encodeFrame(3, ack(3)),
      ]),
    );
    expect(frames.map((f) => f.seq)).toEqual([3]);
    expect(errors.map((e) => [e.code, e.frame?.seq])).toEqual([
      ['UNKNOWN_TYPE', 1],
      ['PAYLOAD_LENGTH', 2],
    ]);
    expect(d.counters).toMatchObject({ unknownTypes: 1, badPayloads: 1, resyncs: 0, discardedBytes: 0 });
  });

  it('keeps memory bounded whatever is pushed', () => {
    const { d, frames } = collect();
    const big = encodeFrame(1, block(1, MAX_BLOCK_BITS / 8));
    const garbage = Buffer.alloc(3 * MAX_FRAME_BYTES, 0x51); // all first-SOF bytes
    d.push(Buffer.concat([garbage, big, big, big, garbage]));
    expect(frames).toHaveLength(3);
    expect(d.buffered).toBeLessThanOrEqual(1);
    d.push(big.subarray(0, big.length - 1));
    expect(d.buffered).toBe(big.length - 1);
    d.reset();
    expect(d.buffered).toBe(0);
    d.push(encodeFrame(2, ack(2)));
    expect(frames).toHaveLength(4);
  });

  it('a callback that throws leaves the decoder consistent', () => {
    let n = 0;
    const d = new FrameDecoder(() => {
      if (++n === 1) throw new Error('consumer bug');
    });
    expect(() => d.push(Buffer.concat([encodeFrame(1, ack(1)), encodeFrame(2, ack(2))]))).toThrow('consumer bug');
    d.push(Buffer.alloc(0));
    d.push(encodeFrame(3, ack(3)));
    expect(n).toBe(3);
  });
});
