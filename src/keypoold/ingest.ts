/**
 * Moves key blocks from a QKD module driver into the store: each batch is
 * sealed and committed (fsynced) before it is acknowledged to the module.
 * Pulls no more while the link's pool is full, so the module holds back.
 */
import type { Logger } from '../common/logger.js';
import type { Clock, QkdModuleDriver } from '../../drivers/types.js';
import type { LinkPool } from './link-pool.js';
import type { TxBatcher } from './tx-batcher.js';

export interface IngestDeps {
  driver: QkdModuleDriver;
  pool: LinkPool;
  batcher: TxBatcher;
  clock: Clock;
  logger: Logger;
  /** How often to look again while the pool is full. */
  fullPollMs?: number;
  /**
   * After a small batch, let blocks gather this long before the next commit
   * (the module holds them within its credit): fewer, larger commits and fsyncs.
   */
  gatherMs?: number;
}

/** A batch this small is followed by a pause of gatherMs. */
const SMALL_BATCH = 16;

export async function runIngest(d: IngestDeps, signal: AbortSignal): Promise<void> {
  const pollMs = d.fullPollMs ?? 250;
  const gatherMs = d.gatherMs ?? 50;
  let lastCheck = -Infinity;
  while (!signal.aborted) {
    try {
      for await (const batch of d.driver.blocks(d.pool.highWater() + 1, signal)) {
        try {
          const hw = await d.batcher.run(() => d.pool.ingest(batch));
          d.driver.ack(hw);
        } finally {
          for (const b of batch) b.material.fill(0);
        }
        if (batch.length < SMALL_BATCH && gatherMs > 0) await d.clock.sleep(gatherMs, signal);
        // Counting the pool is a scan: look at most every pollMs while blocks flow.
        const now = d.clock.now();
        if (now - lastCheck >= pollMs) {
          lastCheck = now;
          while (!signal.aborted && d.pool.isFull()) await d.clock.sleep(pollMs, signal);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      d.logger.error({ link: d.pool.linkId, err: (e as Error).message }, 'key ingestion failed; retrying');
      await d.clock.sleep(1000, signal).catch(() => {});
    }
  }
}
