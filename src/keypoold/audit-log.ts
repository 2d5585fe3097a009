/**
 * The append-only, hash-chained audit trail of key events (format: src/common/audit-chain.ts).
 *
 * record() is synchronous and cheap (validate, one SHA-256 of a short line, push to a
 * buffer); flush() writes the buffered lines with one write per segment, then fdatasync,
 * through fs promises (the event loop is not blocked). `durableHead` is the last line known
 * to be on disk. A failed write or fsync is sticky: that flush and every later one rejects
 * and record() throws, since the file's state is then unknown (the daemon should stop).
 *
 * On open the chain is resumed from the tail of the newest segment. A torn tail (no final
 * newline, or a last line that is not JSON) is what a crash during an unacknowledged write
 * leaves: it is truncated away and an `alarm` event notes it. A complete tail whose chain
 * does not hold is not something a crash produces: open refuses (AuditLogError).
 */
import { closeSync, fstatSync, fsyncSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, constants as fsc } from 'node:fs';
import { open as openAsync, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../common/logger.js';
import {
  GENESIS, SEGMENT_RE, checkLine, encodeBody, encodeLine, segmentName, sha256Hex, validateEvent,
  type AuditEvent, type AuditLine,
} from '../common/audit-chain.js';

export type { AuditEvent, AuditEventKind } from '../common/audit-chain.js';

export type AuditLogErrorCode = 'BROKEN_CHAIN' | 'IO' | 'CLOSED';

export class AuditLogError extends Error {
  override readonly name = 'AuditLogError';
  constructor(
    readonly code: AuditLogErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

export interface AuditLogOptions {
  /** A segment is closed and the next begun once it has grown past this many bytes. */
  segmentBytes: number;
  clock: { now(): number };
  logger: Logger;
  /**
   * Told of each line as it is recorded (before it is written). keypoold keeps the lines in its
   * store's outbox, inside the transaction the event belongs to, so a crash between that commit
   * and the trail's write loses no line (see restore()).
   */
  onLine?: (seq: number, line: string) => void;
  /** Lines from the outbox to put back at open (see restore()), before anything new is recorded. */
  pending?: string[];
}

interface Chunk {
  index: number;
  lines: string[];
  lastSeq: number;
  lastHash: string;
}

interface Head {
  seq: number;
  hash: string;
}

/** How much of a segment's end open() reads first (grown until it holds a whole line). */
const TAIL_BYTES = 64 * 1024;

export class AuditLog {
  readonly #dir: string;
  readonly #segmentBytes: number;
  readonly #clock: { now(): number };
  readonly #log: Logger;
  #seq: number;
  #hash: string;
  #segIndex: number;
  /** Bytes of the current segment, written and buffered. */
  #segSize: number;
  #chunks: Chunk[] = [];
  #durable: Head;
  #fh: FileHandle | null = null;
  #fhIndex = 0;
  #inflight: Promise<void> | null = null;
  #queued: Promise<void> | null = null;
  #failed: AuditLogError | null = null;
  #closed = false;
  /** The last time stamp, reused while the clock reads the same millisecond. */
  #tsMs = NaN;
  #ts = '';

  private constructor(dir: string, opts: AuditLogOptions, head: Head, segIndex: number, segSize: number) {
    this.#dir = dir;
    this.#segmentBytes = opts.segmentBytes;
    this.#clock = opts.clock;
    this.#log = opts.logger;
    this.#seq = head.seq;
    this.#hash = head.hash;
    this.#durable = { ...head };
    this.#segIndex = segIndex;
    this.#segSize = segSize;
    this.#onLine = opts.onLine;
  }

  readonly #onLine: ((seq: number, line: string) => void) | undefined;

  /**
   * Put back lines recorded before a crash but never written (from the store's outbox), in
   * seq order. Lines the trail already holds are skipped; the rest must continue the chain
   * exactly, else AuditLogError (lines are missing that neither the trail nor the outbox
   * has: run the verifier). Returns how many were put back; flush() writes them.
   */
  restore(lines: string[]): number {
    let n = 0;
    for (const raw of lines) {
      const text = raw.endsWith('\n') ? raw.slice(0, -1) : raw;
      const c = checkLine(text);
      if (!c.ok) throw brokenChain(this.#dir, 'outbox', c.seq ?? '?', `an outbox line is damaged (${c.why})`);
      if (c.line.seq <= this.#seq) continue;
      if (c.line.seq !== this.#seq + 1 || c.line.prev !== this.#hash) {
        throw brokenChain(this.#dir, 'outbox', c.line.seq, `the outbox does not continue the trail at seq ${this.#seq + 1}`);
      }
      this.#append(c.line.seq, c.line.hash, text + '\n');
      n++;
    }
    return n;
  }

  /** Create the folder (0700) if need be and resume the chain. Throws AuditLogError if the tail's chain is broken. */
  static open(dir: string, opts: AuditLogOptions): AuditLog {
    if (!(opts.segmentBytes > 0)) throw new TypeError('segmentBytes must be positive');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const segs = listSegments(dir);
    if (segs.length === 0) {
      const fresh = new AuditLog(dir, opts, { seq: 0, hash: GENESIS }, 1, 0);
      fresh.restore(opts.pending ?? []);
      return fresh;
    }

    const newest = segs[segs.length - 1]!;
    const tail = readTail(dir, newest, true);
    let head = tail.head;
    if (!head) {
      // The newest segment is empty: the chain continues from the one before.
      const before = segs[segs.length - 2];
      head = before === undefined ? { seq: 0, hash: GENESIS } : readTail(dir, before, false).head;
      if (!head) throw brokenChain(dir, segmentName(before!), 0, 'a closed segment is empty');
    }
    const log = new AuditLog(dir, opts, head, newest, tail.size);
    log.restore(opts.pending ?? []);
    if (tail.dropped > 0) {
      opts.logger.warn({ segment: segmentName(newest), dropped_bytes: tail.dropped }, 'audit log: torn tail repaired');
      log.record({
        event: 'alarm',
        reason: 'audit log torn tail repaired',
        detail: { segment: segmentName(newest), dropped_bytes: tail.dropped },
      });
    }
    return log;
  }

  /** The last line known to be fsynced ({seq: 0, hash: GENESIS} for an empty trail). */
  get durableHead(): { seq: number; hash: string } {
    return { seq: this.#durable.seq, hash: this.#durable.hash };
  }

  /** Append an event (validated; TypeError if it is not loggable). Buffered until flush(). */
  record(e: AuditEvent): void {
    if (this.#failed) throw this.#failed;
    if (this.#closed) throw new AuditLogError('CLOSED', 'audit log is closed');
    validateEvent(e);
    const seq = this.#seq + 1;
    const now = this.#clock.now();
    if (now !== this.#tsMs) {
      this.#tsMs = now;
      this.#ts = new Date(now).toISOString();
    }
    const body = encodeBody(seq, this.#ts, this.#hash, e);
    const hash = sha256Hex(body);
    const line = encodeLine(body, hash);
    this.#append(seq, hash, line);
    this.#onLine?.(seq, line);
  }

  #append(seq: number, hash: string, line: string): void {
    let chunk = this.#chunks[this.#chunks.length - 1];
    if (this.#segSize >= this.#segmentBytes) {
      this.#segIndex++;
      this.#segSize = 0;
      chunk = undefined;
    }
    if (chunk === undefined || chunk.index !== this.#segIndex) {
      chunk = { index: this.#segIndex, lines: [], lastSeq: 0, lastHash: '' };
      this.#chunks.push(chunk);
    }
    chunk.lines.push(line);
    chunk.lastSeq = seq;
    chunk.lastHash = hash;
    // Lines are ASCII: length is bytes.
    this.#segSize += line.length;
    this.#seq = seq;
    this.#hash = hash;
  }

  /** Write everything recorded so far and fdatasync it. Concurrent calls share the work. */
  flush(): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#inflight) {
      // Everything recorded is already in the write under way.
      if (this.#chunks.length === 0) return this.#inflight;
      this.#queued ??= this.#inflight
        .catch(() => undefined)
        .then(() => {
          this.#queued = null;
          return this.flush();
        });
      return this.#queued;
    }
    if (this.#chunks.length === 0) return Promise.resolve();
    const p = this.#write().finally(() => {
      this.#inflight = null;
    });
    this.#inflight = p;
    return p;
  }

  /** Flush, then close the file. record() throws from now on. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.flush();
    } finally {
      const fh = this.#fh;
      this.#fh = null;
      await fh?.close().catch(() => undefined);
    }
  }

  async #write(): Promise<void> {
    const batch = this.#chunks;
    this.#chunks = [];
    try {
      for (const c of batch) {
        const fh = await this.#handle(c.index);
        const data = Buffer.from(c.lines.join(''), 'latin1');
        let off = 0;
        while (off < data.length) {
          const { bytesWritten } = await fh.write(data, off, data.length - off);
          off += bytesWritten;
        }
        await fh.datasync();
        this.#durable = { seq: c.lastSeq, hash: c.lastHash };
      }
    } catch (e) {
      this.#failed = new AuditLogError('IO', `audit log write failed: ${(e as Error).message}`, { cause: e });
      this.#log.error({ err: e }, 'audit log: write failed; the trail accepts no more events');
      throw this.#failed;
    }
  }

  /** The file handle of segment `index`; a new file is created 0600 and the folder fsynced. */
  async #handle(index: number): Promise<FileHandle> {
    if (this.#fh && this.#fhIndex === index) return this.#fh;
    if (this.#fh) {
      await this.#fh.close();
      this.#fh = null;
    }
    const path = join(this.#dir, segmentName(index));
    let fh: FileHandle;
    let created = false;
    try {
      fh = await openAsync(path, fsc.O_WRONLY | fsc.O_APPEND | fsc.O_CREAT | fsc.O_EXCL, 0o600);
      created = true;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      fh = await openAsync(path, fsc.O_WRONLY | fsc.O_APPEND);
    }
    this.#fh = fh;
    this.#fhIndex = index;
    if (created) {
      const d = await openAsync(this.#dir, fsc.O_RDONLY);
      try {
        await d.sync();
      } finally {
        await d.close();
      }
      this.#log.info({ segment: segmentName(index) }, 'audit log: new segment');
    }
    return fh;
  }
}

function listSegments(dir: string): number[] {
  const out: number[] = [];
  for (const name of readdirSync(dir)) {
    const m = SEGMENT_RE.exec(name);
    if (m) out.push(Number(m[1]));
  }
  return out.sort((a, b) => a - b);
}

function brokenChain(dir: string, file: string, line: number | string, what: string): AuditLogError {
  return new AuditLogError(
    'BROKEN_CHAIN',
    `audit log ${join(dir, file)}${line ? ` near line ${line}` : ''}: ${what}. This is not what an interrupted ` +
      `write leaves; nothing was repaired. Run \`kme-audit verify --dir ${dir}\` and investigate before starting.`,
  );
}

/**
 * The last line of a segment, after checking the chain over the lines read from its end.
 * With `repair`, a torn tail is truncated away (and the file fsynced); otherwise it is an error.
 */
function readTail(dir: string, index: number, repair: boolean): { head: Head | null; size: number; dropped: number } {
  const name = segmentName(index);
  const path = join(dir, name);
  const fd = openSync(path, repair ? fsc.O_RDWR : fsc.O_RDONLY);
  try {
    const size = fstatSync(fd).size;
    // Read enough of the end to hold the last complete line and the one before it.
    let len = Math.min(size, TAIL_BYTES);
    let text = '';
    for (;;) {
      const buf = Buffer.alloc(len);
      const n = readSync(fd, buf, 0, len, size - len);
      text = buf.toString('latin1', 0, n);
      // Past the partial first line, two whole lines (the last may turn out torn).
      let nls = 0;
      for (let i = text.lastIndexOf('\n'); i >= 0 && nls < 3; i = i > 0 ? text.lastIndexOf('\n', i - 1) : -1) nls++;
      if (len === size || nls >= 3) break;
      len = Math.min(size, len * 2);
    }
    const start = size - text.length;
    // Whole lines in `text`; the first is partial unless we read from the file's start.
    let end = text.lastIndexOf('\n') + 1; // bytes of text kept
    let dropped = text.length - end;
    const lines = text.slice(0, end).split('\n');
    lines.pop(); // after the last "\n"
    if (start > 0) lines.shift();
    const lastRaw = lines[lines.length - 1];
    if (lastRaw !== undefined) {
      const c = checkLine(lastRaw);
      if (!c.ok && c.kind === 'json') {
        lines.pop();
        dropped += lastRaw.length + 1;
        end -= lastRaw.length + 1;
      }
    }
    if (dropped > 0) {
      if (!repair) throw brokenChain(dir, name, 'end', 'a closed segment ends in a torn line');
      ftruncateSync(fd, start + end);
    }
    if (repair) fsyncSync(fd);
    let prev: AuditLine | null = null;
    for (let i = 0; i < lines.length; i++) {
      const c = checkLine(lines[i]!);
      const where = `${lines.length - i} from the end`;
      if (!c.ok) throw brokenChain(dir, name, where, `a complete line is invalid (${c.why})`);
      if (prev && (c.line.seq !== prev.seq + 1 || c.line.prev !== prev.hash)) {
        throw brokenChain(dir, name, where, `seq ${c.line.seq} does not chain to seq ${prev.seq}`);
      }
      if (c.line.seq === 1 && c.line.prev !== GENESIS) throw brokenChain(dir, name, where, 'seq 1 does not start from the genesis value');
      prev = c.line;
    }
    return { head: prev ? { seq: prev.seq, hash: prev.hash } : null, size: start + end, dropped };
  } finally {
    closeSync(fd);
  }
}
