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
import { createSdNotifier, startWatchdog } from '../common/sd-notify.js';
import { systemClock, type QkdModuleDriver } from '../../drivers/types.js';
import { createModuleDriver } from './module-driver.js';
import { serveNdjson } from '../ipc/ndjson-server.js';
import { MasterKeyError, masterKeyExitCode, openMasterKeyProvider } from './master-key.js';
import { AuditLogError } from './audit-log.js';
import { AuditTrail } from './audit-trail.js';
import { MasterKeyWatch } from './master-key-watch.js';
import { LowWatermark } from './low-watermark.js';
import { PairQuota } from './pair-quota.js';
import { Rotation } from './rotation.js';
import { openDb, Store } from './store.js';
import { TxBatcher } from './tx-batcher.js';
import { Registry, RegistryError } from './registry.js';
import { LinkPool } from './link-pool.js';
import { LinkSync } from './link-sync.js';
import { PeerClient } from './peer-client.js';
import { startPeerServer } from './peer-server.js';
import { runIngest } from './ingest.js';
import { KeyService } from './key-service.js';
import { DataKeyRing } from './data-key.js';
import { Rekeyer } from './rekey.js';
import { dispatchPoolOp } from './local-api.js';
import { linkDiagnostics } from './diagnostics.js';
import { startKeypooldAdmin } from './metrics.js';
import { LinkSelftest, type SelftestLink } from './selftest.js';

