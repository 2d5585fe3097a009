/**
 * A small QKD module speaking protocol v1 over a ByteTransport, for driver
 * tests. It honours credit, keeps unacknowledged blocks, rewinds on RESEND,
 * and has test knobs: drop or corrupt given frames, stall, go link-down,
 * refuse connections (unplugged), speak another version, forget its session.
 */
import { FrameDecoder, encodeFrame } from '../../../../drivers/qkd/codec.js';
import { ErrorCode, type Frame, type Message } from '../../../../drivers/qkd/messages.js';
import { MemoryTransport } from '../../../../drivers/transport/memory.js';
import { TransportError, type ByteTransport } from '../../../../drivers/transport/types.js';

export function material(id: number, bytes: number): Buffer {
  const b = Buffer.alloc(bytes);
  for (let i = 0; i < bytes; i++) b[i] = (id * 31 + i * 7) & 0xff;
  return b;
}

export class FakeModule {
  /** Every message received, in order. */
  readonly received: Message[] = [];
  /** Every KEY_BLOCK id put on the wire (including dropped/corrupted ones). */
  readonly sentBlocks: number[] = [];
  /** Highest credit ever received. */
  maxCredit = -1;
  connections = 0;
  // Knobs
  protocolVersion = 1;
  refuseVersion = false;
  blockBits = 256;
  /** Highest block id produced so far (Infinity: as many as credit allows). */
  producedUpTo = Infinity;
  up = true;
  qberPpm = 21_000;
  keyRateBps = 123_456;
  bufferCapacity = 1000;
  /** Ignore everything and send nothing. */
  stalled = false;
  /** Refuse new connections. */
  unplugged = false;
  /** Drop the first transmission of these block ids. */
  readonly dropBlocks = new Set<number>();
  /** Flip a bit in the first transmission of these block ids. */
  readonly corruptBlocks = new Set<number>();
  /** Send these block ids twice. */
  readonly duplicateBlocks = new Set<number>();
  /** Answer no HELLO (handshake timeout). */
  mute = false;

  #t: ByteTransport | undefined;
  #decoder = new FrameDecoder({ onFrame: (f) => this.#onFrame(f) });
  #seq = 0;
  #session = false;
  #credit = -1;
  #pos = 0;
  acked = -1;

  /** A transport factory for the driver: each call is a new connection to this module. */
  readonly connect = (opts: { maxChunk?: number } = {}): ByteTransport => {
    if (this.unplugged) return refusing();
    const [host, dev] = MemoryTransport.pair({ maxChunk: opts.maxChunk, names: ['host', 'module'] });
    void this.attach(dev);
    return host;
  };

  /** Speak on `t` (already open or not); replaces any previous transport. */
  async attach(t: ByteTransport): Promise<void> {
    const old = this.#t;
    this.#t = t;
    if (old && old !== t) await old.close();
    this.connections++;
    this.#session = false;
    this.#decoder = new FrameDecoder({ onFrame: (f) => this.#onFrame(f) });
    t.onData((c) => {
      if (this.#t === t && !this.stalled) this.#decoder.push(c);
    });
    await t.open();
  }

  /** The device disappears: the current connection drops. */
  unplug(): void {
    this.unplugged = true;
    const t = this.#t;
    this.#t = undefined;
    if (t instanceof MemoryTransport) t.unplug();
    else void t?.close();
  }

  /** The module loses its session without a word (a quick reboot on the same line). */
  forgetSession(): void {
    this.#session = false;
    this.#credit = -1;
  }

  produce(upTo: number): void {
    this.producedUpTo = upTo;
    this.pump();
  }

  send(m: Message): void {
    const t = this.#t;
    if (!t || this.stalled) return;
    const f = encodeFrame(this.#seq, m);
    this.#seq = (this.#seq + 1) >>> 0;
    if (m.type === 'key_block' && this.corruptBlocks.delete(m.blockId)) f[f.length - 6]! ^= 0x10;
    void t.write(f).catch(() => {});
  }

  count(type: Message['type']): number {
    return this.received.filter((m) => m.type === type).length;
  }

  pump(): void {
    if (!this.#session || this.stalled) return;
    while (this.#pos <= Math.min(this.#credit, this.producedUpTo)) {
      const id = this.#pos++;
      this.sentBlocks.push(id);
      if (this.dropBlocks.delete(id)) continue;
      const m: Message = { type: 'key_block', blockId: id, bits: this.blockBits, material: material(id, this.blockBits / 8) };
      this.send(m);
      if (this.duplicateBlocks.delete(id)) this.send(m);
    }
  }

  #onFrame(f: Frame): void {
    const m = f.message;
    this.received.push(m);
    switch (m.type) {
      case 'hello':
      case 'reset':
        if (this.mute) return;
        if (this.refuseVersion) return this.send({ type: 'error', code: ErrorCode.UNSUPPORTED_VERSION, text: 'v1 not supported' });
        this.#session = true;
        this.#credit = -1;
        this.#pos = this.acked + 1;
        this.send({
          type: 'identify',
          protocolVersion: this.protocolVersion,
          moduleSerial: 'QKD-0001',
          firmware: 'fake-1.0',
          linkId: 'link-ab',
          peerModuleId: 'QKD-0002',
          firstBlockId: this.acked + 1,
        });
        return;
      case 'status_request':
        return this.send({
          type: 'link_status',
          up: this.up,
          qberPpm: this.qberPpm,
          keyRateBps: this.keyRateBps,
          bufferFill: Math.max(0, Math.min(this.producedUpTo, 1e9) - this.acked),
          bufferCapacity: this.bufferCapacity,
        });
      case 'credit':
      case 'ack':
      case 'resend':
        if (!this.#session) return this.send({ type: 'error', code: ErrorCode.BAD_STATE, text: 'no session' });
        if (m.type === 'credit') {
          this.#credit = m.upToBlockId;
          this.maxCredit = Math.max(this.maxCredit, m.upToBlockId);
        } else if (m.type === 'ack') {
          this.acked = Math.max(this.acked, m.blockId);
          this.#pos = Math.max(this.#pos, this.acked + 1);
        } else {
          if (m.fromBlockId <= this.acked) this.send({ type: 'error', code: ErrorCode.BLOCKS_GONE, text: 'gone' });
          this.#pos = Math.max(m.fromBlockId, this.acked + 1);
        }
        return this.pump();
      default:
        return;
    }
  }
}

/** A transport whose open() fails, as when the device node is missing. */
function refusing(): ByteTransport {
  return {
    caps: { modemLines: false },
    description: 'memory (unplugged)',
    open: async () => {
      throw new TransportError('OPEN_FAILED', 'no such device');
    },
    close: async () => {},
    write: async () => {
      throw new TransportError('NOT_OPEN', 'not open');
    },
    onData: () => () => {},
    onClose: () => () => {},
  };
}
