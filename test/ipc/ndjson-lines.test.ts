import { describe, expect, it } from 'vitest';
import { LineSplitter, recoverId } from '../../src/ipc/ndjson-lines.js';

function collect(max = 1024, keepGoing = true) {
  const lines: string[] = [];
  const overflows: string[] = [];
  const s = new LineSplitter(max, {
    line: (b) => lines.push(b.toString()),
    overflow: (head) => (overflows.push(head.toString()), keepGoing),
  });
  return { s, lines, overflows, push: (x: string) => s.push(Buffer.from(x)) };
}

describe('LineSplitter', () => {
  it('two lines in one chunk', () => {
    const t = collect();
    t.push('{"a":1}\n{"b":2}\n');
    expect(t.lines).toEqual(['{"a":1}', '{"b":2}']);
  });

  it('one line over several chunks, and the newline alone', () => {
    const t = collect();
    t.push('{"a"');
    t.push(':1');
    t.push('}');
    expect(t.lines).toEqual([]);
    t.push('\n');
    expect(t.lines).toEqual(['{"a":1}']);
  });

  it('a chunk ending one line and starting the next; empty lines are skipped', () => {
    const t = collect();
    t.push('ab');
    t.push('c\n\nde');
    t.push('f\n');
    expect(t.lines).toEqual(['abc', 'def']);
  });

  it('keeps multi-byte UTF-8 split across chunks intact', () => {
    const t = collect();
    const b = Buffer.from('"é€"\n');
    t.s.push(b.subarray(0, 2));
    t.s.push(b.subarray(2));
    expect(t.lines).toEqual(['"é€"']);
  });

  it('reports an over-long line once, skips the rest of it, and continues', () => {
    const t = collect(10);
    t.push('{"id":5,"op":"x"');
    t.push('xxxxxxxxxxxxxxxx');
    t.push('yy\nok\n');
    expect(t.overflows).toHaveLength(1);
    expect(t.overflows[0]!.startsWith('{"id":5')).toBe(true);
    expect(t.lines).toEqual(['ok']);
  });

  it('an over-long line completed within one chunk also overflows', () => {
    const t = collect(4);
    t.push('123456\nabc\n');
    expect(t.overflows).toEqual(['123456']);
    expect(t.lines).toEqual(['abc']);
  });

  it('stops for good when overflow says so', () => {
    const t = collect(4, false);
    t.push('123456789');
    t.push('\nabc\n');
    expect(t.lines).toEqual([]);
  });
});

describe('recoverId', () => {
  it('finds a leading numeric id only', () => {
    expect(recoverId(Buffer.from('{"id": 42, "op": garbage'))).toBe(42);
    expect(recoverId(Buffer.from(' {"id":7}'))).toBe(7);
    expect(recoverId(Buffer.from('{"op":"x","id":7}'))).toBeNull();
    expect(recoverId(Buffer.from('{"id":"7"}'))).toBeNull();
    expect(recoverId(Buffer.from('{"id":-1,'))).toBeNull();
    expect(recoverId(Buffer.from('garbage'))).toBeNull();
  });
});
