/**
 * The module side of the QKD module protocol v1 over one byte stream (the sim
 * end of a pty pair, or a socket). One endpoint per simulated module; it lives
 * as long as the simulator, and streams come and go (attach/detach).
 *
 * As drivers/qkd/PROTOCOL.md describes. Session: HELLO (or RESET) opens one
 * and is answered by IDENTIFY, then every alarm this module's host has not
 * ALARM_ACKed. A HELLO with a hostVersion below 1 gets ERROR
 * UNSUPPORTED_VERSION and no session. CREDIT sets the highest block id the
 * host accepts (the latest grant wins); KEY_BLOCK frames go out in id order up
 * to it, as blocks are produced. ACK drops blocks from the module's buffer
 * (the link's production pauses while a buffer is full). RESEND moves the send
 * position, never below the first unacknowledged block (ERROR BLOCKS_GONE
 * then). A new session, a new stream or a reboot starts again from the first
 * unacknowledged block; after a reboot the module announces itself with an
 * unsolicited IDENTIFY (which opens a session) if its line is still there.
 * STATUS_REQUEST is answered with or without a session; LINK_STATUS is also
 * sent unsolicited when `up` changes. CREDIT/ACK/RESEND without a session get
 * ERROR BAD_STATE. A frame of an unknown type or with a malformed payload
 * (valid CRC) gets ERROR UNKNOWN_TYPE / BAD_PAYLOAD; a bad CRC is only counted.
 * Alarms are repeated every `alarmRepeatMs` until ALARM_ACKed, and survive
 * sessions and reboots. `seq` restarts at 0 with each stream and each reboot.
 *
 * Faults set by the simulator: `corrupting` (flip one bit of an outgoing
 * frame with probability rates.corrupt), `dropping` (drop an outgoing frame
 * with probability rates.drop), `stalled` (read nothing, send nothing; the
 * session survives), powerOff/powerOn (a reboot: session and half-read frames
 * gone, the buffer kept).
 *
 * Never logs key material.
 */
import type { Duplex } from 'node:stream';
import type { Logger } from '../../src/common/logger.js';
import { encodeFrame, FrameDecoder, type ProtocolError } from '../qkd/codec.js';
import { ErrorCode, PROTOCOL_VERSION, type Frame, type Message } from '../qkd/messages.js';
import type { StreamSink } from './devices.js';
import type { LinkAlarm, LinkModel } from './link-model.js';

export interface ModuleEndpointOptions {
  model: LinkModel;
  /** This module's index on the link (0 or 1). */
  index: number;
  moduleId: string;
  peerModuleId: string;
  /** The KME this module should be attached to; a HELLO from another host id is logged. */
  kmeId: string;
  firmware?: string;
  now: () => number;
  logger: Logger;
  /** Uniform [0, 1) source for fault decisions (deterministic in tests). */
  random: () => number;
  rates: { corrupt: number; drop: number };
  /** Tells the link that module state changed (an ACK may let production resume). */
  onChange?: () => void;
  /** Most blocks sent in one go before yielding to the event loop. */
  sendBurst?: number;
  /** An alarm not yet ALARM_ACKed is sent again this often (ms). */
  alarmRepeatMs?: number;
}

const COUNTERS = [
  'frames_in', 'frames_out', 'bytes_in', 'bytes_out', 'bad_frames', 'hellos', 'resets', 'status_requests', 'credits',
  'acks', 'resends', 'blocks_sent', 'alarms_sent', 'errors_sent', 'frames_dropped', 'frames_corrupted',
  'frames_suppressed', 'bytes_ignored', 'sessions', 'attaches', 'alarm_acks', 'link_status_pushed',
] as const;

/** Alarms kept for a host that has not acknowledged them (oldest dropped beyond). */
const MAX_PENDING_ALARMS = 64;
export type EndpointCounters = Record<(typeof COUNTERS)[number], number>;

