import { SerialPortMock } from 'serialport';
import { afterEach, describe, expect, it } from 'vitest';
import { SerialTransport, type SerialBinding } from '../../../drivers/transport/serial.js';
import { until } from '../qkd/helpers/clocks.js';
import { ptyPair, type PtyPair } from './helpers/socat.js';

const mock = SerialPortMock.binding;

/** MockBinding, recording the options each open() got and the port binding it made. */
function recordingBinding() {
  const opened: Array<{ options: Record<string, unknown>; port: Awaited<ReturnType<typeof mock.open>> }> = [];
  const binding: SerialBinding = {
    list: () => mock.list(),
    open: async (options) => {
      const port = await mock.open(options);
      opened.push({ options: { ...options }, port });
      return port;
    },
  };
  return { binding, opened };
}

describe('SerialTransport with serialport MockBinding', () => {
  afterEach(() => mock.reset());

  it('passes path, baud and flow control, writes through, reads in', async () => {
    mock.createPort('/dev/qkd0', { record: true });
    const { binding, opened } = recordingBinding();
    const t = new SerialTransport({ path: '/dev/qkd0', baudRate: 921_600, flowControl: 'rtscts', binding });
    expect(t.caps.modemLines).toBe(true);
    await t.open();
    expect(opened[0]!.options).toMatchObject({ path: '/dev/qkd0', baudRate: 921_600, rtscts: true, xon: false, xoff: false, dataBits: 8, stopBits: 1, parity: 'none' });
    await t.write(Uint8Array.of(0x51, 0x4b, 1));
    expect([...opened[0]!.port.recording]).toEqual([0x51, 0x4b, 1]);
    const got: number[] = [];
    t.onData((c) => got.push(...c));
    opened[0]!.port.emitData(Buffer.from([9, 8, 7]));
    await until(() => got.length === 3);
    expect(got).toEqual([9, 8, 7]);
    await t.setLines({ dtr: false, rts: true });
    const closes: Array<Error | undefined> = [];
    t.onClose((e) => closes.push(e));
    await t.close();
    await t.close();
    expect(closes).toEqual([undefined]);
  });

  it('xon/xoff flow control; a missing port rejects with OPEN_FAILED', async () => {
    mock.createPort('/dev/qkd1');
    const { binding, opened } = recordingBinding();
    const t = new SerialTransport({ path: '/dev/qkd1', baudRate: 115_200, flowControl: 'xonxoff', binding });
    await t.open();
    expect(opened[0]!.options).toMatchObject({ rtscts: false, xon: true, xoff: true });
    await t.close();
    await expect(new SerialTransport({ path: '/dev/none', baudRate: 9600, binding }).open()).rejects.toMatchObject({ code: 'OPEN_FAILED' });
  });
});

describe('SerialTransport over a real socat pty pair', () => {
  let pty: PtyPair | undefined;
  afterEach(async () => {
    await pty?.dispose();
    pty = undefined;
  });

  it('carries bytes both ways in order across partial reads; killing socat (unplug) fires onClose once on each end', async () => {
    pty = await ptyPair();
    const a = new SerialTransport({ path: pty.a, baudRate: 115_200, modemLines: false });
    const b = new SerialTransport({ path: pty.b, baudRate: 115_200, modemLines: false });
    await a.open();
    await b.open();
    const closes: string[] = [];
    a.onClose((e) => closes.push(`a:${e ? 'error' : 'ok'}`));
    b.onClose((e) => closes.push(`b:${e ? 'error' : 'ok'}`));
    const atB: Buffer[] = [];
    const atA: Buffer[] = [];
    b.onData((c) => atB.push(Buffer.from(c)));
    a.onData((c) => atA.push(Buffer.from(c)));
    const big = Buffer.alloc(150_000);
    for (let i = 0; i < big.length; i++) big[i] = (i * 13) & 0xff;
    await a.write(big);
    await b.write(Buffer.from('pong'));
    await until(() => Buffer.concat(atB).length >= big.length, 5000, 'all bytes at b');
    expect(Buffer.concat(atB).equals(big)).toBe(true);
    await until(() => Buffer.concat(atA).toString() === 'pong');
    await a.setLines({ dtr: true }); // no modem lines on a pty: a no-op, not an error
    await pty.kill();
    await until(() => closes.length === 2, 3000, 'both ends closed');
    expect(closes.sort()).toEqual(['a:error', 'b:error']);
    await expect(a.write(Buffer.from('x'))).rejects.toMatchObject({ code: 'NOT_OPEN' });
    await a.close();
    expect(closes).toHaveLength(2);
  });
});
