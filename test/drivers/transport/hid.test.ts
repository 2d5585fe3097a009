import { describe, expect, it } from 'vitest';
import { HidTransport } from '../../../drivers/transport/hid.js';
import { FrameDecoder, encodeFrame } from '../../../drivers/qkd/codec.js';
import type { Frame } from '../../../drivers/qkd/messages.js';
import { until } from '../qkd/helpers/clocks.js';
import { FakeHidDevice, hidWire } from './helpers/fake-hid.js';

describe('HidTransport', () => {
  it('fragments writes into [n][bytes][padding] reports behind report id 0', async () => {
    const dev = new FakeHidDevice();
    const t = new HidTransport({ device: dev });
    expect(t.description).toBe('hid injected');
    await t.open();
    const data = Buffer.alloc(140);
    for (let i = 0; i < data.length; i++) data[i] = i + 1;
    await t.write(data);
    expect(dev.written.map((r) => r.length)).toEqual([65, 65, 65]);
    expect(dev.written.map((r) => [r[0], r[1]])).toEqual([[0, 63], [0, 63], [0, 14]]);
    expect(Buffer.concat(dev.written.map((r) => r.subarray(2, 2 + r[1]!))).equals(data)).toBe(true);
    expect(dev.written[2]!.subarray(16).every((b) => b === 0)).toBe(true); // padding
    expect(t.stats.reportsOut).toBe(3);
  });

  it('reassembles the stream from reports; drops bad ones; n = 0 is a keep-alive', async () => {
    const dev = new FakeHidDevice();
    const t = new HidTransport({ device: dev, reportSize: 8 });
    const got: number[] = [];
    t.onData((c) => got.push(...c));
    await t.open();
    dev.report([3, 1, 2, 3, 0, 0, 0, 0]);
    dev.report([0, 0, 0, 0, 0, 0, 0, 0]);
    dev.report([8, 9, 9, 9, 9, 9, 9, 9]); // n beyond reportSize - 1
    dev.report([5, 4, 5]); // n beyond what arrived
    dev.report([7, 4, 5, 6, 7, 8, 9, 10]);
    expect(got).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(t.stats).toMatchObject({ reportsIn: 5, badReports: 2 });
  });

  it('numbered reports: writes carry the id, reads must carry it too', async () => {
    const dev = new FakeHidDevice();
    const t = new HidTransport({ device: dev, reportId: 5, reportSize: 16 });
    const got: number[] = [];
    t.onData((c) => got.push(...c));
    await t.open();
    await t.write(Uint8Array.of(1, 2));
    expect([...dev.written[0]!.subarray(0, 4)]).toEqual([5, 2, 1, 2]);
    expect(dev.written[0]!.length).toBe(17);
    dev.report([5, 2, 0xaa, 0xbb]);
    dev.report([6, 2, 0xcc, 0xdd]); // another report id
    expect(got).toEqual([0xaa, 0xbb]);
    expect(t.stats.badReports).toBe(1);
  });

  it('a device error (unplug) fires onClose once with it and closes the device; close() is idempotent', async () => {
    const dev = new FakeHidDevice();
    const t = new HidTransport({ device: async () => dev });
    const closes: Array<Error | undefined> = [];
    t.onClose((e) => closes.push(e));
    await t.open();
    dev.emit('error', new Error('could not read from HID device'));
    await until(() => closes.length === 1);
    expect(closes[0]).toMatchObject({ code: 'IO', message: expect.stringContaining('could not read') });
    expect(dev.closed).toBe(true);
    dev.emit('error', new Error('late')); // must not throw
    await t.close();
    expect(closes).toHaveLength(1);
    await expect(t.write(Uint8Array.of(1))).rejects.toMatchObject({ code: 'NOT_OPEN' });
    dev.closed = false;
    await t.open(); // a factory device can be opened again
    await t.close();
    expect(closes).toEqual([closes[0], undefined]);
  });

  it('carries protocol frames intact across report boundaries, both ways, with concurrent writes kept in order', async () => {
    const [da, db] = hidWire();
    const a = new HidTransport({ device: da });
    const b = new HidTransport({ device: db });
    await a.open();
    await b.open();
    const frames: Frame[] = [];
    const dec = new FrameDecoder((f) => frames.push(f));
    b.onData((c) => dec.push(c));
    const sent: Frame[] = Array.from({ length: 20 }, (_, i) => ({
      seq: i,
      message: { type: 'key_block', blockId: i, bits: 8 * (1 + i * 37), material: Buffer.alloc(1 + i * 37, i) },
    }));
    await Promise.all(sent.map((f) => a.write(encodeFrame(f.seq, f.message))));
    await until(() => frames.length === sent.length);
    expect(frames).toEqual(sent);
  });

  it('without an injected device it needs a path or vendor/product id', async () => {
    expect(new HidTransport({ vendorId: 0x1209, productId: 0x0001 }).description).toBe('hid 1209:0001');
    await expect(new HidTransport({}).open()).rejects.toMatchObject({ code: 'OPEN_FAILED' });
    expect(() => new HidTransport({ reportSize: 1 })).toThrow(RangeError);
  });
});
