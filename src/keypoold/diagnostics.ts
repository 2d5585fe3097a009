/**
 * Link diagnostics for technicians' tools (the local API's `diag`): per link,
 * the module driver's state, link status and counters, the pool and the peer.
 * Never key material.
 */
import type { QkdModuleDriver } from '../../drivers/types.js';
import type { DiagResult } from '../ipc/pool-protocol.js';
import type { LinkPool } from './link-pool.js';
import type { LinkSync } from './link-sync.js';

export interface DiagLink {
  sync: LinkSync;
  pool: LinkPool;
  driver: QkdModuleDriver;
}

export async function linkDiagnostics(kmeId: string, links: DiagLink[]): Promise<DiagResult> {
  return {
    kme_id: kmeId,
    links: await Promise.all(
      links.map(async ({ sync, pool, driver }) => {
        const status = await driver.linkStatus().catch((e: Error) => ({ up: false, error: e.message }));
        const st = pool.stats();
        return {
          link_id: sync.linkId,
          peer_kme_id: sync.peerKmeId,
          peer_reachable: sync.peerReachable,
          peer_high_water: sync.peerHw,
          high_water: pool.highWater(),
          blocks: st.blocks,
          stored_bits: st.bits,
          owned_available_bits: sync.peerReachable ? pool.ownedAvailableBits(sync.peerHw) : 0,
          module: { state: driver.state, status, counters: driver.counters?.() ?? {} },
        };
      }),
    ),
  };
}
