/**
 * Pure encode/decode of protocol v1 frames (see PROTOCOL.md):
 *
 *   SOF u16 | version u8 | type u8 | seq u32 | length u32 | payload | CRC-32C u32
 *
 * all big-endian; the CRC covers version..payload. Payload layouts are in
 * payload.ts, the streaming decoder (resync, counters) in frame-decoder.ts;
 * this module is the one entry point for both.
 */
import { crc32c } from './crc32c.js';
import { FRAME_VERSION, HEADER_BYTES, SOF, TRAILER_BYTES, type Message } from './messages.js';
import { encodePayload, typeCode } from './payload.js';
import { ProtocolError } from './protocol-error.js';

export { crc32c } from './crc32c.js';
export { ProtocolError, type ProtocolErrorCode } from './protocol-error.js';
export { decodePayload, encodePayload, typeCode } from './payload.js';
export { FrameDecoder, type DecoderCounters, type FrameDecoderOptions } from './frame-decoder.js';

/** One complete frame: header, payload, CRC-32C. `seq` is a u32. */
export function encodeFrame(seq: number, message: Message): Buffer {
  if (!Number.isInteger(seq) || seq < 0 || seq > 0xffffffff) throw new ProtocolError('FIELD_RANGE', `seq must be a u32, got ${seq}`);
  const payload = encodePayload(message);
  const frame = Buffer.allocUnsafe(HEADER_BYTES + payload.length + TRAILER_BYTES);
  frame.writeUInt16BE(SOF, 0);
  frame.writeUInt8(FRAME_VERSION, 2);
  frame.writeUInt8(typeCode(message), 3);
  frame.writeUInt32BE(seq, 4);
  frame.writeUInt32BE(payload.length, 8);
  payload.copy(frame, HEADER_BYTES);
  payload.fill(0); // may hold key material
  const end = HEADER_BYTES + payload.length;
  frame.writeUInt32BE(crc32c(frame, 2, end), end);
  return frame;
}

