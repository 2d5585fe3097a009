/** The error of a malformed frame or payload (codec and frame decoder). */
export type ProtocolErrorCode =
  | 'UNKNOWN_TYPE' // a type code this version does not define
  | 'PAYLOAD_LENGTH' // payload shorter or longer than its fields
  | 'FIELD_RANGE' // a field outside its range (u64 beyond 2^53-1, bits, qber, flags...)
  | 'BAD_STRING' // invalid UTF-8, lone surrogate, or too long
  | 'FRAME_TOO_LARGE' // payload above MAX_PAYLOAD_BYTES
  | 'BAD_CRC' // CRC-32C mismatch (streaming only)
  | 'BAD_VERSION'; // frame header version other than FRAME_VERSION (streaming only)

export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
    /** The frame's type code and seq when known. */
    readonly frame?: { type?: number; seq?: number; version?: number },
  ) {
    super(message);
  }
}
