import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../../src/common/logger.js';
import { ProtocolDriver, type ProtocolDriverOptions } from '../../../drivers/qkd/driver.js';
import { DriverError } from '../../../drivers/qkd/errors.js';
import type { DriverState, KeyBlock, QkdAlarm } from '../../../drivers/types.js';
import { fastClock, until } from './helpers/clocks.js';
import { FakeModule, material } from './helpers/fake-module.js';

const drivers: ProtocolDriver[] = [];
afterEach(async () => {
  await Promise.all(drivers.splice(0).map((d) => d.close()));
});

/** A driver on a fake module, on a clock 20x real time (silence 5 s -> 250 ms real). */
function setup(opts: Partial<ProtocolDriverOptions> & { maxChunk?: number } = {}) {
  const module = new FakeModule();
  const clock = fastClock(20);
  const driver = new ProtocolDriver({
    transport: () => module.connect({ maxChunk: opts.maxChunk }),
    clock,
    logger: silentLogger(),
    hostId: 'KME_A',
    window: 8,
    random: () => 0.5,
    ...opts,
  });
  drivers.push(driver);
  const states: DriverState[] = [];
  driver.onStateChange((s) => states.push(s));
  return { module, driver, clock, states };
}

/** Pulls batches until `n` blocks arrived (or stops when `stopAfter` batches were taken). */
async function take(driver: ProtocolDriver, fromId: number, n: number, each?: (b: KeyBlock[]) => void): Promise<KeyBlock[]> {
  const out: KeyBlock[] = [];
  for await (const batch of driver.blocks(fromId)) {
    each?.(batch);
    out.push(...batch);
    if (out.length >= n) break;
  }
  return out;
}

const ids = (bs: KeyBlock[]) => bs.map((b) => b.blockId);
const range = (a: number, n: number) => Array.from({ length: n }, (_, i) => a + i);

describe('ProtocolDriver: session', () => {
  it('opens with HELLO -> IDENTIFY and reports the module', async () => {
    const { module, driver, states } = setup();
    await expect(driver.open()).resolves.toEqual({ moduleId: 'QKD-0001', linkId: 'link-ab', firmware: 'fake-1.0' });
    expect(driver.state).toBe('ready');
    expect(states).toEqual(['opening', 'ready']);
    expect(module.received[0]).toEqual({ type: 'hello', hostVersion: 1, hostId: 'KME_A' });
    expect(driver.identity).toMatchObject({ peerModuleId: 'QKD-0002', firstBlockId: 0 });
    expect(await driver.open()).toMatchObject({ moduleId: 'QKD-0001' }); // idempotent
  });

  it('fails clearly on a protocol version mismatch, either way the module says it', async () => {
    const a = setup();
    a.module.protocolVersion = 2;
    const err = await a.driver.open().catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DriverError);
    expect(err).toMatchObject({ code: 'QKD_VERSION', transient: false, message: expect.stringMatching(/version 2.*speaks 1/) });
    expect(a.driver.state).toBe('failed');

    const b = setup();
    b.module.refuseVersion = true;
    await expect(b.driver.open()).rejects.toMatchObject({ code: 'QKD_VERSION', message: expect.stringContaining('v1 not supported') });
  });

  it('times out a module that never answers HELLO', async () => {
    const { module, driver } = setup();
    module.mute = true;
    await expect(driver.open()).rejects.toMatchObject({ code: 'QKD_TIMEOUT', message: expect.stringContaining('HELLO') });
    expect(driver.state).toBe('degraded'); // and it keeps trying in the background
  });

  it('a module missing at open() is picked up later: open() rejects, the driver keeps trying, then streams', async () => {
    const { module, driver, states } = setup({ backoff: { initialMs: 200, maxMs: 400, jitter: 0, maxAttempts: 100 } });
    module.unplugged = true;
    await expect(driver.open()).rejects.toMatchObject({ code: 'QKD_LINK_DOWN', transient: true });
    expect(driver.state).toBe('degraded');
    const iteration = take(driver, 0, 3); // may start before the module is there
    setTimeout(() => (module.unplugged = false), 60);
    expect(ids(await iteration)).toEqual([0, 1, 2]);
    expect(states).toEqual(['opening', 'degraded', 'ready']);
    await expect(driver.open()).resolves.toMatchObject({ moduleId: 'QKD-0001' });
  });

  it('blocks() on a driver that is not open fails instead of ending quietly', async () => {
    const { driver } = setup();
    await expect(take(driver, 0, 1)).rejects.toMatchObject({ code: 'QKD_CLOSED' });
  });

  it('polls link status, degrades while the link is down, and counts', async () => {
    const { module, driver, states } = setup();
    await driver.open();
    await expect(driver.linkStatus()).resolves.toEqual({ up: true, qber: 0.021, keyRateBps: 123_456 });
    module.up = false;
    await until(() => driver.state === 'degraded', 2000, 'degraded');
    module.up = true;
    await until(() => driver.state === 'ready', 2000, 'ready again');
    expect(states).toEqual(['opening', 'ready', 'degraded', 'ready']);
    const c = driver.counters!();
    expect(c).toMatchObject({ qberPpm: 21_000, keyRateBps: 123_456, crcErrors: 0, reconnects: 0 });
    expect(c.framesIn).toBeGreaterThanOrEqual(3);
    expect(c.framesOut).toBeGreaterThanOrEqual(3);
  });

  it('close() is idempotent and ends a running iteration', async () => {
    const { module, driver } = setup();
    await driver.open();
    module.producedUpTo = 1;
    let n = 0;
    const it = take(driver, 0, 100, (b) => (n += b.length));
    await until(() => n === 2);
    await driver.close();
    await driver.close();
    expect(ids(await it)).toEqual([0, 1]);
    expect(driver.state).toBe('closed');
  });

  it('refuses a second concurrent iteration', async () => {
    const { driver } = setup();
    await driver.open();
    const first = driver.blocks(0)[Symbol.asyncIterator]();
    await first.next();
    await expect(driver.blocks(0)[Symbol.asyncIterator]().next()).rejects.toMatchObject({ code: 'QKD_BUSY' });
    await first.return?.();
  });
});

