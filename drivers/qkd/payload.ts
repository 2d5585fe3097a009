/**
 * Payload layouts of protocol v1 messages (see PROTOCOL.md), big-endian.
 * Decoding is strict: any malformed field throws a ProtocolError.
 */
import { MAX_BLOCK_BITS, MAX_PAYLOAD_BYTES, MsgType, type Message, type MsgTypeCode } from './messages.js';
import { ProtocolError, type ProtocolErrorCode } from './protocol-error.js';

const TYPE_OF: Record<Message['type'], MsgTypeCode> = {
  hello: MsgType.HELLO,
  status_request: MsgType.STATUS_REQUEST,
  credit: MsgType.CREDIT,
  ack: MsgType.ACK,
  resend: MsgType.RESEND,
  reset: MsgType.RESET,
  alarm_ack: MsgType.ALARM_ACK,
  identify: MsgType.IDENTIFY,
  link_status: MsgType.LINK_STATUS,
  key_block: MsgType.KEY_BLOCK,
  alarm: MsgType.ALARM,
  error: MsgType.ERROR,
};

/** The wire type code of a message. */
export function typeCode(m: Message): MsgTypeCode {
  return TYPE_OF[m.type];
}

const TWO32 = 2 ** 32;
const QBER_MAX_PPM = 1_000_000;
const fail = (code: ProtocolErrorCode, msg: string): never => {
  throw new ProtocolError(code, msg);
};
const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

class Writer {
  readonly parts: Buffer[] = [];
  size = 0;
  #fixed(n: number, fill: (b: Buffer) => void): void {
    const b = Buffer.allocUnsafe(n);
    fill(b);
    this.parts.push(b);
    this.size += n;
  }
  u8(v: number, what: string): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xff) fail('FIELD_RANGE', `${what} must be a u8, got ${v}`);
    this.#fixed(1, (b) => b.writeUInt8(v));
  }
  u16(v: number, what: string): void {
    if (!Number.isInteger(v) || v < 0 || v > 0xffff) fail('FIELD_RANGE', `${what} must be a u16, got ${v}`);
    this.#fixed(2, (b) => b.writeUInt16BE(v));
  }
  u32(v: number, what: string, max = TWO32 - 1): void {
    if (!Number.isInteger(v) || v < 0 || v > max) fail('FIELD_RANGE', `${what} must be an integer in [0, ${max}], got ${v}`);
    this.#fixed(4, (b) => b.writeUInt32BE(v));
  }
  u64(v: number, what: string): void {
    if (!Number.isSafeInteger(v) || v < 0) fail('FIELD_RANGE', `${what} must be a safe non-negative integer, got ${v}`);
    this.#fixed(8, (b) => {
      b.writeUInt32BE(Math.floor(v / TWO32), 0);
      b.writeUInt32BE(v >>> 0, 4);
    });
  }
  str(s: string, what: string): void {
    if (LONE_SURROGATE.test(s)) fail('BAD_STRING', `${what} has a lone surrogate`);
    const b = Buffer.from(s, 'utf8');
    this.u16(b.length, `${what} length`);
    this.parts.push(b);
    this.size += b.length;
  }
  bytes(b: Uint8Array): void {
    this.parts.push(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
    this.size += b.byteLength;
  }
}

