/**
 * The simulated modules over Unix sockets, spoken to with the real codec from
 * the host side: the protocol, flow control, and what each fault does.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { crc32c } from '../../../drivers/qkd/codec.js';
import { AlarmKind, ErrorCode, FRAME_VERSION, HEADER_BYTES, PROTOCOL_VERSION, SOF } from '../../../drivers/qkd/messages.js';
import { parseSimConfig } from '../../../drivers/sim/config.js';
import { blockMaterial } from '../../../drivers/sim/material.js';
import { Simulator } from '../../../drivers/sim/simulator.js';
import { silentLogger } from '../../../src/common/logger.js';
import { sleep, TestHost } from './host.js';

const seed = Buffer.alloc(32, 0x5a);
let dir: string;
let sim: Simulator;
const hosts: TestHost[] = [];

/** 1024-bit blocks at 256 kbit/s: one every 4 ms. */
async function startSim(over: Record<string, unknown> = {}): Promise<Simulator> {
  const cfg = parseSimConfig(
    {
      link_id: 'L-test',
      seed_file: 'unused',
      rate_bps: 256_000,
      block_bits: 1024,
      epoch_ms: Date.now(),
      buffer_blocks: 64,
      qber: { baseline: 0.02, noise: 0.002 },
      fault_rates: { corrupt: 1, drop: 1 },
      alarm_span_blocks: 3,
      alarm_repeat_ms: 150,
      tick_ms: 2,
      modules: [
        { module_id: 'MOD-A', kme_id: 'KME_A', device: { kind: 'unix', path: 'a.sock' } },
        { module_id: 'MOD-B', kme_id: 'KME_B', device: { kind: 'unix', path: 'b.sock' } },
      ],
      control: { path: 'control.sock' },
      log_level: 'silent',
      ...over,
    },
    dir,
  );
  sim = new Simulator({ config: cfg, seed, logger: silentLogger() });
  await sim.start();
  return sim;
}

async function host(which: 'a' | 'b'): Promise<TestHost> {
  const h = await TestHost.connect(join(dir, `${which}.sock`));
  hosts.push(h);
  return h;
}

/** Connects and opens a session; returns the host and the IDENTIFY. */
async function session(which: 'a' | 'b') {
  const h = await host(which);
  const id = await h.ask({ type: 'hello', hostVersion: PROTOCOL_VERSION, hostId: which === 'a' ? 'KME_A' : 'KME_B' }, 'identify');
  return { h, id };
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'sim-ep-'));
});

