/**
 * The audit trail writer on real files: chain across records and segments, resume,
 * torn-tail repair, refusal of a broken tail, content rules, durability ordering.
 */
import { createHash } from 'node:crypto';
import { appendFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { silentLogger } from '../../src/common/logger.js';
import { GENESIS } from '../../src/common/audit-chain.js';
import { verifyAuditLog } from '../../src/common/audit-verify.js';
import { AuditLog, AuditLogError, type AuditEvent } from '../../src/keypoold/audit-log.js';

let dir: string;
let now: number;
const clock = { now: () => now };
const T0 = Date.UTC(2025, 0, 31, 12, 0, 0, 0);

function openLog(segmentBytes = 1 << 20): AuditLog {
  return AuditLog.open(dir, { segmentBytes, clock, logger: silentLogger() });
}

const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;

function delivered(i: number): AuditEvent {
  return { event: 'delivered', link: 'L-AB', rid: uuid(100000 + i), master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: [uuid(i)], size: 256 };
}

function segments(): string[] {
  return readdirSync(dir).filter((f) => f.startsWith('audit-')).sort();
}

function allLines(): Array<Record<string, unknown>> {
  return segments().flatMap((f) =>
    readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>),
  );
}

function rawLines(file: string): string[] {
  return readFileSync(join(dir, file), 'utf8').split('\n').filter(Boolean);
}

/** The documented rule, re-implemented: SHA-256 of the line with its final hash member removed. */
function auditorHash(line: string): string {
  return createHash('sha256').update(line.slice(0, -75) + '}').digest('hex');
}

beforeEach(() => {
  dir = join(mkdtempSync(join(tmpdir(), 'audit-log-')), 'audit');
  now = T0;
});

afterEach(() => {
  vi.restoreAllMocks();
  rmSync(join(dir, '..'), { recursive: true, force: true });
});

