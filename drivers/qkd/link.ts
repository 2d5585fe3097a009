/**
 * One open transport with the protocol's framing on it: outgoing frames get
 * sequence numbers, incoming bytes go through the driver's FrameDecoder.
 * A Link lives from a successful open to its close; a reconnect makes a new one.
 */
import type { Logger } from '../../src/common/logger.js';
import type { ByteTransport } from '../transport/types.js';
import type { Clock } from '../types.js';
import { encodeFrame, type FrameDecoder } from './codec.js';
import type { Message } from './messages.js';

export interface LinkDeps {
  decoder: FrameDecoder;
  clock: Clock;
  logger: Logger;
  /** Called once when the transport closes, whoever closed it. */
  onClosed: (link: Link, err?: Error) => void;
  onFrameOut: () => void;
}

export class Link {
  /** Aborted when the link closes: ends the loops tied to it. */
  readonly #life = new AbortController();
  #seq = 0;
  #unsub: Array<() => void> = [];
  #closed = false;
  lastRxAt: number;

  constructor(
    readonly transport: ByteTransport,
    readonly deps: LinkDeps,
  ) {
    this.lastRxAt = deps.clock.now();
  }

  get signal(): AbortSignal {
    return this.#life.signal;
  }

  get closed(): boolean {
    return this.#closed;
  }

  async open(signal?: AbortSignal): Promise<void> {
    const { decoder, clock } = this.deps;
    decoder.reset();
    this.#unsub.push(
      this.transport.onData((chunk) => {
        if (this.#closed) return;
        this.lastRxAt = clock.now();
        decoder.push(chunk);
      }),
      this.transport.onClose((err) => this.#onClose(err)),
    );
    try {
      await this.transport.open(signal);
    } catch (e) {
      this.#teardown();
      throw e;
    }
    this.lastRxAt = clock.now();
  }

  /** Sends without waiting; a failed write is logged (the close event does the rest). */
  send(m: Message): void {
    if (this.#closed) return;
    const frame = encodeFrame(this.#seq, m);
    this.#seq = (this.#seq + 1) >>> 0;
    this.deps.onFrameOut();
    this.transport.write(frame).then(
      () => frame.fill(0),
      (err: Error) => {
        frame.fill(0);
        if (!this.#closed) this.deps.logger.debug({ err: err.message, type: m.type }, 'qkd frame write failed');
      },
    );
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.transport.close().catch((err: Error) => this.deps.logger.debug({ err: err.message }, 'qkd transport close failed'));
    this.#onClose(); // in case the transport did not report it
  }

  #onClose(err?: Error): void {
    if (this.#closed) return;
    this.#teardown();
    this.deps.onClosed(this, err);
  }

  #teardown(): void {
    this.#closed = true;
    this.#life.abort();
    for (const u of this.#unsub) u();
    this.#unsub = [];
  }
}
