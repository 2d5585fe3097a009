/**
 * Which node kmectl works on, and its keypoold maintenance socket.
 *
 * Node selection: `--config <file>`, else `--node <KME_ID>` with `--demo
 * <demo.json>` (default var/demo/demo.json), else $KME_CONFIG, else
 * /etc/kme/kme.json. kmectl only ever talks to keypoold's admin socket
 * (config keypoold.admin_socket), never to the network.
 */
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { pino } from 'pino';
import { ConfigError, loadConfig, type NodeConfig } from '../common/config.js';
import { KmeError } from '../common/errors.js';
import { NdjsonPoolClient } from '../ipc/ndjson-client.js';
import type { PoolOp, PoolOps } from '../ipc/pool-protocol.js';
import type { DemoJson, DemoNode } from '../demo/description.js';
import { EXIT, KmectlError, usageError } from './output.js';

export const DEFAULT_CONFIG = '/etc/kme/kme.json';
export const DEFAULT_DEMO = join('var', 'demo', 'demo.json');

export interface NodeSelection {
  config?: string;
  node?: string;
  demo?: string;
}

/** The demo network a node was picked from (--node/--demo). */
export interface DemoRef {
  file: string;
  /** The folder demo.json's relative paths are relative to (the repository root). */
  root: string;
  node: DemoNode;
  json: DemoJson;
  /** Absolute paths of the demo CA's certificate and key. */
  caCert: string;
  caKey: string;
  /** Environment keypoold runs with in the demo (SOFTHSM2_CONF for its tokens). */
  env: Record<string, string>;
}

export interface NodeContext {
  configPath: string;
  /** Where the path came from, for messages. */
  source: string;
  demo?: DemoRef;
  /** The parsed configuration (loaded on first use). */
  config(): NodeConfig;
  /** Environment for commands that open the HSM (the demo's SOFTHSM2_CONF added). */
  env: NodeJS.ProcessEnv;
}

export function selectNode(sel: NodeSelection, env: NodeJS.ProcessEnv, cwd: string): NodeContext {
  if (sel.config !== undefined && sel.node !== undefined) throw usageError('give either --config or --node, not both');
  let configPath: string;
  let source: string;
  let demo: DemoRef | undefined;
  if (sel.config !== undefined) {
    configPath = resolve(cwd, sel.config);
    source = '--config';
  } else if (sel.node !== undefined) {
    demo = loadDemo(resolve(cwd, sel.demo ?? DEFAULT_DEMO), sel.node, cwd);
    configPath = demo.node.config;
    source = `--node ${sel.node} in ${demo.file}`;
  } else if (sel.demo !== undefined) {
    throw usageError('--demo needs --node <KME_ID> to pick a node', 'add --node KME_A (or another node of the demo)');
  } else if (env.KME_CONFIG) {
    configPath = resolve(cwd, env.KME_CONFIG);
    source = 'KME_CONFIG';
  } else {
    configPath = DEFAULT_CONFIG;
    source = 'default';
  }
  let cached: NodeConfig | undefined;
  return {
    configPath,
    source,
    demo,
    env: { ...env, ...(demo?.env ?? {}) },
    config: () => (cached ??= readConfig(configPath, source)),
  };
}

function readConfig(path: string, source: string): NodeConfig {
  try {
    return loadConfig(path);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    const missing = !existsSync(path);
    throw new KmectlError(
      e.message,
      missing && source === 'default'
        ? `give the node's configuration with --config <file> (or set KME_CONFIG); for the demo: --node KME_A`
        : missing
          ? `check the path (${source})`
          : 'fix the file (the message names the field), or restore it: kmectl restore <backup>',
      EXIT.USAGE,
      'CONFIG',
    );
  }
}