describe('AuditLog writer', () => {
  it('writes one canonical line per event, fields in fixed order, hash per the documented rule', async () => {
    const log = openLog();
    log.record({ event: 'reserved', link: 'L-AB', rid: uuid(1), master: 'SAE_A1', slaves: ['SAE_B1', 'SAE_B2'], key_ids: [uuid(2), uuid(3)], size: 256, blocks: [4, 6] });
    now += 1;
    log.record({ event: 'refused', sae: 'SAE_A2', reason: 'not allowed for this slave', detail: { status: 401, peer: 'KME_B', retry: false } });
    await log.close();
    const lines = rawLines('audit-000001.jsonl');
    expect(lines).toHaveLength(2);
    expect(lines[0]).toBe(
      `{"seq":1,"ts":"2025-01-31T12:00:00.000Z","prev":"${GENESIS}","event":"reserved","link":"L-AB","rid":"${uuid(1)}",` +
        `"master":"SAE_A1","slaves":["SAE_B1","SAE_B2"],"key_ids":["${uuid(2)}","${uuid(3)}"],"size":256,"blocks":[4,6],` +
        `"hash":"${auditorHash(lines[0]!)}"}`,
    );
    const second = JSON.parse(lines[1]!) as Record<string, unknown>;
    expect(Object.keys(second)).toEqual(['seq', 'ts', 'prev', 'event', 'sae', 'reason', 'detail', 'hash']);
    expect(Object.keys(second.detail as object)).toEqual(['peer', 'retry', 'status']); // sorted
    expect(second).toMatchObject({ seq: 2, ts: '2025-01-31T12:00:00.001Z', prev: auditorHash(lines[0]!) });
    expect(second.hash).toBe(auditorHash(lines[1]!));
  });

  it('chains many records across segments; files 0600 in a 0700 folder', async () => {
    const log = openLog(4096);
    for (let i = 1; i <= 600; i++) {
      log.record(delivered(i));
      now += 3;
      if (i % 37 === 0) await log.flush();
    }
    await log.close();
    const files = segments();
    expect(files.length).toBeGreaterThan(10);
    expect(files[0]).toBe('audit-000001.jsonl');
    files.forEach((f, i) => expect(f).toBe(`audit-${String(i + 1).padStart(6, '0')}.jsonl`));
    expect(statSync(dir).mode & 0o777).toBe(0o700);
    for (const f of files) {
      expect(statSync(join(dir, f)).mode & 0o777).toBe(0o600);
      // A segment closes once past segmentBytes: only its last line crosses it.
      const size = statSync(join(dir, f)).size;
      const last = rawLines(f).at(-1)!;
      expect(size - last.length - 1).toBeLessThan(4096);
    }
    // The first line of each later segment chains to the last line of the one before.
    for (let i = 1; i < files.length; i++) {
      const prevLast = JSON.parse(rawLines(files[i - 1]!).at(-1)!) as { seq: number; hash: string };
      const first = JSON.parse(rawLines(files[i]!)[0]!) as { seq: number; prev: string };
      expect(first.seq).toBe(prevLast.seq + 1);
      expect(first.prev).toBe(prevLast.hash);
    }
    const lines = allLines();
    expect(lines.map((l) => l.seq)).toEqual(Array.from({ length: 600 }, (_, i) => i + 1));
    lines.forEach((l, i) => expect(l.prev).toBe(i === 0 ? GENESIS : lines[i - 1]!.hash));
    expect(log.durableHead).toEqual({ seq: 600, hash: lines[599]!.hash });
    const v = verifyAuditLog(dir);
    expect(v).toMatchObject({ ok: true, lines: 600, segments: files.length, first_seq: 1, last_seq: 600, last_hash: lines[599]!.hash });
  });

  it('resumes seq and prev after close and reopen, in the same segment or a new one', async () => {
    let log = openLog(4096);
    for (let i = 1; i <= 5; i++) log.record(delivered(i));
    await log.close();
    const head = log.durableHead;

    log = openLog(4096);
    expect(log.durableHead).toEqual(head);
    log.record(delivered(6));
    await log.close();
    expect(segments()).toEqual(['audit-000001.jsonl']);
    const sixth = allLines()[5]!;
    expect(sixth).toMatchObject({ seq: 6, prev: head.hash });

    // Fill past the segment size, reopen: the next line starts a new segment.
    log = openLog(4096);
    while (statSync(join(dir, 'audit-000001.jsonl')).size < 4096) {
      log.record(delivered(log.durableHead.seq + 1));
      await log.flush();
    }
    await log.close();
    const n = log.durableHead.seq;
    log = openLog(4096);
    log.record(delivered(n + 1));
    await log.close();
    expect(segments()).toEqual(['audit-000001.jsonl', 'audit-000002.jsonl']);
    expect(JSON.parse(rawLines('audit-000002.jsonl')[0]!)).toMatchObject({ seq: n + 1, prev: allLines()[n - 1]!.hash });
    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, lines: n + 1 });
  });

  it('truncates a torn tail (no final newline) on open and records that it did', async () => {
    let log = openLog();
    for (let i = 1; i <= 3; i++) log.record(delivered(i));
    await log.close();
    const file = join(dir, 'audit-000001.jsonl');
    const intact = readFileSync(file, 'utf8');
    const torn = `{"seq":4,"ts":"2025-01-31T12:00:00.000Z","prev":"${log.durableHead.hash}","event":"deliv`;
    appendFileSync(file, torn);

    log = openLog();
    expect(readFileSync(file, 'utf8')).toBe(intact);
    expect(log.durableHead.seq).toBe(3);
    await log.close();
    const lines = allLines();
    expect(lines).toHaveLength(4);
    expect(lines[3]).toMatchObject({
      seq: 4, prev: lines[2]!.hash, event: 'alarm', reason: 'audit log torn tail repaired',
      detail: { segment: 'audit-000001.jsonl', dropped_bytes: torn.length },
    });
    expect(verifyAuditLog(dir).ok).toBe(true);
  });

  it('drops a complete last line that is not JSON (zeros after a crash) and notes the bytes', async () => {
    let log = openLog();
    for (let i = 1; i <= 3; i++) log.record(delivered(i));
    await log.close();
    const file = join(dir, 'audit-000001.jsonl');
    appendFileSync(file, Buffer.concat([Buffer.alloc(40), Buffer.from('\n')]));
    log = openLog();
    log.record(delivered(4));
    await log.close();
    const lines = allLines();
    expect(lines.map((l) => l.event)).toEqual(['delivered', 'delivered', 'delivered', 'alarm', 'delivered']);
    expect(lines[3]!.detail).toEqual({ segment: 'audit-000001.jsonl', dropped_bytes: 41 });
    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, lines: 5 });
  });

  it('repairs a torn first line of a fresh segment and chains to the segment before', async () => {
    let log = openLog(4096);
    while (segments().length < 2) {
      log.record(delivered(log.durableHead.seq + 1));
      await log.flush();
    }
    await log.close();
    // Leave only a torn start in the newest segment.
    writeFileSync(join(dir, 'audit-000002.jsonl'), '{"seq":');
    const before = JSON.parse(rawLines('audit-000001.jsonl').at(-1)!) as { seq: number; hash: string };
    log = openLog(4096);
    expect(log.durableHead).toEqual({ seq: before.seq, hash: before.hash });
    await log.close();
    expect(JSON.parse(rawLines('audit-000002.jsonl')[0]!)).toMatchObject({ seq: before.seq + 1, prev: before.hash, event: 'alarm' });
    expect(verifyAuditLog(dir).ok).toBe(true);
  });

  it('refuses to open on a complete tail whose line was altered, and repairs nothing', async () => {
    let log = openLog();
    for (let i = 1; i <= 4; i++) log.record({ ...delivered(i), reason: 'ok' });
    await log.close();
    const file = join(dir, 'audit-000001.jsonl');
    const altered = readFileSync(file, 'utf8').replace(/"reason":"ok"(?=[^\n]*\n$)/, '"reason":"no"');
    writeFileSync(file, altered);
    let err: unknown;
    try {
      openLog();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(AuditLogError);
    expect((err as AuditLogError).code).toBe('BROKEN_CHAIN');
    expect((err as Error).message).toMatch(/kme-audit verify/);
    expect((err as Error).message).toMatch(/audit-000001\.jsonl/);
    expect(readFileSync(file, 'utf8')).toBe(altered);
  });

  it('refuses to open when a line near the tail was removed (chain broken, lines complete)', async () => {
    let log = openLog();
    for (let i = 1; i <= 6; i++) log.record(delivered(i));
    await log.close();
    const file = join(dir, 'audit-000001.jsonl');
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.splice(4, 1);
    const cut = lines.join('\n');
    writeFileSync(file, cut);
    expect(() => openLog()).toThrow(AuditLogError);
    expect(() => openLog()).toThrow(/seq 6 does not chain to seq 4/);
    expect(readFileSync(file, 'utf8')).toBe(cut);
  });

  it('refuses events that could carry key material or are not audit fields (TypeError, nothing recorded)', async () => {
    const log = openLog();
    const bad: unknown[] = [
      { event: 'fetched', key: 'q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=' },
      { event: 'fetched', keys: [] },
      { event: 'fetched', material: 'x' },
      { event: 'delivered', key_ids: ['q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80='] },
      { event: 'refused', reason: 'bad key q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=' },
      { event: 'refused', reason: 'a3f1c09b7e2d4a5f8c6b1e0d9f7a2c4b' },
      { event: 'alarm', detail: { key: 'abc' } },
      { event: 'alarm', detail: { key_hex: 'abc' } },
      { event: 'alarm', detail: { seed: 1 } },
      { event: 'alarm', detail: { note: 'q83vEjRWeJq83vEjRWeJq83vEjRWeJq8' } },
      { event: 'alarm', detail: { nested: { a: 1 } } },
      { event: 'alarm', detail: { Upper: 1 } },
      { event: 'delivered', master: 'x'.repeat(129) },
      { event: 'delivered', master: '' },
      { event: 'delivered', slaves: 'SAE_B1' },
      { event: 'delivered', reason: 'line\nbreak' },
      { event: 'delivered', reason: 'r'.repeat(257) },
      { event: 'delivered', size: 1.5 },
      { event: 'delivered', count: -1 },
      { event: 'delivered', blocks: [1] },
      { event: 'bogus' },
      { link: 'L-AB' },
      null,
    ];
    for (const e of bad) expect(() => log.record(e as AuditEvent), JSON.stringify(e)).toThrow(TypeError);
    // Ordinary words, IDs and UUIDs pass.
    log.record({ event: 'refused', sae: 'SAE_A1', reason: 'ReservationTimeoutExceededAfterRetries', detail: { peer_timeout_ms: 2000, qber: 0.02 } });
    await log.close();
    expect(allLines().map((l) => l.seq)).toEqual([1]);
  });

  it('advances durableHead only once the fdatasync has completed', async () => {
    const probe = await open(join(dir, '..', 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void> };
    await probe.close();
    const log = openLog();
    log.record(delivered(1));
    await log.flush();
    const first = log.durableHead;
    expect(first.seq).toBe(1);

    const seen: number[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const original = proto.datasync;
    vi.spyOn(proto, 'datasync').mockImplementation(async function (this: unknown) {
      seen.push(log.durableHead.seq);
      await gate;
      return original.call(this);
    });
    log.record(delivered(2));
    log.record(delivered(3));
    const p = log.flush();
    expect(log.durableHead).toEqual(first);
    await vi.waitFor(() => expect(seen).toHaveLength(1));
    // The lines are written but not yet synced: the head has not moved.
    expect(readFileSync(join(dir, 'audit-000001.jsonl'), 'utf8').split('\n').filter(Boolean)).toHaveLength(3);
    expect(log.durableHead).toEqual(first);
    release();
    await p;
    expect(seen).toEqual([1]);
    expect(log.durableHead).toEqual({ seq: 3, hash: allLines()[2]!.hash });
    await log.close();
  });

  it('rejects flush when fdatasync fails, keeps durableHead, and then refuses further events', async () => {
    const probe = await open(join(dir, '..', 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void> };
    await probe.close();
    const log = openLog();
    log.record(delivered(1));
    await log.flush();
    vi.spyOn(proto, 'datasync').mockRejectedValue(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    log.record(delivered(2));
    await expect(log.flush()).rejects.toThrow(AuditLogError);
    await expect(log.flush()).rejects.toThrow(/EIO/);
    expect(log.durableHead.seq).toBe(1);
    expect(() => log.record(delivered(3))).toThrow(AuditLogError);
    vi.restoreAllMocks();
    await expect(log.close()).rejects.toThrow(AuditLogError);
  });

  it('coalesces concurrent flushes: one write and one fdatasync per round', async () => {
    const probe = await open(join(dir, '..', 'probe'), 'w');
    const proto = Object.getPrototypeOf(probe) as { datasync(): Promise<void>; write(...a: unknown[]): Promise<unknown> };
    await probe.close();
    const syncs = vi.spyOn(proto, 'datasync');
    const writes = vi.spyOn(proto, 'write');
    const log = openLog();
    for (let i = 1; i <= 100; i++) log.record(delivered(i));
    const first = [log.flush(), log.flush(), log.flush()];
    for (let i = 101; i <= 200; i++) log.record(delivered(i));
    const second = [log.flush(), log.flush(), log.flush()];
    expect(second[0]).toBe(second[2]);
    await Promise.all([...first, ...second]);
    expect(writes).toHaveBeenCalledTimes(2);
    expect(syncs).toHaveBeenCalledTimes(2);
    expect(log.durableHead.seq).toBe(200);
    await log.close();
    expect(() => log.record(delivered(201))).toThrow(/closed/);
    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, lines: 200 });
  });
});
