/**
 * keypoold's audit trail, put together: the hash-chained log (audit-log.ts),
 * its outbox in the key store (each line is also written, in the transaction
 * of the event it records, to `audit_outbox`, and lines the log did not get
 * before a crash are put back at open), and the anchor (the log's last
 * durable line noted in the store, so a cut-off trail is detected).
 */
import { AUDIT_ANCHOR } from '../common/audit-chain.js';
import type { Logger } from '../common/logger.js';
import { AuditLog } from './audit-log.js';
import { Audit } from './audit-sink.js';
import type { Store } from './store.js';
import type { TxBatcher } from './tx-batcher.js';


export interface AuditTrailOptions {
  dir: string;
  segmentBytes: number;
  store: Store;
  clock: { now(): number };
  logger: Logger;
}

export class AuditTrail {
  readonly log: AuditLog;
  /** What the rest of keypoold records events through. */
  readonly audit: Audit;
  readonly #store: Store;

  private constructor(log: AuditLog, store: Store, logger: Logger) {
    this.log = log;
    this.audit = new Audit(log, logger);
    this.#store = store;
  }

  /** Open the log, put back what the outbox holds beyond it, and write it out. */
  static async open(o: AuditTrailOptions): Promise<AuditTrail> {
    const { store } = o;
    const log = AuditLog.open(o.dir, {
      segmentBytes: o.segmentBytes, clock: o.clock, logger: o.logger,
      onLine: (seq, line) => void store.s.outboxPut.run(seq, line),
      pending: store.s.outboxAll.all().map((r) => r.line),
    });
    await log.flush();
    store.s.outboxTrim.run(log.durableHead.seq);
    return new AuditTrail(log, store, o.logger);
  }

  /** Write what was recorded outside a commit, then drop from the outbox what the log holds durably. */
  async flush(batcher: TxBatcher): Promise<void> {
    await this.log.flush();
    const { seq } = this.log.durableHead;
    await batcher.runVolatile(() => this.#store.s.outboxTrim.run(seq));
  }

  /** Note the log's last durable line in the store (the verifier checks the trail reaches it). */
  async anchor(batcher: TxBatcher): Promise<void> {
    await this.log.flush();
    const head = this.log.durableHead;
    if (head.seq > 0) await batcher.run(() => this.#store.putMeta(AUDIT_ANCHOR, Buffer.from(JSON.stringify(head))));
  }
}
