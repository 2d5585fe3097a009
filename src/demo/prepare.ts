/**
 * Prepares (first run) or reuses (later runs) the two-node demo network under
 * <root>/var/demo/: PKI, the shared link seed, the simulated QKD link's
 * qkd-sim/sim.json, one config and SAE registry per node, and demo.json
 * describing how to start and use it all. Existing PKI, seed, sim.json,
 * configs, registries and state are never regenerated: the key pool lives in
 * the state folders and must survive restarts of the demo (and sim.json's
 * epoch fixes the block ids of the link).
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { ConfigError, parseConfig, simQkdSchema, type NodeConfig } from '../common/config.js';
import type { DemoDescription, DemoJson, DemoNode } from './description.js';
import { ensureDemoSoftHsm, provisionMasterKey, type DemoSoftHsm } from './softhsm.js';
import { ensureDir, isInside, readIfExists, SECRET_MODE, writeFileDurable, type FileLog } from './files.js';
import { buildNodeConfig, buildRegistry } from './node-config.js';
import { buildSimConfig } from './sim-config.js';
import { parseSimConfig, type SimConfig } from '../../drivers/sim/config.js';
import { findSocat } from '../../drivers/sim/devices.js';
import { ensureDemoPki, type DemoPki } from './pki.js';
import {
  DEFAULT_API_PORTS,
  DEFAULT_METRICS_PORTS,
  DEFAULT_PEER_PORTS,
  DEFAULT_RATE_BPS,
  DEMO_NODES,
  linkId,
  type DemoNodeSpec,
  type MetricsPorts,
} from './topology.js';

export type { DemoDescription } from './description.js';

export interface PrepareOptions {
  /** ETSI API ports of KME_A and KME_B (default 8443, 9443). */
  apiPorts?: [number, number];
  /** KME-to-KME listener ports of KME_A and KME_B (default 8444, 9444). */
  peerPorts?: [number, number];
  /**
   * Admin listener (health, readiness, metrics) ports of KME_A and KME_B, [keypoold, kme-api]
   * each. Default: 8445/8446 and 9445/9446 for the standard demo; none (no admin listeners)
   * when apiPorts are given without these, so isolated instances never take the fixed ports.
   */
  metricsPorts?: MetricsPorts;
  /** Simulated secret key rate, bits per second (default 1 000 000). */
  rateBps?: number;
  /** Demo folder, absolute or relative to root (default var/demo). */
  dir?: string;
}

/** Longest absolute keypoold socket path we write (sun_path is 108 bytes on Linux, 104 on BSDs). */
export const MAX_SOCKET_PATH_BYTES = 99;

