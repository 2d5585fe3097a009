/**
 * The audit trail's outbox: lines recorded but never written (the process
 * died between a store commit and the trail's write) are put back at the next
 * open from the copies kept in the store, the chain intact; an outbox that
 * does not continue the trail is refused.
 */
import { appendFileSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomUUID } from 'node:crypto';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/common/logger.js';
import { verifyAuditLog } from '../../src/common/audit-verify.js';
import { AuditLog, AuditLogError } from '../../src/keypoold/audit-log.js';

const logger = silentLogger();
const clock = { now: () => Date.now() };
let dir: string;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-outbox-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function open(outbox: Map<number, string>, pending?: string[]) {
  return AuditLog.open(dir, { segmentBytes: 1 << 20, clock, logger, onLine: (seq, line) => void outbox.set(seq, line), pending });
}
const fetched = () => ({ event: 'fetched' as const, sae: 'SAE_B1', master: 'SAE_A1', key_ids: [randomUUID()] });
const lines = () =>
  readdirSync(dir)
    .sort()
    .flatMap((f) => readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean))
    .map((l) => JSON.parse(l) as { seq: number; event: string });

describe('audit outbox', () => {
  it('puts back lines recorded but never written, then goes on with the chain', async () => {
    const outbox = new Map<number, string>();
    const first = open(outbox);
    first.record(fetched());
    await first.flush();
    first.record(fetched());
    first.record(fetched());
    // The process dies here: lines 2 and 3 were never written; the store kept them.
    expect(lines().map((l) => l.seq)).toEqual([1]);
    const again = open(new Map(), [...outbox.values()]);
    again.record({ event: 'started' });
    await again.close();
    expect(lines().map((l) => `${l.seq}:${l.event}`)).toEqual(['1:fetched', '2:fetched', '3:fetched', '4:started']);
    expect(verifyAuditLog(dir).ok).toBe(true);
  });

  it('skips outbox lines the trail already holds', async () => {
    const outbox = new Map<number, string>();
    const first = open(outbox);
    for (let i = 0; i < 3; i++) first.record(fetched());
    await first.close();
    const again = open(new Map(), [...outbox.values()]);
    await again.close();
    expect(lines()).toHaveLength(3);
    expect(verifyAuditLog(dir).ok).toBe(true);
  });

  it('puts the outbox back before noting a torn tail, so the chain holds', async () => {
    const outbox = new Map<number, string>();
    const first = open(outbox);
    first.record(fetched());
    await first.flush();
    first.record(fetched());
    const seg = join(dir, readdirSync(dir)[0]!);
    appendFileSync(seg, outbox.get(2)!.slice(0, 40)); // the write of line 2 was cut short
    const again = open(new Map(), [...outbox.values()]);
    await again.close();
    expect(lines().map((l) => `${l.seq}:${l.event}`)).toEqual(['1:fetched', '2:fetched', '3:alarm']);
    expect(verifyAuditLog(dir).ok).toBe(true);
  });

  it('refuses an outbox that does not continue the trail (lines lost from both)', async () => {
    const outbox = new Map<number, string>();
    const first = open(outbox);
    for (let i = 0; i < 3; i++) first.record(fetched());
    await first.flush();
    for (let i = 0; i < 2; i++) first.record(fetched());
    // Lines 4 and 5 never reached the trail, and line 4 is gone from the outbox too.
    expect(() => open(new Map(), [outbox.get(5)!])).toThrow(AuditLogError);
    expect(() => open(new Map(), [outbox.get(5)!])).toThrow(/does not continue the trail at seq 4/);
    // A damaged outbox line is refused too.
    expect(() => open(new Map(), [outbox.get(4)!.replace('SAE_B1', 'SAE_B2')])).toThrow(/damaged/);
  });
});
