/** A fake device with node-hid's HIDAsync interface (write, on('data'|'error'), close). */
import { EventEmitter } from 'node:events';
import type { HidDevice } from '../../../../drivers/transport/hid.js';

export class FakeHidDevice extends EventEmitter implements HidDevice {
  /** Every report written, as hidapi got it (report id byte first). */
  readonly written: Buffer[] = [];
  closed = false;
  /** Called with each written report (e.g. to wire two devices together). */
  onWrite?: (report: Buffer) => void;

  async write(values: number[] | Buffer): Promise<number> {
    if (this.closed) throw new Error('device closed');
    const r = Buffer.from(values);
    this.written.push(r);
    this.onWrite?.(r);
    return r.length;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** The device sends an input report. */
  report(bytes: number[] | Buffer): void {
    this.emit('data', Buffer.from(bytes));
  }
}

/**
 * Two HID endpoints wired back to back: a report written on one arrives as an
 * input report on the other (without the report id byte when it is 0, with
 * it otherwise, as hidraw delivers them).
 */
export function hidWire(reportId = 0): [FakeHidDevice, FakeHidDevice] {
  const a = new FakeHidDevice();
  const b = new FakeHidDevice();
  const forward = (to: FakeHidDevice) => (r: Buffer) => {
    const input = Buffer.from(reportId === 0 ? r.subarray(1) : r);
    setImmediate(() => to.report(input));
  };
  a.onWrite = forward(b);
  b.onWrite = forward(a);
  return [a, b];
}
