/**
 * The audit trail's line format, shared by the writer (src/keypoold/audit-log.ts)
 * and the verifier (src/common/audit-verify.ts).
 *
 * FILES. The trail is a folder of segments `audit-000001.jsonl`, `audit-000002.jsonl`, ...
 * (6-digit index from 1, no gaps), read in index order. Each holds lines of UTF-8 text
 * (in fact printable ASCII only), each line ending in "\n".
 *
 * LINE. One JSON object, no whitespace, members in this fixed order, absent ones omitted:
 *
 *   seq      integer from 1, +1 per line, continuous across segments
 *   ts       UTC time, ISO-8601 with milliseconds: "2025-01-31T12:00:00.000Z"
 *   prev     the `hash` of the line before (for seq 1: GENESIS, 64 "0")
 *   event    reserved | delivered | fetched | expired | voided | refused | erased | alarm |
 *            rotation | low_watermark | started | stopped
 *   link, rid, sae, master   strings (identifiers)
 *   slaves   array of strings (SAE IDs)
 *   key_ids  array of canonical lowercase UUIDs (key IDs; never key material)
 *   count, size              non-negative integers
 *   blocks   [first, last]   non-negative integers
 *   reason   string
 *   detail   object, member names sorted (JS default sort), values string | number | boolean
 *   hash     lowercase hex SHA-256, see below; always last
 *
 * HASH (what an auditor re-implements). Take the line without its final "\n"; it ends with
 * `,"hash":"<64 hex>"}`. Remove that member, i.e. keep the first (length - 75) characters
 * and append "}"; `hash` is the lowercase hex SHA-256 of those bytes. The chain holds when
 * every line's hash recomputes and every line's `prev` equals the hash of the line before.
 * Since the writer emits the canonical form only, the bytes hashed are also exactly the
 * canonical encoding of the line's other members (the verifier checks that too).
 *
 * CONTENT RULES (validateEvent): only the members above; strings are printable ASCII,
 * bounded; identifiers follow src/common/ids.ts; key IDs are UUIDs; `reason` and `detail`
 * strings may not contain a long run of base64/hex-like characters mixing letters and
 * digits (a last line of defence against key material); no `detail` name with a segment
 * like key/keys/material/secret/seed/pin/password. Anything else is a programming error:
 * TypeError.
 */
import * as nodeCrypto from 'node:crypto';
import { isCanonicalUuid, isValidEntityId } from './ids.js';

export const GENESIS = '0'.repeat(64);

/** Key-store meta row where keypoold notes the trail's last durable line ({seq, hash} as JSON): the verifier's anchor. */
export const AUDIT_ANCHOR = 'audit_anchor';

export const AUDIT_EVENT_KINDS = [
  'reserved', 'delivered', 'fetched', 'expired', 'voided', 'refused',
  'erased', 'alarm', 'rotation', 'low_watermark', 'started', 'stopped',
] as const;
export type AuditEventKind = (typeof AUDIT_EVENT_KINDS)[number];

export interface AuditEvent {
  event: AuditEventKind;
  link?: string;
  rid?: string;
  key_ids?: string[];
  master?: string;
  slaves?: string[];
  sae?: string;
  reason?: string;
  count?: number;
  size?: number;
  blocks?: [number, number];
  detail?: Record<string, string | number | boolean>;
}

/** A line as read back: the chain members plus the event. */
export interface AuditLine extends AuditEvent {
  seq: number;
  ts: string;
  prev: string;
  hash: string;
}

export const LIMITS = {
  /** Longest `reason` and `detail` string value. */
  text: 256,
  slaves: 1024,
  key_ids: 10_000,
  detail_entries: 32,
} as const;

/** `,"hash":"` + 64 hex + `"}` */
export const HASH_MEMBER_LEN = 75;

const KINDS = new Set<string>(AUDIT_EVENT_KINDS);
const HEX64 = /^[0-9a-f]{64}$/;
const TS_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const TEXT_RE = /^[\x20-\x7e]*$/;
/** A run that could be base64 or hex key material. */
const MATERIAL_RUN = /[A-Za-z0-9+/=]{24,}/g;
const DETAIL_NAME = /^[a-z][a-z0-9_]{0,31}$/;
const FORBIDDEN_SEGMENTS = new Set(['key', 'keys', 'material', 'secret', 'seed', 'pin', 'password', 'passphrase', 'psk']);

export const SEGMENT_RE = /^audit-(\d{6})\.jsonl$/;
export function segmentName(index: number): string {
  return `audit-${String(index).padStart(6, '0')}.jsonl`;
}