function loadDemo(file: string, kmeId: string, cwd: string): DemoRef {
  let json: DemoJson;
  try {
    json = JSON.parse(readFileSync(file, 'utf8')) as DemoJson;
  } catch (e) {
    throw new KmectlError(
      `cannot read the demo description ${file}: ${(e as Error).message}`,
      existsSync(file) ? 'delete it and run npm start -- --prepare-only' : 'run npm start -- --prepare-only first, or give --demo <demo.json>',
      EXIT.USAGE,
      'CONFIG',
    );
  }
  const node = json.nodes?.find((n) => n.kme_id === kmeId);
  if (!node) {
    throw usageError(`no node ${kmeId} in ${file}`, `use one of: ${(json.nodes ?? []).map((n) => n.kme_id).join(', ')}`);
  }
  // Paths in demo.json are relative to the root the demo was prepared from: the working
  // folder when kmectl runs from there, else a folder above demo.json.
  let root = cwd;
  if (!isAbsolute(node.config) && !existsSync(join(cwd, node.config))) {
    for (let d = dirname(file); ; d = dirname(d)) {
      if (existsSync(join(d, node.config))) {
        root = d;
        break;
      }
      if (dirname(d) === d) break;
    }
  }
  const abs = (p: string) => (isAbsolute(p) ? p : join(root, p));
  const absNode: DemoNode = {
    ...node,
    config: abs(node.config),
    state_dir: abs(node.state_dir),
    registry_file: abs(node.registry_file),
    admin_socket: abs(node.admin_socket),
    saes: node.saes.map((s) => ({ ...s, cert: abs(s.cert), key: abs(s.key) })),
  };
  const env: Record<string, string> = {};
  const argv = node.processes.find((p) => p.name === 'kme-keypoold')?.argv ?? [];
  if (argv[0] === 'env') {
    for (const a of argv.slice(1)) {
      const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(a);
      if (!m) break;
      env[m[1]!] = m[2]!;
    }
  }
  return { file, root, node: absNode, json, caCert: abs(json.ca_cert), caKey: abs(json.ca_key), env };
}

/** keypoold's maintenance socket, with messages that say what to do when it does not answer. */
export class Admin {
  readonly #path: string;
  readonly #kmeId: string;
  readonly #demo: boolean;
  readonly #clients = new Map<number, NdjsonPoolClient>();
  #probed: Promise<void> | undefined;

  constructor(path: string, kmeId: string, demo: boolean) {
    this.#path = path;
    this.#kmeId = kmeId;
    this.#demo = demo;
  }

  get path(): string {
    return this.#path;
  }

  /** Resolves if something accepts connections on the socket; else a KmectlError (exit 2) saying what to check. */
  probe(): Promise<void> {
    return (this.#probed ??= new Promise<void>((ok, fail) => {
      const s = connect(this.#path);
      s.once('connect', () => {
        s.destroy();
        ok();
      });
      s.once('error', (e: NodeJS.ErrnoException) => fail(this.#unreachable(e.code)));
    }));
  }

  #unreachable(code: string | undefined): KmectlError {
    const start = this.#demo ? 'start the demo (npm start)' : 'systemctl status kme-keypoold; journalctl -u kme-keypoold -n 50';
    const what =
      code === 'ENOENT'
        ? `no socket at ${this.#path}: kme-keypoold of ${this.#kmeId} is not running`
        : code === 'ECONNREFUSED'
          ? `nothing listens on ${this.#path}: kme-keypoold of ${this.#kmeId} stopped or crashed`
          : code === 'EACCES' || code === 'EPERM'
            ? `permission denied on ${this.#path}`
            : `cannot reach kme-keypoold of ${this.#kmeId} at ${this.#path} (${code ?? 'no answer'})`;
    const hint = code === 'EACCES' || code === 'EPERM' ? 'run kmectl as root (sudo kmectl ...): the maintenance socket is not open to other users' : start;
    return new KmectlError(what, hint, EXIT.UNREACHABLE, 'UNREACHABLE');
  }

  async call<O extends PoolOp>(op: O, args: PoolOps[O]['args'], timeoutMs = 15_000): Promise<PoolOps[O]['result']> {
    await this.probe();
    let c = this.#clients.get(timeoutMs);
    if (!c) {
      c = new NdjsonPoolClient({ path: this.#path, logger: pino({ level: 'silent' }), timeoutMs, backoff: { initialMs: 50, maxMs: 200 } });
      this.#clients.set(timeoutMs, c);
    }
    try {
      return await c.call(op, args);
    } catch (e) {
      if (e instanceof KmeError) {
        if (e.code === 'UNAVAILABLE' && e.message === 'key pool daemon unavailable') throw this.#unreachable(undefined);
        if (e.code === 'BAD_REQUEST' && /^unknown operation/.test(e.message)) {
          throw new KmectlError(`kme-keypoold of ${this.#kmeId} does not know '${op}': ${e.message}`, 'update the firmware: this keypoold is older than kmectl', EXIT.ATTENTION, 'UNSUPPORTED');
        }
        throw new KmectlError(`keypoold: ${e.message}`, undefined, EXIT.ATTENTION, e.code);
      }
      throw e;
    }
  }

  async close(): Promise<void> {
    await Promise.all([...this.#clients.values()].map((c) => c.close()));
  }
}
