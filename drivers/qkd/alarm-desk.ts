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

export class AlarmDesk {
  readonly #cbs = new Set<(a: QkdAlarm) => void>();
  readonly #pending: QkdAlarm[] = [];
  readonly #seen: string[] = [];

  constructor(readonly log: Logger) {}

  subscribe(cb: (a: QkdAlarm) => void): () => void {
    this.#cbs.add(cb);
    for (const a of this.#pending.splice(0)) this.#call(cb, a);
    return () => this.#cbs.delete(cb);
  }

  /** An ALARM frame: the alarm if it is new (and hands it to the listeners), undefined for a repeat. */
  receive(m: Extract<Message, { type: 'alarm' }>): QkdAlarm | undefined {
    const key = `${m.kind}/${m.firstBlockId}/${m.lastBlockId}`;
    if (this.#seen.includes(key)) return undefined;
    this.#seen.push(key);
    if (this.#seen.length > REMEMBERED) this.#seen.shift();
    const alarm: QkdAlarm = { kind: KIND[m.kind] ?? 'unknown', firstBlockId: m.firstBlockId, lastBlockId: m.lastBlockId, qber: m.qberPpm / 1e6 };
    this.log.warn({ ...alarm }, 'qkd module alarm');
    if (this.#cbs.size === 0) {
      this.#pending.push(alarm);
      if (this.#pending.length > PENDING) this.#pending.shift();
    }
    for (const cb of this.#cbs) this.#call(cb, alarm);
    return alarm;
  }

  #call(cb: (a: QkdAlarm) => void, a: QkdAlarm): void {
    try {
      cb(a);
    } catch (e) {
      this.log.error({ err: (e as Error).message }, 'qkd alarm listener threw');
    }
  }
}
