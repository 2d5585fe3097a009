/**
 * Flow control of the key-block stream, without I/O: which block the host
 * expects next, what it queued for the consumer, the credit it granted, what
 * it acknowledged, gaps, duplicates and alarmed ranges. Each method returns
 * the messages the driver must send. See PROTOCOL.md sections 4, 5 and 8.
 */
import type { KeyBlock } from '../types.js';
import type { Message } from './messages.js';

export interface FlowCounters {
  blocksIn: number;
  duplicates: number;
  resends: number;
  /** Ids the module no longer had (skipped). */
  lostBlocks: number;
  /** Blocks above the granted credit (dropped). */
  creditViolations: number;
  /** Blocks inside an alarm's range (never handed to the consumer). */
  discardedBlocks: number;
}

const MAX_ALARM_RANGES = 64;

export class BlockFlow {
  readonly counters: FlowCounters = { blocksIn: 0, duplicates: 0, resends: 0, lostBlocks: 0, creditViolations: 0, discardedBlocks: 0 };
  /** A blocks() iteration is running. */
  iterating = false;
  /** Received in order, not yet handed to the consumer. */
  #queue: KeyBlock[] = [];
  /** First id not yet received; meaningful once positioned by start(). */
  #next = 0;
  #positioned = false;
  /** Highest id the consumer acknowledged. */
  #acked = -1;
  // Per session:
  #inSession = false;
  #granted = -1;
  #ackSent = -1;
  #sessionFirst = 0;
  /** Where the module's send position should be. */
  #modulePos = 0;
  #gapLastId: number | undefined;
  #acceptJump = false;
  #keyFrames = 0;
  #keyFramesAtStatus = 0;
  #statusBaseline = -1;
  readonly #alarms: Array<[number, number]> = [];

  constructor(readonly window: number) {
    if (!Number.isInteger(window) || window < 1) throw new RangeError('window must be a positive integer');
  }

  get next(): number {
    return this.#next;
  }
  get granted(): number {
    return this.#granted;
  }
  get queued(): number {
    return this.#queue.length;
  }
  get acked(): number {
    return this.#acked;
  }

  /** A blocks(fromId) iteration begins. */
  start(fromId: number): Message[] {
    this.iterating = true;
    this.#gapLastId = undefined;
    const firstHeld = this.#queue[0]?.blockId ?? this.#next;
    if (this.#positioned && fromId >= firstHeld && fromId <= this.#next) {
      this.#dropQueued((b) => b.blockId < fromId);
      return [];
    }
    this.#dropQueued(() => true);
    this.#next = fromId;
    this.#positioned = true;
    return this.#reposition();
  }

