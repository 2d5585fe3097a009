/**
 * Builds the QKD module driver a link's configuration names. keypoold sees
 * only the QkdModuleDriver interface (drivers/types.ts).
 */
import { readFileSync } from 'node:fs';
import type { LinkConfig } from '../common/config.js';
import { ConfigError } from '../common/config.js';
import type { Logger } from '../common/logger.js';
import type { Clock, QkdModuleDriver } from '../../drivers/types.js';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';

export function createModuleDriver(link: LinkConfig, kmeId: string, clock: Clock, logger: Logger): QkdModuleDriver {
  const q = link.qkd;
  switch (q.driver) {
    case 'sim': {
      const seed = Buffer.from(readFileSync(q.seed_file, 'utf8').trim(), 'hex');
      try {
        return new SimQkdModule({
          linkId: link.link_id, moduleId: `${kmeId}/${link.link_id}`, seed, rateBps: q.rate_bps,
          blockBits: q.block_bits, epochMs: q.epoch_ms, clock,
        });
      } finally {
        seed.fill(0);
      }
    }
    default:
      void logger;
      throw new ConfigError(`links.${link.link_id}.qkd.driver ${q.driver}: not available in this build`);
  }
}
