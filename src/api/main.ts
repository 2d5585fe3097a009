/**
 * kme-api: the SAE-facing ETSI GS QKD 014 server of one node.
 *
 *   node dist/src/api/main.js --config <path>
 *
 * HTTPS with mutual TLS on cfg.api.host:cfg.api.port; every key operation is
 * forwarded to keypoold over its Unix socket. Holds no key state.
 * Exit codes: 0 after SIGTERM/SIGINT, 1 on an uncaught error, 2 on bad configuration.
 */
import { readFileSync } from 'node:fs';
import type { Server as HttpsServer } from 'node:https';
import { configPathFromArgv, loadConfig, type NodeConfig } from '../common/config.js';
import { createLogger, type Logger } from '../common/logger.js';
import { createSdNotifier, startWatchdog } from '../common/sd-notify.js';
import { NdjsonPoolClient } from '../ipc/ndjson-client.js';
import { createEtsiApp } from './app.js';
import { apiMetrics, startApiAdmin } from './metrics.js';
import { identityFromSocket, type TlsMaterial } from './mtls.js';
import { createEtsiServer, listen } from './server.js';

const HARD_EXIT_MS = 5_000;

function readTls(cfg: NodeConfig): TlsMaterial {
  const read = (what: string, p: string) => {
    try {
      return readFileSync(p);
    } catch (e) {
      throw new Error(`cannot read api.tls.${what} ${p}: ${(e as Error).message}`);
    }
  };
  return { key: read('key', cfg.api.tls.key), cert: read('cert', cfg.api.tls.cert), ca: read('ca', cfg.api.tls.ca) };
}

function main(): void {
  let cfg: NodeConfig;
  let tls: TlsMaterial;
  try {
    cfg = loadConfig(configPathFromArgv(process.argv));
    tls = readTls(cfg);
  } catch (e) {
    process.stderr.write(`kme-api: ${(e as Error).message}\n`);
    process.exit(2);
  }

  const logger = createLogger('kme-api', cfg.log_level);
  // A local socket: retry often, so a restarted keypoold is back in service within a quarter second.
  const pool = new NdjsonPoolClient({ path: cfg.keypoold.socket, logger, backoff: { initialMs: 50, maxMs: 250 } });
  const metrics = cfg.api.metrics ? apiMetrics({ kmeId: cfg.kme_id, serverCertPem: tls.cert, pool }) : undefined;
  const app = createEtsiApp({
    observe: metrics?.middleware,
    pool,
    limits: cfg.limits,
    kmeId: cfg.kme_id,
    identityOf: identityFromSocket(cfg.api.identity),
    logger,
    maxBodyBytes: cfg.api.max_body_bytes,
  });

  const server = createEtsiServer(app, tls, logger);
  // systemd (sd_notify): READY=1 once the HTTPS listener is up, WATCHDOG=1 while it stays up (not
  // tied to keypoold: SAEs get 503 and the client reconnects), STOPPING=1 on a stop signal.
  const notifier = createSdNotifier({ logger });
  const stopping = () => notifier.stopping('stopping');
  process.once('SIGTERM', stopping);
  process.once('SIGINT', stopping);
  installShutdown(server, pool, logger);
  listen(server, cfg.api.port, cfg.api.host).then(
    (port) => {
      logger.info({ host: cfg.api.host, port, kme_id: cfg.kme_id }, 'listening');
      notifier.ready(`listening on ${cfg.api.host}:${port}`);
      startWatchdog({ notifier, logger, check: () => ({ healthy: server.listening, status: `listening on ${cfg.api.host}:${port}` }) });
    },
    (err: unknown) => {
      logger.fatal({ err }, 'cannot listen');
      process.exit(1);
    },
  );
  if (cfg.api.metrics && metrics) {
    startApiAdmin(cfg.api.metrics, logger, metrics, { listening: () => server.listening, pool }).catch((err: unknown) => {
      logger.fatal({ err: (err as Error).message }, 'cannot start the admin listener');
      process.exit(1);
    });
  }
}

function installShutdown(server: HttpsServer, pool: NdjsonPoolClient, logger: Logger): void {
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'stopping');
    setTimeout(() => {
      logger.warn('in-flight requests did not finish in time; exiting');
      process.exit(0);
    }, HARD_EXIT_MS).unref();
    server.close(() => {
      void pool.close().finally(() => process.exit(0));
    });
    server.closeIdleConnections();
  };
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));

  const die = (err: unknown) => {
    logger.fatal({ err }, 'uncaught error');
    process.exit(1);
  };
  process.on('uncaughtException', die);
  process.on('unhandledRejection', die);
}

main();
