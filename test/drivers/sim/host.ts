/**
 * The host (KME) side of the module protocol, for tests: sends messages with
 * the real codec over any byte stream and collects what the module sends.
 */
import { connect, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { encodeFrame, FrameDecoder } from '../../../drivers/qkd/codec.js';
import type { Frame, Message } from '../../../drivers/qkd/messages.js';

type Of<T extends Message['type']> = Extract<Message, { type: T }>;

export class TestHost {
  readonly frames: Frame[] = [];
  readonly decoder: FrameDecoder;
  closed = false;
  #seq = 0;
  #waiters = new Set<() => void>();

  constructor(readonly stream: Duplex) {
    this.decoder = new FrameDecoder({ onFrame: (f) => this.#got(f), onError: () => this.#wake() });
    stream.on('data', (d: Buffer) => this.decoder.push(d));
    stream.on('error', () => undefined);
    stream.on('close', () => {
      this.closed = true;
      this.#wake();
    });
  }

  static connect(path: string): Promise<TestHost> {
    return new Promise((resolve, reject) => {
      const s: Socket = connect({ path });
      s.once('connect', () => resolve(new TestHost(s)));
      s.once('error', reject);
    });
  }

  send(m: Message): void {
    this.stream.write(encodeFrame(this.#seq++, m));
  }

  /** Messages of one type received so far. */
  all<T extends Message['type']>(type: T): Of<T>[] {
    return this.frames.map((f) => f.message).filter((m): m is Of<T> => m.type === type);
  }

  blockIds(): number[] {
    return this.all('key_block').map((b) => b.blockId);
  }

  /** Waits for the first message of `type` (after `from` frames) matching `pred`. */
  async next<T extends Message['type']>(type: T, pred: (m: Of<T>) => boolean = () => true, timeoutMs = 2000, from = 0): Promise<Of<T>> {
    const found = () => this.frames.slice(from).map((f) => f.message).find((m): m is Of<T> => m.type === type && pred(m as Of<T>));
    await this.until(() => found() !== undefined, timeoutMs, `no ${type} frame`);
    return found()!;
  }

  /** Sends `m` and waits for the first answer of `type` that arrives after it. */
  async ask<T extends Message['type']>(m: Message, type: T, timeoutMs = 2000): Promise<Of<T>> {
    const from = this.frames.length;
    this.send(m);
    return this.next(type, () => true, timeoutMs, from);
  }

  async until(cond: () => boolean, timeoutMs = 2000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; got ${this.frames.map((f) => f.message.type).join(',')}`);
      await new Promise<void>((r) => {
        const t = setTimeout(done, Math.min(left, 50));
        function done() {
          clearTimeout(t);
          r();
        }
        this.#waiters.add(done);
      });
    }
  }

  close(): void {
    this.stream.destroy();
  }

  #got(f: Frame): void {
    this.frames.push(f);
    this.#wake();
  }

  #wake(): void {
    const w = [...this.#waiters];
    this.#waiters.clear();
    for (const f of w) f();
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
