/**
 * Rotation on request from a maintenance tool, without stopping the node:
 * `master` rewraps the data keys under a new master key (answers when done),
 * `data` makes a new data key current and starts re-encrypting the store in
 * the background (answers at once; progress through `status`).
 */
import { KmeError } from '../common/errors.js';
import type { RotationStatus } from '../ipc/pool-protocol.js';
import type { DataKeyRing } from './data-key.js';
import type { Rekeyer } from './rekey.js';

export interface RotationDeps {
  ring: DataKeyRing;
  rekeyer: Rekeyer;
  master: { readonly kind: string; readonly currentKeyId: string };
  /** Told of each rotation (audit trail). */
  onRotated?: (what: 'master' | 'data', detail: Record<string, string | number>) => void;
}

export class Rotation {
  readonly #d: RotationDeps;
  #masterBusy = false;

  constructor(deps: RotationDeps) {
    this.#d = deps;
  }

  status(): RotationStatus {
    return {
      master_key: { provider: this.#d.master.kind, key_id: this.#d.master.currentKeyId },
      data_key: this.#d.rekeyer.progress,
    };
  }

  async rotate(what: 'master' | 'data'): Promise<RotationStatus> {
    if (this.#masterBusy || this.#d.rekeyer.running) {
      throw new KmeError('UNAVAILABLE', 'a rotation is already running; wait for it to finish (rotation_status)');
    }
    if (what === 'master') {
      this.#masterBusy = true;
      try {
        const r = await this.#d.ring.rotateMaster();
        this.#d.onRotated?.('master', { master_id: r.master_key_id, retired: r.retired.join(',') });
      } finally {
        this.#masterBusy = false;
      }
    } else {
      const gen = await this.#d.ring.newGeneration();
      this.#d.onRotated?.('data', { generation: gen });
      this.#d.rekeyer.start();
    }
    return this.status();
  }
}
