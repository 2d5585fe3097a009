/**
 * The QKD-module driver interface. keypoold depends only on this file; the
 * simulator, and the serial/HID drivers of the module protocol, implement it.
 */

export type DriverState = 'closed' | 'opening' | 'ready' | 'degraded' | 'failed';

/** A block of secret key as the module emits it. Both modules of a link emit
 * the same material under the same `blockId`; ids increase by one. */
export interface KeyBlock {
  blockId: number;
  bits: number;
  /** Secret. The consumer zeroes it once stored. */
  material: Buffer;
}

export interface QkdModuleInfo {
  moduleId: string;
  linkId: string;
  firmware: string;
}

/** The module says blocks [firstBlockId, lastBlockId] must not be used (QBER too high, eavesdropping). */
export interface QkdAlarm {
  kind: 'qber_threshold' | 'eavesdropping' | 'unknown';
  firstBlockId: number;
  lastBlockId: number;
  qber?: number;
}

/** Diagnostic counters of a driver (frames, CRC errors, resyncs, reconnects...). */
export type DriverCounters = Record<string, number>;

export interface QkdModuleDriver {
  readonly state: DriverState;
  open(signal?: AbortSignal): Promise<QkdModuleInfo>;
  /** Idempotent. Ends any running `blocks()` iteration. */
  close(): Promise<void>;
  linkStatus(): Promise<{ up: boolean; qber?: number; keyRateBps?: number }>;
  /**
   * Blocks with ids >= `fromId`, in order, in batches of whatever is ready.
   * Pull-based: the module produces no more than the consumer asks for, so a
   * consumer that stops pulling (pool full) loses nothing.
   */
  blocks(fromId: number, signal?: AbortSignal): AsyncIterable<KeyBlock[]>;
  /** The consumer holds every block up to `blockId` durably. */
  ack(blockId: number): void;
  /**
   * Alarms from the module, as they arrive. The module is told the alarm was
   * handled only once the callback's promise resolves (the discard is
   * durable); if it rejects, the module's repeat is handled again.
   * Returns an unsubscribe function.
   */
  onAlarm?(cb: (alarm: QkdAlarm) => void | Promise<void>): () => void;
  /** State changes (with the cause of a degraded or failed state). Returns an unsubscribe function. */
  onStateChange?(cb: (state: DriverState, cause?: Error) => void): () => void;
  counters?(): DriverCounters;
}

/** Injected time source, so tests can drive time. */
export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const systemClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      const t = setTimeout(() => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      const onAbort = () => {
        clearTimeout(t);
        reject(signal!.reason);
      };
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};
