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
  const capacity = d.pool.opts.capacityBits;
  // An upper bound of the bits held: counted by a scan, plus what came in since (using keys only
  // lowers it). The scan runs only when the bound reaches the capacity, or every pollMs.
  let bound = Infinity;
  let lastScan = -Infinity;
  while (!signal.aborted) {
    try {
      for await (const batch of d.driver.blocks(d.pool.highWater() + 1, signal)) {
        try {
          const hw = await d.batcher.run(() => d.pool.ingest(batch));
          d.driver.ack(hw);
        } finally {
          for (const b of batch) {
            bound += b.bits;
            b.material.fill(0);
          }
        }
        if (batch.length < SMALL_BATCH && gatherMs > 0) await d.clock.sleep(gatherMs, signal);
        // Full (max_key_count each way): pull no more, so the module gets no credit and holds back.
        // At the edge of full, look again only every pollMs: a count is a scan of the link's blocks.
        if (bound >= capacity || d.clock.now() - lastScan >= pollMs) {
          for (;;) {
            const since = d.clock.now() - lastScan;
            if (bound >= capacity && since < pollMs) await d.clock.sleep(pollMs - since, signal);
            lastScan = d.clock.now();
            bound = d.pool.stats().bits;
            if (signal.aborted || bound < capacity) break;
          }
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      d.logger.error({ link: d.pool.linkId, err: (e as Error).message }, 'key ingestion failed; retrying');
      await d.clock.sleep(1000, signal).catch(() => {});
    }
  }
}
