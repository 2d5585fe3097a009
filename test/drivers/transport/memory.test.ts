import { describe, expect, it } from 'vitest';
import { MemoryTransport } from '../../../drivers/transport/memory.js';

const tick = () => new Promise((r) => setImmediate(r));

describe('MemoryTransport', () => {
  it('delivers in order, asynchronously, split at maxChunk', async () => {
    const [a, b] = MemoryTransport.pair({ maxChunk: 3 });
    await a.open();
    await b.open();
    const chunks: number[][] = [];
    b.onData((c) => chunks.push([...c]));
    const data = Uint8Array.of(1, 2, 3, 4, 5, 6, 7);
    await a.write(data);
    data.fill(0); // the transport copied it
    expect(chunks).toEqual([]);
    await tick();
    expect(chunks).toEqual([[1, 2, 3], [4, 5, 6], [7]]);
  });

  it('closing one end closes both, each onClose once; unplug closes both with an error', async () => {
    const [a, b] = MemoryTransport.pair();
    await a.open();
    await b.open();
    const seen: string[] = [];
    a.onClose((e) => seen.push(`a:${e?.message ?? 'ok'}`));
    b.onClose((e) => seen.push(`b:${e?.message ?? 'ok'}`));
    await a.close();
    await a.close();
    await tick();
    expect(seen).toEqual(['a:ok', 'b:memory b: the other end closed']);
    await expect(a.write(Uint8Array.of(1))).rejects.toMatchObject({ code: 'NOT_OPEN' });

    await a.open();
    await b.open();
    seen.length = 0;
    a.unplug();
    await tick();
    expect(seen).toEqual(['a:memory a: unplugged', 'b:memory b: unplugged']);
  });

  it('honours an aborted signal and unsubscribes', async () => {
    const [a, b] = MemoryTransport.pair();
    await expect(a.open(AbortSignal.abort())).rejects.toMatchObject({ code: 'ABORTED' });
    await a.open();
    await b.open();
    let n = 0;
    const off = b.onData(() => n++);
    off();
    await a.write(Uint8Array.of(1));
    await tick();
    expect(n).toBe(0);
  });
});
