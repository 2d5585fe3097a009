/**
 * The simulated QKD link: one production schedule shared by the link's
 * modules, so they hold identical blocks under identical ids (material from
 * blockMaterial, the same derivation as SimQkdModule).
 *
 * Schedule: with nothing in the way, block n is produced at
 * `epochMs + (n + 1) * periodMs`, `periodMs = blockBits / rateBps * 1000`. A link
 * started at `startMs` after the epoch begins at the id wall time implies
 * (earlier blocks are gone), so ids never go back across simulator restarts.
 *
 * Production pauses while the link is down, while an eavesdropper holds the
 * QBER above what privacy amplification can distil, while a module is powered
 * off, and while any module's buffer of produced-unacknowledged blocks is full
 * (post-processing needs both ends). Paused time does not count: the block in
 * progress keeps its remaining time, and a block that was due when a buffer was
 * full is produced as soon as there is room.
 *
 * Pure and clock-free: every call takes `now` (ms). Nothing here is secret
 * except what material() returns.
 */
import { blockMaterial, seededUniform } from './material.js';
import { AlarmKind } from '../qkd/messages.js';

export interface QberModel {
  /** Baseline QBER of a healthy link (fraction, e.g. 0.02). */
  baseline: number;
  /** Half-width of the per-block uniform noise around the baseline. */
  noise: number;
  /** QBER while an eavesdropper is on the fibre (intercept-resend gives ~0.25). */
  eavesdrop: number;
  /** QBER reported while the link is down (no correlation: 0.5). */
  linkDown: number;
}

export const DEFAULT_QBER: QberModel = { baseline: 0.02, noise: 0.005, eavesdrop: 0.25, linkDown: 0.5 };

export interface LinkModelOptions {
  linkId: string;
  /** 32-byte shared seed (copied). */
  seed: Buffer;
  rateBps: number;
  blockBits: number;
  epochMs: number;
  /** Capacity of each module's buffer of produced-unacknowledged blocks. */
  bufferBlocks: number;
  /** Number of modules on the link (2). */
  modules?: number;
  qber?: Partial<QberModel>;
  /** Blocks before the detection an eavesdropping alarm also names (default 4). */
  alarmSpanBlocks?: number;
  /** When the link starts (ms). */
  startMs: number;
}

export interface LinkAlarm {
  kind: number;
  firstBlockId: number;
  lastBlockId: number;
  qberPpm: number;
  atMs: number;
}

export type PauseReason = 'link-down' | 'eavesdropping' | 'module-off' | 'buffer-full';

export class LinkModel {
  readonly linkId: string;
  readonly periodMs: number;
  readonly blockBits: number;
  readonly rateBps: number;
  readonly bufferBlocks: number;
  readonly modules: number;
  /** First block id this link produces. */
  readonly startId: number;
  readonly qberModel: QberModel;
  readonly #seed: Buffer;
  readonly #alarmSpan: number;
  /** Next block to produce. */
  #nextId: number;
  /** Block n >= anchorId is due at anchorAt + (n - anchorId + 1) * period while running. */
  #anchorId: number;
  #anchorAt: number;
  /** Set while paused: ms left until the block in progress is done once production resumes. */
  #pausedRemaining: number | undefined;
  #linkDown = false;
  #eavesdrop = false;
  readonly #powered: boolean[];
  /** Per module: every block below this id is acknowledged (gone from its buffer). */
  readonly #firstUnacked: number[];
  readonly #alarms: LinkAlarm[] = [];

  constructor(o: LinkModelOptions) {
    if (o.seed.length !== 32) throw new Error('simulated link seed must be 32 bytes');
    if (!(o.rateBps > 0)) throw new Error('rate_bps must be positive');
    if (!(o.blockBits > 0) || o.blockBits % 8 !== 0) throw new Error('block_bits must be a positive multiple of 8');
    if (!Number.isInteger(o.bufferBlocks) || o.bufferBlocks < 1) throw new Error('buffer_blocks must be a positive integer');
    this.linkId = o.linkId;
    this.#seed = Buffer.from(o.seed);
    this.rateBps = o.rateBps;
    this.blockBits = o.blockBits;
    this.bufferBlocks = o.bufferBlocks;
    this.modules = o.modules ?? 2;
    this.qberModel = { ...DEFAULT_QBER, ...o.qber };
    this.#alarmSpan = o.alarmSpanBlocks ?? 4;
    this.periodMs = (o.blockBits / o.rateBps) * 1000;
    this.startId = Math.max(0, Math.floor((o.startMs - o.epochMs) / this.periodMs));
    this.#nextId = this.startId;
    this.#anchorId = this.startId;
    this.#anchorAt = o.epochMs + this.startId * this.periodMs;
    this.#powered = Array.from({ length: this.modules }, () => true);
    this.#firstUnacked = Array.from({ length: this.modules }, () => this.startId);
  }

  /** Next block id to be produced; blocks below it exist. */
  get nextId(): number {
    return this.#nextId;
  }

  /** Highest block id produced so far (startId - 1 before the first). */
  get producedUpTo(): number {
    return this.#nextId - 1;
  }

  get linkDown(): boolean {
    return this.#linkDown;
  }

  get eavesdropping(): boolean {
    return this.#eavesdrop;
  }

