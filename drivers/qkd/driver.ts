/**
 * The host side of the QKD module protocol v1 (PROTOCOL.md) over any byte
 * transport: handshake and version check, credit-based pull of key blocks,
 * gaps, duplicates and stalls, link-status polling, alarms, and reconnects
 * with capped exponential backoff (one pending timer at most).
 *
 * States: closed -> opening -> ready <-> degraded -> failed; close() from any.
 */
import type { Logger } from '../../src/common/logger.js';
import { systemClock, type Clock, type DriverCounters, type DriverState, type KeyBlock, type QkdAlarm, type QkdModuleDriver, type QkdModuleInfo } from '../types.js';
import { AlarmDesk } from './alarm-desk.js';
import { DEFAULT_BACKOFF } from './backoff.js';
import { BlockFlow } from './block-flow.js';
import { FrameDecoder } from './codec.js';
import { DEFAULT_TIMEOUTS, type DriverTimeouts, type ProtocolDriverOptions } from './driver-options.js';
import { DriverError } from './errors.js';
import { Link } from './link.js';
import { ErrorCode, PROTOCOL_VERSION, type Frame, type Message } from './messages.js';
import { Mutex } from './mutex.js';
import { Reconnector } from './reconnector.js';
import { Waitress } from './waitress.js';
import { Wake } from './wake.js';
import { watchLink } from './watchdog.js';

export type { DriverTimeouts, ProtocolDriverOptions } from './driver-options.js';
export { DriverError, type DriverErrorCode } from './errors.js';

type Identify = Extract<Message, { type: 'identify' }>;
type LinkStatus = Extract<Message, { type: 'link_status' }>;

export class ProtocolDriver implements QkdModuleDriver {
  readonly #o: ProtocolDriverOptions;
  readonly #t: DriverTimeouts;
  readonly #clock: Clock;
  readonly #log: Logger;
  readonly #flow: BlockFlow;
  readonly #decoder: FrameDecoder;
  readonly #waitress: Waitress<Message>;
  readonly #mutex = new Mutex();
  readonly #wake = new Wake();
  readonly #stateCbs = new Set<(s: DriverState, cause?: Error) => void>();
  readonly #alarms: AlarmDesk;
  readonly #c = { framesIn: 0, framesOut: 0, reconnects: 0, reconnectFailures: 0, timeouts: 0, alarms: 0, moduleErrors: 0, seqGaps: 0, unexpectedFrames: 0 };
  #state: DriverState = 'closed';
  #closer = new AbortController();
  #link: Link | undefined;
  #identity: Identify | undefined;
  #status: LinkStatus | undefined;
  #failure: DriverError | undefined;
  readonly #reconnector: Reconnector;
  #lastHelloAt = -Infinity;
  #expectSeq: number | undefined;

  constructor(opts: ProtocolDriverOptions) {
    this.#o = opts;
    this.#t = { ...DEFAULT_TIMEOUTS, ...opts.timeouts };
    this.#clock = opts.clock ?? systemClock;
    this.#log = opts.logger;
    this.#flow = new BlockFlow(opts.window ?? 64);
    this.#waitress = new Waitress(this.#clock);
    this.#alarms = new AlarmDesk(this.#log, (a) =>
      this.#link?.send({ type: 'alarm_ack', firstBlockId: a.firstBlockId, lastBlockId: a.lastBlockId }),
    );
    this.#reconnector = new Reconnector({
      clock: this.#clock,
      backoff: { ...DEFAULT_BACKOFF, ...opts.backoff },
      random: opts.random ?? Math.random,
      log: this.#log,
      counters: this.#c,
      signal: () => this.#closer.signal,
      attempt: async () => {
        await this.#connect(this.#closer.signal);
        if (this.#link) this.#setState('ready');
        else throw new DriverError('QKD_LINK_DOWN', 'closed again at once');
      },
      failed: (e) => {
        if (!(e instanceof DriverError && e.code === 'QKD_VERSION')) return false;
        this.#fail(e);
        return true;
      },
      giveUp: (e) => this.#fail(e),
      settled: () => this.#wake.notify(),
    });
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

  /**
   * Connects and runs the handshake. Resolves with the module's identity once
   * it answered. If this first attempt fails for a transient reason, open()
   * rejects and the driver keeps reconnecting in the background (state
   * degraded) until it connects, gives up (failed) or is closed. A version
   * mismatch is final (failed).
   */
  async open(signal?: AbortSignal): Promise<QkdModuleInfo> {
    while (this.#reconnector.running && this.#state === 'degraded' && !signal?.aborted) await this.#wake.wait(signal);
    if ((this.#state === 'ready' || this.#state === 'degraded') && this.#link && this.#identity) return this.#info();
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
      if (sig.aborted) {
        if ((this.#state as DriverState) === 'opening') this.#setState('closed');
        throw new DriverError('QKD_CLOSED', 'open aborted', false, { cause: e });
      }
      const err = asDriverError(e);
      if (err.code === 'QKD_VERSION') this.#fail(err);
      else {
        this.#setState('degraded', err);
        void this.#reconnector.run();
      }
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
    if (this.#state === 'closed') throw new DriverError('QKD_CLOSED', 'the driver is not open', false);
    this.#sendAll(this.#flow.start(fromId));
    try {
      for (;;) {
        if (signal?.aborted || (this.#state as DriverState) === 'closed') return;
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

  /** The alarm is acknowledged to the module once every listener's promise has resolved. */
  onAlarm(cb: (alarm: QkdAlarm) => void | Promise<void>): () => void {
    return this.#alarms.subscribe(cb);
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
      if (this.#link === link) this.#link = undefined;
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

  /** The timers of a link: partial frames, status polls, silence. */
  #watch(link: Link): Promise<void> {
    const times = { ...this.#t, statusPollMs: this.#o.statusPollMs ?? 1000 };
    return watchLink(link, this.#decoder, this.#clock, times, {
      poll: () => {
        if (!this.#mutex.locked) this.linkStatus().catch(() => {});
      },
      silent: (idle) => {
        this.#c.timeouts++;
        this.#degrade(new DriverError('QKD_TIMEOUT', `no frame from the module for ${idle} ms`));
        this.#sendAll(this.#flow.nudge());
      },
      dead: (idle) => {
        this.#c.timeouts++;
        this.#log.warn({ idle_ms: idle }, 'qkd module silent: reconnecting');
      },
    });
  }

  #onLinkClosed(link: Link, err?: Error): void {
    if (link !== this.#link) return;
    this.#link = undefined;
    this.#flow.sessionEnded();
    const e = new DriverError('QKD_LINK_DOWN', `${link.transport.description} closed${err ? `: ${err.message}` : ''}`, true, { cause: err });
    this.#waitress.rejectAll(e);
    if (this.#state !== 'ready' && this.#state !== 'degraded') return; // open() or close() is in charge
    if (this.#reconnector.running) return; // the reconnect loop is in charge
    this.#degrade(e, true);
    void this.#reconnector.run();
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
    // Drop the range from what waits for the consumer first, then tell the listeners.
    this.#flow.alarm(m.firstBlockId, m.lastBlockId);
    if (this.#alarms.receive(m)) this.#c.alarms++;
    this.#wake.notify();
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
}

function asDriverError(e: unknown): DriverError {
  if (e instanceof DriverError) return e;
  return new DriverError('QKD_FRAME', (e as Error)?.message ?? String(e), true, { cause: e });
}
