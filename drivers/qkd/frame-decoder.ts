/**
 * Streaming frame decoder: push() the bytes as they arrive, in any chunking;
 * complete frames come out through `onFrame`, in order. It resynchronises on
 * the start marker after garbage, a bad CRC, an oversized length or an
 * unknown header version, and counts each. Memory is bounded: one fixed
 * buffer of twice the largest frame, whatever is pushed.
 */
import { crc32c } from './crc32c.js';
import { decodePayload } from './payload.js';
import { ProtocolError } from './protocol-error.js';
import { FRAME_VERSION, HEADER_BYTES, MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, MsgType, SOF, TRAILER_BYTES, type Frame } from './messages.js';

const SOF_HI = SOF >> 8;
const SOF_LO = SOF & 0xff;
const CAPACITY = 2 * MAX_FRAME_BYTES;

export interface DecoderCounters {
  /** Frames delivered through onFrame. */
  frames: number;
  /** Frames whose CRC did not match (dropped). */
  crcErrors: number;
  /** Times the decoder lost frame alignment and hunted for the next start marker. */
  resyncs: number;
  /** Bytes skipped while hunting (garbage and the bytes of rejected frames). */
  discardedBytes: number;
  /** Headers with a length above MAX_PAYLOAD_BYTES. */
  oversized: number;
  /** Headers with a version other than FRAME_VERSION. */
  badVersions: number;
  /** Frames with a valid CRC and an unknown type (dropped, reported). */
  unknownTypes: number;
  /** Frames with a valid CRC and a malformed payload (dropped, reported). */
  badPayloads: number;
  /** Partial frames abandoned through flushPartial(). */
  truncated: number;
}

export interface FrameDecoderOptions {
  onFrame: (frame: Frame) => void;
  /**
   * Every dropped frame or header, with the reason (never silent). CRC errors
   * and bad headers are also counted; frames with a valid CRC but an unknown
   * type or a malformed payload are only reported here and counted.
   */
  onError?: (err: ProtocolError) => void;
}

export class FrameDecoder {
  readonly #buf = Buffer.alloc(CAPACITY);
  #start = 0;
  #end = 0;
  #hunting = false;
  #parsing = false;
  readonly #onFrame: FrameDecoderOptions['onFrame'];
  readonly #onError: NonNullable<FrameDecoderOptions['onError']>;
  readonly #c: DecoderCounters = {
    frames: 0,
    crcErrors: 0,
    resyncs: 0,
    discardedBytes: 0,
    oversized: 0,
    badVersions: 0,
    unknownTypes: 0,
    badPayloads: 0,
    truncated: 0,
  };

  constructor(opts: FrameDecoderOptions | FrameDecoderOptions['onFrame']) {
    const o = typeof opts === 'function' ? { onFrame: opts } : opts;
    this.#onFrame = o.onFrame;
    this.#onError = o.onError ?? (() => {});
  }

  /** A snapshot of the counters. */
  get counters(): DecoderCounters {
    return { ...this.#c };
  }

  /** Bytes held while waiting for the rest of a frame (never more than MAX_FRAME_BYTES after push returns). */
  get buffered(): number {
    return this.#end - this.#start;
  }

  push(chunk: Uint8Array): void {
    if (this.#parsing) throw new Error('FrameDecoder.push called from inside its own callback');
    let off = 0;
    while (off < chunk.length) {
      if (this.#end === CAPACITY) this.#compact();
      const n = Math.min(CAPACITY - this.#end, chunk.length - off);
      this.#buf.set(chunk.subarray(off, off + n), this.#end);
      this.#end += n;
      off += n;
      this.#parse();
    }
    if (this.#start === this.#end) this.#start = this.#end = 0;
  }

  /**
   * Declare the buffered partial frame truncated (the sender stopped in the
   * middle of it, e.g. a module reboot): drop its first byte, count it, and
   * look for a start marker in what follows. Call when the line has been idle
   * for a while with bytes buffered. Returns whether anything was pending.
   */
  flushPartial(): boolean {
    if (this.#start === this.#end) return false;
    this.#c.truncated++;
    this.#skip(1);
    this.#parsing = true;
    try {
      this.#parse();
    } finally {
      this.#parsing = false;
    }
    return true;
  }

  /** Forget any buffered bytes (a new connection). Counters are kept. */
  reset(): void {
    this.#buf.fill(0, 0, this.#end);
    this.#start = this.#end = 0;
    this.#hunting = false;
  }

  #compact(): void {
    this.#buf.copyWithin(0, this.#start, this.#end);
    this.#buf.fill(0, this.#end - this.#start, this.#end);
    this.#end -= this.#start;
    this.#start = 0;
  }

  #skip(n: number): void {
    if (!this.#hunting) {
      this.#hunting = true;
      this.#c.resyncs++;
    }
    this.#c.discardedBytes += n;
    this.#start += n;
  }

  #reject(err: ProtocolError): void {
    this.#skip(1);
    this.#onError(err);
  }

  #parse(): void {
    const b = this.#buf;
    this.#parsing = true;
    try {
      for (;;) {
        const avail = this.#end - this.#start;
        if (avail === 0) return;
        // Hunt for the start marker.
        if (b[this.#start] !== SOF_HI || (avail >= 2 && b[this.#start + 1] !== SOF_LO)) {
          let i = this.#start + 1;
          while (i < this.#end && !(b[i] === SOF_HI && (i + 1 === this.#end || b[i + 1] === SOF_LO))) i++;
          this.#skip(i - this.#start);
          continue;
        }
        if (avail < HEADER_BYTES) return;
        const s = this.#start;
        const version = b[s + 2]!;
        const type = b[s + 3]!;
        const seq = b.readUInt32BE(s + 4);
        const length = b.readUInt32BE(s + 8);
        if (version !== FRAME_VERSION) {
          this.#c.badVersions++;
          this.#reject(new ProtocolError('BAD_VERSION', `frame version ${version}, expected ${FRAME_VERSION}`, { version, type, seq }));
          continue;
        }
        if (length > MAX_PAYLOAD_BYTES) {
          this.#c.oversized++;
          this.#reject(new ProtocolError('FRAME_TOO_LARGE', `frame length ${length} exceeds ${MAX_PAYLOAD_BYTES}`, { type, seq }));
          continue;
        }
        const total = HEADER_BYTES + length + TRAILER_BYTES;
        if (avail < total) return;
        const crcAt = s + HEADER_BYTES + length;
        if (crc32c(b, s + 2, crcAt) !== b.readUInt32BE(crcAt)) {
          this.#c.crcErrors++;
          this.#reject(new ProtocolError('BAD_CRC', `bad CRC on a frame of type 0x${type.toString(16)}`, { type, seq }));
          continue;
        }
        // A whole, intact frame: consume it before calling out.
        this.#start += total;
        this.#hunting = false;
        let frame: Frame | undefined;
        try {
          frame = { seq, message: decodePayload(type, b.subarray(s + HEADER_BYTES, crcAt)) };
        } catch (e) {
          if (!(e instanceof ProtocolError)) throw e;
          if (e.code === 'UNKNOWN_TYPE') this.#c.unknownTypes++;
          else this.#c.badPayloads++;
          this.#onError(new ProtocolError(e.code, e.message, { type, seq }));
        }
        if (type === MsgType.KEY_BLOCK) b.fill(0, s, s + total); // the material was copied out
        if (frame) {
          this.#c.frames++;
          this.#onFrame(frame);
        }
      }
    } finally {
      this.#parsing = false;
    }
  }
}
