/**
 * The service manager's end of sd_notify for tests: a Unix datagram socket
 * bound in a temp folder (through the same unix-dgram addon the daemons use),
 * recording every datagram with its arrival time.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

interface DgramSocket {
  bind(path: string): void;
  close(): void;
  on(event: 'message', fn: (buf: Buffer) => void): void;
  on(event: 'error', fn: (err: Error) => void): void;
}
const unix = createRequire(import.meta.url)('unix-dgram') as { createSocket(type: 'unix_dgram'): DgramSocket };

export interface Datagram {
  at: number;
  /** The assignments it carried, e.g. ['READY=1', 'STATUS=up']. */
  lines: string[];
}

export class NotifyManager {
  readonly messages: Datagram[] = [];
  readonly path: string;
  readonly #dir: string;
  readonly #sock: DgramSocket;
  #waiters: Array<() => void> = [];

  constructor() {
    this.#dir = mkdtempSync(join(tmpdir(), 'kme-notify-'));
    this.path = join(this.#dir, 'notify.sock');
    this.#sock = unix.createSocket('unix_dgram');
    this.#sock.on('message', (buf) => {
      this.messages.push({ at: Date.now(), lines: buf.toString('utf8').split('\n').filter((l) => l !== '') });
      for (const w of this.#waiters.splice(0)) w();
    });
    this.#sock.on('error', (err) => {
      throw err;
    });
    this.#sock.bind(this.path);
  }

  /** Index of the first datagram at or after `from` with a line equal to `line` (or matching it). */
  find(line: string | RegExp, from = 0): number {
    const hit = (l: string) => (typeof line === 'string' ? l === line : line.test(l));
    for (let i = from; i < this.messages.length; i++) if (this.messages[i]!.lines.some(hit)) return i;
    return -1;
  }

  count(line: string | RegExp, from = 0, to = this.messages.length): number {
    let n = 0;
    for (let i = from; i < to; ) {
      const j = this.find(line, i);
      if (j < 0 || j >= to) break;
      n++;
      i = j + 1;
    }
    return n;
  }

  /** Wait for such a datagram (at or after `from`); resolves with its index. */
  async waitFor(line: string | RegExp, timeoutMs: number, from = 0): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.find(line, from);
      if (i >= 0) return i;
      const left = deadline - Date.now();
      if (left <= 0) {
        const seen = this.messages.slice(from).map((m) => m.lines.join('|'));
        throw new Error(`no ${String(line)} within ${timeoutMs} ms; got: ${JSON.stringify(seen.slice(-20))}`);
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.#waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  }

  close(): void {
    this.#sock.close();
    rmSync(this.#dir, { recursive: true, force: true });
  }
}
