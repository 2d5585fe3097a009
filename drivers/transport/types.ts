/**
 * A byte transport: a serial line, a USB HID device, a socket, or an
 * in-process pair. The protocol driver works on any of them.
 *
 * Contract for every implementation:
 * - open() once; it rejects if the device cannot be opened (or the signal aborts).
 * - write() resolves when the bytes are handed to the OS (or the peer); it
 *   rejects with a TransportError when the transport is not open.
 * - onData delivers chunks in order, in whatever sizes the OS gives.
 * - onClose fires exactly once per successful open(), whether the close was
 *   asked for (close(), err undefined) or not (unplug, reset: err set).
 * - close() is idempotent.
 */
export interface ByteTransport {
  open(signal?: AbortSignal): Promise<void>;
  close(): Promise<void>;
  write(data: Uint8Array): Promise<void>;
  /** Returns an unsubscribe function. */
  onData(cb: (chunk: Uint8Array) => void): () => void;
  /** Returns an unsubscribe function. */
  onClose(cb: (err?: Error) => void): () => void;
  /** modemLines: DTR/RTS can be set (false on ptys, sockets, HID). */
  readonly caps: { modemLines: boolean };
  setLines?(l: { dtr?: boolean; rts?: boolean }): Promise<void>;
  /** For logs: "serial /dev/qkd0", "unix /run/sim.sock"... */
  readonly description: string;
}

export type TransportErrorCode = 'NOT_OPEN' | 'OPEN_FAILED' | 'IO' | 'ABORTED' | 'CLOSED';

export class TransportError extends Error {
  override readonly name = 'TransportError';
  constructor(
    readonly code: TransportErrorCode,
    message: string,
    opts?: ErrorOptions,
  ) {
    super(message, opts);
  }
}

/** Listener bookkeeping shared by the transports: data/close subscribers and the once-only close. */
export class TransportEvents {
  readonly #data = new Set<(chunk: Uint8Array) => void>();
  readonly #close = new Set<(err?: Error) => void>();
  #closedFired = true; // nothing to close until opened()

  onData(cb: (chunk: Uint8Array) => void): () => void {
    this.#data.add(cb);
    return () => this.#data.delete(cb);
  }

  onClose(cb: (err?: Error) => void): () => void {
    this.#close.add(cb);
    return () => this.#close.delete(cb);
  }

  /** A new open() succeeded: the next close fires again. */
  opened(): void {
    this.#closedFired = false;
  }

  data(chunk: Uint8Array): void {
    for (const cb of [...this.#data]) cb(chunk);
  }

  /** Fires the close listeners once per open. */
  closed(err?: Error): void {
    if (this.#closedFired) return;
    this.#closedFired = true;
    for (const cb of [...this.#close]) cb(err);
  }
}

/** Rejects with TransportError ABORTED if the signal is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw new TransportError('ABORTED', `${what}: open aborted`, { cause: signal.reason });
}
