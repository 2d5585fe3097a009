/**
 * How keypoold's parts write to the audit trail. An event that fails the
 * trail's content rules (free text from a peer that looks like key material,
 * an identifier out of shape) must not stop a key operation: it is recorded
 * without its free text and identifiers, and the rejection is logged. A
 * failing disk is another matter: that error propagates (the daemon stops).
 */
import type { Logger } from '../common/logger.js';
import type { AuditEvent, AuditLog } from './audit-log.js';

export type AuditSink = Pick<AuditLog, 'record'>;

export class Audit {
  constructor(
    readonly sink: AuditSink | undefined,
    readonly logger: Logger,
  ) {}

  record(e: AuditEvent): void {
    if (!this.sink) return;
    try {
      this.sink.record(e);
    } catch (err) {
      if (!(err instanceof TypeError)) throw err;
      this.logger.error({ event: e.event, err: err.message }, 'audit event failed the content rules; recorded without its details');
      this.sink.record({ event: e.event, reason: 'details withheld: they failed the audit content rules' });
    }
  }
}
