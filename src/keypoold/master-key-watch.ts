/**
 * Asks the master-key provider how it is, every few seconds. While it fails
 * (the token was pulled, the HSM went away) `problem` says why, and keypoold
 * serves no keys; each change is logged and goes into the audit trail.
 */
import type { Logger } from '../common/logger.js';
import type { Audit } from './audit-sink.js';
import type { MasterKeyProvider } from './master-key.js';

export class MasterKeyWatch {
  #problem: string | undefined;
  #running = false;
  readonly #timer: NodeJS.Timeout;

  constructor(
    readonly provider: Pick<MasterKeyProvider, 'kind' | 'health'>,
    readonly logger: Logger,
    readonly audit: Audit,
    everyMs: number,
  ) {
    this.#timer = setInterval(() => void this.check(), everyMs);
  }

  /** Why the master key cannot be used now, or undefined while it works. */
  get problem(): string | undefined {
    return this.#problem;
  }

  async check(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    try {
      const h = await this.provider.health().catch((e: unknown) => ({ ok: false as const, reason: (e as Error).message }));
      const problem = h.ok ? undefined : `master key unavailable (${h.reason})`;
      if (problem !== this.#problem) {
        if (problem) this.logger.error({ provider: this.provider.kind, reason: problem }, 'master key unavailable: not serving keys');
        else this.logger.info({ provider: this.provider.kind }, 'master key available again: serving keys');
        this.audit.record({ event: 'alarm', reason: (problem ?? 'master key available again').slice(0, 200), detail: { source: 'master_key' } });
      }
      this.#problem = problem;
    } finally {
      this.#running = false;
    }
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
