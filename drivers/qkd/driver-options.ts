/** Construction options of the protocol driver (driver.ts), with their defaults. */
import type { Logger } from '../../src/common/logger.js';
import type { ByteTransport } from '../transport/types.js';
import type { Clock } from '../types.js';
import type { BackoffOptions } from './backoff.js';

export interface DriverTimeouts {
  /** HELLO -> IDENTIFY (default 3000). */
  handshakeMs: number;
  /** STATUS_REQUEST -> LINK_STATUS (default 2000). */
  requestMs: number;
  /** No frame at all for this long: nudge; twice as long: reconnect (default 5000). */
  silenceMs: number;
  /** A partial frame idle this long is declared truncated (default 500). */
  partialFrameMs: number;
}

export interface ProtocolDriverOptions {
  /** Makes a new, unopened transport; called at open() and at each reconnect. */
  transport: () => ByteTransport;
  clock?: Clock;
  logger: Logger;
  /** This KME's id, sent in HELLO. */
  hostId: string;
  timeouts?: Partial<DriverTimeouts>;
  /** Blocks of credit ahead of the last block handed to the consumer (default 64). */
  window?: number;
  /** LINK_STATUS poll period (default 1000). */
  statusPollMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** Uniform [0, 1) for backoff jitter (default Math.random). */
  random?: () => number;
}

export const DEFAULT_TIMEOUTS: DriverTimeouts = { handshakeMs: 3000, requestMs: 2000, silenceMs: 5000, partialFrameMs: 500 };
