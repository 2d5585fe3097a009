/**
 * The audit trail verifier against real trails written by AuditLog and then damaged
 * the ways an intruder or a failing disk would.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync, truncateSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { GENESIS } from '../../src/common/audit-chain.js';
import { silentLogger } from '../../src/common/logger.js';
import { verifyAuditLog } from '../../src/common/audit-verify.js';
import { AuditLog } from '../../src/keypoold/audit-log.js';

let dir: string;
let head: { seq: number; hash: string };

const uuid = (n: number) => `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`;

/** A trail of `n` lines (seq 1..n); with `segmentBytes` small, several segments. */
async function writeTrail(n: number, segmentBytes = 1 << 20): Promise<void> {
  let t = Date.UTC(2025, 0, 31, 12, 0, 0);
  const log = AuditLog.open(dir, { segmentBytes, clock: { now: () => (t += 7) }, logger: silentLogger() });
  for (let i = 1; i <= n; i++) {
    log.record({ event: i % 3 ? 'delivered' : 'fetched', link: 'L-AB', master: 'SAE_A1', slaves: ['SAE_B1'], key_ids: [uuid(i)], reason: 'ok' });
  }
  await log.close();
  head = log.durableHead;
}

const files = () => readdirSync(dir).filter((f) => f.startsWith('audit-')).sort();
const path = (f: string) => join(dir, f);
const linesOf = (f: string) => readFileSync(path(f), 'utf8').split('\n').slice(0, -1);
const writeLines = (f: string, lines: string[]) => writeFileSync(path(f), lines.map((l) => l + '\n').join(''));
const hashOf = (line: string) => JSON.parse(line).hash as string;
/** Re-hash a line after editing it, as a forger would (the documented rule). */
function rehash(obj: Record<string, unknown>): string {
  const { hash: _h, ...rest } = obj;
  const body = JSON.stringify(rest);
  return body.slice(0, -1) + `,"hash":"${createHash('sha256').update(body).digest('hex')}"}`;
}

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'audit-verify-'));
});

afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('verifyAuditLog', () => {
  it('accepts an intact multi-segment trail and reports its extent; a matching anchor passes', async () => {
    await writeTrail(300, 4096);
    const segs = files().length;
    expect(segs).toBeGreaterThan(3);
    const r = verifyAuditLog(dir);
    expect(r).toEqual({ ok: true, lines: 300, segments: segs, first_seq: 1, last_seq: 300, last_hash: head.hash });
    expect(verifyAuditLog(dir, head)).toMatchObject({ ok: true, anchor: head });
    const mid = JSON.parse(linesOf('audit-000002.jsonl')[3]!) as { seq: number; hash: string };
    expect(verifyAuditLog(dir, { seq: mid.seq, hash: mid.hash }).ok).toBe(true);
  });

  it('accepts an empty folder; an anchor beyond it reports truncation', () => {
    expect(verifyAuditLog(dir)).toEqual({ ok: true, lines: 0, segments: 0, first_seq: 0, last_seq: 0, last_hash: GENESIS });
    expect(verifyAuditLog(dir, { seq: 5, hash: 'a'.repeat(64) }).break).toMatchObject({ problem: 'truncated', seq: 1 });
  });

  it('throws on a folder that does not exist', () => {
    expect(() => verifyAuditLog(join(dir, 'nope'))).toThrow(/ENOENT/);
  });

  it('finds an altered line: file, line number, seq', async () => {
    await writeTrail(20);
    const lines = linesOf('audit-000001.jsonl');
    lines[11] = lines[11]!.replace('"SAE_A1"', '"SAE_A9"');
    writeLines('audit-000001.jsonl', lines);
    const r = verifyAuditLog(dir);
    expect(r.ok).toBe(false);
    expect(r.break).toMatchObject({ file: 'audit-000001.jsonl', line: 12, seq: 12, problem: 'altered' });
    expect(r.break!.message).toMatch(/does not match its hash/);
    expect(r).toMatchObject({ lines: 11, last_seq: 11 });
  });

  it('finds an altered line whose own hash was recomputed: the next line no longer links', async () => {
    await writeTrail(20);
    const lines = linesOf('audit-000001.jsonl');
    const o = JSON.parse(lines[6]!) as Record<string, unknown>;
    lines[6] = rehash({ ...o, slaves: ['SAE_EVE'] });
    writeLines('audit-000001.jsonl', lines);
    expect(verifyAuditLog(dir).break).toMatchObject({ line: 8, seq: 8, problem: 'broken_link' });
  });

  it('finds a re-hashed line that is not in canonical form', async () => {
    await writeTrail(5);
    const lines = linesOf('audit-000001.jsonl');
    const o = JSON.parse(lines[2]!) as Record<string, unknown>;
    // Same members, another order, hash recomputed over what is there.
    const { seq, ts, prev, event, ...rest } = o;
    lines[2] = rehash({ event, seq, ts, prev, ...rest });
    writeLines('audit-000001.jsonl', lines);
    const r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ line: 3, seq: 3, problem: 'altered' });
    expect(r.break!.message).toMatch(/canonical/);
  });

  it('finds a removed middle line (seq jump) and says which seq is missing', async () => {
    await writeTrail(20);
    const lines = linesOf('audit-000001.jsonl');
    lines.splice(9, 1);
    writeLines('audit-000001.jsonl', lines);
    const r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ file: 'audit-000001.jsonl', line: 10, seq: 10, problem: 'removed' });
    expect(r.break!.message).toMatch(/from 9 to 11: 1 line removed \(seq 10\)/);
  });

  it('finds a removed first line, with or without an anchor', async () => {
    await writeTrail(10);
    writeLines('audit-000001.jsonl', linesOf('audit-000001.jsonl').slice(1));
    for (const r of [verifyAuditLog(dir), verifyAuditLog(dir, head)]) {
      expect(r.break).toMatchObject({ file: 'audit-000001.jsonl', line: 1, seq: 1, problem: 'removed' });
    }
  });

  it('a first line that does not start from genesis is reported as such', async () => {
    await writeTrail(3);
    const lines = linesOf('audit-000001.jsonl');
    lines[0] = rehash({ ...(JSON.parse(lines[0]!) as object), prev: 'f'.repeat(64) });
    writeLines('audit-000001.jsonl', lines);
    expect(verifyAuditLog(dir).break).toMatchObject({ line: 1, seq: 1, problem: 'wrong_genesis' });
  });

  it('a removed last line passes without an anchor (a valid shorter chain) and is caught with one', async () => {
    await writeTrail(10);
    writeLines('audit-000001.jsonl', linesOf('audit-000001.jsonl').slice(0, -1));
    expect(verifyAuditLog(dir)).toMatchObject({ ok: true, last_seq: 9 });
    const r = verifyAuditLog(dir, head);
    expect(r.ok).toBe(false);
    expect(r.break).toMatchObject({ file: 'audit-000001.jsonl', line: 10, seq: 10, problem: 'truncated' });
    expect(r.break!.message).toMatch(/anchor is at seq 10 but the trail ends at seq 9: 1 line cut/);
  });

  it('a chain rewritten from some line on passes without an anchor and is caught with one', async () => {
    await writeTrail(10);
    const lines = linesOf('audit-000001.jsonl');
    let prev = hashOf(lines[3]!);
    for (let i = 4; i < lines.length; i++) {
      const o = JSON.parse(lines[i]!) as Record<string, unknown>;
      lines[i] = rehash({ ...o, prev, ...(i === 4 ? { reason: 'forged' } : {}) });
      prev = hashOf(lines[i]!);
    }
    writeLines('audit-000001.jsonl', lines);
    expect(verifyAuditLog(dir).ok).toBe(true);
    expect(verifyAuditLog(dir, head).break).toMatchObject({ file: 'audit-000001.jsonl', line: 10, seq: 10, problem: 'rewritten' });
  });

  it('finds swapped lines (reordered)', async () => {
    await writeTrail(10);
    const lines = linesOf('audit-000001.jsonl');
    [lines[4], lines[5]] = [lines[5]!, lines[4]!];
    writeLines('audit-000001.jsonl', lines);
    const r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ line: 5, seq: 5, problem: 'reordered' });
    expect(r.break!.message).toMatch(/seq 6 where seq 5 belongs/);
  });

  it('finds a deleted middle segment', async () => {
    await writeTrail(200, 4096);
    const segs = files();
    const firstOfThird = JSON.parse(linesOf(segs[2]!)[0]!) as { seq: number };
    const firstOfSecond = JSON.parse(linesOf(segs[1]!)[0]!) as { seq: number };
    unlinkSync(path(segs[1]!));
    const r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ file: segs[2], line: 1, seq: firstOfSecond.seq, problem: 'missing_segment' });
    expect(r.break!.message).toMatch(/segment audit-000002\.jsonl missing before audit-000003\.jsonl/);
    expect(r.last_seq).toBe(firstOfSecond.seq - 1);
    expect(firstOfThird.seq).toBeGreaterThan(firstOfSecond.seq);
  });

  it('a deleted last segment is caught by the anchor', async () => {
    await writeTrail(200, 4096);
    const segs = files();
    unlinkSync(path(segs.at(-1)!));
    expect(verifyAuditLog(dir).ok).toBe(true);
    expect(verifyAuditLog(dir, head).break).toMatchObject({ file: segs.at(-2), problem: 'truncated' });
  });

  it('finds a truncated file: torn last line, in the newest or in a closed segment', async () => {
    await writeTrail(200, 4096);
    const segs = files();
    const newest = segs.at(-1)!;
    const n = linesOf(newest).length;
    truncateSync(path(newest), readFileSync(path(newest)).length - 30);
    let r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ file: newest, line: n, problem: 'torn' });
    expect(r.break!.message).toMatch(/no newline.*interrupted write/);

    const closed = segs[1]!;
    const m = linesOf(closed).length;
    truncateSync(path(closed), readFileSync(path(closed)).length - 10);
    r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ file: closed, line: m, problem: 'torn' });
    expect(r.break!.message).toMatch(/closed segment was truncated/);
  });

  it('a closed segment cut at a line boundary shows as removed lines at the next segment', async () => {
    await writeTrail(200, 4096);
    const segs = files();
    const lines = linesOf(segs[0]!);
    writeLines(segs[0]!, lines.slice(0, -2));
    const r = verifyAuditLog(dir);
    expect(r.break).toMatchObject({ file: segs[1], line: 1, seq: lines.length - 1, problem: 'removed' });
    expect(r.break!.message).toMatch(/2 lines removed/);
  });

  it('a non-JSON line in the middle is an altered line', async () => {
    await writeTrail(10);
    const lines = linesOf('audit-000001.jsonl');
    lines[3] = 'garbage';
    writeLines('audit-000001.jsonl', lines);
    expect(verifyAuditLog(dir).break).toMatchObject({ line: 4, seq: 4, problem: 'altered', message: 'altered line: not valid JSON' });
  });

  it('hands every verified line to onLine in order', async () => {
    await writeTrail(30, 4096);
    const seen: number[] = [];
    const raws: string[] = [];
    verifyAuditLog(dir, undefined, { onLine: (l, raw) => (seen.push(l.seq), raws.push(raw)) });
    expect(seen).toEqual(Array.from({ length: 30 }, (_, i) => i + 1));
    expect(raws).toEqual(files().flatMap(linesOf));
  });
});
