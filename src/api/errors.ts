/**
 * The one place where errors become ETSI GS QKD 014 responses. Every response
 * is JSON (`{"message", "details"?}`); no stack or internal text reaches an SAE.
 *
 *   KmeError BAD_REQUEST  -> 400 {message, details?}
 *   KmeError UNAUTHORIZED -> 401 {message}
 *   KmeError UNAVAILABLE  -> 503 {message}
 *   INTERNAL / anything else -> 503 {"message":"internal error"} (logged)
 *   HttpStatusError (413 body too large, 405 wrong method) -> its status
 */
import type { Context, ErrorHandler, NotFoundHandler } from 'hono';
import { isKmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';

/** HTTP-level refusals that are not ETSI error codes (405, 413). */
export class HttpStatusError extends Error {
  override readonly name = 'HttpStatusError';
  constructor(
    readonly status: 405 | 413,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
  }
}

export const bodyTooLarge = () => new HttpStatusError(413, 'request body too large', { Connection: 'close' });

type ErrorStatus = 400 | 401 | 405 | 413 | 503;

function send(c: Context, status: ErrorStatus, body: { message: string; details?: unknown }, headers?: Record<string, string>) {
  return c.json(body, status, headers);
}

export function etsiErrorHandler(logger: Logger): ErrorHandler {
  return function etsiError(err, c) {
    if (isKmeError(err)) {
      switch (err.code) {
        case 'BAD_REQUEST':
          logger.debug({ code: err.code, msg400: err.message }, 'request refused');
          return send(c, 400, err.details === undefined ? { message: err.message } : { message: err.message, details: err.details });
        case 'UNAUTHORIZED':
          logger.debug({ code: err.code }, 'request unauthorised');
          return send(c, 401, { message: err.message });
        case 'UNAVAILABLE':
          logger.debug({ code: err.code, msg503: err.message }, 'request unavailable');
          return send(c, 503, { message: err.message });
        default:
          break;
      }
    } else if (err instanceof HttpStatusError) {
      return send(c, err.status, { message: err.message }, err.headers);
    }
    logger.error({ err, method: c.req.method, path: c.req.path }, 'internal error');
    return send(c, 503, { message: 'internal error' });
  };
}

export const etsiNotFound: NotFoundHandler = (c) => c.json({ message: 'not found' }, 404);

/** Handler for a known path called with a method it does not serve. */
export function methodNotAllowed(allow: string) {
  const err = new HttpStatusError(405, 'method not allowed', { Allow: allow });
  return function wrongMethod(): never {
    throw err;
  };
}
