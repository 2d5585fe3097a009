/**
 * The QKD module protocol, version 1: the messages and their fields. Framing,
 * byte layout and CRC are in codec.ts and PROTOCOL.md. This file is the
 * contract shared by the host driver (keypoold side) and the simulated module.
 *
 * Integers are unsigned, big-endian on the wire. Block ids are u64 on the wire
 * and JS numbers here (safe integers only; larger is a protocol error).
 * Strings are u16 length + UTF-8.
 */

export const PROTOCOL_VERSION = 1;

/**
 * The version byte of every frame header: the framing (header, trailer, CRC)
 * version, distinct from the message-set version carried in HELLO/IDENTIFY.
 * It changes only if the header or trailer layout changes, so that peers of
 * different message-set versions can still exchange HELLO, IDENTIFY and ERROR
 * (whose payloads are frozen across versions) and fail with a clear error.
 */
export const FRAME_VERSION = 1;

/** Start-of-frame marker ("QK"). */
export const SOF = 0x514b;
/** Header: SOF(2) version(1) type(1) seq(4) length(4). Trailer: CRC-32C(4). */
export const HEADER_BYTES = 12;
export const TRAILER_BYTES = 4;
/** Largest payload a frame may carry; a bigger length field is a framing error. */
export const MAX_PAYLOAD_BYTES = 16 * 1024;
export const MAX_FRAME_BYTES = HEADER_BYTES + MAX_PAYLOAD_BYTES + TRAILER_BYTES;
/** Largest key block a module may send, in bits. */
export const MAX_BLOCK_BITS = 8 * (MAX_PAYLOAD_BYTES - 64);

export const MsgType = {
  // host -> module
  HELLO: 0x01,
  STATUS_REQUEST: 0x02,
  CREDIT: 0x03,
  ACK: 0x04,
  RESEND: 0x05,
  RESET: 0x06,
  /** Added to v1 with the protocol document: the host confirms an ALARM so the module stops repeating it. */
  ALARM_ACK: 0x07,
  // module -> host
  IDENTIFY: 0x81,
  LINK_STATUS: 0x82,
  KEY_BLOCK: 0x83,
  ALARM: 0x84,
  ERROR: 0x8f,
} as const;
export type MsgTypeCode = (typeof MsgType)[keyof typeof MsgType];

export const AlarmKind = {
  /** The QBER went above the module's threshold. */
  QBER_THRESHOLD: 1,
  /** The module suspects an eavesdropper. */
  EAVESDROPPING: 2,
} as const;

/** Codes of the ERROR message (u16). */
export const ErrorCode = {
  /** The other side's protocol (message-set) version is not supported. */
  UNSUPPORTED_VERSION: 1,
  /** A frame of an unknown message type arrived (it was dropped). */
  UNKNOWN_TYPE: 2,
  /** A frame with a valid CRC had a malformed payload (it was dropped). */
  BAD_PAYLOAD: 3,
  /** The message is not valid in the current session state (e.g. CREDIT before HELLO). */
  BAD_STATE: 4,
  /** RESEND asked for blocks the module no longer holds; the host must restart from IDENTIFY.firstBlockId. */
  BLOCKS_GONE: 5,
  /** Anything else inside the module. */
  INTERNAL: 6,
} as const;

export type Message =
  /** Opens a session; the module answers IDENTIFY. */
  | { type: 'hello'; hostVersion: number; hostId: string }
  /** The module answers LINK_STATUS. */
  | { type: 'status_request' }
  /** The module may send key blocks with ids up to and including `upToBlockId` (flow control). */
  | { type: 'credit'; upToBlockId: number }
  /** The host holds every block up to and including `blockId` durably; the module may forget them. */
  | { type: 'ack'; blockId: number }
  /** The host missed blocks: send again from `fromBlockId` (within credit). */
  | { type: 'resend'; fromBlockId: number }
  /** Drop the session; the module answers IDENTIFY again after restarting it. */
  | { type: 'reset' }
  /** The host has taken the ALARM for blocks [firstBlockId, lastBlockId]; the module stops repeating it. */
  | { type: 'alarm_ack'; firstBlockId: number; lastBlockId: number }
  | {
      type: 'identify';
      protocolVersion: number;
      moduleSerial: string;
      firmware: string;
      linkId: string;
      peerModuleId: string;
      /** First block id the module can still send (older ones are gone). */
      firstBlockId: number;
    }
  | {
      type: 'link_status';
      up: boolean;
      /** Quantum bit error rate, parts per million. */
      qberPpm: number;
      /** Secret key rate, bits per second. */
      keyRateBps: number;
      /** Blocks produced and not yet acknowledged, and the module's buffer size, in blocks. */
      bufferFill: number;
      bufferCapacity: number;
    }
  | { type: 'key_block'; blockId: number; bits: number; material: Buffer }
  | { type: 'alarm'; kind: number; firstBlockId: number; lastBlockId: number; qberPpm: number }
  | { type: 'error'; code: number; text: string };

export interface Frame {
  seq: number;
  message: Message;
}
