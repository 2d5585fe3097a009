/**
 * kme-keypoold: the key-pool daemon of one node. Composition root: builds the
 * store, the master key, the links (driver -> pool -> peer sync), the
 * KME-to-KME listener and the local pool API, and tears them down on a signal.
 *
 *   node dist/src/keypoold/main.js --config <path>
 */
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ConfigError, configPathFromArgv, loadConfig, type NodeConfig } from '../common/config.js';
import { createLogger, type Logger } from '../common/logger.js';
import { systemClock, type QkdModuleDriver } from '../../drivers/types.js';
import { createModuleDriver } from './module-driver.js';
import { serveNdjson } from '../ipc/ndjson-server.js';
import { FileMasterKeyProvider, MasterKeyError } from './master-key.js';
import { openDb, Store } from './store.js';
import { TxBatcher } from './tx-batcher.js';
import { Registry, RegistryError } from './registry.js';
import { LinkPool } from './link-pool.js';
import { LinkSync } from './link-sync.js';
import { PeerClient } from './peer-client.js';
import { startPeerServer } from './peer-server.js';
import { runIngest } from './ingest.js';
import { KeyService } from './key-service.js';
import { DataKeyRing, type WrappingKey } from './data-key.js';
import { Rekeyer } from './rekey.js';
import { dispatchPoolOp } from './local-api.js';
import { linkDiagnostics } from './diagnostics.js';

const MAINTAIN_MS = 1000;
const SWEEP_MS = 1000;
const CHECKPOINT_MS = 60_000;

