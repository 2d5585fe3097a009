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
        // The driver's last LINK_STATUS when it keeps one: a tool asking should not load the module.
        const c = driver.counters?.();
        const status =
          c && 'linkUp' in c
            ? { up: c.linkUp === 1, qber: (c.qberPpm ?? 0) / 1e6, keyRateBps: c.keyRateBps ?? 0 }
            : await driver.linkStatus().catch((e: Error) => ({ up: false, error: e.message }));
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
