/**
 * A USB HID transport. HID moves fixed-size reports; the protocol byte stream
 * rides in them as [n u8][n bytes][zero padding] (PROTOCOL.md section 10).
 *
 * The device object has node-hid's HIDAsync interface. Inject it (or a
 * function opening one) through the constructor; otherwise node-hid is
 * loaded lazily and the device opened by path or vendorId/productId.
 */
import { TransportError, TransportEvents, throwIfAborted, type ByteTransport } from './types.js';

/** The part of node-hid's HIDAsync this transport uses. */
export interface HidDevice {
  write(values: number[] | Buffer): Promise<number>;
  on(event: 'data', cb: (data: Buffer) => void): unknown;
  on(event: 'error', cb: (err: Error) => void): unknown;
  removeAllListeners(event?: string): unknown;
  close(): Promise<void>;
}

export interface HidTransportOptions {
  /** An opened device, or a function that opens one (called at each open()). */
  device?: HidDevice | (() => Promise<HidDevice>);
  /** Otherwise, opened with node-hid by path, or by vendorId + productId. */
  path?: string;
  vendorId?: number;
  productId?: number;
  /** Report size in bytes, without the report id byte (default 64). */
  reportSize?: number;
  /** 0 for a device without numbered reports (default), else 1-255. */
  reportId?: number;
}

export interface HidStats {
  reportsIn: number;
  reportsOut: number;
  /** Reports dropped: wrong report id, or a length byte beyond the report. */
  badReports: number;
}

export class HidTransport implements ByteTransport {
  readonly caps = { modemLines: false };
  readonly description: string;
  readonly stats: HidStats = { reportsIn: 0, reportsOut: 0, badReports: 0 };
  readonly #events = new TransportEvents();
  readonly #o: HidTransportOptions;
  readonly #size: number;
  readonly #reportId: number;
  #dev: HidDevice | undefined;
  #writing: Promise<void> = Promise.resolve();

  constructor(opts: HidTransportOptions) {
    this.#o = opts;
    this.#size = opts.reportSize ?? 64;
    this.#reportId = opts.reportId ?? 0;
    if (!Number.isInteger(this.#size) || this.#size < 2 || this.#size > 256) throw new RangeError('reportSize must be in [2, 256]');
    if (!Number.isInteger(this.#reportId) || this.#reportId < 0 || this.#reportId > 255) throw new RangeError('reportId must be a u8');
    const where = opts.path ?? (opts.vendorId !== undefined ? `${hex4(opts.vendorId)}:${hex4(opts.productId ?? 0)}` : 'injected');
    this.description = `hid ${where}`;
  }

  async open(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal, this.description);
    if (this.#dev) return;
    let dev: HidDevice;
    try {
      dev = await this.#openDevice();
    } catch (err) {
      throw new TransportError('OPEN_FAILED', `${this.description}: ${(err as Error).message}`, { cause: err });
    }
    if (signal?.aborted) {
      await dev.close().catch(() => {});
      throwIfAborted(signal, this.description);
    }
    this.#dev = dev;
    this.#events.opened();
    dev.on('data', (report: Buffer) => this.#onReport(report));
    // node-hid reports a vanished device as a read error: that is an unplug.
    dev.on('error', (err: Error) => void this.#shut(new TransportError('IO', `${this.description}: ${err.message}`, { cause: err })));
  }

  async write(data: Uint8Array): Promise<void> {
    const dev = this.#dev;
    if (!dev) throw new TransportError('NOT_OPEN', `${this.description}: not open`);
    const max = this.#size - 1;
    const reports: Buffer[] = [];
    for (let off = 0; off < data.length; off += max) {
      const n = Math.min(max, data.length - off);
      const r = Buffer.alloc(1 + this.#size); // [report id][n][bytes][padding]
      r[0] = this.#reportId;
      r[1] = n;
      r.set(data.subarray(off, off + n), 2);
      reports.push(r);
    }
    // Writes go out one report at a time, in call order, never interleaved.
    const run = this.#writing.then(async () => {
      for (const r of reports) {
        if (this.#dev !== dev) throw new TransportError('NOT_OPEN', `${this.description}: closed during a write`);
        try {
          await dev.write(r);
        } catch (err) {
          throw new TransportError('IO', `${this.description}: ${(err as Error).message}`, { cause: err });
        } finally {
          r.fill(0);
        }
        this.stats.reportsOut++;
      }
    });
    this.#writing = run.catch(() => {});
    return run;
  }

  onData(cb: (chunk: Uint8Array) => void): () => void {
    return this.#events.onData(cb);
  }

  onClose(cb: (err?: Error) => void): () => void {
    return this.#events.onClose(cb);
  }

  async close(): Promise<void> {
    await this.#shut();
  }

  async #openDevice(): Promise<HidDevice> {
    const d = this.#o.device;
    if (typeof d === 'function') return d();
    if (d) return d;
    const { HIDAsync } = await import('node-hid');
    if (this.#o.path) return HIDAsync.open(this.#o.path);
    if (this.#o.vendorId !== undefined && this.#o.productId !== undefined) return HIDAsync.open(this.#o.vendorId, this.#o.productId);
    throw new Error('no device, path or vendorId/productId given');
  }

  #onReport(report: Buffer): void {
    this.stats.reportsIn++;
    let r = report;
    if (this.#reportId !== 0) {
      if (r[0] !== this.#reportId) {
        this.stats.badReports++;
        return;
      }
      r = r.subarray(1);
    }
    const n = r[0] ?? 0;
    if (n > this.#size - 1 || n > r.length - 1) {
      this.stats.badReports++;
      return;
    }
    if (n > 0) this.#events.data(Buffer.from(r.subarray(1, 1 + n)));
  }

  async #shut(err?: Error): Promise<void> {
    const dev = this.#dev;
    if (!dev) return;
    this.#dev = undefined;
    dev.removeAllListeners('data');
    dev.removeAllListeners('error');
    dev.on('error', () => {}); // a late error after close must not crash the process
    await dev.close().catch(() => {});
    this.#events.closed(err);
  }
}

const hex4 = (n: number) => n.toString(16).padStart(4, '0');