async function main(): Promise<void> {
  let cfg: NodeConfig;
  try {
    cfg = loadConfig(configPathFromArgv(process.argv));
  } catch (e) {
    if (e instanceof ConfigError) {
      process.stderr.write(`kme-keypoold: ${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const logger = createLogger('kme-keypoold', cfg.log_level);
  const stop = new AbortController();
  const cleanups: Array<() => Promise<void> | void> = [];
  const shutdown = async (code: number) => {
    if (stop.signal.aborted) return;
    stop.abort();
    const hard = setTimeout(() => process.exit(code || 1), 5000);
    hard.unref();
    for (const c of cleanups.reverse()) {
      try {
        await c();
      } catch (e) {
        logger.error({ err: (e as Error).message }, 'error during shutdown');
      }
    }
    logger.info('stopped');
    process.exit(code);
  };
  process.on('SIGTERM', () => void shutdown(0));
  process.on('SIGINT', () => void shutdown(0));
  process.on('uncaughtException', (e) => {
    logger.fatal({ err: e.message, stack: e.stack }, 'uncaught exception');
    void shutdown(1);
  });
  process.on('unhandledRejection', (e) => {
    logger.fatal({ err: (e as Error)?.message }, 'unhandled rejection');
    void shutdown(1);
  });

  try {
    await start(cfg, logger, stop.signal, cleanups, () => void shutdown(1));
  } catch (e) {
    if (e instanceof MasterKeyError || e instanceof RegistryError || e instanceof ConfigError) {
      logger.fatal({ err: e.message }, 'cannot start');
      process.stderr.write(`kme-keypoold: ${e.message}\n`);
      await shutdown(2);
      return;
    }
    throw e;
  }
}

async function start(
  cfg: NodeConfig, logger: Logger, signal: AbortSignal, cleanups: Array<() => Promise<void> | void>, fatal: () => void,
): Promise<void> {
  process.umask(0o077); // the store, its WAL and the sockets' folders are ours alone
  mkdirSync(cfg.state_dir, { recursive: true, mode: 0o700 });
  const registry = await Registry.open(cfg.registry_file);
  const store = new Store(openDb(join(cfg.state_dir, 'keystore.sqlite')));
  cleanups.push(() => store.close());
  if (cfg.master_key.provider !== 'file') throw new MasterKeyError('the pkcs11 master key provider is not wired in yet');
  const masterKey = FileMasterKeyProvider.open(cfg.master_key.path, logger);
  cleanups.push(() => masterKey.close());
  const batcher = new TxBatcher(store.db, logger, (e) => {
    logger.fatal({ err: (e as Error).message }, 'the key store could not be flushed to disk; stopping');
    fatal();
  });
  cleanups.push(async () => {
    await batcher.drain();
    batcher.close();
  });
  const wrapping: WrappingKey = {
    currentKeyId: 'file',
    wrap: async (k) => ({ keyId: 'file', wrapped: await masterKey.wrap(k) }),
    unwrap: (w) => masterKey.unwrap(w),
    rotate: async () => 'file',
    retire: async () => {},
  };
  const ring = await DataKeyRing.open(store, wrapping, (w) => batcher.run(w), logger);
  const sealer = ring.sealer;
  cleanups.push(() => sealer.destroy());
  const clock = systemClock;
  const rekeyer = new Rekeyer({ store, ring, batcher, clock, logger });
  cleanups.push(() => rekeyer.stop());
  rekeyer.start();
  const ttlMs = cfg.key_ttl_seconds * 1000;
  const graceMs = cfg.expiry_grace_seconds * 1000;

  const peerTls = { cert: readFileSync(cfg.peer.tls.cert), key: readFileSync(cfg.peer.tls.key), ca: readFileSync(cfg.peer.tls.ca) };
  const links = new Map<string, { sync: LinkSync; pool: LinkPool }>();
  const byLinkId = new Map<string, LinkSync>();
  const drivers = new Map<string, QkdModuleDriver>();
  for (const l of cfg.links) {
    const pool = new LinkPool(
      { linkId: l.link_id, myKmeId: cfg.kme_id, peerKmeId: l.peer_kme_id, capacityBits: 2 * cfg.limits.max_key_count * cfg.limits.default_key_size },
      store,
      sealer,
    );
    const client = new PeerClient({ baseUrl: l.peer_url, linkId: l.link_id, peerKmeId: l.peer_kme_id, tls: peerTls, timeoutMs: cfg.peer.timeout_ms, logger });
    cleanups.push(() => client.close());
    const sync = new LinkSync({ pool, store, batcher, client, registry, clock, logger, ttlMs, skewMs: graceMs, peerTimeoutMs: cfg.peer.timeout_ms, myKmeId: cfg.kme_id });
    links.set(l.peer_kme_id, { sync, pool });
    byLinkId.set(l.link_id, sync);
    const driver = createModuleDriver(l, cfg.kme_id, clock, logger);
    drivers.set(l.link_id, driver);
    // Resolves once the discard is durable; only then does the driver acknowledge the alarm.
    driver.onAlarm?.((a) => sync.onModuleAlarm(a.firstBlockId, a.lastBlockId, a.kind));
    driver.onStateChange?.((state, cause) => logger.info({ link: l.link_id, state, cause: cause?.message }, 'QKD module driver state'));
    await driver.open().catch((e) => logger.error({ link: l.link_id, err: (e as Error).message }, 'QKD module not ready yet; the driver keeps trying'));
    cleanups.push(() => driver.close());
    const ingesting = runIngest({ driver, pool, batcher, clock, logger }, signal);
    cleanups.push(() => ingesting);
  }

  const service = new KeyService({ kmeId: cfg.kme_id, limits: cfg.limits, ttlMs, graceMs, registry, store, sealer, batcher, links, clock, logger });
  const diag = () => linkDiagnostics(cfg.kme_id, [...links.values()].map((l) => ({ ...l, driver: drivers.get(l.sync.linkId)! })));

  const peerServer = await startPeerServer({ host: cfg.peer.host, port: cfg.peer.port, tls: peerTls, links: byLinkId, logger });
  cleanups.push(() => peerServer.close());

  const every = (ms: number, fn: () => Promise<unknown>) => {
    let running = false;
    const t = setInterval(() => {
      if (running) return;
      running = true;
      fn().catch((e) => logger.warn({ err: (e as Error).message }, 'periodic task failed')).finally(() => (running = false));
    }, ms);
    cleanups.push(() => clearInterval(t));
  };
  for (const { sync } of links.values()) {
    await sync.maintain().catch(() => {});
    every(MAINTAIN_MS, () => sync.maintain());
  }
  every(SWEEP_MS, () => service.sweep());
  // Fold the WAL back into the store and truncate it, so copies of erased records do not linger there.
  every(CHECKPOINT_MS, async () => void store.db.pragma('wal_checkpoint(TRUNCATE)'));

  const ipc = await serveNdjson({ path: cfg.keypoold.socket, handler: (op, args) => dispatchPoolOp({ service, diag }, op, args), logger });
  cleanups.push(() => ipc.close());
  logger.info({ kme_id: cfg.kme_id, socket: cfg.keypoold.socket, peer_port: cfg.peer.port, links: cfg.links.length }, 'ready');
}

main().catch((e) => {
  process.stderr.write(`kme-keypoold: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
