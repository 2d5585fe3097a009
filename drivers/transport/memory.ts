/**
 * An in-process transport pair for tests: what one end writes, the other
 * end receives, asynchronously (setImmediate), in order, optionally split
 * into chunks of at most `maxChunk` bytes. Closing one end closes the other
 * (its onClose gets an error, like a hang-up); unplug() closes both with one.
 */
import { TransportError, TransportEvents, throwIfAborted, type ByteTransport } from './types.js';

export interface MemoryPairOptions {
  /** Split every write into chunks of at most this many bytes (default: no split). */
  maxChunk?: number;
  /** Names for logs (default "memory a" / "memory b"). */
  names?: [string, string];
}

export class MemoryTransport implements ByteTransport {
  readonly caps = { modemLines: false };
  readonly #events = new TransportEvents();
  #open = false;
  #peer!: MemoryTransport;

  constructor(
    readonly description: string,
    readonly maxChunk = Infinity,
  ) {}

  static pair(opts: MemoryPairOptions = {}): [MemoryTransport, MemoryTransport] {
    const [na, nb] = opts.names ?? ['memory a', 'memory b'];
    const a = new MemoryTransport(na, opts.maxChunk);
    const b = new MemoryTransport(nb, opts.maxChunk);
    a.#peer = b;
    b.#peer = a;
    return [a, b];
  }

  get isOpen(): boolean {
    return this.#open;
  }

  async open(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal, this.description);
    if (this.#open) return;
    this.#open = true;
    this.#events.opened();
  }

  async write(data: Uint8Array): Promise<void> {
    if (!this.#open) throw new TransportError('NOT_OPEN', `${this.description}: write on a closed transport`);
    const copy = Uint8Array.from(data);
    for (let off = 0; off < copy.length; off += this.maxChunk) {
      const part = copy.subarray(off, Math.min(copy.length, off + this.maxChunk));
      setImmediate(() => this.#peer.#receive(part));
    }
  }

  onData(cb: (chunk: Uint8Array) => void): () => void {
    return this.#events.onData(cb);
  }

  onClose(cb: (err?: Error) => void): () => void {
    return this.#events.onClose(cb);
  }

  async close(): Promise<void> {
    if (!this.#open) return;
    this.#shut();
    setImmediate(() => this.#peer.#shut(new TransportError('CLOSED', `${this.#peer.description}: the other end closed`)));
  }

  /** The device disappears: both ends close with an error (after bytes already in flight). */
  unplug(): void {
    const err = (t: MemoryTransport) => new TransportError('IO', `${t.description}: unplugged`);
    setImmediate(() => {
      this.#shut(err(this));
      this.#peer.#shut(err(this.#peer));
    });
  }

  #receive(chunk: Uint8Array): void {
    if (this.#open) this.#events.data(chunk);
  }

  #shut(err?: Error): void {
    if (!this.#open) return;
    this.#open = false;
    this.#events.closed(err);
  }
}
