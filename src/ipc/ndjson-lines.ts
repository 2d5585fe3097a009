/**
 * Newline framing for the NDJSON IPC, shared by server and client.
 *
 * Chunks are kept as a list of Buffers and joined once per line (no string
 * concatenation per chunk), so a long line arriving in many chunks costs
 * O(length), and the common case (whole lines inside one chunk) costs one
 * subarray per line and no copy.
 */
import type { Socket } from 'node:net';

const NL = 0x0a;
const HEAD_BYTES = 64;

export interface LineSink {
  /** One complete line, without the '\n'. May be a view into a larger chunk. */
  line(buf: Buffer): void;
  /**
   * The current line grew past the limit. `head` is its first bytes (for id
   * recovery). Return true to skip the rest of that line and go on, false to stop.
   */
  overflow(head: Buffer): boolean;
}

export class LineSplitter {
  private parts: Buffer[] = [];
  private len = 0;
  private skipping = false;
  private stopped = false;

  constructor(
    private readonly maxBytes: number,
    private readonly sink: LineSink,
  ) {}

  push(chunk: Buffer): void {
    if (this.stopped) return;
    let start = 0;
    let nl = chunk.indexOf(NL);
    while (nl !== -1) {
      if (this.skipping) {
        this.skipping = false;
      } else {
        const size = this.len + (nl - start);
        if (size > this.maxBytes) {
          const head = this.head(chunk.subarray(start, nl));
          this.reset();
          if (!this.sink.overflow(head)) return this.stop();
        } else {
          let line: Buffer;
          if (this.parts.length === 0) {
            line = chunk.subarray(start, nl);
          } else {
            this.parts.push(chunk.subarray(start, nl));
            line = Buffer.concat(this.parts, size);
            this.reset();
          }
          if (line.length > 0) this.sink.line(line);
          if (this.stopped) return;
        }
      }
      start = nl + 1;
      nl = chunk.indexOf(NL, start);
    }
    if (start < chunk.length && !this.skipping) {
      const rest = chunk.subarray(start);
      this.parts.push(rest);
      this.len += rest.length;
      if (this.len > this.maxBytes) {
        const head = this.head();
        this.reset();
        if (!this.sink.overflow(head)) return this.stop();
        this.skipping = true;
      }
    }
  }

  /** Stop delivering lines (the connection is being dropped). */
  stop(): void {
    this.stopped = true;
    this.reset();
  }

  /** The first HEAD_BYTES of the buffered line (plus `tail` if given). */
  private head(tail?: Buffer): Buffer {
    const parts = tail ? [...this.parts, tail] : this.parts;
    const out: Buffer[] = [];
    let n = 0;
    for (const p of parts) {
      if (n >= HEAD_BYTES) break;
      out.push(p);
      n += p.length;
    }
    return Buffer.concat(out).subarray(0, HEAD_BYTES);
  }

  private reset(): void {
    this.parts = [];
    this.len = 0;
  }
}

const ID_HEAD = /^\s*\{\s*"id"\s*:\s*(\d{1,15})\s*[,}]/;

/** Best-effort id from the start of a line that is not valid JSON or is too long. */
export function recoverId(head: Buffer): number | null {
  const m = ID_HEAD.exec(head.toString('latin1', 0, Math.min(head.length, HEAD_BYTES)));
  if (!m) return null;
  const id = Number(m[1]);
  return Number.isSafeInteger(id) ? id : null;
}

/**
 * Write a line, coalescing all lines written to `sock` in the same tick into
 * one syscall (cork now, uncork on the next tick).
 */
export function writeCoalesced(sock: Socket, line: string): void {
  if (sock.writableCorked === 0) {
    sock.cork();
    process.nextTick(uncork, sock);
  }
  sock.write(line);
}

function uncork(sock: Socket): void {
  while (sock.writableCorked > 0) sock.uncork();
}
