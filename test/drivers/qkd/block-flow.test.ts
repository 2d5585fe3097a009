import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { backoffDelay, DEFAULT_BACKOFF } from '../../../drivers/qkd/backoff.js';
import { BlockFlow } from '../../../drivers/qkd/block-flow.js';

const blk = (blockId: number) => ({ blockId, bits: 8, material: Buffer.from([blockId & 0xff]) });

describe('BlockFlow', () => {
  it('grants credit only in a session, only as the consumer pulls, window ahead of what it was handed', () => {
    const f = new BlockFlow(4);
    expect(f.start(10)).toEqual([]); // no session yet
    expect(f.sessionStarted(10)).toEqual([{ type: 'credit', upToBlockId: 13 }]);
    for (const id of [10, 11, 12]) expect(f.onBlock(blk(id))).toEqual([]);
    expect(f.pull()).toEqual([]); // nothing handed yet: no more credit
    expect(f.take().map((b) => b.blockId)).toEqual([10, 11, 12]);
    expect(f.pull()).toEqual([{ type: 'credit', upToBlockId: 16 }]);
    f.onBlock(blk(17));
    expect(f.counters.creditViolations).toBe(1);
  });

  it('a gap asks once, asks again only when ids go backwards (the module rewound and lost it again); duplicates dropped', () => {
    const f = new BlockFlow(16);
    f.start(0);
    f.sessionStarted(0);
    f.onBlock(blk(0));
    expect(f.onBlock(blk(2))).toEqual([{ type: 'resend', fromBlockId: 1 }]);
    expect(f.onBlock(blk(3))).toEqual([]);
    expect(f.onBlock(blk(3))).toEqual([]); // a duplicate on the wire, not a rewind
    expect(f.onBlock(blk(2))).toEqual([{ type: 'resend', fromBlockId: 1 }]); // rewound, 1 lost again
    f.onBlock(blk(1));
    f.onBlock(blk(2));
    f.onBlock(blk(1));
    expect(f.take().map((b) => b.blockId)).toEqual([0, 1, 2]);
    expect(f.counters).toMatchObject({ resends: 2, duplicates: 1, blocksIn: 3 });
  });

  it('a new session acknowledges what the module still holds, resumes after what we have, counts what is gone', () => {
    const f = new BlockFlow(8);
    f.start(0);
    f.sessionStarted(0);
    for (let i = 0; i < 6; i++) f.onBlock(blk(i));
    f.take();
    f.ack(3);
    f.sessionEnded();
    expect(f.ack(4)).toEqual([]); // no session: remembered
    expect(f.sessionStarted(2)).toEqual([
      { type: 'ack', blockId: 4 },
      { type: 'resend', fromBlockId: 6 },
      { type: 'credit', upToBlockId: 13 },
    ]);
    f.sessionEnded();
    expect(f.sessionStarted(9)).toEqual([{ type: 'credit', upToBlockId: 16 }]); // 6..8 lost in the module
    expect(f.counters.lostBlocks).toBe(3);
    expect(f.next).toBe(9);
  });

  it('BLOCKS_GONE lets the next jump through, counted', () => {
    const f = new BlockFlow(8);
    f.start(0);
    f.sessionStarted(0);
    f.blocksGone();
    f.onBlock(blk(4));
    expect(f.take().map((b) => b.blockId)).toEqual([4]);
    expect(f.counters.lostBlocks).toBe(4);
  });

  it('an alarm drops queued blocks in its range and every later one in it', () => {
    const f = new BlockFlow(16);
    f.start(0);
    f.sessionStarted(0);
    for (let i = 0; i < 4; i++) f.onBlock(blk(i));
    f.alarm(2, 5);
    f.alarm(2, 5); // a repeat changes nothing
    for (let i = 4; i < 8; i++) f.onBlock(blk(i));
    expect(f.take().map((b) => b.blockId)).toEqual([0, 1, 6, 7]);
    expect(f.counters.discardedBlocks).toBe(4);
    expect(f.next).toBe(8);
  });

  it('a lost tail is asked again when the module holds credited blocks and sent none for a whole poll period', () => {
    const f = new BlockFlow(8);
    f.start(0);
    f.sessionStarted(0);
    for (let i = 0; i < 3; i++) f.onBlock(blk(i)); // 3 lost, module holds 0..3
    f.statusRequested();
    expect(f.statusReceived(4)).toEqual([]); // blocks came during this period
    f.statusRequested();
    expect(f.statusReceived(4)).toEqual([
      { type: 'resend', fromBlockId: 3 },
      { type: 'credit', upToBlockId: 7 },
    ]);
    f.statusRequested();
    expect(f.statusReceived(3)).toEqual([]); // holds nothing we lack
  });
});

describe('backoffDelay', () => {
  it('doubles from initialMs up to maxMs', () => {
    const o = { ...DEFAULT_BACKOFF, jitter: 0 };
    expect(Array.from({ length: 10 }, (_, i) => backoffDelay(i, o, 0.3))).toEqual([250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
    expect(backoffDelay(1e9, o, 0)).toBe(30000);
  });

  it('stays within the jitter band and under the cap', () => {
    fc.assert(
      fc.property(fc.nat(60), fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (attempt, r, jitter) => {
        const o = { ...DEFAULT_BACKOFF, jitter };
        const base = Math.min(o.maxMs, o.initialMs * 2 ** Math.min(attempt, 30));
        const d = backoffDelay(attempt, o, r);
        expect(d).toBeLessThanOrEqual(o.maxMs);
        expect(d).toBeGreaterThanOrEqual(Math.floor(base * (1 - jitter)));
        expect(d).toBeLessThanOrEqual(Math.ceil(base * (1 + jitter)));
      }),
    );
  });
});
