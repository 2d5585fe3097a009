/**
 * Builds the QKD module driver a link's configuration names. keypoold sees
 * only the QkdModuleDriver interface (drivers/types.ts).
 */
import { readFileSync } from 'node:fs';
import type { LinkConfig } from '../common/config.js';
import type { Logger } from '../common/logger.js';
import type { Clock, QkdModuleDriver } from '../../drivers/types.js';
import { SimQkdModule } from '../../drivers/sim/sim-module.js';
import { ProtocolDriver } from '../../drivers/qkd/driver.js';
import { SerialTransport } from '../../drivers/transport/serial.js';
import { SocketTransport } from '../../drivers/transport/socket.js';
import { HidTransport } from '../../drivers/transport/hid.js';

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
    case 'serial':
    case 'socket':
    case 'hid': {
      const transport = () =>
        q.driver === 'serial'
          ? new SerialTransport({ path: q.path, baudRate: q.baud_rate, flowControl: q.rtscts ? 'rtscts' : 'none' })
          : q.driver === 'socket'
            ? new SocketTransport({ target: q.path !== undefined ? { path: q.path } : { host: q.host!, port: q.port! } })
            : new HidTransport({ vendorId: q.vendor_id, productId: q.product_id, path: q.path, reportSize: q.report_size });
      return new ProtocolDriver({
        transport,
        clock,
        logger: logger.child({ link: link.link_id, driver: q.driver }),
        hostId: kmeId,
        window: q.window,
        statusPollMs: q.status_poll_ms,
        timeouts: { requestMs: q.timeout_ms, handshakeMs: q.timeout_ms },
        // A KME never gives up on its module: it keeps trying, at the capped interval.
        backoff: { initialMs: q.reconnect_initial_ms, maxMs: q.reconnect_max_ms, maxAttempts: Number.MAX_SAFE_INTEGER },
      });
    }
  }
}
