/**
 * The host side of the QKD module protocol v1 (PROTOCOL.md) over any byte
 * transport: handshake and version check, credit-based pull of key blocks,
 * gaps, duplicates and stalls, link-status polling, alarms, and reconnects
 * with capped exponential backoff (one pending timer at most).
 *
 * States: closed -> opening -> ready <-> degraded -> failed; close() from any.
 */
import type { Logger } from '../../src/common/logger.js';
import type { ByteTransport } from '../transport/types.js';
import { systemClock, type Clock, type DriverCounters, type DriverState, type KeyBlock, type QkdAlarm, type QkdModuleDriver, type QkdModuleInfo } from '../types.js';
import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from './backoff.js';
import { BlockFlow } from './block-flow.js';
import { FrameDecoder } from './codec.js';
import { DriverError } from './errors.js';
import { Link } from './link.js';
import { AlarmKind, ErrorCode, PROTOCOL_VERSION, type Frame, type Message } from './messages.js';
import { Mutex } from './mutex.js';
import { Waitress } from './waitress.js';
import { Wake } from './wake.js';

export interface DriverTimeouts {
  /** HELLO -> IDENTIFY (default 3000). */
  handshakeMs: number;
  /** STATUS_REQUEST -> LINK_STATUS (default 2000). */
  requestMs: number;
  /** No frame at all for this long: nudge; twice as long: reconnect (default 5000). */
  silenceMs: number;
  /** A partial frame idle this long is declared truncated (default 500). */
  partialFrameMs: number;
}

export interface ProtocolDriverOptions {
  /** Makes a new, unopened transport; called at open() and at each reconnect. */
  transport: () => ByteTransport;
  clock?: Clock;
  logger: Logger;
  /** This KME's id, sent in HELLO. */
  hostId: string;
  timeouts?: Partial<DriverTimeouts>;
  /** Blocks of credit ahead of the last block handed to the consumer (default 64). */
  window?: number;
  /** LINK_STATUS poll period (default 1000). */
  statusPollMs?: number;
  backoff?: Partial<BackoffOptions>;
  /** Uniform [0, 1) for backoff jitter (default Math.random). */
  random?: () => number;
}

type Identify = Extract<Message, { type: 'identify' }>;
type LinkStatus = Extract<Message, { type: 'link_status' }>;
const DEFAULT_TIMEOUTS: DriverTimeouts = { handshakeMs: 3000, requestMs: 2000, silenceMs: 5000, partialFrameMs: 500 };
const ALARM_KIND: Record<number, QkdAlarm['kind']> = { [AlarmKind.QBER_THRESHOLD]: 'qber_threshold', [AlarmKind.EAVESDROPPING]: 'eavesdropping' };

export class ProtocolDriver implements QkdModuleDriver {
  readonly #o: ProtocolDriverOptions;
  readonly #t: DriverTimeouts;
  readonly #backoff: BackoffOptions;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #flow: BlockFlow;
  readonly #decoder: FrameDecoder;
  readonly #waitress: Waitress<Message>;
  readonly #mutex = new Mutex();
  readonly #wake = new Wake();
  readonly #stateCbs = new Set<(s: DriverState, cause?: Error) => void>();
  readonly #alarmCbs = new Set<(a: QkdAlarm) => void>();
  readonly #pendingAlarms: QkdAlarm[] = [];
  readonly #seenAlarms: string[] = [];
  readonly #c = { framesIn: 0, framesOut: 0, reconnects: 0, reconnectFailures: 0, timeouts: 0, alarms: 0, moduleErrors: 0, seqGaps: 0, unexpectedFrames: 0 };
  #state: DriverState = 'closed';
  #closer = new AbortController();
  #link: Link | undefined;
  #identity: Identify | undefined;
  #status: LinkStatus | undefined;
  #failure: DriverError | undefined;
  #reconnecting = false;
  #lastHelloAt = -Infinity;
  #expectSeq: number | undefined;