afterEach(async () => {
  for (const h of hosts.splice(0)) h.close();
  await sim?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('simulated module endpoint', () => {
  it('answers HELLO with IDENTIFY and STATUS_REQUEST with LINK_STATUS', async () => {
    await startSim();
    const { h, id } = await session('a');
    expect(id).toMatchObject({ protocolVersion: 1, moduleSerial: 'MOD-A', peerModuleId: 'MOD-B', linkId: 'L-test', firmware: 'sim-2' });
    expect(id.firstBlockId).toBe(sim.model.startId);
    const st = await h.ask({ type: 'status_request' }, 'link_status');
    expect(st).toMatchObject({ up: true, keyRateBps: 256_000, bufferCapacity: 64 });
    expect(st.qberPpm).toBeGreaterThanOrEqual(18_000);
    expect(st.qberPpm).toBeLessThanOrEqual(22_000);
    expect(st.bufferFill).toBeGreaterThanOrEqual(0);
  });

  it('refuses a HELLO of an unsupported version', async () => {
    await startSim();
    const h = await host('a');
    const err = await h.ask({ type: 'hello', hostVersion: 0, hostId: 'KME_A' }, 'error');
    expect(err.code).toBe(ErrorCode.UNSUPPORTED_VERSION);
    expect((await h.ask({ type: 'credit', upToBlockId: 5 }, 'error')).code).toBe(ErrorCode.BAD_STATE);
    // A newer host is answered with the version the module speaks.
    expect((await h.ask({ type: 'hello', hostVersion: 7, hostId: 'KME_A' }, 'identify')).protocolVersion).toBe(1);
  });

  it('sends the same blocks under the same ids on both modules, never above the credit', async () => {
    await startSim();
    const [{ h: a, id }, { h: b }] = await Promise.all([session('a'), session('b')]);
    const first = id.firstBlockId;
    a.send({ type: 'credit', upToBlockId: first + 9 });
    b.send({ type: 'credit', upToBlockId: first + 9 });
    await a.until(() => a.blockIds().length >= 10, 2000, 'ten blocks on A');
    await b.until(() => b.blockIds().length >= 10, 2000, 'ten blocks on B');
    await sleep(100);
    const want = Array.from({ length: 10 }, (_, i) => first + i);
    expect(a.blockIds()).toEqual(want);
    expect(b.blockIds()).toEqual(want);
    const ab = a.all('key_block');
    const bb = b.all('key_block');
    for (let i = 0; i < 10; i++) {
      expect(ab[i]!.bits).toBe(1024);
      expect(ab[i]!.material.equals(bb[i]!.material)).toBe(true);
      expect(ab[i]!.material.equals(blockMaterial(seed, first + i, 1024))).toBe(true);
    }
    // More credit, more blocks, in order, from where it stopped.
    a.send({ type: 'credit', upToBlockId: first + 14 });
    await a.until(() => a.blockIds().length >= 15);
    expect(a.blockIds()).toEqual(Array.from({ length: 15 }, (_, i) => first + i));
  });

  it('ACK frees the buffer; a full buffer on either module pauses the link', async () => {
    await startSim({ buffer_blocks: 8 });
    const [{ h: a, id }, { h: b }] = await Promise.all([session('a'), session('b')]);
    const first = id.firstBlockId;
    a.send({ type: 'credit', upToBlockId: first + 1000 });
    b.send({ type: 'credit', upToBlockId: first + 1000 });
    await a.until(() => a.blockIds().length >= 8);
    await sleep(100);
    expect(a.blockIds()).toHaveLength(8);
    expect(sim.status().link.paused_by).toBe('buffer-full');
    expect(await a.ask({ type: 'status_request' }, 'link_status')).toMatchObject({ bufferFill: 8, bufferCapacity: 8 });
    // A acknowledges everything, B nothing: still paused.
    a.send({ type: 'ack', blockId: first + 7 });
    await sleep(60);
    expect(a.blockIds()).toHaveLength(8);
    expect(await a.ask({ type: 'status_request' }, 'link_status')).toMatchObject({ bufferFill: 0 });
    // B acknowledges four: four more blocks reach both.
    b.send({ type: 'ack', blockId: first + 3 });
    await a.until(() => a.blockIds().length >= 12);
    await b.until(() => b.blockIds().length >= 12);
    await sleep(60);
    expect(a.blockIds()).toEqual(Array.from({ length: 12 }, (_, i) => first + i));
    expect(b.blockIds()).toEqual(a.blockIds());
  });

  it('RESEND rewinds within the buffer; below it is BLOCKS_GONE', async () => {
    await startSim();
    const { h, id } = await session('a');
    const first = id.firstBlockId;
    h.send({ type: 'credit', upToBlockId: first + 5 });
    await h.until(() => h.blockIds().length >= 6);
    h.send({ type: 'ack', blockId: first + 1 });
    h.send({ type: 'resend', fromBlockId: first + 3 });
    await h.until(() => h.blockIds().length >= 9);
    expect(h.blockIds().slice(6)).toEqual([first + 3, first + 4, first + 5]);
    const err = await h.ask({ type: 'resend', fromBlockId: first }, 'error');
    expect(err.code).toBe(ErrorCode.BLOCKS_GONE);
    // Rewound to the first unacknowledged block.
    await h.until(() => h.blockIds().length >= 13);
    expect(h.blockIds().slice(9)).toEqual([first + 2, first + 3, first + 4, first + 5]);
  });

  it('refuses CREDIT, ACK and RESEND outside a session; RESET restarts the session', async () => {
    await startSim();
    const h = await host('a');
    expect((await h.ask({ type: 'credit', upToBlockId: 5 }, 'error')).code).toBe(ErrorCode.BAD_STATE);
    expect((await h.ask({ type: 'ack', blockId: 5 }, 'error')).code).toBe(ErrorCode.BAD_STATE);
    expect(h.blockIds()).toEqual([]);
    // RESET opens a session like HELLO.
    const id = await h.ask({ type: 'reset' }, 'identify');
    h.send({ type: 'credit', upToBlockId: id.firstBlockId + 2 });
    await h.until(() => h.blockIds().length >= 3);
    // A frame of an unknown type with a valid CRC is answered with ERROR UNKNOWN_TYPE.
    const raw = Buffer.alloc(HEADER_BYTES + 2 + 4);
    raw.writeUInt16BE(SOF, 0);
    raw.writeUInt8(FRAME_VERSION, 2);
    raw.writeUInt8(0x7e, 3);
    raw.writeUInt32BE(99, 4);
    raw.writeUInt32BE(2, 8);
    raw.writeUInt32BE(crc32c(raw, 2, HEADER_BYTES + 2), HEADER_BYTES + 2);
    const from = h.frames.length;
    h.stream.write(raw);
    expect((await h.next('error', () => true, 2000, from)).code).toBe(ErrorCode.UNKNOWN_TYPE);
    expect(sim.status().modules[0]!.counters.bad_frames).toBe(1);
  });

  it('a new connection starts again from the first unacknowledged block', async () => {
    await startSim();
    const { h, id } = await session('a');
    const first = id.firstBlockId;
    h.send({ type: 'credit', upToBlockId: first + 4 });
    await h.until(() => h.blockIds().length >= 5);
    h.send({ type: 'ack', blockId: first + 2 });
    await h.ask({ type: 'status_request' }, 'link_status');
    h.close();
    const { h: h2, id: id2 } = await session('a');
    expect(id2.firstBlockId).toBe(first + 3);
    h2.send({ type: 'credit', upToBlockId: first + 6 });
    await h2.until(() => h2.blockIds().length >= 4);
    expect(h2.blockIds()).toEqual([first + 3, first + 4, first + 5, first + 6]);
  });
});

describe('faults at the module endpoint', () => {
  it('link-down: no production, LINK_STATUS up=false with QBER 0.5; production resumes after', async () => {
    await startSim();
    const { h, id } = await session('a');
    h.send({ type: 'credit', upToBlockId: id.firstBlockId + 100_000 });
    await h.until(() => h.blockIds().length >= 3);
    const from = h.frames.length;
    sim.inject('link-down', 0.4);
    // Told unsolicited, then on request.
    expect(await h.next('link_status', () => true, 1000, from)).toMatchObject({ up: false });
    const st = await h.ask({ type: 'status_request' }, 'link_status');
    expect(st).toMatchObject({ up: false, qberPpm: 500_000, keyRateBps: 0 });
    await sleep(40);
    const n = h.blockIds().length;
    await sleep(150);
    expect(h.blockIds().length).toBe(n);
    expect(sim.status().faults.map((f) => f.fault)).toEqual(['link-down']);
    await h.until(() => h.blockIds().length > n + 5, 2000, 'blocks after link-down');
    expect(h.all('link_status').filter((x) => x.up)).not.toHaveLength(0);
    expect((await h.ask({ type: 'status_request' }, 'link_status')).up).toBe(true);
    const ids = h.blockIds();
    expect(ids).toEqual(Array.from({ length: ids.length }, (_, i) => id.firstBlockId + i));
  });

  it('corrupt-frames: every frame fails its CRC while it lasts; the session survives', async () => {
    await startSim();
    const { h } = await session('a');
    sim.inject('corrupt-frames', 0.3, 'MOD-A');
    const before = h.frames.length;
    for (let i = 0; i < 20; i++) h.send({ type: 'status_request' });
    await h.until(() => sim.status().modules[0]!.counters.frames_corrupted >= 20);
    await sleep(50);
    expect(h.frames.length).toBe(before);
    const c = h.decoder.counters;
    expect(c.crcErrors + c.oversized + c.badVersions + c.resyncs).toBeGreaterThan(0);
    // Module B is not affected.
    const { h: b } = await session('b');
    expect((await b.ask({ type: 'status_request' }, 'link_status')).up).toBe(true);
    await sleep(300);
    expect((await h.ask({ type: 'status_request' }, 'link_status')).up).toBe(true);
  });

  it('drop-frames: frames vanish while it lasts', async () => {
    await startSim();
    const { h, id } = await session('a');
    sim.inject('drop-frames', 0.3);
    const before = h.frames.length;
    h.send({ type: 'credit', upToBlockId: id.firstBlockId + 4 });
    h.send({ type: 'status_request' });
    await sleep(100);
    expect(h.frames.length).toBe(before);
    expect(sim.status().modules[0]!.counters.frames_dropped).toBeGreaterThanOrEqual(6);
    await sleep(250);
    // The dropped blocks are resent on request.
    h.send({ type: 'resend', fromBlockId: id.firstBlockId });
    await h.until(() => h.blockIds().length >= 5);
    expect(h.blockIds()).toEqual([0, 1, 2, 3, 4].map((i) => id.firstBlockId + i));
  });

  it('stall: nothing read, nothing sent; afterwards the session goes on', async () => {
    await startSim();
    const { h, id } = await session('a');
    sim.inject('stall', 0.3, 0);
    h.send({ type: 'credit', upToBlockId: id.firstBlockId + 4 });
    h.send({ type: 'status_request' });
    await sleep(150);
    expect(h.frames).toHaveLength(1);
    expect(sim.status().modules[0]!.counters.bytes_ignored).toBeGreaterThan(0);
    await sleep(250);
    // The credit sent during the stall was lost; the session was not.
    const st = await h.ask({ type: 'status_request' }, 'link_status');
    expect(st.up).toBe(true);
    h.send({ type: 'credit', upToBlockId: id.firstBlockId + 4 });
    await h.until(() => h.blockIds().length >= 5);
    expect(h.all('identify')).toHaveLength(1);
  });

  it('module-reboot: the session and connection drop, the link goes down, unacknowledged blocks come again', async () => {
    await startSim();
    const [{ h, id }, { h: b }] = await Promise.all([session('a'), session('b')]);
    const first = id.firstBlockId;
    h.send({ type: 'credit', upToBlockId: first + 5 });
    await h.until(() => h.blockIds().length >= 6);
    h.send({ type: 'ack', blockId: first + 1 });
    await h.ask({ type: 'status_request' }, 'link_status');
    sim.inject('module-reboot', 0.4, 'MOD-A');
    await h.until(() => h.closed, 1000, 'connection dropped');
    // The peer module sees the link down.
    expect(await b.ask({ type: 'status_request' }, 'link_status')).toMatchObject({ up: false });
    // While rebooting, connections are refused.
    const during = await host('a');
    await during.until(() => during.closed, 1000, 'refused while rebooting');
    await sleep(450);
    const h2 = await host('a');
    expect((await h2.ask({ type: 'credit', upToBlockId: first + 5 }, 'error')).code).toBe(ErrorCode.BAD_STATE);
    const id2 = await h2.ask({ type: 'hello', hostVersion: 1, hostId: 'KME_A' }, 'identify');
    expect(id2.firstBlockId).toBe(first + 2);
    h2.send({ type: 'credit', upToBlockId: first + 5 });
    await h2.until(() => h2.blockIds().length >= 4);
    expect(h2.blockIds()).toEqual([2, 3, 4, 5].map((i) => first + i));
    expect(h2.all('key_block')[0]!.material.equals(blockMaterial(seed, first + 2, 1024))).toBe(true);
    expect((await b.ask({ type: 'status_request' }, 'link_status')).up).toBe(true);
  });

  it('eavesdrop-alarm: QBER jumps, both modules name the same blocks, repeated and re-sent after IDENTIFY until ALARM_ACK', async () => {
    await startSim();
    const [{ h: a, id }, { h: b }] = await Promise.all([session('a'), session('b')]);
    a.send({ type: 'credit', upToBlockId: id.firstBlockId + 100_000 });
    b.send({ type: 'credit', upToBlockId: id.firstBlockId + 100_000 });
    await a.until(() => a.blockIds().length >= 6);
    sim.inject('eavesdrop-alarm', 0.5);
    const [x, y] = await Promise.all([a.next('alarm'), b.next('alarm')]);
    expect(x).toEqual(y);
    expect(x.kind).toBe(AlarmKind.EAVESDROPPING);
    expect(x.lastBlockId - x.firstBlockId).toBe(3);
    expect(x.qberPpm).toBe(250_000);
    expect(a.blockIds()).toContain(x.firstBlockId);
    const st = await a.ask({ type: 'status_request' }, 'link_status');
    expect(st.up).toBe(true);
    expect(st.qberPpm).toBeGreaterThan(240_000);
    expect(st.keyRateBps).toBe(0);
    // Repeated until acknowledged.
    await a.until(() => a.all('alarm').length >= 2, 1000, 'a repeated alarm');
    // A host that reconnects without acknowledging is told again, right after IDENTIFY.
    a.close();
    const { h: a2 } = await session('a');
    const again = await a2.next('alarm');
    expect(again).toEqual(x);
    expect(a2.frames.findIndex((f) => f.message.type === 'identify')).toBeLessThan(a2.frames.findIndex((f) => f.message.type === 'alarm'));
    // ALARM_ACK stops the repeats (on A only).
    a2.send({ type: 'alarm_ack', firstBlockId: x.firstBlockId, lastBlockId: x.lastBlockId });
    await a2.ask({ type: 'status_request' }, 'link_status');
    const n = a2.all('alarm').length;
    await sleep(400);
    expect(a2.all('alarm')).toHaveLength(n);
    expect(b.all('alarm').length).toBeGreaterThan(1);
    expect(sim.status().modules.map((m) => m.pending_alarms.length)).toEqual([0, 1]);
    const { h: a3 } = await session('a');
    await sleep(200);
    expect(a3.all('alarm')).toEqual([]);
  });

  it('unplug: the socket disappears and comes back at the same path', async () => {
    await startSim();
    const { h } = await session('a');
    const path = join(dir, 'a.sock');
    sim.inject('unplug', 0.4, 'MOD-A');
    await h.until(() => h.closed, 1000, 'connection closed');
    await sleep(50);
    expect(existsSync(path)).toBe(false);
    expect(existsSync(join(dir, 'b.sock'))).toBe(true);
    await sleep(500);
    expect(existsSync(path)).toBe(true);
    const { id } = await session('a');
    expect(id.moduleSerial).toBe('MOD-A');
  });

  it('rejects unknown faults, bad durations and unknown modules; the same fault again extends it', async () => {
    await startSim();
    expect(() => sim.inject('meteor', 1)).toThrow(/unknown fault "meteor"/);
    expect(() => sim.inject('stall', 0)).toThrow(/bad duration/);
    expect(() => sim.inject('stall', '2x')).toThrow(/bad duration/);
    expect(() => sim.inject('stall', 1, 'MOD-Z')).toThrow(/no module "MOD-Z"/);
    expect(() => sim.inject('link-down', 1, 'MOD-A')).toThrow(/acts on the link/);
    sim.inject('stall', 1, 1);
    sim.inject('stall', 5, 'MOD-B');
    const f = sim.status().faults;
    expect(f).toHaveLength(1);
    expect(f[0]!.module).toBe('MOD-B');
    expect(f[0]!.remaining_s).toBeGreaterThan(4);
    expect(sim.clear()).toBe(1);
    expect(sim.status().faults).toEqual([]);
    expect(sim.endpoints[1]!.stalled).toBe(false);
  });
});