const MAINTAIN_MS = 1000;
const SWEEP_MS = 1000;
const CHECKPOINT_MS = 60_000;
const AUDIT_FLUSH_MS = 1000;
const HSM_CHECK_MS = 2000;

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
    if (e instanceof MasterKeyError || e instanceof RegistryError || e instanceof ConfigError || e instanceof AuditLogError) {
      logger.fatal({ err: e.message }, 'cannot start');
      process.stderr.write(`kme-keypoold: ${e.message}\n`);
      await shutdown(e instanceof MasterKeyError ? masterKeyExitCode(e.code) : 2);
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
  const clock = systemClock;
  const registry = await Registry.open(cfg.registry_file);
  const store = new Store(openDb(join(cfg.state_dir, 'keystore.sqlite')));
  cleanups.push(() => store.close());
  const masterKey = await openMasterKeyProvider(cfg.master_key, logger);
  cleanups.push(() => masterKey.close());
  const trail = await AuditTrail.open({ dir: cfg.audit.dir!, segmentBytes: cfg.audit.segment_bytes, store, clock, logger });
  const { audit, log: auditLog } = trail;
  const batcher = new TxBatcher(
    store.db,
    logger,
    (e) => {
      logger.fatal({ err: (e as Error).message }, 'the key store or the audit trail could not be flushed to disk; stopping');
      fatal();
    },
    () => auditLog.flush(),
  );
  // Runs last of these (cleanups run in reverse): the final anchor, then the trail's last lines.
  cleanups.push(async () => {
    audit.record({ event: 'stopped' });
    await batcher.drain();
    await trail.anchor(batcher);
    batcher.close();
    await auditLog.close();
  });
  const ring = await DataKeyRing.open(store, masterKey, (w) => batcher.run(w), logger);
  const sealer = ring.sealer;
  cleanups.push(() => sealer.destroy());
  const rekeyer = new Rekeyer({
    store, ring, batcher, clock, logger,
    onFinished: (p) => audit.record({ event: 'rotation', reason: `data key re-encryption ${p.state}`, detail: { generation: p.generation, resealed: p.resealed } }),
  });
  cleanups.push(() => rekeyer.stop());
  if (rekeyer.start()) logger.warn('an interrupted store re-encryption resumes');
  const rotation = new Rotation({
    ring, rekeyer, master: masterKey,
    onRotated: (what, detail) => audit.record({ event: 'rotation', reason: `new ${what} key`, detail }),
  });
  const hsm = new MasterKeyWatch(masterKey, logger, audit, HSM_CHECK_MS);
  cleanups.push(() => hsm.stop());
  const stopReason = () => (hsm.problem === undefined ? undefined : 'its master key (HSM) is unavailable');
  const stopDetail = () => hsm.problem;

  const ttlMs = cfg.key_ttl_seconds * 1000;
  const graceMs = cfg.expiry_grace_seconds * 1000;

  const peerTls = { cert: readFileSync(cfg.peer.tls.cert), key: readFileSync(cfg.peer.tls.key), ca: readFileSync(cfg.peer.tls.ca) };
  const links = new Map<string, { sync: LinkSync; pool: LinkPool }>();
  const byLinkId = new Map<string, LinkSync>();
  const drivers = new Map<string, QkdModuleDriver>();
  const selftestLinks = new Map<string, SelftestLink>();
  for (const l of cfg.links) {
    const pool = new LinkPool(
      { linkId: l.link_id, myKmeId: cfg.kme_id, peerKmeId: l.peer_kme_id, capacityBits: 2 * cfg.limits.max_key_count * cfg.limits.default_key_size },
      store,
      sealer,
    );
    const client = new PeerClient({ baseUrl: l.peer_url, linkId: l.link_id, peerKmeId: l.peer_kme_id, tls: peerTls, timeoutMs: cfg.peer.timeout_ms, logger });
    cleanups.push(() => client.close());
    const sync = new LinkSync({
      pool, store, batcher, client, registry, clock, logger, ttlMs, skewMs: graceMs, peerTimeoutMs: cfg.peer.timeout_ms, myKmeId: cfg.kme_id,
      audit, stopReason, maxOwnedBits: cfg.limits.max_key_count * cfg.limits.default_key_size,
    });
    links.set(l.peer_kme_id, { sync, pool });
    byLinkId.set(l.link_id, sync);
    selftestLinks.set(l.link_id, { sync, pool, client });
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

  const lowWatermark = new LowWatermark(cfg.pool.low_watermark_keys ?? Math.floor(cfg.limits.max_key_count / 10), (e) => {
    if (e.kind === 'low') logger.warn(e, 'key pool below its low watermark');
    else logger.info(e, 'key pool back above its low watermark');
    audit.record({ event: 'low_watermark', link: e.link, count: e.available, reason: e.kind === 'low' ? `below ${e.watermark} keys` : `recovered above ${e.watermark} keys` });
  });
  const quota = cfg.pool.sae_pair_quota ? new PairQuota(cfg.pool.sae_pair_quota, clock) : undefined;
  const service = new KeyService({
    kmeId: cfg.kme_id, limits: cfg.limits, ttlMs, graceMs, registry, store, sealer, batcher, links, clock, logger,
    audit, lowWatermark, quota, stopReason, stopDetail,
  });
  const diag = () => linkDiagnostics(cfg.kme_id, [...links.values()].map((l) => ({ ...l, driver: drivers.get(l.sync.linkId)! })));

  const selftest = new LinkSelftest({
    kmeId: cfg.kme_id, keyBits: cfg.limits.default_key_size, ttlMs, links: selftestLinks, store, batcher, sealer, clock, logger, audit, stopReason,
  });
  const peerServer = await startPeerServer({
    host: cfg.peer.host, port: cfg.peer.port, tls: peerTls, links: byLinkId, logger, onSelftest: (link, args) => selftest.onPeer(link, args),
  });
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
  every(MAINTAIN_MS, async () => service.watchLevels());
  // Events recorded outside a store commit (refusals, alarms) reach the disk within a second.
  every(AUDIT_FLUSH_MS, () =>
    trail.flush(batcher).catch((e) => {
      logger.fatal({ err: (e as Error).message }, 'the audit trail could not be written; stopping');
      fatal();
    }),
  );
  // Fold the WAL back into the store and truncate it, so copies of erased records do not linger
  // there; and note where the audit trail stood, so a cut-off trail is detected.
  every(CHECKPOINT_MS, async () => {
    await trail.anchor(batcher);
    store.db.pragma('wal_checkpoint(TRUNCATE)');
  });

  const handler = (admin: boolean) => (op: string, args: unknown) => dispatchPoolOp({ service, diag, rotation, registry, selftest }, op, args, admin);
  const ipc = await serveNdjson({ path: cfg.keypoold.socket, handler: handler(false), logger });
  cleanups.push(() => ipc.close());
  const adminIpc = await serveNdjson({ path: cfg.keypoold.admin_socket!, handler: handler(true), logger });
  cleanups.push(() => adminIpc.close());
  if (cfg.keypoold.metrics) {
    const admin = await startKeypooldAdmin(cfg.keypoold.metrics, logger, {
      kmeId: cfg.kme_id, defaultKeySize: cfg.limits.default_key_size, health: () => service.health(), diag,
      masterKey: { provider: masterKey.kind, ok: () => hsm.problem === undefined },
      dataKey: () => ({ generation: sealer.current, reencrypting: rekeyer.running }),
      auditSeq: () => auditLog.durableHead.seq, kmeCertPem: peerTls.cert,
      checkStore: () => void store.db.pragma('schema_version'), stopping: () => signal.aborted,
    });
    cleanups.push(() => admin.close());
  }
  audit.record({ event: 'started', detail: { provider: masterKey.kind, generation: sealer.current } });
  logger.info(
    { kme_id: cfg.kme_id, socket: cfg.keypoold.socket, admin_socket: cfg.keypoold.admin_socket, peer_port: cfg.peer.port, links: cfg.links.length, master_key: masterKey.kind },
    'ready',
  );
  // systemd (sd_notify): READY=1 now that both sockets listen; WATCHDOG=1 only while keys are served
  // and the store takes a durable commit; STOPPING=1 first thing at shutdown (cleanups run in reverse).
  const notifier = createSdNotifier({ logger });
  notifier.ready(`serving keys as ${cfg.kme_id}`);
  const watchdog = startWatchdog({
    notifier, logger,
    check: async () => {
      const h = service.health();
      if (signal.aborted || !h.serving) return { healthy: false, status: `not serving keys: ${h.stop_reason ?? 'stopping'}` };
      await batcher.run(() => store.putMeta('watchdog_probe', Buffer.from(String(clock.now()))));
      return { healthy: true, status: `serving keys; peers reachable on ${h.links.filter((l) => l.peer_reachable).length}/${h.links.length} link(s)` };
    },
  });
  cleanups.push(() => {
    watchdog.stop();
    notifier.stopping('stopping');
  });
}

main().catch((e) => {
  process.stderr.write(`kme-keypoold: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