export async function prepareDemo(root: string, opts: PrepareOptions = {}): Promise<DemoDescription> {
  const absRoot = resolve(root);
  const dir = resolve(absRoot, opts.dir ?? join('var', 'demo'));
  const apiPorts = opts.apiPorts ?? DEFAULT_API_PORTS;
  const peerPorts = opts.peerPorts ?? DEFAULT_PEER_PORTS;
  const rateBps = opts.rateBps ?? DEFAULT_RATE_BPS;
  const metricsPorts = opts.metricsPorts ?? (opts.apiPorts === undefined ? DEFAULT_METRICS_PORTS : undefined);
  checkPorts([...apiPorts, ...peerPorts, ...(metricsPorts?.flat() ?? [])]);
  if (!(rateBps > 0) || !Number.isFinite(rateBps)) throw new Error(`rateBps must be a positive number, got ${rateBps}`);

  const log: FileLog = { written: [], reused: [] };
  const notes: string[] = [];
  ensureDir(dir);
  const pki = await ensureDemoPki(join(dir, 'pki'), DEMO_NODES, log);

  const [a, b] = DEMO_NODES as [DemoNodeSpec, DemoNodeSpec];
  const link = linkId(a.kme_id, b.kme_id);
  const seedFile = join(dir, `link-${link}.seed`);
  ensureSeed(seedFile, log);

  const configFiles = DEMO_NODES.map((n) => join(dir, n.kme_id, 'config.json'));
  const existing = configFiles.map(readExistingConfig);
  // Each module on a socat pty pair (the real serial driver); without socat, on a Unix socket.
  const viaPty = findSocat() !== undefined;
  if (!viaPty) notes.push('socat not found: the simulated QKD modules are Unix sockets, not serial lines (install socat for the serial path)');
  const modulePaths = DEMO_NODES.map((n) =>
    viaPty ? join(dir, n.kme_id, 'qkd0') : socketPath(dir, join(dir, n.kme_id), 'qkd0.sock', `${n.kme_id}-qkd0`),
  );
  const sim = ensureSimConfig(dir, link, seedFile, rateBps, inProcessLink(existing, link, notes), modulePaths, viaPty, log);
  if (sim.kept && sim.config.rate_bps !== rateBps) {
    notes.push(`${sim.file} kept as it is (rate ${sim.config.rate_bps} bit/s; asked ${rateBps}): delete it to have it written again`);
  }
  if (!isInside(dirname(sim.file), sim.config.control.path)) {
    notes.push(`qkd-sim control socket is ${sim.config.control.path} (a path under ${dirname(sim.file)} would be too long for a Unix socket)`);
  }
  // A folder that may vanish (a socket folder under a tmpfs /tmp).
  ensureDir(dirname(sim.config.control.path), 0o700);

  // The master keys on SoftHSM2 tokens when it is installed (else in files; keypoold warns).
  for (const n of DEMO_NODES) ensureDir(join(dir, n.kme_id), 0o700);
  const hsm = ensureDemoSoftHsm(dir, DEMO_NODES.map((n) => n.kme_id), (id) => join(dir, id, 'hsm.pin'), log);
  if (!hsm) notes.push('SoftHSM2 not found: the master keys are kept in files, not an HSM (install softhsm2 for the PKCS#11 path)');

  const configs: NodeConfig[] = DEMO_NODES.map((n, i) => {
    const other = DEMO_NODES[1 - i]!;
    const nodeDir = dirname(configFiles[i]!);
    ensureDir(nodeDir, 0o700);
    const raw = existing[i];
    let config: NodeConfig;
    if (raw !== undefined) {
      config = checkedConfig(raw, configFiles[i]!);
      log.reused.push(configFiles[i]!);
      if (config.api.port !== apiPorts[i] || config.peer.port !== peerPorts[i]) {
        notes.push(
          `${configFiles[i]} kept as it is (api port ${config.api.port}, peer port ${config.peer.port}; ` +
            `asked ${apiPorts[i]} / ${peerPorts[i]}): delete it to have it written again`,
        );
      }
      const m = metricsPorts?.[i];
      if (m && (config.keypoold.metrics?.port !== m[0] || config.api.metrics?.port !== m[1])) {
        const had = (x?: { port: number }) => (x ? String(x.port) : 'none');
        notes.push(
          `${configFiles[i]} kept as it is (metrics ports ${had(config.keypoold.metrics)} / ${had(config.api.metrics)}; ` +
            `asked ${m[0]} / ${m[1]}): delete it to have it written again`,
        );
      }
    } else {
      const fresh = buildNodeConfig({
        kmeId: n.kme_id,
        demoDir: dir,
        nodeDir,
        socket: socketPath(dir, nodeDir, 'keypoold.sock', n.kme_id),
        adminSocket: socketPath(dir, nodeDir, 'admin.sock', `${n.kme_id}-admin`),
        masterKey: hsm
          ? { provider: 'pkcs11', module: hsm.module, token_label: n.kme_id, key_label: 'kme-master', pin_file: 'hsm.pin' }
          : { provider: 'file', path: 'master.key' },
        apiPort: apiPorts[i]!,
        peerPort: peerPorts[i]!,
        metricsPorts: metricsPorts?.[i],
        pki,
        link: {
          link_id: link,
          peer_kme_id: other.kme_id,
          peer_port: peerPorts[1 - i]!,
          module_path: modulePaths[i]!,
          module_kind: viaPty ? 'serial' : 'socket',
        },
      });
      config = checkedConfig(fresh, configFiles[i]!);
      writeFileDurable(configFiles[i]!, JSON.stringify(fresh, null, 2) + '\n');
      log.written.push(configFiles[i]!);
    }
    if (!isInside(nodeDir, config.keypoold.socket)) {
      notes.push(
        `${n.kme_id} keypoold socket is ${config.keypoold.socket} (a path under ${nodeDir} would be too long for a Unix socket)`,
      );
    }
    // Folders that may vanish (a socket folder under a tmpfs /tmp) or were never made.
    ensureDir(dirname(config.keypoold.socket), 0o700);
    ensureDir(dirname(config.keypoold.admin_socket!), 0o700);
    ensureDir(config.state_dir, 0o700);
    ensureRegistry(config.registry_file, log);
    const mismatch = moduleMismatch(config, link, sim.config);
    if (mismatch) {
      notes.push(`${n.kme_id} does not use the qkd-sim process: ${mismatch}; delete ${configFiles[i]} to have it written again (its state is kept)`);
    }
    return config;
  });

  configs.forEach((c, i) => {
    if (c.master_key.provider === 'pkcs11') {
      if (!hsm) throw new Error(`${configFiles[i]} keeps its master key in an HSM, but SoftHSM2 is not installed: install softhsm2 or delete the file`);
      provisionMasterKey(absRoot, configFiles[i]!, hsm);
    }
  });
  const show = (p: string) => (isInside(absRoot, p) ? relative(absRoot, p) || '.' : p);
  const file = join(dir, 'demo.json');
  const json = describe(configs, configFiles, pki, sim, show, hsm, file);
  const text = JSON.stringify(json, null, 2) + '\n';
  if (readIfExists(file) !== text) {
    writeFileDurable(file, text);
    log.written.push(file);
  } else {
    log.reused.push(file);
  }
  return { ...json, root: absRoot, dir, file, written: log.written, reused: log.reused, notes };
}

