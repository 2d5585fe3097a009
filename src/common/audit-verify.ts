/**
 * Verify an audit trail (format: src/common/audit-chain.ts): every segment in order, every
 * line parses, is canonical and its hash recomputes, seq is continuous from 1, prev equals
 * the previous line's hash (GENESIS for seq 1). Stops at the first break and says where.
 *
 * Without an anchor, lines cut from the end (or whole trailing segments) leave a valid
 * chain: only an anchor, a {seq, hash} the daemon recorded elsewhere, reveals that (seq
 * beyond the end) or a chain rewritten from some point on (hash differs at that seq).
 */
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { GENESIS, SEGMENT_RE, checkLine, segmentName, type AuditLine } from './audit-chain.js';

export type AuditProblem =
  /** A line's content does not match its hash, is not JSON, or not canonical. */
  | 'altered'
  /** seq jumps forward: lines are missing. */
  | 'removed'
  /** seq goes back, or a later line comes first. */
  | 'reordered'
  /** The last line of a segment has no newline or is cut (a crash mid-write, or truncation). */
  | 'torn'
  /** A segment file is absent from the sequence. */
  | 'missing_segment'
  /** The first line does not start from the genesis value. */
  | 'wrong_genesis'
  /** prev does not match the previous line's hash (one of the two was replaced). */
  | 'broken_link'
  /** The anchor's seq is beyond the end: lines were cut from the end. */
  | 'truncated'
  /** The line at the anchor's seq has another hash: the chain was rewritten. */
  | 'rewritten';

export interface AuditBreak {
  /** Segment file name (within the folder). */
  file: string;
  /** 1-based line number in that file (for a missing segment or truncation: where the line would be). */
  line: number;
  /** The seq expected at that place. */
  seq: number;
  problem: AuditProblem;
  /** One sentence for people. */
  message: string;
}

export interface VerifyResult {
  ok: boolean;
  /** Lines verified (before the break, if any). */
  lines: number;
  /** Segment files found. */
  segments: number;
  /** First and last verified seq (0 when none) and the last verified hash (GENESIS when none). */
  first_seq: number;
  last_seq: number;
  last_hash: string;
  /** The anchor checked, if one was given. */
  anchor?: { seq: number; hash: string };
  break?: AuditBreak;
}

export interface VerifyOptions {
  /** Called for every verified line, in order (before the anchor check at the end). */
  onLine?: (line: AuditLine, raw: string) => void;
}

/** Segment indices in the folder, ascending. Throws on IO errors (e.g. no such folder). */
export function listAuditSegments(dir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync(dir)) {
    const m = SEGMENT_RE.exec(name);
    if (m) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

export function verifyAuditLog(dir: string, anchor?: { seq: number; hash: string }, opts: VerifyOptions = {}): VerifyResult {
  const segs = listAuditSegments(dir);
  let expSeq = 1;
  let prevHash = GENESIS;
  let firstSeq = 0;
  let lines = 0;
  let lastFile = segmentName(1);
  let lastFileLines = 0;
  let anchorSeen: { hash: string; file: string; line: number } | undefined;

  const result = (brk?: AuditBreak): VerifyResult => ({
    ok: brk === undefined,
    lines,
    segments: segs.length,
    first_seq: firstSeq,
    last_seq: expSeq - 1,
    last_hash: prevHash,
    ...(anchor ? { anchor: { seq: anchor.seq, hash: anchor.hash } } : {}),
    ...(brk ? { break: brk } : {}),
  });

  for (let si = 0; si < segs.length; si++) {
    const index = segs[si]!;
    const file = segmentName(index);
    if (index !== si + 1) {
      const missing = Array.from({ length: index - (si + 1) }, (_, k) => segmentName(si + 1 + k));
      return result({
        file, line: 1, seq: expSeq, problem: 'missing_segment',
        message: `segment${missing.length > 1 ? 's' : ''} ${missing.join(', ')} missing before ${file} (lines from seq ${expSeq} on are gone)`,
      });
    }
    lastFile = file;
    const text = readFileSync(join(dir, file), 'latin1');
    let pos = 0;
    let lineNo = 0;
    while (pos < text.length) {
      lineNo++;
      const nl = text.indexOf('\n', pos);
      const raw = text.slice(pos, nl < 0 ? text.length : nl);
      const where = { file, line: lineNo, seq: expSeq };
      const isLastInFile = nl < 0 || nl === text.length - 1;
      const c = checkLine(raw);
      if (nl < 0 || (!c.ok && c.kind === 'json' && isLastInFile)) {
        const last = si === segs.length - 1;
        return result({
          ...where, problem: 'torn',
          message: `${nl < 0 ? 'last line has no newline' : 'last line is not JSON'}: ${last ? 'an interrupted write (the daemon drops it at its next start) or a truncated file' : 'this closed segment was truncated'}`,
        });
      }
      if (!c.ok) {
        return result({ ...where, problem: 'altered', message: `altered line: ${c.why}${c.seq !== undefined ? ` (it claims seq ${c.seq})` : ''}` });
      }
      const l = c.line;
      if (l.seq > expSeq) {
        const later = text.indexOf(`\n{"seq":${expSeq},`, pos);
        if (later >= 0) {
          return result({ ...where, problem: 'reordered', message: `seq ${l.seq} where seq ${expSeq} belongs; seq ${expSeq} comes later in the file: lines were reordered` });
        }
        const n = l.seq - expSeq;
        return result({
          ...where, problem: 'removed',
          message: `seq jumps from ${expSeq - 1} to ${l.seq}: ${n} line${n > 1 ? 's' : ''} removed (seq ${expSeq}${n > 1 ? `..${l.seq - 1}` : ''})`,
        });
      }
      if (l.seq < expSeq) {
        return result({ ...where, problem: 'reordered', message: `seq ${l.seq} after seq ${expSeq - 1}: lines were reordered or duplicated` });
      }
      if (l.prev !== prevHash) {
        if (l.seq === 1) return result({ ...where, problem: 'wrong_genesis', message: `the first line's prev is not the genesis value ${GENESIS.slice(0, 8)}...` });
        return result({
          ...where, problem: 'broken_link',
          message: `prev does not match the hash of seq ${expSeq - 1}: that line or this one was replaced`,
        });
      }
      if (anchor && l.seq === anchor.seq) anchorSeen = { hash: l.hash, file, line: lineNo };
      opts.onLine?.(l, raw);
      if (firstSeq === 0) firstSeq = l.seq;
      lines++;
      expSeq++;
      prevHash = l.hash;
      pos = nl + 1;
    }
    lastFileLines = lineNo;
  }

  if (anchor && anchor.seq > 0) {
    if (anchor.seq >= expSeq) {
      const n = anchor.seq - expSeq + 1;
      return result({
        file: lastFile, line: lastFileLines + 1, seq: expSeq, problem: 'truncated',
        message: `the anchor is at seq ${anchor.seq} but the trail ends at seq ${expSeq - 1}: ${n} line${n > 1 ? 's' : ''} cut from the end`,
      });
    }
    if (anchorSeen && anchorSeen.hash !== anchor.hash) {
      return result({
        file: anchorSeen.file, line: anchorSeen.line, seq: anchor.seq, problem: 'rewritten',
        message: `the hash at seq ${anchor.seq} differs from the anchor: the chain was rewritten up to here`,
      });
    }
  } else if (anchor && anchor.hash !== GENESIS) {
    return result({ file: segmentName(1), line: 1, seq: 1, problem: 'rewritten', message: 'an anchor at seq 0 must be the genesis value' });
  }
  return result();
}
