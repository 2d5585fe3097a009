/**
 * A serial line transport (serialport). The binding is injectable: tests pass
 * serialport's MockBinding; production uses the platform binding.
 * An unplugged adapter (or a killed socat pty) closes the port with an error.
 */
import { SerialPortStream, type OpenOptions } from '@serialport/stream';
import { SerialPort } from 'serialport';
import { TransportError, TransportEvents, throwIfAborted, type ByteTransport } from './types.js';

/** A serialport binding (the platform's, or MockBinding in tests). */
export type SerialBinding = OpenOptions['binding'];

export type FlowControl = 'none' | 'rtscts' | 'xonxoff';

export interface SerialTransportOptions {
  path: string;
  baudRate: number;
  /** Default 'none'. */
  flowControl?: FlowControl;
  dataBits?: 5 | 6 | 7 | 8;
  stopBits?: 1 | 1.5 | 2;
  parity?: 'none' | 'even' | 'odd' | 'mark' | 'space';
  /** Exclusive access (default true). */
  lock?: boolean;
  /** Whether DTR/RTS exist on this line (false on a pty). Default true. */
  modemLines?: boolean;
  /** Default: the platform binding (serialport's autodetected one). */
  binding?: SerialBinding;
}

export class SerialTransport implements ByteTransport {
  readonly caps: { modemLines: boolean };
  readonly description: string;
  readonly #events = new TransportEvents();
  readonly #o: SerialTransportOptions;
  #port: SerialPortStream | undefined;
  #closing = false;

  constructor(opts: SerialTransportOptions) {
    this.#o = opts;
    this.caps = { modemLines: opts.modemLines ?? true };
    this.description = `serial ${opts.path}`;
  }

  async open(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal, this.description);
    if (this.#port) return;
    const o = this.#o;
    const flow = o.flowControl ?? 'none';
    const port = new SerialPortStream({
      binding: o.binding ?? SerialPort.binding,
      path: o.path,
      baudRate: o.baudRate,
      dataBits: o.dataBits ?? 8,
      stopBits: o.stopBits ?? 1,
      parity: o.parity ?? 'none',
      rtscts: flow === 'rtscts',
      xon: flow === 'xonxoff',
      xoff: flow === 'xonxoff',
      lock: o.lock ?? true,
      autoOpen: false,
    });
    await new Promise<void>((resolve, reject) => {
      port.open((err) => (err ? reject(new TransportError('OPEN_FAILED', `${this.description}: ${err.message}`, { cause: err })) : resolve()));
    });
    if (signal?.aborted) {
      await new Promise<void>((r) => port.close(() => r()));
      throwIfAborted(signal, this.description);
    }
    this.#port = port;
    this.#closing = false;
    this.#events.opened();
    let lastErr: Error | undefined;
    port.on('data', (chunk: Buffer) => this.#events.data(chunk));
    port.on('error', (err: Error) => (lastErr = err));
    port.once('close', (err?: Error | null) => {
      this.#port = undefined;
      const cause = err ?? lastErr;
      this.#events.closed(
        this.#closing && !cause ? undefined : new TransportError('IO', `${this.description}: ${cause?.message ?? 'closed'}`, { cause }),
      );
    });
  }

  async write(data: Uint8Array): Promise<void> {
    const port = this.#port;
    if (!port || !port.isOpen) throw new TransportError('NOT_OPEN', `${this.description}: not open`);
    await new Promise<void>((resolve, reject) =>
      port.write(Buffer.from(data.buffer, data.byteOffset, data.byteLength), (err) =>
        err ? reject(new TransportError('IO', `${this.description}: ${err.message}`, { cause: err })) : resolve(),
      ),
    );
  }

  onData(cb: (chunk: Uint8Array) => void): () => void {
    return this.#events.onData(cb);
  }

  onClose(cb: (err?: Error) => void): () => void {
    return this.#events.onClose(cb);
  }

  async setLines(l: { dtr?: boolean; rts?: boolean }): Promise<void> {
    const port = this.#port;
    if (!port) throw new TransportError('NOT_OPEN', `${this.description}: not open`);
    if (!this.caps.modemLines) return;
    await new Promise<void>((resolve, reject) =>
      port.set(l, (err) => (err ? reject(new TransportError('IO', `${this.description}: ${err.message}`, { cause: err })) : resolve())),
    );
  }

  async close(): Promise<void> {
    const port = this.#port;
    if (!port) return;
    this.#closing = true;
    await new Promise<void>((resolve) => {
      port.once('close', () => resolve());
      port.close((err) => {
        if (err) resolve(); // already closing or closed
      });
    });
  }
}