function describe(
  configs: NodeConfig[], configFiles: string[], pki: DemoPki, sim: DemoSimFiles, show: (p: string) => string, hsm: DemoSoftHsm | undefined,
  file: string,
): DemoJson {
  const nodes: DemoNode[] = configs.map((c, i) => {
    const spec = DEMO_NODES.find((n) => n.kme_id === c.kme_id)!;
    const configArgs = ['--config', show(configFiles[i]!)];
    return {
      kme_id: c.kme_id,
      etsi_url: `https://${c.api.host}:${c.api.port}`,
      processes: [
        {
          name: 'kme-keypoold',
          // SoftHSM2 finds the demo's tokens through SOFTHSM2_CONF.
          argv: [
            ...(c.master_key.provider === 'pkcs11' && hsm ? ['env', `SOFTHSM2_CONF=${hsm.confPath}`] : []),
            'node', 'dist/src/keypoold/main.js', ...configArgs,
          ],
          ready: { unix_socket: show(c.keypoold.socket) },
        },
        {
          name: 'kme-api',
          argv: ['node', 'dist/src/api/main.js', ...configArgs],
          ready: { tcp: { host: c.api.host, port: c.api.port } },
        },
      ],
      saes: spec.sae_ids.map((sae_id) => ({
        sae_id,
        cert: show(pki.saes[sae_id]!.cert),
        key: show(pki.saes[sae_id]!.key),
      })),
      config: configArgs[1]!,
      state_dir: show(c.state_dir),
      registry_file: show(c.registry_file),
      keypoold_socket: show(c.keypoold.socket),
      admin_socket: show(c.keypoold.admin_socket!),
      peer_url: `https://${c.peer.host}:${c.peer.port}`,
      ...metricsUrls(c),
      api_cert: show(c.api.tls.cert),
      api_key: show(c.api.tls.key),
      kme_cert: show(c.peer.tls.cert),
      kme_key: show(c.peer.tls.key),
    };
  });
  const first = configs[0]!.links[0]!;
  // Only a path goes through show(): it would resolve a placeholder against the working folder.
  const device = (c: NodeConfig) => {
    const q = c.links[0]!.qkd;
    return q.driver === 'serial' || (q.driver === 'socket' && q.path) ? show(q.path!) : `(${q.driver})`;
  };
  return {
    ca_cert: show(pki.ca.cert),
    ca_key: show(pki.ca.key),
    nodes,
    api_ca_cert: show(configs[0]!.api.tls.ca),
    links: [
      {
        link_id: first.link_id,
        kme_ids: [configs[0]!.kme_id, configs[1]!.kme_id],
        module_devices: [device(configs[0]!), device(configs[1]!)],
        seed_file: show(sim.config.seed_file),
        rate_bps: sim.config.rate_bps,
        epoch_ms: sim.config.epoch_ms,
      },
    ],
    qkd_sim: {
      name: 'qkd-sim',
      argv: ['node', 'dist/drivers/sim/main.js', '--config', show(sim.file)],
      ready: { unix_socket: show(sim.config.control.path) },
      control: ['node', 'dist/drivers/sim/control.js', '--socket', show(sim.config.control.path)],
      config: show(sim.file),
    },
    kmectl: ['node', 'dist/scripts/kmectl.js', '--demo', show(file)],
  };
}