class Reader {
  #off = 0;
  constructor(
    readonly b: Buffer,
    readonly what: string,
  ) {}
  #need(n: number): number {
    const at = this.#off;
    if (at + n > this.b.length) fail('PAYLOAD_LENGTH', `${this.what} payload too short (${this.b.length} bytes)`);
    this.#off += n;
    return at;
  }
  u8(): number {
    return this.b.readUInt8(this.#need(1));
  }
  u16(): number {
    return this.b.readUInt16BE(this.#need(2));
  }
  u32(): number {
    return this.b.readUInt32BE(this.#need(4));
  }
  u64(field: string): number {
    const at = this.#need(8);
    const hi = this.b.readUInt32BE(at);
    if (hi > 0x1fffff) fail('FIELD_RANGE', `${this.what}.${field} is above 2^53-1`);
    return hi * TWO32 + this.b.readUInt32BE(at + 4);
  }
  str(field: string): string {
    const n = this.u16();
    const at = this.#need(n);
    try {
      return utf8.decode(this.b.subarray(at, at + n));
    } catch {
      return fail('BAD_STRING', `${this.what}.${field} is not valid UTF-8`);
    }
  }
  rest(): Buffer {
    const at = this.#need(0);
    this.#off = this.b.length;
    return Buffer.from(this.b.subarray(at)); // a copy: the caller's buffer may be reused
  }
  end(): void {
    if (this.#off !== this.b.length) fail('PAYLOAD_LENGTH', `${this.what} payload has ${this.b.length - this.#off} extra bytes`);
  }
}

function checkBlock(bits: number, materialBytes: number): void {
  if (!Number.isInteger(bits) || bits < 8 || bits > MAX_BLOCK_BITS || bits % 8 !== 0)
    fail('FIELD_RANGE', `key_block.bits must be a multiple of 8 in [8, ${MAX_BLOCK_BITS}], got ${bits}`);
  if (materialBytes !== bits / 8) fail('PAYLOAD_LENGTH', `key_block material is ${materialBytes} bytes for ${bits} bits`);
}

function checkQber(ppm: number, what: string): void {
  if (ppm > QBER_MAX_PPM) fail('FIELD_RANGE', `${what}.qberPpm above ${QBER_MAX_PPM}: ${ppm}`);
}

/** The payload bytes of a message. Throws ProtocolError on an invalid field. */
export function encodePayload(m: Message): Buffer {
  const w = new Writer();
  switch (m.type) {
    case 'hello':
      w.u8(m.hostVersion, 'hello.hostVersion');
      w.str(m.hostId, 'hello.hostId');
      break;
    case 'status_request':
    case 'reset':
      break;
    case 'credit':
      w.u64(m.upToBlockId, 'credit.upToBlockId');
      break;
    case 'ack':
      w.u64(m.blockId, 'ack.blockId');
      break;
    case 'resend':
      w.u64(m.fromBlockId, 'resend.fromBlockId');
      break;
    case 'identify':
      w.u8(m.protocolVersion, 'identify.protocolVersion');
      w.str(m.moduleSerial, 'identify.moduleSerial');
      w.str(m.firmware, 'identify.firmware');
      w.str(m.linkId, 'identify.linkId');
      w.str(m.peerModuleId, 'identify.peerModuleId');
      w.u64(m.firstBlockId, 'identify.firstBlockId');
      break;
    case 'link_status':
      w.u8(m.up ? 1 : 0, 'link_status.up');
      w.u32(m.qberPpm, 'link_status.qberPpm', QBER_MAX_PPM);
      w.u64(m.keyRateBps, 'link_status.keyRateBps');
      w.u32(m.bufferFill, 'link_status.bufferFill');
      w.u32(m.bufferCapacity, 'link_status.bufferCapacity');
      break;
    case 'key_block':
      w.u64(m.blockId, 'key_block.blockId');
      checkBlock(m.bits, m.material.length);
      w.u32(m.bits, 'key_block.bits');
      w.bytes(m.material);
      break;
    case 'alarm_ack':
      w.u64(m.firstBlockId, 'alarm_ack.firstBlockId');
      w.u64(m.lastBlockId, 'alarm_ack.lastBlockId');
      if (m.firstBlockId > m.lastBlockId) fail('FIELD_RANGE', 'alarm_ack.firstBlockId > alarm_ack.lastBlockId');
      break;
    case 'alarm':
      w.u8(m.kind, 'alarm.kind');
      w.u64(m.firstBlockId, 'alarm.firstBlockId');
      w.u64(m.lastBlockId, 'alarm.lastBlockId');
      if (m.firstBlockId > m.lastBlockId) fail('FIELD_RANGE', 'alarm.firstBlockId > alarm.lastBlockId');
      w.u32(m.qberPpm, 'alarm.qberPpm', QBER_MAX_PPM);
      break;
    case 'error':
      w.u16(m.code, 'error.code');
      w.str(m.text, 'error.text');
      break;
    default:
      fail('UNKNOWN_TYPE', `unknown message type ${(m as { type: string }).type}`);
  }
  if (w.size > MAX_PAYLOAD_BYTES) fail('FRAME_TOO_LARGE', `${m.type} payload of ${w.size} bytes exceeds ${MAX_PAYLOAD_BYTES}`);
  return Buffer.concat(w.parts, w.size);
}

/** The message of a frame's payload. Throws ProtocolError on an unknown type or a malformed payload. */
export function decodePayload(type: number, payload: Buffer): Message {
  let m: Message;
  switch (type) {
    case MsgType.HELLO: {
      const r = new Reader(payload, 'hello');
      m = { type: 'hello', hostVersion: r.u8(), hostId: r.str('hostId') };
      r.end();
      return m;
    }
    case MsgType.STATUS_REQUEST:
    case MsgType.RESET:
      new Reader(payload, type === MsgType.RESET ? 'reset' : 'status_request').end();
      return { type: type === MsgType.RESET ? 'reset' : 'status_request' };
    case MsgType.CREDIT:
    case MsgType.ACK:
    case MsgType.RESEND: {
      const name = type === MsgType.CREDIT ? 'credit' : type === MsgType.ACK ? 'ack' : 'resend';
      const r = new Reader(payload, name);
      const id = r.u64('blockId');
      r.end();
      if (name === 'credit') return { type: 'credit', upToBlockId: id };
      if (name === 'ack') return { type: 'ack', blockId: id };
      return { type: 'resend', fromBlockId: id };
    }
    case MsgType.IDENTIFY: {
      const r = new Reader(payload, 'identify');
      m = {
        type: 'identify',
        protocolVersion: r.u8(),
        moduleSerial: r.str('moduleSerial'),
        firmware: r.str('firmware'),
        linkId: r.str('linkId'),
        peerModuleId: r.str('peerModuleId'),
        firstBlockId: r.u64('firstBlockId'),
      };
      r.end();
      return m;
    }
    case MsgType.LINK_STATUS: {
      const r = new Reader(payload, 'link_status');
      const up = r.u8();
      if (up > 1) fail('FIELD_RANGE', `link_status.up must be 0 or 1, got ${up}`);
      const qberPpm = r.u32();
      checkQber(qberPpm, 'link_status');
      m = { type: 'link_status', up: up === 1, qberPpm, keyRateBps: r.u64('keyRateBps'), bufferFill: r.u32(), bufferCapacity: r.u32() };
      r.end();
      return m;
    }
    case MsgType.KEY_BLOCK: {
      const r = new Reader(payload, 'key_block');
      const blockId = r.u64('blockId');
      const bits = r.u32();
      checkBlock(bits, payload.length - 12);
      return { type: 'key_block', blockId, bits, material: r.rest() };
    }
    case MsgType.ALARM_ACK: {
      const r = new Reader(payload, 'alarm_ack');
      const firstBlockId = r.u64('firstBlockId');
      const lastBlockId = r.u64('lastBlockId');
      r.end();
      if (firstBlockId > lastBlockId) fail('FIELD_RANGE', 'alarm_ack.firstBlockId > alarm_ack.lastBlockId');
      return { type: 'alarm_ack', firstBlockId, lastBlockId };
    }
    case MsgType.ALARM: {
      const r = new Reader(payload, 'alarm');
      const kind = r.u8();
      const firstBlockId = r.u64('firstBlockId');
      const lastBlockId = r.u64('lastBlockId');
      if (firstBlockId > lastBlockId) fail('FIELD_RANGE', 'alarm.firstBlockId > alarm.lastBlockId');
      const qberPpm = r.u32();
      checkQber(qberPpm, 'alarm');
      r.end();
      return { type: 'alarm', kind, firstBlockId, lastBlockId, qberPpm };
    }
    case MsgType.ERROR: {
      const r = new Reader(payload, 'error');
      m = { type: 'error', code: r.u16(), text: r.str('text') };
      r.end();
      return m;
    }
    default:
      return fail('UNKNOWN_TYPE', `unknown message type 0x${type.toString(16).padStart(2, '0')}`);
  }
}