/** One-shot crypto.hash (Node >= 20.12) is about twice as fast as createHash for short input. */
const oneShot = (nodeCrypto as { hash?: (alg: string, data: string, enc: 'hex') => string }).hash;

export const sha256Hex: (s: string) => string =
  typeof oneShot === 'function'
    ? (s) => oneShot('sha256', s, 'hex')
    : (s) => nodeCrypto.createHash('sha256').update(s).digest('hex');

function bad(field: string, why: string): never {
  throw new TypeError(`audit event: ${field} ${why}`);
}

function checkId(field: string, v: unknown): void {
  if (!isValidEntityId(v)) bad(field, 'must be an identifier (1 to 128 printable ASCII characters)');
}

function looksLikeMaterial(s: string): boolean {
  if (s.length < 24) return false;
  for (const m of s.matchAll(MATERIAL_RUN)) {
    if (/[0-9]/.test(m[0]) && /[A-Za-z]/.test(m[0])) return true;
  }
  return false;
}

function checkText(field: string, v: unknown): void {
  if (typeof v !== 'string' || v.length === 0 || v.length > LIMITS.text || !TEXT_RE.test(v)) {
    bad(field, `must be 1 to ${LIMITS.text} printable ASCII characters`);
  }
  if (looksLikeMaterial(v)) bad(field, 'holds a long base64/hex-like run (looks like key material)');
}

function checkCount(field: string, v: unknown): void {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) bad(field, 'must be a non-negative integer');
}

/** Throws TypeError unless `e` is an event that may be logged (see CONTENT RULES above). */
export function validateEvent(e: unknown): asserts e is AuditEvent {
  if (typeof e !== 'object' || e === null || Array.isArray(e)) bad('event', 'must be an object');
  const o = e as Record<string, unknown>;
  for (const k in o) {
    const v = o[k];
    if (v === undefined && k !== 'event') continue;
    switch (k) {
      case 'event':
        if (typeof v !== 'string' || !KINDS.has(v)) bad('event', `must be one of ${AUDIT_EVENT_KINDS.join(', ')}`);
        break;
      case 'link':
      case 'rid':
      case 'master':
      case 'sae':
        checkId(k, v);
        break;
      case 'slaves':
        if (!Array.isArray(v) || v.length > LIMITS.slaves) bad(k, `must be an array of at most ${LIMITS.slaves} SAE IDs`);
        for (const s of v) checkId('slaves[]', s);
        break;
      case 'key_ids':
        if (!Array.isArray(v) || v.length > LIMITS.key_ids) bad(k, `must be an array of at most ${LIMITS.key_ids} key IDs`);
        for (const s of v) if (!isCanonicalUuid(s)) bad('key_ids[]', 'must be canonical UUIDs');
        break;
      case 'count':
      case 'size':
        checkCount(k, v);
        break;
      case 'blocks':
        if (!Array.isArray(v) || v.length !== 2) bad(k, 'must be [first, last]');
        checkCount('blocks[0]', v[0]);
        checkCount('blocks[1]', v[1]);
        break;
      case 'reason':
        checkText(k, v);
        break;
      case 'detail': {
        if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(k, 'must be an object');
        const names = Object.keys(v);
        if (names.length > LIMITS.detail_entries) bad(k, `has more than ${LIMITS.detail_entries} entries`);
        for (const n of names) {
          if (!DETAIL_NAME.test(n)) bad(`detail.${n}`, 'name must match [a-z][a-z0-9_]{0,31}');
          if (n.split('_').some((s) => FORBIDDEN_SEGMENTS.has(s))) bad(`detail.${n}`, 'name suggests secret material');
          const dv = (v as Record<string, unknown>)[n];
          if (typeof dv === 'string') checkText(`detail.${n}`, dv);
          else if (typeof dv === 'number') {
            if (!Number.isFinite(dv)) bad(`detail.${n}`, 'must be a finite number');
          } else if (typeof dv !== 'boolean') bad(`detail.${n}`, 'must be a string, number or boolean');
        }
        break;
      }
      default:
        bad(k, 'is not an audit field');
    }
  }
  if (o.event === undefined) bad('event', 'is required');
}

