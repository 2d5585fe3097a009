/**
 * Alarms from the module, to the listeners: each distinct alarm once (the
 * module repeats an alarm until it is acknowledged and after each IDENTIFY),
 * and alarms that arrive before anyone listens are kept for the first listener.
 */
import type { Logger } from '../../src/common/logger.js';
import type { QkdAlarm } from '../types.js';
import { AlarmKind, type Message } from './messages.js';

const KIND: Record<number, QkdAlarm['kind']> = { [AlarmKind.QBER_THRESHOLD]: 'qber_threshold', [AlarmKind.EAVESDROPPING]: 'eavesdropping' };
const REMEMBERED = 256;
const PENDING = 64;

export type AlarmListener = (a: QkdAlarm) => void | Promise<void>;

export class AlarmDesk {
  readonly #cbs = new Set<AlarmListener>();
  readonly #pending: QkdAlarm[] = [];
  /** Alarms handled by every listener (and acknowledged). */
  readonly #seen: string[] = [];
  /** Alarms being handled now. */
  readonly #busy = new Set<string>();

  /**
   * `ack` is called once every listener has handled an alarm (the listeners'
   * promises resolved, e.g. the store made the discard durable): only then is
   * the module told to stop repeating it. A listener that fails leaves the
   * alarm unacknowledged, so the module's next repeat is handled again.
   */
  constructor(
    readonly log: Logger,
    private readonly ack: (a: QkdAlarm) => void = () => {},
  ) {}

  subscribe(cb: AlarmListener): () => void {
    this.#cbs.add(cb);
    for (const a of this.#pending.splice(0)) this.#dispatch(a);
    return () => this.#cbs.delete(cb);
  }

  /** An ALARM frame: the alarm if it is new (and hands it to the listeners), undefined for a repeat. */
  receive(m: Extract<Message, { type: 'alarm' }>): QkdAlarm | undefined {
    const key = keyOf(m);
    if (this.#seen.includes(key) || this.#busy.has(key) || this.#pending.some((p) => keyOf(p) === key)) {
      if (this.#seen.includes(key)) this.ack(toAlarm(m)); // handled already: the ack was lost
      return undefined;
    }
    const alarm = toAlarm(m);
    this.log.warn({ ...alarm }, 'qkd module alarm');
    if (this.#cbs.size === 0) {
      this.#pending.push(alarm);
      if (this.#pending.length > PENDING) this.#pending.shift();
    } else {
      this.#dispatch(alarm);
    }
    return alarm;
  }

  #dispatch(a: QkdAlarm): void {
    const key = keyOf(a);
    this.#busy.add(key);
    Promise.all([...this.#cbs].map(async (cb) => cb(a)))
      .then(() => {
        this.#seen.push(key);
        if (this.#seen.length > REMEMBERED) this.#seen.shift();
        this.ack(a);
      })
      .catch((e: Error) => this.log.error({ err: e.message, ...a }, 'qkd alarm not handled; the module will repeat it'))
      .finally(() => this.#busy.delete(key));
  }
}

function keyOf(a: { firstBlockId: number; lastBlockId: number }): string {
  return `${a.firstBlockId}/${a.lastBlockId}`;
}

function toAlarm(m: Extract<Message, { type: 'alarm' }>): QkdAlarm {
  return { kind: KIND[m.kind] ?? 'unknown', firstBlockId: m.firstBlockId, lastBlockId: m.lastBlockId, qber: m.qberPpm / 1e6 };
}
