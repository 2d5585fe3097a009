import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/common/logger.js';
import { ProtocolDriver } from '../../../drivers/qkd/driver.js';
import { SerialTransport } from '../../../drivers/transport/serial.js';
import type { KeyBlock } from '../../../drivers/types.js';
import { ptyPair, type PtyPair } from '../transport/helpers/socat.js';
import { fastClock } from './helpers/clocks.js';
import { FakeModule, material } from './helpers/fake-module.js';

let pty: (PtyPair & { dir: string }) | undefined;
let driver: ProtocolDriver | undefined;
afterEach(async () => {
  await driver?.close();
  await pty?.dispose();
});

describe('ProtocolDriver over a real socat pty pair', () => {
  it('streams blocks through the serial driver, survives an unplug (socat killed) and resumes without loss', async () => {
    pty = await ptyPair();
    const module = new FakeModule();
    module.blockBits = 8192;
    const serial = (path: string) => new SerialTransport({ path, baudRate: 921_600, modemLines: false });
    await module.attach(serial(pty.b));
    driver = new ProtocolDriver({
      transport: () => serial(pty!.a),
      clock: fastClock(10),
      logger: silentLogger(),
      hostId: 'KME_A',
      window: 32,
      backoff: { initialMs: 200, maxMs: 2000, jitter: 0.2, maxAttempts: 20 },
    });
    await expect(driver.open()).resolves.toMatchObject({ moduleId: 'QKD-0001' });
    const got: KeyBlock[] = [];
    let unplugged = false;
    for await (const batch of driver.blocks(0)) {
      got.push(...batch);
      driver.ack(batch.at(-1)!.blockId);
      if (!unplugged && got.length >= 100) {
        unplugged = true;
        const dir = pty.dir;
        await pty.kill();
        setTimeout(async () => {
          pty = await ptyPair(dir); // plugged back in at the same place
          await module.attach(serial(pty.b));
        }, 100);
      }
      if (got.length >= 300) break;
    }
    expect(got.slice(0, 300).map((b) => b.blockId)).toEqual(Array.from({ length: 300 }, (_, i) => i));
    for (const b of got) expect(b.material.equals(material(b.blockId, 1024))).toBe(true);
    const c = driver.counters!();
    expect(c.reconnects).toBeGreaterThanOrEqual(1);
    expect(c.blocksIn).toBeGreaterThanOrEqual(300);
    expect(driver.state).toBe('ready');
  });
});