describe('ProtocolDriver: flow control', () => {
  it('never lets credit run more than `window` ahead of what the consumer took, and stops when it stops pulling', async () => {
    const { module, driver } = setup({ window: 8 });
    await driver.open();
    let handed = -1;
    const credits: number[] = [];
    const got = await take(driver, 0, 20, (b) => {
      handed = b.at(-1)!.blockId;
      credits.push(module.maxCredit);
    });
    expect(ids(got)).toEqual(range(0, got.length));
    // The consumer stopped: wait a few poll periods, then look at what the module was allowed.
    await new Promise((r) => setTimeout(r, 150));
    expect(module.maxCredit).toBeLessThanOrEqual(handed + 8);
    expect(Math.max(...module.sentBlocks)).toBe(module.maxCredit);
    for (const c of credits) expect(c).toBeLessThanOrEqual(handed + 8);
    const sentBefore = module.sentBlocks.length;
    await new Promise((r) => setTimeout(r, 150));
    expect(module.sentBlocks.length).toBe(sentBefore); // no new credit, no new blocks
    // Pulling again resumes exactly after the last block handed out.
    const more = await take(driver, handed + 1, 5);
    expect(ids(more).slice(0, 5)).toEqual(range(handed + 1, 5));
  });

  it('delivers material intact, in order, across arbitrary read splits', async () => {
    const { driver } = setup({ maxChunk: 7, window: 16 });
    await driver.open();
    const got = await take(driver, 0, 40);
    expect(ids(got).slice(0, 40)).toEqual(range(0, 40));
    for (const b of got) expect(b.material.equals(material(b.blockId, 32))).toBe(true);
    expect(got[0]).toMatchObject({ bits: 256 });
  });

  it('a gap triggers RESEND from the first missing id; duplicates are dropped', async () => {
    const { module, driver } = setup({ window: 16 });
    module.dropBlocks.add(3);
    module.duplicateBlocks.add(20);
    await driver.open();
    const got = await take(driver, 0, 30);
    expect(ids(got).slice(0, 30)).toEqual(range(0, 30));
    expect(module.received).toContainEqual({ type: 'resend', fromBlockId: 3 });
    expect(driver.counters!()).toMatchObject({ resends: 1, duplicates: expect.any(Number) });
    expect(driver.counters!().duplicates).toBeGreaterThanOrEqual(1);
  });

  it('a corrupted frame is dropped, the decoder resyncs, and the block comes again', async () => {
    const { module, driver } = setup({ window: 16 });
    module.corruptBlocks.add(5);
    await driver.open();
    const got = await take(driver, 0, 20);
    expect(ids(got).slice(0, 20)).toEqual(range(0, 20));
    expect(driver.counters!()).toMatchObject({ crcErrors: 1, resyncs: 1 });
    expect(driver.counters!().resends).toBeGreaterThanOrEqual(1);
  });

  it('a lost last block (no later block to reveal it) is asked again after a status poll', async () => {
    const { module, driver } = setup({ window: 64 });
    module.producedUpTo = 9;
    module.dropBlocks.add(9);
    await driver.open();
    const got = await take(driver, 0, 10);
    expect(ids(got)).toEqual(range(0, 10));
    expect(module.received).toContainEqual({ type: 'resend', fromBlockId: 9 });
  });

  it('acknowledges to the module, cumulatively', async () => {
    const { module, driver } = setup();
    await driver.open();
    await take(driver, 0, 4);
    driver.ack(3);
    driver.ack(2);
    await until(() => module.acked === 3);
    expect(module.count('ack')).toBe(1);
  });
});

