/**
 * Typed errors shared by both daemons. Each code maps to exactly one HTTP
 * status on the ETSI API (see src/api/errors.ts); the message is what an SAE
 * sees, so it never carries key material or internal paths.
 */
export type KmeErrorCode =
  /** The request is malformed or outside the advertised limits (400). */
  | 'BAD_REQUEST'
  /** The caller is not registered here, or not allowed this key/slave (401). */
  | 'UNAUTHORIZED'
  /** Keys cannot be served now: pool empty, peer unreachable, store failure (503). */
  | 'UNAVAILABLE'
  /** Internal invariant broken; served as 503 with a generic message. */
  | 'INTERNAL';

export class KmeError extends Error {
  override readonly name = 'KmeError';
  constructor(
    readonly code: KmeErrorCode,
    message: string,
    readonly details?: Array<Record<string, unknown>>,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** The fixed ETSI GS QKD 014 400 messages, matched to the letter. */
export const EtsiMessage = {
  sizeNotMultipleOf8: 'size shall be a multiple of 8',
  extensionMandatoryUnsupported: 'not all extension_mandatory parameters are supported',
  keysNotFound: 'one or more keys specified are not found on KME',
} as const;

export function isKmeError(e: unknown): e is KmeError {
  return e instanceof KmeError;
}

export const badRequest = (msg: string, details?: Array<Record<string, unknown>>) =>
  new KmeError('BAD_REQUEST', msg, details);
export const unauthorized = (msg = 'unauthorized') => new KmeError('UNAUTHORIZED', msg);
export const unavailable = (msg: string) => new KmeError('UNAVAILABLE', msg);