export class ModuleEndpoint implements StreamSink {
  readonly counters: EndpointCounters = Object.fromEntries(COUNTERS.map((k) => [k, 0])) as EndpointCounters;
  corrupting = false;
  dropping = false;
  #stalled = false;
  #powered = true;
  #stream: Duplex | undefined;
  #decoder: FrameDecoder | undefined;
  #onData = (chunk: Buffer) => this.#receive(chunk);
  #onDrain = () => {
    this.#blocked = false;
    this.pump();
  };
  #blocked = false;
  #session = false;
  #hostId: string | undefined;
  /** Highest block id the host granted; below firstUnacked means none. */
  #credit = -1;
  #nextToSend = 0;
  #seq = 0;
  #pumpQueued = false;
  #seenBad = { unknown: 0, bad: 0 };
  /** Alarms this module's host has not acknowledged yet. */
  #pendingAlarms: LinkAlarm[] = [];
  #alarmTimer: NodeJS.Timeout | undefined;
  /** `up` as last told to the host in this session. */
  #toldUp: boolean | undefined;
  readonly #o: Required<Omit<ModuleEndpointOptions, 'onChange'>> & Pick<ModuleEndpointOptions, 'onChange'>;

  constructor(o: ModuleEndpointOptions) {
    this.#o = { firmware: 'sim-2', sendBurst: 256, alarmRepeatMs: 1000, ...o };
  }

  get index(): number {
    return this.#o.index;
  }

  get moduleId(): string {
    return this.#o.moduleId;
  }

  get inSession(): boolean {
    return this.#session;
  }

  get powered(): boolean {
    return this.#powered;
  }

  get stalled(): boolean {
    return this.#stalled;
  }

  set stalled(on: boolean) {
    this.#stalled = on;
    if (!on) this.pump();
  }

  acceptsConnections(): boolean {
    return this.#powered;
  }

  attach(stream: Duplex): void {
    if (this.#stream) this.detach(this.#stream);
    this.#stream = stream;
    this.#decoder = this.#newDecoder();
    this.#blocked = false;
    this.#seq = 0;
    this.#endSession();
    this.counters.attaches++;
    stream.on('data', this.#onData);
    stream.on('drain', this.#onDrain);
  }

  detach(stream: Duplex): void {
    if (this.#stream !== stream) return;
    stream.removeListener('data', this.#onData);
    stream.removeListener('drain', this.#onDrain);
    this.#stream = undefined;
    this.#decoder = undefined;
    this.#endSession();
  }

  /** A reboot begins: the session, half-read frames and the frame counter are gone; the buffer and pending alarms stay. */
  powerOff(): void {
    this.#powered = false;
    this.#endSession();
    this.#decoder = this.#stream ? this.#newDecoder() : undefined;
    this.#seq = 0;
  }

  /** Booted again: announces itself with IDENTIFY if the line is there; produced, unacknowledged blocks are offered again. */
  powerOn(): void {
    this.#powered = true;
    if (this.#stream) this.#openSession('boot');
  }

  /** The link raised an alarm: sent now if a session is open, after every IDENTIFY, and every alarmRepeatMs until ALARM_ACKed. */
  raiseAlarm(a: LinkAlarm): void {
    this.#pendingAlarms.push(a);
    if (this.#pendingAlarms.length > MAX_PENDING_ALARMS) this.#pendingAlarms.shift();
    if (this.#session) this.#sendAlarm(a);
    this.#armAlarmTimer();
  }

  /** Sends LINK_STATUS unsolicited if `up` changed since the host last heard it. */
  notifyLinkChange(): void {
    if (this.#session && this.#toldUp !== undefined && this.#toldUp !== this.#o.model.up) {
      this.counters.link_status_pushed++;
      this.#sendStatus();
    }
  }

  /** Stops timers (the simulator is stopping). */
  close(): void {
    clearInterval(this.#alarmTimer);
    this.#alarmTimer = undefined;
  }

  /** Sends every produced, credited block not yet sent, in id order. */
  pump(): void {
    if (!this.#session || this.#blocked || !this.#powered || this.#stalled || !this.#stream) return;
    const m = this.#o.model;
    let n = 0;
    while (this.#nextToSend <= Math.min(this.#credit, m.producedUpTo)) {
      if (n++ >= this.#o.sendBurst) {
        if (!this.#pumpQueued) {
          this.#pumpQueued = true;
          setImmediate(() => {
            this.#pumpQueued = false;
            this.pump();
          });
        }
        return;
      }
      const id = this.#nextToSend++;
      const material = m.material(id);
      this.counters.blocks_sent++;
      this.#send({ type: 'key_block', blockId: id, bits: m.blockBits, material });
      material.fill(0);
      if (this.#blocked || !this.#session) return;
    }
  }

  status() {
    const m = this.#o.model;
    return {
      module_id: this.#o.moduleId,
      kme_id: this.#o.kmeId,
      powered: this.#powered,
      stalled: this.#stalled,
      corrupting: this.corrupting,
      dropping: this.dropping,
      attached: this.#stream !== undefined,
      session: this.#session,
      host_id: this.#hostId ?? null,
      credit_up_to: this.#session && this.#credit >= m.firstUnacked(this.#o.index) ? this.#credit : null,
      pending_alarms: this.#pendingAlarms.map((a) => [a.firstBlockId, a.lastBlockId]),
      next_to_send: this.#nextToSend,
      first_unacked: m.firstUnacked(this.#o.index),
      buffer_fill: m.bufferFill(this.#o.index),
      counters: { ...this.counters },
    };
  }

  #newDecoder(): FrameDecoder {
    this.#seenBad = { unknown: 0, bad: 0 };
    return new FrameDecoder({ onFrame: (f: Frame) => this.#onFrame(f), onError: (e) => this.#onBadFrame(e) });
  }

  /** Bad CRCs and headers are only counted; a frame with a valid CRC that cannot be understood is answered with ERROR. */
  #onBadFrame(e: ProtocolError): void {
    this.counters.bad_frames++;
    const c = this.#decoder?.counters;
    if (!c) return;
    const seen = { unknown: c.unknownTypes, bad: c.badPayloads };
    const was = this.#seenBad;
    this.#seenBad = seen;
    if (!this.#powered || this.#stalled) return;
    if (seen.unknown > was.unknown) this.#sendError(ErrorCode.UNKNOWN_TYPE, e.message);
    else if (seen.bad > was.bad) this.#sendError(ErrorCode.BAD_PAYLOAD, e.message);
  }

  #endSession(): void {
    this.#session = false;
    this.#credit = -1;
    this.#toldUp = undefined;
    this.#nextToSend = this.#o.model.firstUnacked(this.#o.index);
  }

  /** Opens a session: IDENTIFY, then the alarms the host has not acknowledged. */
  #openSession(how: 'hello' | 'reset' | 'boot'): void {
    const m = this.#o.model;
    const i = this.#o.index;
    this.#endSession();
    this.#session = true;
    this.counters.sessions++;
    this.#send({
      type: 'identify',
      protocolVersion: PROTOCOL_VERSION,
      moduleSerial: this.#o.moduleId,
      firmware: this.#o.firmware,
      linkId: m.linkId,
      peerModuleId: this.#o.peerModuleId,
      firstBlockId: m.firstUnacked(i),
    });
    this.#toldUp = m.up;
    for (const a of this.#pendingAlarms) this.#sendAlarm(a);
    this.#o.logger.info({ module: this.#o.moduleId, host_id: this.#hostId, how, first_block_id: m.firstUnacked(i) }, 'session opened');
  }

  #armAlarmTimer(): void {
    if (this.#alarmTimer || this.#pendingAlarms.length === 0) return;
    this.#alarmTimer = setInterval(() => {
      if (this.#pendingAlarms.length === 0) {
        clearInterval(this.#alarmTimer);
        this.#alarmTimer = undefined;
        return;
      }
      if (this.#session) for (const a of this.#pendingAlarms) this.#sendAlarm(a);
    }, this.#o.alarmRepeatMs);
    this.#alarmTimer.unref();
  }

  #receive(chunk: Buffer): void {
    this.counters.bytes_in += chunk.length;
    if (!this.#powered || this.#stalled) {
      this.counters.bytes_ignored += chunk.length;
      return;
    }
    this.#decoder?.push(chunk);
  }

  #onFrame(f: Frame): void {
    this.counters.frames_in++;
    const msg = f.message;
    const m = this.#o.model;
    const i = this.#o.index;
    switch (msg.type) {
      case 'hello':
        this.counters.hellos++;
        this.#hostId = msg.hostId;
        if (msg.hostId !== this.#o.kmeId) {
          this.#o.logger.warn({ module: this.#o.moduleId, host_id: msg.hostId, expected: this.#o.kmeId }, 'HELLO from an unexpected host');
        }
        if (msg.hostVersion < PROTOCOL_VERSION) {
          this.#endSession();
          this.#sendError(ErrorCode.UNSUPPORTED_VERSION, `protocol version ${msg.hostVersion} is not supported; this module speaks ${PROTOCOL_VERSION}`);
          return;
        }
        this.#openSession('hello');
        return;
      case 'reset':
        this.counters.resets++;
        this.#openSession('reset');
        return;
      case 'alarm_ack': {
        // Valid with or without a session.
        this.counters.alarm_acks++;
        this.#pendingAlarms = this.#pendingAlarms.filter((a) => a.firstBlockId !== msg.firstBlockId || a.lastBlockId !== msg.lastBlockId);
        return;
      }
      case 'status_request':
        this.counters.status_requests++;
        this.#sendStatus();
        return;
      case 'credit':
      case 'ack':
      case 'resend':
        if (!this.#session) {
          this.#sendError(ErrorCode.BAD_STATE, `no session: send HELLO before ${msg.type.toUpperCase()}`);
          return;
        }
        if (msg.type === 'credit') {
          this.counters.credits++;
          this.#credit = msg.upToBlockId;
        } else if (msg.type === 'ack') {
          this.counters.acks++;
          m.ack(i, msg.blockId, this.#o.now());
          this.#nextToSend = Math.max(this.#nextToSend, m.firstUnacked(i));
          this.#o.onChange?.();
        } else {
          this.counters.resends++;
          const first = m.firstUnacked(i);
          if (msg.fromBlockId < first) this.#sendError(ErrorCode.BLOCKS_GONE, `blocks before ${first} are acknowledged and gone`);
          this.#nextToSend = Math.max(msg.fromBlockId, first);
        }
        this.pump();
        return;
      default:
        this.#sendError(ErrorCode.BAD_STATE, `${msg.type} is a module-to-host message`);
    }
  }

  #sendStatus(): void {
    const m = this.#o.model;
    m.advance(this.#o.now());
    if (this.#session) this.#toldUp = m.up;
    this.#send({
      type: 'link_status',
      up: m.up,
      qberPpm: Math.round(m.qber() * 1e6),
      keyRateBps: Math.round(m.keyRateBps()),
      bufferFill: m.bufferFill(this.#o.index),
      bufferCapacity: m.bufferBlocks,
    });
  }

  #sendAlarm(a: LinkAlarm): void {
    this.counters.alarms_sent++;
    this.#send({ type: 'alarm', kind: a.kind, firstBlockId: a.firstBlockId, lastBlockId: a.lastBlockId, qberPpm: a.qberPpm });
  }

  #sendError(code: number, text: string): void {
    this.counters.errors_sent++;
    this.#send({ type: 'error', code, text });
  }

  #send(message: Message): void {
    const stream = this.#stream;
    if (!stream || !this.#powered || this.#stalled) {
      this.counters.frames_suppressed++;
      return;
    }
    const seq = this.#seq;
    this.#seq = (this.#seq + 1) >>> 0;
    const frame = encodeFrame(seq, message);
    const { random, rates } = this.#o;
    if (this.dropping && random() < rates.drop) {
      this.counters.frames_dropped++;
      frame.fill(0);
      return;
    }
    if (this.corrupting && random() < rates.corrupt) {
      this.counters.frames_corrupted++;
      const bit = Math.floor(random() * frame.length * 8);
      frame[bit >> 3]! ^= 1 << (bit & 7);
    }
    this.counters.frames_out++;
    this.counters.bytes_out += frame.length;
    if (!stream.write(frame)) this.#blocked = true;
  }
}