describe('ProtocolDriver: faults', () => {
  async function stallDuring(driver: ProtocolDriver, module: FakeModule, realMs: number): Promise<KeyBlock[]> {
    const got: KeyBlock[] = [];
    let stalled = false;
    for await (const batch of driver.blocks(0)) {
      got.push(...batch);
      if (!stalled && got.length >= 5) {
        stalled = true;
        module.stalled = true;
        setTimeout(() => (module.stalled = false), realMs);
      }
      if (got.length >= 30) break;
    }
    return got;
  }

  it('a module stalled for a while (6 s): timeout, degraded, then the nudge and the status poll resume it', async () => {
    const { module, driver, states } = setup({ window: 8 });
    await driver.open();
    const got = await stallDuring(driver, module, 300);
    expect(ids(got).slice(0, 30)).toEqual(range(0, 30));
    const c = driver.counters!();
    expect(c.timeouts).toBeGreaterThanOrEqual(1);
    expect(c.reconnects).toBe(0);
    expect(states).toContain('degraded');
    expect(driver.state).toBe('ready');
  });

  it('a module stalled for long (14 s): timeout, nudge, then reconnect, and the stream carries on', async () => {
    const { module, driver, states } = setup({ window: 8 });
    await driver.open();
    const got = await stallDuring(driver, module, 700);
    expect(ids(got).slice(0, 30)).toEqual(range(0, 30));
    const c = driver.counters!();
    expect(c.timeouts).toBeGreaterThanOrEqual(2);
    expect(c.reconnects).toBeGreaterThanOrEqual(1);
    expect(module.count('hello')).toBeGreaterThanOrEqual(2);
    expect(states).toContain('degraded');
    expect(driver.state).toBe('ready');
  });

  it('transport closes: reconnects with capped exponential backoff, resumes after the last block, acks survive', async () => {
    const { module, driver, clock, states } = setup({
      window: 8,
      backoff: { initialMs: 400, maxMs: 1600, jitter: 0.5, maxAttempts: 8 },
      random: () => 0.75, // +25 % jitter
    });
    await driver.open();
    const got: KeyBlock[] = [];
    let unplugged = false;
    for await (const batch of driver.blocks(0)) {
      got.push(...batch);
      if (!unplugged && got.length >= 10) {
        unplugged = true;
        driver.ack(5);
        await until(() => module.acked === 5);
        module.unplug();
        setTimeout(() => (module.unplugged = false), 120); // back after ~2.4 s of module time
      }
      if (got.length >= 40) break;
    }
    expect(ids(got).slice(0, 40)).toEqual(range(0, 40)); // no loss, no duplicate
    const delays = clock.sleeps.filter((ms) => ms === 500 || ms === 1000 || ms === 1600);
    expect(delays.slice(0, 3)).toEqual([500, 1000, 1600]);
    const c = driver.counters!();
    expect(c.reconnects).toBeGreaterThanOrEqual(2);
    expect(c.reconnectFailures).toBe(c.reconnects! - 1);
    expect(module.count('hello')).toBe(2);
    // The new session resumed after the last block received, not from the module's first unacked (6).
    const lastHello = module.received.map((m) => m.type).lastIndexOf('hello');
    const resend = module.received.slice(lastHello).find((m) => m.type === 'resend');
    expect(resend).toEqual({ type: 'resend', fromBlockId: expect.any(Number) });
    expect((resend as { fromBlockId: number }).fromBlockId).toBeGreaterThan(6);
    expect(states.slice(0, 4)).toEqual(['opening', 'ready', 'degraded', 'ready']);
  });

  it('gives up after maxAttempts and fails the iteration', async () => {
    const { module, driver } = setup({ backoff: { initialMs: 20, maxMs: 40, jitter: 0, maxAttempts: 3 } });
    await driver.open();
    const iter = take(driver, 0, 1_000_000);
    await until(() => module.sentBlocks.length > 0);
    module.unplug();
    await expect(iter).rejects.toMatchObject({ code: 'QKD_FAILED', transient: false });
    expect(driver.state).toBe('failed');
    expect(driver.counters!()).toMatchObject({ reconnects: 3, reconnectFailures: 3 });
  });

  it('a module that lost the session (ERROR BAD_STATE) gets a new HELLO', async () => {
    const { module, driver } = setup({ window: 4 });
    await driver.open();
    const got: KeyBlock[] = [];
    for await (const batch of driver.blocks(0)) {
      got.push(...batch);
      if (got.length === 4) module.forgetSession(); // next CREDIT is refused
      if (got.length >= 16) break;
    }
    expect(ids(got).slice(0, 16)).toEqual(range(0, 16));
    expect(module.count('hello')).toBe(2);
    expect(driver.counters!().moduleErrors).toBeGreaterThanOrEqual(1);
  });

  it('alarms reach the listener once, are acknowledged, and their blocks are never handed out', async () => {
    const { module, driver } = setup({ window: 16 });
    const alarms: QkdAlarm[] = [];
    await driver.open();
    module.producedUpTo = 4;
    const first = await take(driver, 0, 5);
    expect(ids(first)).toEqual(range(0, 5));
    driver.onAlarm((a) => {
      alarms.push(a);
    });
    const alarm = { type: 'alarm' as const, kind: 2, firstBlockId: 3, lastBlockId: 7, qberPpm: 110_000 };
    module.send(alarm);
    module.send(alarm); // a repeat
    await until(() => module.count('alarm_ack') >= 1);
    expect(alarms).toEqual([{ kind: 'eavesdropping', firstBlockId: 3, lastBlockId: 7, qber: 0.11 }]);
    module.produce(12);
    const rest = await take(driver, 5, 5);
    expect(ids(rest)).toEqual([8, 9, 10, 11, 12]);
    expect(driver.counters!()).toMatchObject({ alarms: 1, discardedBlocks: 3 });
  });

  it('an alarm that arrives before anyone listens is kept for the first listener', async () => {
    const { module, driver } = setup();
    await driver.open();
    module.send({ type: 'alarm', kind: 9, firstBlockId: 0, lastBlockId: 0, qberPpm: 0 });
    await until(() => driver.counters!().alarms === 1);
    const seen: QkdAlarm[] = [];
    driver.onAlarm((a) => {
      seen.push(a);
    });
    expect(seen).toEqual([{ kind: 'unknown', firstBlockId: 0, lastBlockId: 0, qber: 0 }]);
    await until(() => module.count('alarm_ack') === 1);
  });

  it('an alarm is acknowledged only once the listener has handled it; a failure leaves it to the next repeat', async () => {
    const { module, driver } = setup();
    await driver.open();
    let fail = true;
    let handled = 0;
    driver.onAlarm(async () => {
      await new Promise((r) => setTimeout(r, 5));
      if (fail) throw new Error('store unavailable');
      handled++;
    });
    const alarm = { type: 'alarm' as const, kind: 1, firstBlockId: 2, lastBlockId: 3, qberPpm: 90_000 };
    module.send(alarm);
    await new Promise((r) => setTimeout(r, 100));
    expect(module.count('alarm_ack')).toBe(0);
    fail = false;
    module.send(alarm); // the module repeats an unacknowledged alarm
    await until(() => module.count('alarm_ack') === 1);
    expect(handled).toBe(1);
  });
});