  constructor(opts: ProtocolDriverOptions) {
    this.#o = opts;
    this.#t = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
    this.#backoff = { ...DEFAULT_BACKOFF, ...opts.backoff };
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger;
    this.#flow = new BlockFlow(opts.window ?? 64);
    this.#waitress = new Waitress(this.#clock);
    this.#decoder = new FrameDecoder({
      onFrame: (f) => this.#onFrame(f),
      onError: (e) => this.#log.debug({ code: e.code, frame: e.frame, err: e.message }, 'qkd frame dropped'),
    });
  }

  get state(): DriverState {
    return this.#state;
  }

  /** The module's last IDENTIFY (serial, firmware, link, peer module, first block id). */
  get identity(): Readonly<Identify> | undefined {
    return this.#identity;
  }

  async open(signal?: AbortSignal): Promise<QkdModuleInfo> {
    if ((this.#state === 'ready' || this.#state === 'degraded') && this.#identity) return this.#info();
    if (this.#state === 'opening') throw new DriverError('QKD_BUSY', 'open() already in progress');
    this.#closer = new AbortController();
    this.#failure = undefined;
    this.#setState('opening');
    const sig = signal ? AbortSignal.any([signal, this.#closer.signal]) : this.#closer.signal;
    try {
      await this.#connect(sig);
      this.#setState('ready');
      return this.#info();
    } catch (e) {
      const err = this.#closer.signal.aborted ? new DriverError('QKD_CLOSED', 'driver closed during open', false) : asDriverError(e);
      if ((this.#state as DriverState) === 'opening') this.#setState(err.code === 'QKD_VERSION' ? 'failed' : 'closed', err);
      throw err;
    }
  }

  async close(): Promise<void> {
    this.#setState('closed');
    this.#closer.abort(new DriverError('QKD_CLOSED', 'driver closed', false));
    const link = this.#link;
    if (link) await link.close();
    this.#waitress.rejectAll(new DriverError('QKD_CLOSED', 'driver closed', false));
    this.#wake.notify();
  }

  async linkStatus(): Promise<{ up: boolean; qber?: number; keyRateBps?: number }> {
    return this.#mutex.run(async () => {
      const link = this.#link;
      if (!link || (this.#state !== 'ready' && this.#state !== 'degraded')) throw new DriverError('QKD_LINK_DOWN', `not connected (${this.#state})`);
      const answer = this.#waitress.wait((m) => m.type === 'link_status', this.#t.requestMs, 'STATUS_REQUEST');
      this.#flow.statusRequested();
      link.send({ type: 'status_request' });
      try {
        const m = (await answer) as LinkStatus;
        return { up: m.up, qber: m.qberPpm / 1e6, keyRateBps: m.keyRateBps };
      } catch (e) {
        const err = asDriverError(e);
        if (err.code === 'QKD_TIMEOUT') {
          this.#c.timeouts++;
          this.#degrade(err);
        }
        throw err;
      }
    });
  }

  async *blocks(fromId: number, signal?: AbortSignal): AsyncIterable<KeyBlock[]> {
    if (!Number.isSafeInteger(fromId) || fromId < 0) throw new RangeError(`fromId must be a safe non-negative integer, got ${fromId}`);
    if (this.#flow.iterating) throw new DriverError('QKD_BUSY', 'a blocks() iteration is already running', false);
    this.#sendAll(this.#flow.start(fromId));
    try {
      for (;;) {
        if (signal?.aborted || this.#state === 'closed') return;
        if (this.#state === 'failed') throw this.#failure ?? new DriverError('QKD_FAILED', 'driver failed', false);
        this.#sendAll(this.#flow.pull()); // credit only as the consumer pulls
        const batch = this.#flow.take();
        if (batch.length > 0) yield batch;
        else await this.#wake.wait(signal);
      }
    } finally {
      this.#flow.iterating = false;
    }
  }

  ack(blockId: number): void {
    this.#sendAll(this.#flow.ack(blockId));
  }

  onAlarm(cb: (alarm: QkdAlarm) => void): () => void {
    this.#alarmCbs.add(cb);
    for (const a of this.#pendingAlarms.splice(0)) this.#emit(cb, a);
    return () => this.#alarmCbs.delete(cb);
  }

  onStateChange(cb: (state: DriverState, cause?: Error) => void): () => void {
    this.#stateCbs.add(cb);
    return () => this.#stateCbs.delete(cb);
  }

  counters(): DriverCounters {
    const s = this.#status;
    return {
      ...this.#c,
      ...this.#decoder.counters,
      ...this.#flow.counters,
      qberPpm: s?.qberPpm ?? 0,
      keyRateBps: s?.keyRateBps ?? 0,
      bufferFill: s?.bufferFill ?? 0,
      bufferCapacity: s?.bufferCapacity ?? 0,
      linkUp: s?.up ? 1 : 0,
    };
  }

  /** One connection attempt: open the transport, HELLO, IDENTIFY, version check, session setup. */
  async #connect(signal: AbortSignal): Promise<void> {
    const link = new Link(this.#o.transport(), {
      decoder: this.#decoder,
      clock: this.#clock,
      logger: this.#log,
      onClosed: (l, err) => this.#onLinkClosed(l, err),
      onFrameOut: () => this.#c.framesOut++,
    });
    this.#link = link;
    this.#expectSeq = undefined;
    const onAbort = () => void link.close();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      try {
        await link.open(signal);
      } catch (e) {
        throw new DriverError('QKD_LINK_DOWN', `${link.transport.description}: ${(e as Error).message}`, true, { cause: e });
      }
      const answer = this.#waitress.wait(
        (m) => m.type === 'identify' || (m.type === 'error' && m.code === ErrorCode.UNSUPPORTED_VERSION),
        this.#t.handshakeMs,
        'HELLO',
      );
      this.#hello(link);
      const m = await answer;
      if (m.type !== 'identify') {
        throw new DriverError('QKD_VERSION', `the module refuses protocol version ${PROTOCOL_VERSION}: ${m.type === 'error' ? m.text : ''}`, false);
      }
      this.#startSession(m);
      void this.#watch(link);
    } catch (e) {
      await link.close();
      throw e;
    } finally {
      signal.removeEventListener('abort', onAbort);
    }
  }

  #hello(link: Link): void {
    this.#lastHelloAt = this.#clock.now();
    link.send({ type: 'hello', hostVersion: PROTOCOL_VERSION, hostId: this.#o.hostId });
  }

  /** IDENTIFY: check the version, then (re)start the block stream for this session. */
  #startSession(m: Identify): void {
    if (m.protocolVersion !== PROTOCOL_VERSION) {
      throw new DriverError('QKD_VERSION', `the module speaks protocol version ${m.protocolVersion}, this host speaks ${PROTOCOL_VERSION}`, false);
    }
    this.#identity = m;
    this.#log.info({ module: m.moduleSerial, link: m.linkId, firmware: m.firmware, first_block_id: m.firstBlockId }, 'qkd module session opened');
    this.#sendAll(this.#flow.sessionStarted(m.firstBlockId));
    this.#wake.notify();
  }

  /** One loop per link: partial-frame expiry, status polling, silence detection. */
  async #watch(link: Link): Promise<void> {
    const t = this.#t;
    const poll = this.#o.statusPollMs ?? 1000;
    const tick = Math.max(5, Math.min(t.partialFrameMs, poll, t.silenceMs) / 2);
    let lastPoll = this.#clock.now();
    let nudged = false;
    while (!link.closed) {
      try {
        await this.#clock.sleep(tick, link.signal);
      } catch {
        return;
      }
      if (link.closed) return;
      const now = this.#clock.now();
      const idle = now - link.lastRxAt;
      while (this.#decoder.buffered > 0 && idle >= t.partialFrameMs && this.#decoder.flushPartial());
      if (now - lastPoll >= poll && !this.#mutex.locked) {
        lastPoll = now;
        this.linkStatus().catch(() => {});
      }
      if (idle < t.silenceMs) nudged = false;
      else if (!nudged) {
        nudged = true;
        this.#c.timeouts++;
        this.#degrade(new DriverError('QKD_TIMEOUT', `no frame from the module for ${idle} ms`));
        this.#sendAll(this.#flow.nudge());
      } else if (idle >= 2 * t.silenceMs) {
        this.#c.timeouts++;
        this.#log.warn({ idle_ms: idle }, 'qkd module silent: reconnecting');
        await link.close();
        return;
      }
    }
  }

  #onLinkClosed(link: Link, err?: Error): void {
    if (link !== this.#link) return;
    this.#link = undefined;
    this.#flow.sessionEnded();
    const e = new DriverError('QKD_LINK_DOWN', `${link.transport.description} closed${err ? `: ${err.message}` : ''}`, true, { cause: err });
    this.#waitress.rejectAll(e);
    if (this.#state !== 'ready' && this.#state !== 'degraded') return; // open() or close() is in charge
    if (this.#reconnecting) return; // the reconnect loop is in charge
    this.#degrade(e, true);
    void this.#reconnectLoop();
  }

  /** Reconnects with capped exponential backoff and jitter; one loop, one pending timer. */
  async #reconnectLoop(): Promise<void> {
    if (this.#reconnecting) return;
    this.#reconnecting = true;
    let lastErr: unknown;
    try {
      for (let attempt = 0; ; attempt++) {
        if (attempt >= this.#backoff.maxAttempts) {
          this.#fail(new DriverError('QKD_FAILED', `gave up after ${attempt} reconnect attempts`, false, { cause: lastErr }));
          return;
        }
        const delay = backoffDelay(attempt, this.#backoff, (this.#o.random ?? Math.random)());
        this.#log.info({ attempt: attempt + 1, delay_ms: delay }, 'qkd module reconnect scheduled');
        try {
          await this.#clock.sleep(delay, this.#closer.signal);
        } catch {
          return; // closed
        }
        this.#c.reconnects++;
        try {
          await this.#connect(this.#closer.signal);
          if (!this.#link) continue; // closed again at once
          this.#setState('ready');
          return;
        } catch (e) {
          if (this.#state === 'closed') return;
          lastErr = e;
          this.#c.reconnectFailures++;
          this.#log.warn({ attempt: attempt + 1, err: (e as Error).message }, 'qkd module reconnect failed');
          if (e instanceof DriverError && e.code === 'QKD_VERSION') return this.#fail(e);
        }
      }
    } finally {
      this.#reconnecting = false;
      this.#wake.notify();
    }
  }

  #onFrame(f: Frame): void {
    this.#c.framesIn++;
    if (this.#expectSeq !== undefined && f.seq !== this.#expectSeq && f.seq !== 0) this.#c.seqGaps++;
    this.#expectSeq = (f.seq + 1) >>> 0;
    const m = f.message;
    const waited = this.#waitress.dispatch(m);
    switch (m.type) {
      case 'key_block':
        this.#sendAll(this.#flow.onBlock({ blockId: m.blockId, bits: m.bits, material: m.material }));
        this.#wake.notify();
        return;
      case 'link_status':
        return this.#onStatus(m);
      case 'identify':
        if (!waited) this.#guard(() => this.#startSession(m)); // the module restarted its session on its own
        return;
      case 'alarm':
        return this.#onAlarm(m);
      case 'error':
        if (!waited) this.#onModuleError(m);
        return;
      default:
        this.#c.unexpectedFrames++;
    }
  }

  #onStatus(m: LinkStatus): void {
    this.#status = m;
    if (!m.up) this.#degrade(new DriverError('QKD_LINK_DOWN', 'the module reports the quantum link down'));
    else if (this.#state === 'degraded' && this.#link) this.#setState('ready');
    this.#sendAll(this.#flow.statusReceived(m.bufferFill));
  }

  #onAlarm(m: Extract<Message, { type: 'alarm' }>): void {
    this.#link?.send({ type: 'alarm_ack', firstBlockId: m.firstBlockId, lastBlockId: m.lastBlockId });
    const key = `${m.kind}/${m.firstBlockId}/${m.lastBlockId}`;
    if (this.#seenAlarms.includes(key)) return; // a repeat
    this.#seenAlarms.push(key);
    if (this.#seenAlarms.length > 256) this.#seenAlarms.shift();
    this.#flow.alarm(m.firstBlockId, m.lastBlockId);
    this.#wake.notify();
    this.#c.alarms++;
    const alarm: QkdAlarm = { kind: ALARM_KIND[m.kind] ?? 'unknown', firstBlockId: m.firstBlockId, lastBlockId: m.lastBlockId, qber: m.qberPpm / 1e6 };
    this.#log.warn({ ...alarm }, 'qkd module alarm');
    if (this.#alarmCbs.size === 0) {
      this.#pendingAlarms.push(alarm);
      if (this.#pendingAlarms.length > 64) this.#pendingAlarms.shift();
    }
    for (const cb of this.#alarmCbs) this.#emit(cb, alarm);
  }

  #onModuleError(m: Extract<Message, { type: 'error' }>): void {
    this.#c.moduleErrors++;
    this.#log.warn({ code: m.code, text: m.text }, 'qkd module error');
    const link = this.#link;
    if (m.code === ErrorCode.BLOCKS_GONE) this.#flow.blocksGone();
    else if (m.code === ErrorCode.UNSUPPORTED_VERSION) {
      this.#fail(new DriverError('QKD_VERSION', `the module refuses protocol version ${PROTOCOL_VERSION}: ${m.text}`, false));
    } else if (m.code === ErrorCode.BAD_STATE && link && this.#clock.now() - this.#lastHelloAt >= this.#t.silenceMs) {
      this.#hello(link); // the module lost our session (restarted): open a new one
    }
  }

  #sendAll(msgs: Message[]): void {
    const link = this.#link;
    if (link) for (const m of msgs) link.send(m);
  }

  #info(): QkdModuleInfo {
    const m = this.#identity!;
    return { moduleId: m.moduleSerial, linkId: m.linkId, firmware: m.firmware };
  }

  #guard(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      this.#fail(asDriverError(e));
    }
  }

  #degrade(cause: DriverError, force = false): void {
    if (this.#state === 'ready' || (force && this.#state === 'degraded')) this.#setState('degraded', cause);
  }

  #fail(err: DriverError): void {
    if (this.#state === 'closed') return;
    this.#failure = err;
    this.#setState('failed', err);
    this.#log.error({ code: err.code, err: err.message }, 'qkd driver failed');
    void this.#link?.close();
    this.#wake.notify();
  }

  #setState(s: DriverState, cause?: Error): void {
    if (s === this.#state && !(s === 'degraded' && cause)) return;
    this.#state = s;
    for (const cb of this.#stateCbs) {
      try {
        cb(s, cause);
      } catch (e) {
        this.#log.error({ err: (e as Error).message }, 'qkd state listener threw');
      }
    }
  }

  #emit(cb: (a: QkdAlarm) => void, a: QkdAlarm): void {
    try {
      cb(a);
    } catch (e) {
      this.#log.error({ err: (e as Error).message }, 'qkd alarm listener threw');
    }
  }
}

function asDriverError(e: unknown): DriverError {
  if (e instanceof DriverError) return e;
  return new DriverError('QKD_FRAME', (e as Error)?.message ?? String(e), true, { cause: e });
}
