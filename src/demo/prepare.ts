/**
 * Prepares (first run) or reuses (later runs) the two-node demo network under
 * <root>/var/demo/: PKI, the shared link seed, one config and SAE registry per
 * node, and demo.json describing how to start and use it all. Existing PKI,
 * seed, configs, registries and state are never regenerated: the key pool
 * lives in the state folders and must survive restarts of the demo.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { ConfigError, parseConfig, type NodeConfig } from '../common/config.js';
import type { DemoDescription, DemoJson, DemoNode } from './description.js';
import { ensureDir, isInside, readIfExists, SECRET_MODE, writeFileDurable, type FileLog } from './files.js';
import { buildNodeConfig, buildRegistry } from './node-config.js';
import { buildSimConfig } from './sim-config.js';
import { parseSimConfig, type SimConfig } from '../../drivers/sim/config.js';
import { ensureDemoPki, type DemoPki } from './pki.js';
import {
  DEFAULT_API_PORTS,
  DEFAULT_PEER_PORTS,
  DEFAULT_RATE_BPS,
  DEMO_NODES,
  linkId,
  type DemoNodeSpec,
} from './topology.js';

export type { DemoDescription } from './description.js';

export interface PrepareOptions {
  /** ETSI API ports of KME_A and KME_B (default 8443, 9443). */
  apiPorts?: [number, number];
  /** KME-to-KME listener ports of KME_A and KME_B (default 8444, 9444). */
  peerPorts?: [number, number];
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
  checkPorts([...apiPorts, ...peerPorts]);
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
  const modulePaths = DEMO_NODES.map((n) => join(dir, n.kme_id, 'qkd0'));
  const sim = ensureSimConfig(dir, link, seedFile, rateBps, sharedEpoch(existing, link, notes), modulePaths, log);
  ensureDir(dirname(sim.config.control.path), 0o700);

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
    } else {
      const fresh = buildNodeConfig({
        kmeId: n.kme_id,
        demoDir: dir,
        nodeDir,
        socket: socketPath(dir, nodeDir, n.kme_id),
        apiPort: apiPorts[i]!,
        peerPort: peerPorts[i]!,
        pki,
        link: {
          link_id: link,
          peer_kme_id: other.kme_id,
          peer_port: peerPorts[1 - i]!,
          module_path: modulePaths[i]!,
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
    ensureDir(config.state_dir, 0o700);
    ensureRegistry(config.registry_file, log);
    return config;
  });

  const show = (p: string) => (isInside(absRoot, p) ? relative(absRoot, p) || '.' : p);
  const json = describe(configs, configFiles, pki, sim, show);
  const file = join(dir, 'demo.json');
  const text = JSON.stringify(json, null, 2) + '\n';
  if (readIfExists(file) !== text) {
    writeFileDurable(file, text);
    log.written.push(file);
  } else {
    log.reused.push(file);
  }
  return { ...json, root: absRoot, dir, file, written: log.written, reused: log.reused, notes };
}

function describe(configs: NodeConfig[], configFiles: string[], pki: DemoPki, sim: DemoSimFiles, show: (p: string) => string): DemoJson {
  const nodes: DemoNode[] = configs.map((c, i) => {
    const spec = DEMO_NODES.find((n) => n.kme_id === c.kme_id)!;
    const configArgs = ['--config', show(configFiles[i]!)];
    return {
      kme_id: c.kme_id,
      etsi_url: `https://${c.api.host}:${c.api.port}`,
      processes: [
        {
          name: 'kme-keypoold',
          argv: ['node', 'dist/src/keypoold/main.js', ...configArgs],
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
      peer_url: `https://${c.peer.host}:${c.peer.port}`,
      api_cert: show(c.api.tls.cert),
      api_key: show(c.api.tls.key),
      kme_cert: show(c.peer.tls.cert),
      kme_key: show(c.peer.tls.key),
    };
  });
  const first = configs[0]!.links[0]!;
  const device = (c: NodeConfig) => {
    const q = c.links[0]!.qkd;
    return show(q.driver === 'serial' || (q.driver === 'socket' && q.path) ? q.path! : `(${q.driver})`);
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
  };
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
}

/** qkd-sim/sim.json: written once, then kept (its epoch fixes the block ids of the link). */
function ensureSimConfig(
  dir: string, link: string, seedFile: string, rateBps: number, epochFromNodes: number | undefined,
  modulePaths: string[], log: FileLog,
): DemoSimFiles {
  const simDir = join(dir, 'qkd-sim');
  ensureDir(simDir, 0o700);
  const file = join(simDir, 'sim.json');
  let text = readIfExists(file);
  if (text === undefined) {
    const raw = buildSimConfig({
      demoDir: dir, simDir, linkId: link, seedFile, rateBps, epochMs: epochFromNodes ?? Date.now(),
      controlPath: socketPath(dir, simDir, 'qkd-sim-control'),
      modules: DEMO_NODES.map((n, i) => ({ kmeId: n.kme_id, moduleId: `SIM-${n.kme_id}`, ptyLink: modulePaths[i]! })),
    });
    text = JSON.stringify(raw, null, 2) + '\n';
    writeFileDurable(file, text);
    log.written.push(file);
  } else {
    log.reused.push(file);
  }
  try {
    return { file, config: parseSimConfig(JSON.parse(text), simDir) };
  } catch (e) {
    throw new ConfigError(`${file}: ${(e as Error).message}\nfix it, or delete it to have it written again`);
  }
}

/** The epoch both ends already agree on, if any node config exists (configs of an older demo). */
function sharedEpoch(existing: unknown[], link: string, notes: string[]): number | undefined {
  const epochs = existing.flatMap((raw) => {
    const links = (raw as { links?: Array<{ link_id?: string; qkd?: { epoch_ms?: unknown } }> } | undefined)?.links;
    const l = Array.isArray(links) ? links.find((x) => x?.link_id === link) : undefined;
    // Only configs that ran the simulator in-process carry an epoch.
    return typeof l?.qkd?.epoch_ms === 'number' ? [l.qkd.epoch_ms] : [];
  });
  if (new Set(epochs).size > 1) {
    notes.push(`the two node configs disagree on epoch_ms of ${link} (${epochs.join(' vs ')}): the simulated link will not match`);
  }
  return epochs[0];
}

/**
 * <node>/keypoold.sock, unless that absolute path is too long for a Unix
 * socket; then a per-demo folder under the OS temp folder.
 */
function socketPath(demoDir: string, nodeDir: string, name: string): string {
  const preferred = join(nodeDir, name === 'qkd-sim-control' ? 'control.sock' : 'keypoold.sock');
  if (Buffer.byteLength(preferred) <= MAX_SOCKET_PATH_BYTES) return preferred;
  const tag = createHash('sha256').update(demoDir).digest('hex').slice(0, 12);
  const fallback = join(tmpdir(), `kme-demo-${tag}`, `${name}.sock`);
  if (Buffer.byteLength(fallback) > MAX_SOCKET_PATH_BYTES) {
    throw new Error(`no short enough path for the ${name} socket (tried ${preferred} and ${fallback})`);
  }
  return fallback;
}
