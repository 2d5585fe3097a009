import { describe, expect, it } from 'vitest';
import { AlarmKind } from '../../../drivers/qkd/messages.js';
import { LinkModel, type LinkModelOptions } from '../../../drivers/sim/link-model.js';
import { blockMaterial } from '../../../drivers/sim/material.js';
import { SimQkdModule } from '../../../drivers/sim/sim-module.js';
import { systemClock } from '../../../drivers/types.js';

const seed = Buffer.alloc(32, 7);
// 8192 bit/s in 1024-bit blocks: one block every 125 ms.
const base: LinkModelOptions = { linkId: 'L1', seed, rateBps: 8192, blockBits: 1024, epochMs: 0, bufferBlocks: 1000, startMs: 0 };

describe('LinkModel', () => {
  it('derives material as SimQkdModule does, per (seed, id)', () => {
    const m = new LinkModel(base);
    const old = new SimQkdModule({ linkId: 'L1', moduleId: 'x', seed, rateBps: 8192, blockBits: 1024, epochMs: 0, clock: systemClock });
    for (const id of [0, 1, 17, 123456]) {
      expect(m.material(id).equals(old.material(id))).toBe(true);
      expect(m.material(id).equals(blockMaterial(seed, id, 1024))).toBe(true);
    }
    expect(m.material(3).equals(m.material(4))).toBe(false);
    expect(new LinkModel({ ...base, seed: Buffer.alloc(32, 8) }).material(3).equals(m.material(3))).toBe(false);
  });

  it('produces block n at epoch + (n + 1) * period, the configured rate', () => {
    const m = new LinkModel(base);
    expect(m.startId).toBe(0);
    expect(m.nextDueAt()).toBe(125);
    expect(m.advance(124)).toBe(0);
    expect(m.advance(125)).toBe(1);
    expect(m.advance(1000)).toBe(7);
    expect(m.producedUpTo).toBe(7);
    // A minute, acknowledged as it goes: rate * time / block size blocks.
    for (let t = 1000; t <= 61_000; t += 500) {
      m.advance(t);
      m.ack(0, m.producedUpTo, t);
      m.ack(1, m.producedUpTo, t);
    }
    expect(m.nextId).toBe((61_000 * 8192) / 1000 / 1024);
    expect(m.keyRateBps()).toBe(8192);
  });

  it('two models with the same options and the same history agree block for block', () => {
    const run = () => {
      const m = new LinkModel({ ...base, bufferBlocks: 5 });
      const trace: Array<[number, number, number]> = [];
      for (let t = 0; t < 5000; t += 37) {
        m.advance(t);
        if (t % 3 === 0) m.ack(t % 2, m.producedUpTo - 1, t);
        if (t === 1998) m.setLinkDown(true, t);
        if (t === 2997) m.setLinkDown(false, t);
        trace.push([m.nextId, m.firstUnacked(0), m.firstUnacked(1)]);
      }
      return { trace, qber: m.qber() };
    };
    expect(run()).toEqual(run());
  });

  it('a link started after the epoch begins at the id wall time implies', () => {
    const m = new LinkModel({ ...base, startMs: 10_060 });
    // floor(10060 / 125) = 80; block 80 is due at 81 * 125.
    expect(m.startId).toBe(80);
    expect(m.firstUnacked(0)).toBe(80);
    expect(m.nextDueAt()).toBe(10_125);
    m.advance(10_250);
    expect(m.producedUpTo).toBe(81);
  });

  it('pauses while either buffer is full, and both modules stay in step', () => {
    const m = new LinkModel({ ...base, bufferBlocks: 4 });
    expect(m.advance(10_000)).toBe(4);
    expect(m.pausedBy).toBe('buffer-full');
    expect(m.nextDueAt()).toBeUndefined();
    expect([m.bufferFill(0), m.bufferFill(1)]).toEqual([4, 4]);
    // Module 0 frees room; module 1 is still full: nothing more.
    m.ack(0, 3, 10_000);
    expect(m.advance(20_000)).toBe(0);
    expect(m.pausedBy).toBe('buffer-full');
    // Module 1 frees one slot: the block that was due comes at once, then the link is full again.
    m.ack(1, 0, 20_000);
    expect(m.producedUpTo).toBe(4);
    expect(m.bufferFill(1)).toBe(4);
    expect(m.bufferFill(0)).toBe(1);
    // The next block is in progress; done at 20 125, it waits for room.
    expect(m.nextDueAt()).toBe(20_125);
    expect(m.advance(20_200)).toBe(0);
    expect(m.pausedBy).toBe('buffer-full');
    // Room for three more on both: one now, the next ones a period apart.
    m.ack(1, 3, 30_000);
    expect(m.producedUpTo).toBe(5);
    expect(m.nextDueAt()).toBe(30_125);
    m.advance(30_250);
    expect(m.producedUpTo).toBe(7);
    expect(m.pausedBy).toBeUndefined();
    m.advance(60_000);
    expect(m.producedUpTo).toBe(7);
    expect(m.pausedBy).toBe('buffer-full');
    // Every module holds exactly the produced, unacknowledged blocks.
    expect(m.holds(0, 3)).toBe(false);
    expect(m.holds(0, 4)).toBe(true);
    expect(m.holds(1, 7)).toBe(true);
    expect(m.holds(1, 8)).toBe(false);
  });

  it('an ACK beyond what was produced is clamped', () => {
    const m = new LinkModel(base);
    m.advance(500);
    m.ack(0, 1_000_000, 500);
    expect(m.firstUnacked(0)).toBe(4);
    expect(m.bufferFill(0)).toBe(0);
    m.ack(0, 1, 500);
    expect(m.firstUnacked(0)).toBe(4);
  });

  it('link-down stops production, reports QBER 0.5 and no key rate; the block in progress keeps its remaining time', () => {
    const m = new LinkModel(base);
    m.advance(1000);
    m.setLinkDown(true, 1050);
    expect(m.up).toBe(false);
    expect(m.pausedBy).toBe('link-down');
    expect(m.qber()).toBe(0.5);
    expect(m.keyRateBps()).toBe(0);
    expect(m.advance(5000)).toBe(0);
    m.setLinkDown(false, 6000);
    expect(m.up).toBe(true);
    // Block 8 was due at 1125; 75 ms were left when the link went down.
    expect(m.nextDueAt()).toBe(6075);
    expect(m.advance(6074)).toBe(0);
    expect(m.advance(6075)).toBe(1);
  });

  it('a powered-off module takes the link down for both', () => {
    const m = new LinkModel(base);
    m.setPowered(1, false, 200);
    expect(m.up).toBe(false);
    expect(m.pausedBy).toBe('module-off');
    expect(m.advance(10_000)).toBe(0);
    expect(m.producedUpTo).toBe(0);
    m.setPowered(1, true, 10_000);
    expect(m.nextDueAt()).toBe(10_050);
  });

  it('QBER: deterministic noise around the baseline', () => {
    const a = new LinkModel({ ...base, qber: { baseline: 0.03, noise: 0.01 } });
    const b = new LinkModel({ ...base, qber: { baseline: 0.03, noise: 0.01 } });
    const qa: number[] = [];
    const qb: number[] = [];
    for (let t = 0; t < 5000; t += 125) {
      a.advance(t);
      b.advance(t);
      qa.push(a.qber());
      qb.push(b.qber());
    }
    expect(qa).toEqual(qb);
    expect(Math.min(...qa)).toBeGreaterThanOrEqual(0.02);
    expect(Math.max(...qa)).toBeLessThanOrEqual(0.04);
    expect(new Set(qa).size).toBeGreaterThan(10);
  });

  it('an eavesdropper raises the QBER, stops distillation and names the blocks to discard', () => {
    const m = new LinkModel({ ...base, alarmSpanBlocks: 3 });
    m.advance(1000); // blocks 0..7
    const alarm = m.setEavesdropping(true, 1000);
    expect(alarm).toMatchObject({ kind: AlarmKind.EAVESDROPPING, firstBlockId: 5, lastBlockId: 8, qberPpm: 250_000 });
    expect(m.setEavesdropping(true, 1001)).toBeUndefined();
    expect(m.qber()).toBeGreaterThan(0.24);
    expect(m.up).toBe(true);
    expect(m.keyRateBps()).toBe(0);
    expect(m.pausedBy).toBe('eavesdropping');
    expect(m.advance(9000)).toBe(0);
    m.setEavesdropping(false, 9000);
    expect(m.qber()).toBeLessThan(0.03);
    m.advance(9125);
    // Block 8, named by the alarm, is still produced (ids stay contiguous); the hosts discard it.
    expect(m.producedUpTo).toBe(8);
    expect(m.alarms).toHaveLength(1);
  });

  it('an alarm before any block names the block in progress', () => {
    const m = new LinkModel({ ...base, startMs: 1000 });
    const alarm = m.setEavesdropping(true, 1000);
    expect(alarm).toMatchObject({ firstBlockId: 8, lastBlockId: 8 });
  });
});