/** demo.json's metrics_urls of a node, if either daemon has an admin listener. */
function metricsUrls(c: NodeConfig): Pick<DemoNode, 'metrics_urls'> {
  const url = (m: { host: string; port: number }) => `http://${m.host.includes(':') ? `[${m.host}]` : m.host}:${m.port}/metrics`;
  const urls: NonNullable<DemoNode['metrics_urls']> = {
    ...(c.keypoold.metrics ? { 'kme-keypoold': url(c.keypoold.metrics) } : {}),
    ...(c.api.metrics ? { 'kme-api': url(c.api.metrics) } : {}),
  };
  return Object.keys(urls).length > 0 ? { metrics_urls: urls } : {};
}

function checkPorts(ports: number[]): void {
  for (const p of ports) {
    if (!Number.isInteger(p) || p < 1 || p > 65535) throw new Error(`demo port out of range: ${p}`);
  }
  if (new Set(ports).size !== ports.length) throw new Error(`demo ports must all differ, got ${ports.join(', ')}`);
}

/** 32 random bytes as 64 lowercase hex characters, no newline, mode 0600. */
function ensureSeed(path: string, log: FileLog): void {
  const have = readIfExists(path);
  if (have === undefined) {
    writeFileDurable(path, randomBytes(32).toString('hex'), SECRET_MODE);
    log.written.push(path);
    return;
  }
  if (!/^[0-9a-fA-F]{64}$/.test(have.trim())) {
    throw new Error(`link seed ${path} is not 64 hex characters; delete it (and both nodes' state) to start over`);
  }
  chmodSync(path, SECRET_MODE);
  log.reused.push(path);
}

function ensureRegistry(path: string, log: FileLog): void {
  if (readIfExists(path) !== undefined) {
    log.reused.push(path);
    return;
  }
  writeFileDurable(path, JSON.stringify(buildRegistry(DEMO_NODES), null, 2) + '\n');
  log.written.push(path);
}

function readExistingConfig(path: string): unknown {
  const text = readIfExists(path);
  if (text === undefined) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new ConfigError(`${path} is not valid JSON (${(e as Error).message}); fix or delete it`);
  }
}

function checkedConfig(raw: unknown, path: string): NodeConfig {
  try {
    return parseConfig(raw, dirname(path));
  } catch (e) {
    if (e instanceof ConfigError) {
      throw new ConfigError(`${path}: ${e.message}\nfix it, or delete it to have it written again`);
    }
    throw e;
  }
}

interface DemoSimFiles {
  file: string;
  config: SimConfig;
  /** sim.json existed already (and was kept as it is). */
  kept: boolean;
}