const NEEDS_ESCAPE = /["\\]/;

/** JSON string of a validated (printable ASCII) string: only `"` and `\` need escaping. */
function str(s: string): string {
  return NEEDS_ESCAPE.test(s) ? JSON.stringify(s) : '"' + s + '"';
}

function strArray(a: readonly string[]): string {
  let s = '[';
  for (let i = 0; i < a.length; i++) s += (i ? ',"' : '"') + a[i] + '"';
  return s + ']';
}

/**
 * The canonical encoding of a line without its `hash` (the bytes that are hashed).
 * The event must have passed validateEvent.
 */
export function encodeBody(seq: number, ts: string, prev: string, e: AuditEvent): string {
  let s = '{"seq":' + seq + ',"ts":"' + ts + '","prev":"' + prev + '","event":"' + e.event + '"';
  if (e.link !== undefined) s += ',"link":' + str(e.link);
  if (e.rid !== undefined) s += ',"rid":' + str(e.rid);
  if (e.sae !== undefined) s += ',"sae":' + str(e.sae);
  if (e.master !== undefined) s += ',"master":' + str(e.master);
  if (e.slaves !== undefined) s += ',"slaves":' + (e.slaves.some((x) => NEEDS_ESCAPE.test(x)) ? JSON.stringify(e.slaves) : strArray(e.slaves));
  // UUIDs need no escaping.
  if (e.key_ids !== undefined) s += ',"key_ids":' + strArray(e.key_ids);
  if (e.count !== undefined) s += ',"count":' + e.count;
  if (e.size !== undefined) s += ',"size":' + e.size;
  if (e.blocks !== undefined) s += ',"blocks":[' + e.blocks[0] + ',' + e.blocks[1] + ']';
  if (e.reason !== undefined) s += ',"reason":' + str(e.reason);
  if (e.detail !== undefined) {
    const names = Object.keys(e.detail).sort();
    s += ',"detail":{';
    for (let i = 0; i < names.length; i++) {
      const n = names[i]!;
      s += (i ? ',' : '') + JSON.stringify(n) + ':' + JSON.stringify(e.detail[n]);
    }
    s += '}';
  }
  return s + '}';
}

/** The full line (with "\n") for a canonical body and its hash. */
export function encodeLine(body: string, hash: string): string {
  return body.slice(0, -1) + ',"hash":"' + hash + '"}\n';
}

/** Split a line (without "\n") into the hashed body and the stated hash; null if it has no trailing hash member. */
export function splitLine(line: string): { body: string; hash: string } | null {
  if (line.length < HASH_MEMBER_LEN + 2) return null;
  const tail = line.slice(-HASH_MEMBER_LEN);
  if (!tail.startsWith(',"hash":"') || !tail.endsWith('"}')) return null;
  const hash = tail.slice(9, 73);
  if (!HEX64.test(hash)) return null;
  return { body: line.slice(0, -HASH_MEMBER_LEN) + '}', hash };
}

export type LineCheck =
  | { ok: true; line: AuditLine }
  /** `json`: not JSON at all (a torn write, or garbage); `hash`: content does not match its hash; `form`: hash matches but the line is not canonical. */
  | { ok: false; kind: 'json' | 'hash' | 'form'; why: string; seq?: number };

/**
 * Check one line on its own (without "\n"): parses, hash recomputes, canonical form
 * and content rules. Chaining (seq, prev) is the caller's business.
 */
export function checkLine(raw: string): LineCheck {
  let obj: unknown;
  try {
    obj = JSON.parse(raw);
  } catch {
    return { ok: false, kind: 'json', why: 'not valid JSON' };
  }
  if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) return { ok: false, kind: 'json', why: 'not a JSON object' };
  const o = obj as Record<string, unknown>;
  const seq = typeof o.seq === 'number' && Number.isSafeInteger(o.seq) && o.seq >= 1 ? o.seq : undefined;
  const parts = splitLine(raw);
  if (!parts) return { ok: false, kind: 'form', why: 'no trailing "hash" member', seq };
  if (sha256Hex(parts.body) !== parts.hash) return { ok: false, kind: 'hash', why: 'content does not match its hash', seq };
  const { seq: _s, ts, prev, hash, ...event } = o;
  if (seq === undefined) return { ok: false, kind: 'form', why: '"seq" is not a positive integer' };
  if (typeof ts !== 'string' || !TS_RE.test(ts) || Number.isNaN(Date.parse(ts))) return { ok: false, kind: 'form', why: '"ts" is not an ISO-8601 UTC time', seq };
  if (typeof prev !== 'string' || !HEX64.test(prev)) return { ok: false, kind: 'form', why: '"prev" is not a hex SHA-256', seq };
  try {
    validateEvent(event);
  } catch (e) {
    return { ok: false, kind: 'form', why: (e as Error).message, seq };
  }
  if (encodeBody(seq, ts, prev, event) !== parts.body) return { ok: false, kind: 'form', why: 'not in canonical form (member order or spacing)', seq };
  return { ok: true, line: { seq, ts, prev, ...event, hash: hash as string } };
}
