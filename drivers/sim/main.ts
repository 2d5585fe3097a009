/**
 * The simulated QKD link as its own process:
 *
 *   node dist/drivers/sim/main.js --config <sim.json>
 *
 * Two modules on one link, each reachable over a socat pty pair, a Unix socket
 * or TCP (see config.ts), faults injected through the control socket
 * (control.ts). JSON-line logs on stdout, never key material. SIGTERM/SIGINT:
 * stop cleanly (socats killed, sockets removed), exit 0.
 */
import { parseArgs } from 'node:util';
import { createLogger } from '../../src/common/logger.js';
import { loadSimConfig, readSeedFile } from './config.js';
import { serveControl, type ControlServer } from './control-socket.js';
import { findSocat } from './devices.js';
import { Simulator } from './simulator.js';

const USAGE = 'usage: node dist/drivers/sim/main.js --config <sim.json>';

async function main(): Promise<number> {
  let configPath: string | undefined;
  try {
    const { values } = parseArgs({ options: { config: { type: 'string' }, help: { type: 'boolean' } }, strict: true });
    if (values.help) {
      process.stdout.write(`${USAGE}\n`);
      return 0;
    }
    configPath = values.config;
  } catch (e) {
    process.stderr.write(`${(e as Error).message}\n${USAGE}\n`);
    return 2;
  }
  if (!configPath) {
    process.stderr.write(`missing --config\n${USAGE}\n`);
    return 2;
  }
  let cfg;
  let seed: Buffer;
  try {
    cfg = loadSimConfig(configPath);
    seed = readSeedFile(cfg.seed_file);
  } catch (e) {
    process.stderr.write(`kme-sim: ${(e as Error).message}\n`);
    return 2;
  }
  const ptys = cfg.modules.filter((m) => m.device.kind === 'pty').map((m) => m.module_id);
  if (ptys.length > 0 && !findSocat()) {
    process.stderr.write(
      `kme-sim: socat is not installed (not found on PATH), and modules ${ptys.join(', ')} use 'pty' devices, which need it.\n` +
        `Install socat (apt-get install socat) or give those modules a socket device: { "kind": "unix", "path": "..." }.\n`,
    );
    return 2;
  }

  const logger = createLogger('kme-sim', cfg.log_level).child({ link_id: cfg.link_id });
  const sim = new Simulator({ config: cfg, seed, logger });
  seed.fill(0);
  let control: ControlServer | undefined;
  let stopping: Promise<void> | undefined;
  const stop = (why: string) => {
    // Leave even if a device refuses to let go.
    setTimeout(() => process.exit(exitCode || 1), 8000).unref();
    stopping ??= (async () => {
      logger.info({ why }, 'stopping');
      await control?.close().catch(() => undefined);
      await sim.stop();
      logger.info('stopped');
    })();
    return stopping;
  };
  let exitCode = 0;
  let stopped!: () => void;
  const done = new Promise<void>((r) => (stopped = r));
  for (const sig of ['SIGTERM', 'SIGINT'] as const) {
    process.on(sig, () => void stop(sig).then(stopped));
  }
  process.on('uncaughtException', (e) => {
    logger.fatal({ err: e.message, stack: e.stack }, 'uncaught exception');
    exitCode = 1;
    void stop('uncaught exception').then(stopped);
  });
  try {
    await sim.start();
    control = await serveControl(cfg.control.path, sim, logger);
  } catch (e) {
    logger.error({ err: (e as Error).message }, 'cannot start the simulator');
    process.stderr.write(`kme-sim: ${(e as Error).message}\n`);
    await stop('start failed');
    return 1;
  }
  logger.info({ control: cfg.control.path, modules: sim.devices.map((d) => d.status()) }, 'simulator ready');
  await done;
  return exitCode;
}

main().then(
  (code) => {
    process.exitCode = code;
    // Give pino's stdout a moment, then leave even if a handle lingers.
    setTimeout(() => process.exit(code), 100).unref();
  },
  (e: Error) => {
    process.stderr.write(`kme-sim: ${e.stack ?? e.message}\n`);
    process.exit(1);
  },
);