/** qkd-sim/sim.json: written once, then kept (its epoch fixes the block ids of the link). */
function ensureSimConfig(
  dir: string, link: string, seedFile: string, rateBps: number, older: InProcessLink | undefined,
  modulePaths: string[], viaPty: boolean, log: FileLog,
): DemoSimFiles {
  const simDir = join(dir, 'qkd-sim');
  ensureDir(simDir, 0o700);
  const file = join(simDir, 'sim.json');
  let text = readIfExists(file);
  const kept = text !== undefined;
  if (text === undefined) {
    const raw = buildSimConfig({
      demoDir: dir, simDir, linkId: link, seedFile,
      rateBps: older?.rate_bps ?? rateBps,
      epochMs: older?.epoch_ms ?? Date.now(),
      controlPath: socketPath(dir, simDir, 'control.sock', 'qkd-sim-control'),
      modules: DEMO_NODES.map((n, i) => ({ kmeId: n.kme_id, moduleId: `SIM-${n.kme_id}`, device: modulePaths[i]!, kind: viaPty ? 'pty' : 'unix' })),
    });
    // An older demo's block size too (ids = time since the epoch * rate / block size).
    if (older) raw.block_bits = older.block_bits;
    text = JSON.stringify(raw, null, 2) + '\n';
    writeFileDurable(file, text);
    log.written.push(file);
  } else {
    log.reused.push(file);
  }
  try {
    return { file, kept, config: parseSimConfig(JSON.parse(text), simDir) };
  } catch (e) {
    throw new ConfigError(`${file}: ${(e as Error).message}\nfix it, or delete it to have it written again`);
  }
}

/**
 * Why a node's QKD module is not the one the simulator serves for it (an
 * older config that ran the simulator in-process, a hand-edited path), if so.
 */
function moduleMismatch(config: NodeConfig, link: string, sim: SimConfig): string | undefined {
  const q = config.links.find((l) => l.link_id === link)?.qkd;
  if (!q) return `its config has no link ${link}`;
  const m = sim.modules.find((x) => x.kme_id === config.kme_id);
  if (!m) return `the simulator has no module for it`;
  const d = m.device;
  const served = d.kind === 'pty' ? `serial ${d.link}` : d.kind === 'unix' ? `socket ${d.path}` : `socket ${d.host}:${d.port}`;
  const used =
    q.driver === 'serial' ? `serial ${q.path}` : q.driver === 'socket' ? `socket ${q.path ?? `${q.host}:${q.port}`}` : `driver '${q.driver}'`;
  if (used === served) return undefined;
  return `its QKD module is ${used}, but the simulator serves it at ${served}`;
}

/** The schedule of an older demo's link: what its node configs gave the in-process simulator. */
interface InProcessLink {
  epoch_ms: number;
  rate_bps: number;
  block_bits: number;
}

/**
 * The link schedule both ends already agree on, if node configs of an older
 * demo (the simulator in-process) exist. Block ids follow from epoch, rate
 * and block size together: all three must carry over for ids not to go back.
 */
function inProcessLink(existing: unknown[], link: string, notes: string[]): InProcessLink | undefined {
  const found = existing.flatMap((raw) => {
    const links = (raw as { links?: Array<{ link_id?: string; qkd?: unknown }> } | undefined)?.links;
    const l = Array.isArray(links) ? links.find((x) => x?.link_id === link) : undefined;
    const q = simQkdSchema.safeParse(l?.qkd);
    return q.success ? [{ epoch_ms: q.data.epoch_ms, rate_bps: q.data.rate_bps, block_bits: q.data.block_bits }] : [];
  });
  const show = (x: InProcessLink) => `epoch_ms ${x.epoch_ms}, rate_bps ${x.rate_bps}, block_bits ${x.block_bits}`;
  if (new Set(found.map(show)).size > 1) {
    notes.push(`the two node configs disagree on the simulated ${link} (${found.map(show).join(' vs ')}): the simulated link will not match`);
  }
  return found[0];
}

/**
 * <node>/keypoold.sock, unless that absolute path is too long for a Unix
 * socket; then a per-demo folder under the OS temp folder.
 */
function socketPath(demoDir: string, nodeDir: string, file: string, name: string): string {
  const preferred = join(nodeDir, file);
  if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH_BYTES) return preferred;
  const tag = createHash('sha256').update(demoDir).digest('hex').slice(0, 12);
  const fallback = join(tmpdir(), `kme-demo-${tag}`, `${name}.sock`);
  if (Buffer.byteLength(fallback) > MAX_SOCKET_PATH_BYTES) {
    throw new Error(`no short enough path for the ${name} socket (tried ${preferred} and ${fallback})`);
  }
  return fallback;
}