  /** The quantum channel works: no link-down fault and every module powered. */
  get up(): boolean {
    return !this.#linkDown && this.#powered.every(Boolean);
  }

  /** Why production is paused, or undefined while it runs. Call advance(now) first. */
  get pausedBy(): PauseReason | undefined {
    if (this.#pausedRemaining === undefined) return undefined;
    if (this.#linkDown) return 'link-down';
    if (!this.#powered.every(Boolean)) return 'module-off';
    if (this.#eavesdrop) return 'eavesdropping';
    return 'buffer-full';
  }

  /** Produces every block due by `now`; returns how many. */
  advance(now: number): number {
    let produced = 0;
    while (this.#pausedRemaining === undefined && this.#dueAt(this.#nextId) <= now) {
      if (!this.#hasRoom()) {
        // Due, but a buffer is full: the block waits, done, until there is room.
        this.#pausedRemaining = 0;
        break;
      }
      this.#nextId++;
      produced++;
    }
    return produced;
  }

  /** When the next block is due, or undefined while production is paused. */
  nextDueAt(): number | undefined {
    return this.#pausedRemaining === undefined ? this.#dueAt(this.#nextId) : undefined;
  }

  firstUnacked(module: number): number {
    return this.#firstUnacked[this.#check(module)]!;
  }

  /** Blocks module `m` holds produced and not acknowledged. */
  bufferFill(module: number): number {
    return this.#nextId - this.firstUnacked(module);
  }

  /** Module `m` still holds block `id` (produced, not acknowledged). */
  holds(module: number, id: number): boolean {
    return id >= this.firstUnacked(module) && id < this.#nextId;
  }

  /** Module `m`'s host holds every block up to `blockId` durably. Beyond what was produced is clamped. */
  ack(module: number, blockId: number, now: number): void {
    this.#change(now, () => {
      const i = this.#check(module);
      const upTo = Math.min(blockId, this.#nextId - 1);
      if (upTo + 1 > this.#firstUnacked[i]!) this.#firstUnacked[i] = upTo + 1;
    });
  }

  setLinkDown(down: boolean, now: number): void {
    this.#change(now, () => {
      this.#linkDown = down;
    });
  }

  setPowered(module: number, on: boolean, now: number): void {
    this.#change(now, () => {
      this.#powered[this.#check(module)] = on;
    });
  }

  /**
   * An eavesdropper starts or stops. Starting returns the alarm both modules
   * send: the last `alarmSpanBlocks` blocks produced and the block in progress
   * (which will still be produced, and must be discarded too).
   */
  setEavesdropping(on: boolean, now: number): LinkAlarm | undefined {
    let alarm: LinkAlarm | undefined;
    this.#change(now, () => {
      if (on && !this.#eavesdrop) {
        alarm = {
          kind: AlarmKind.EAVESDROPPING,
          firstBlockId: Math.max(this.startId, this.#nextId - this.#alarmSpan),
          lastBlockId: this.#nextId,
          qberPpm: Math.round(this.qberModel.eavesdrop * 1e6),
          atMs: now,
        };
        this.#alarms.push(alarm);
        if (this.#alarms.length > 16) this.#alarms.shift();
      }
      this.#eavesdrop = on;
    });
    return alarm;
  }

  /** The most recent alarms (at most 16), oldest first. */
  get alarms(): readonly LinkAlarm[] {
    return this.#alarms;
  }

  /** Current QBER (fraction): per-block noise around the baseline, or the fault's value. */
  qber(): number {
    const m = this.qberModel;
    if (!this.up) return m.linkDown;
    const n = m.noise * (2 * seededUniform(this.#seed, 'qber', this.#nextId) - 1);
    return Math.min(0.5, Math.max(0, (this.#eavesdrop ? m.eavesdrop : m.baseline) + n));
  }

  /** Secret key rate now: nominal while producing (or only waiting for room), 0 while the link cannot distil key. */
  keyRateBps(): number {
    return this.up && !this.#eavesdrop ? this.rateBps : 0;
  }

  /** The secret material of block `id`. The caller zeroes it once sent. */
  material(id: number): Buffer {
    return blockMaterial(this.#seed, id, this.blockBits);
  }

  #dueAt(id: number): number {
    return this.#anchorAt + (id - this.#anchorId + 1) * this.periodMs;
  }

  #hasRoom(): boolean {
    return this.#firstUnacked.every((f) => this.#nextId - f < this.bufferBlocks);
  }

  #runnable(): boolean {
    return this.up && !this.#eavesdrop && this.#hasRoom();
  }

  /** Produce up to `now` under the old state, apply the change, then pause or resume. */
  #change(now: number, fn: () => void): void {
    this.advance(now);
    fn();
    const run = this.#runnable();
    if (run && this.#pausedRemaining !== undefined) {
      this.#anchorId = this.#nextId;
      this.#anchorAt = now + this.#pausedRemaining - this.periodMs;
      this.#pausedRemaining = undefined;
      this.advance(now);
    } else if (!run && this.#pausedRemaining === undefined) {
      this.#pausedRemaining = Math.max(0, this.#dueAt(this.#nextId) - now);
    }
  }

  #check(module: number): number {
    if (!Number.isInteger(module) || module < 0 || module >= this.modules) throw new Error(`no module ${module} on link ${this.linkId}`);
    return module;
  }
}