  /**
   * The consumer asks for more: grant credit up to the last block it was
   * handed + window, once at least half the window has been used (so the
   * module gets a CREDIT per half window, not one per block).
   */
  pull(): Message[] {
    if (!this.#inSession || !this.#positioned) return [];
    const handed = (this.#queue[0]?.blockId ?? this.#next) - 1;
    const want = handed + this.window;
    if (want <= this.#granted || this.#granted - handed > this.window / 2) return [];
    this.#granted = want;
    return [{ type: 'credit', upToBlockId: want }];
  }

  /** Everything queued, handed to the consumer. */
  take(): KeyBlock[] {
    const batch = this.#queue;
    this.#queue = [];
    return batch;
  }

  ack(blockId: number): Message[] {
    if (blockId <= this.#acked) return [];
    this.#acked = blockId;
    if (!this.#inSession || blockId <= this.#ackSent) return [];
    this.#ackSent = blockId;
    return [{ type: 'ack', blockId }];
  }

  /** IDENTIFY arrived: a new session (the module forgot credit; its send position is `firstBlockId`). */
  sessionStarted(firstBlockId: number): Message[] {
    this.#inSession = true;
    this.#granted = -1;
    this.#ackSent = -1;
    this.#sessionFirst = this.#modulePos = firstBlockId;
    this.#gapLastId = undefined;
    this.#acceptJump = false;
    this.#keyFramesAtStatus = this.#keyFrames;
    const out: Message[] = [];
    if (this.#acked >= firstBlockId) {
      this.#ackSent = this.#acked;
      this.#modulePos = this.#acked + 1;
      out.push({ type: 'ack', blockId: this.#acked });
    }
    out.push(...this.#reposition());
    if (this.iterating) out.push(...this.pull());
    return out;
  }

  sessionEnded(): void {
    this.#inSession = false;
  }

  /** The module answered ERROR BLOCKS_GONE: accept the next jump in ids. */
  blocksGone(): void {
    this.#acceptJump = true;
  }

  onBlock(b: KeyBlock): Message[] {
    this.#keyFrames++;
    const id = b.blockId;
    if (!this.#inSession || !this.#positioned || id > this.#granted) {
      this.counters.creditViolations++;
      b.material.fill(0);
      return [];
    }
    if (id < this.#next) {
      this.counters.duplicates++;
      b.material.fill(0);
      return [];
    }
    if (id > this.#next) {
      if (this.#acceptJump) {
        this.counters.lostBlocks += id - this.#next;
        this.#next = id;
      } else {
        b.material.fill(0);
        // A first gap, or ids going backwards (the module rewound and lost the block again): ask again.
        // (An id equal to the last one is a duplicate on the wire, not a rewind.)
        if (this.#gapLastId === undefined || id < this.#gapLastId) {
          this.#gapLastId = id;
          return this.#resend();
        }
        this.#gapLastId = id;
        return [];
      }
    }
    this.#acceptJump = false;
    this.#gapLastId = undefined;
    this.#next = id + 1;
    this.#modulePos = this.#next;
    this.counters.blocksIn++;
    if (this.#inAlarm(id)) {
      this.counters.discardedBlocks++;
      b.material.fill(0);
    } else this.#queue.push(b);
    return [];
  }

  /** An alarm: never hand out blocks in [first, last]. */
  alarm(first: number, last: number): void {
    if (!this.#alarms.some(([a, z]) => a === first && z === last)) {
      this.#alarms.push([first, last]);
      if (this.#alarms.length > MAX_ALARM_RANGES) this.#alarms.shift();
    }
    this.#dropQueued((b) => b.blockId >= first && b.blockId <= last, true);
  }

  /** A STATUS_REQUEST goes out: remember what the module had been acknowledged when it reads it. */
  statusRequested(): void {
    this.#statusBaseline = Math.max(this.#ackSent, this.#sessionFirst - 1);
  }

  /**
   * LINK_STATUS arrived: if the module holds credited blocks we lack and sent
   * no block during the whole poll period, its last blocks were lost: ask again.
   */
  statusReceived(bufferFill: number): Message[] {
    const quiet = this.#keyFrames === this.#keyFramesAtStatus;
    this.#keyFramesAtStatus = this.#keyFrames;
    if (!this.#inSession || !this.#positioned || !this.iterating || !quiet) return [];
    const highestHeld = this.#statusBaseline + bufferFill;
    if (Math.min(this.#granted, highestHeld) < this.#next) return [];
    return [...this.#resend(), ...this.#regrant()];
  }

  /** The module went silent: repeat what it may have missed (all idempotent). */
  nudge(): Message[] {
    if (!this.#inSession) return [];
    const out: Message[] = [];
    if (this.#ackSent >= 0) out.push({ type: 'ack', blockId: this.#ackSent });
    if (this.#positioned && this.iterating && this.#granted >= this.#next) out.push(...this.#resend());
    out.push(...this.#regrant());
    return out;
  }

  #resend(): Message[] {
    this.counters.resends++;
    this.#modulePos = this.#next;
    return [{ type: 'resend', fromBlockId: this.#next }];
  }

  #regrant(): Message[] {
    return this.#granted >= 0 ? [{ type: 'credit', upToBlockId: this.#granted }] : [];
  }

  /** In a session, make the module's send position the next id we need. */
  #reposition(): Message[] {
    if (!this.#inSession || !this.#positioned) return [];
    if (this.#next < this.#sessionFirst && this.#next > this.#acked) {
      this.counters.lostBlocks += this.#sessionFirst - this.#next;
      this.#next = this.#sessionFirst;
    }
    if (this.#next === this.#modulePos) return [];
    return this.#resend();
  }

  #inAlarm(id: number): boolean {
    return this.#alarms.some(([a, z]) => id >= a && id <= z);
  }

  #dropQueued(pred: (b: KeyBlock) => boolean, discarded = false): void {
    this.#queue = this.#queue.filter((b) => {
      if (!pred(b)) return true;
      b.material.fill(0);
      if (discarded) this.counters.discardedBlocks++;
      return false;
    });
  }
}
