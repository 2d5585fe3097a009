import { describe, expect, it } from 'vitest';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import type { Clock, KeyBlock } from '../../drivers/types.js';

function fakeClock(start: number): Clock & { t: number } {
  const c = {
    t: start,
    now: () => c.t,
    sleep: async (ms: number) => {
      c.t += ms;
    },
  };
  return c;
}

const seed = Buffer.alloc(32, 3);

async function take(m: SimQkdModule, from: number, n: number): Promise<KeyBlock[]> {
  const out: KeyBlock[] = [];
  for await (const batch of m.blocks(from)) {
    out.push(...batch);
    if (out.length >= n) break;
  }
  return out.slice(0, n);
}

describe('SimQkdModule', () => {
  it('both ends of a link emit the same material under the same block ids', async () => {
    const clock = fakeClock(10_000);
    const opts = { linkId: 'L', seed, rateBps: 8192, blockBits: 1024, epochMs: 0, clock };
    const a = new SimQkdModule({ ...opts, moduleId: 'a' });
    const b = new SimQkdModule({ ...opts, moduleId: 'b' });
    await a.open();
    await b.open();
    const [x, y] = [await take(a, 5, 20), await take(b, 5, 20)];
    expect(x.map((k) => k.blockId)).toEqual(Array.from({ length: 20 }, (_, i) => 5 + i));
    expect(x.map((k) => k.material.toString('hex'))).toEqual(y.map((k) => k.material.toString('hex')));
    expect(new Set(x.map((k) => k.material.toString('hex'))).size).toBe(20);
    expect(x.every((k) => k.bits === 1024 && k.material.length === 128)).toBe(true);
  });

  it('another seed gives other material', () => {
    const clock = fakeClock(0);
    const a = new SimQkdModule({ linkId: 'L', moduleId: 'a', seed, rateBps: 1e6, blockBits: 1024, epochMs: 0, clock });
    const b = new SimQkdModule({ linkId: 'L', moduleId: 'b', seed: Buffer.alloc(32, 4), rateBps: 1e6, blockBits: 1024, epochMs: 0, clock });
    expect(a.material(7).equals(b.material(7))).toBe(false);
  });

  it('produces blocks at the configured secret key rate', async () => {
    const clock = fakeClock(0);
    // 8192 bit/s with 1024-bit blocks: one block every 125 ms
    const m = new SimQkdModule({ linkId: 'L', moduleId: 'a', seed, rateBps: 8192, blockBits: 1024, epochMs: 0, clock });
    await m.open();
    expect(m.producedUpTo(1000)).toBe(7);
    const blocks = await take(m, 0, 16);
    expect(blocks).toHaveLength(16);
    expect(clock.t).toBeGreaterThanOrEqual(2000);
    expect(clock.t).toBeLessThan(2200);
  });

  it('close ends a running iteration', async () => {
    const clock = { now: () => Date.now(), sleep: (ms: number, s?: AbortSignal) => new Promise<void>((r, j) => { const t = setTimeout(r, ms); s?.addEventListener('abort', () => { clearTimeout(t); j(new Error('aborted')); }); }) };
    const m = new SimQkdModule({ linkId: 'L', moduleId: 'a', seed, rateBps: 1, blockBits: 1024, epochMs: Date.now(), clock });
    await m.open();
    const it = m.blocks(0)[Symbol.asyncIterator]();
    const next = it.next();
    await m.close();
    await expect(next).resolves.toEqual({ done: true, value: undefined });
    expect(m.state).toBe('closed');
  });
});
