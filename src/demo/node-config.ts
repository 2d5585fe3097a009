/**
 * The per-node configuration and SAE registry the demo writes, as plain JSON
 * objects. Paths are relative to the node's folder (where config.json lives),
 * which is what parseConfig resolves them against.
 */
import { relative } from 'node:path';
import { isInside } from './files.js';
import type { DemoPki } from './pki.js';
import { DEMO_HOST, type DemoNodeSpec } from './topology.js';

export interface NodeConfigInput {
  kmeId: string;
  /** Absolute demo folder; paths inside it are written relative, others absolute. */
  demoDir: string;
  /** Absolute folder of this node (holds config.json). */
  nodeDir: string;
  /** Absolute socket paths (kme-api's, the maintenance tools'); written relative when under nodeDir. */
  socket: string;
  adminSocket: string;
  /** The master_key section, as written (paths relative to nodeDir). */
  masterKey: Record<string, unknown>;
  apiPort: number;
  peerPort: number;
  /** Admin listeners (health, readiness, metrics) of keypoold and kme-api; none if absent. */
  metricsPorts?: [number, number];
  pki: DemoPki;
  link: {
    link_id: string;
    peer_kme_id: string;
    peer_port: number;
    /** Absolute path of the QKD module: the KME end of the simulator's pty pair, or its Unix socket. */
    module_path: string;
    module_kind: 'serial' | 'socket';
  };
}

export const DEMO_LIMITS = {
  default_key_size: 256,
  min_key_size: 64,
  max_key_size: 8192,
  max_key_per_request: 128,
  max_key_count: 100000,
  max_SAE_ID_count: 2,
} as const;

export function buildNodeConfig(c: NodeConfigInput): Record<string, unknown> {
  const rel = (p: string) => (isInside(c.demoDir, p) ? relative(c.nodeDir, p) : p);
  const node = c.pki.nodes[c.kmeId];
  if (!node) throw new Error(`no demo certificates for ${c.kmeId}`);
  return {
    kme_id: c.kmeId,
    state_dir: 'state',
    registry_file: 'registry.json',
    keypoold: {
      socket: rel(c.socket),
      admin_socket: rel(c.adminSocket),
      ...(c.metricsPorts ? { metrics: { host: DEMO_HOST, port: c.metricsPorts[0] } } : {}),
    },
    api: {
      host: DEMO_HOST,
      port: c.apiPort,
      tls: { cert: rel(node.api.cert), key: rel(node.api.key), ca: rel(c.pki.ca.cert) },
      identity: { source: 'subject_cn' },
      ...(c.metricsPorts ? { metrics: { host: DEMO_HOST, port: c.metricsPorts[1] } } : {}),
    },
    peer: {
      host: DEMO_HOST,
      port: c.peerPort,
      tls: { cert: rel(node.kme.cert), key: rel(node.kme.key), ca: rel(c.pki.ca.cert) },
      timeout_ms: 2000,
    },
    limits: { ...DEMO_LIMITS },
    key_ttl_seconds: 300,
    master_key: c.masterKey,
    links: [
      {
        link_id: c.link.link_id,
        peer_kme_id: c.link.peer_kme_id,
        peer_url: `https://${DEMO_HOST}:${c.link.peer_port}`,
        qkd:
          c.link.module_kind === 'serial'
            ? { driver: 'serial', path: rel(c.link.module_path), baud_rate: 115200 }
            : { driver: 'socket', path: rel(c.link.module_path) },
      },
    ],
    log_level: 'info',
  };
}

/** The lowdb registry: every demo SAE, at its KME, allowed to pair with anyone. */
export function buildRegistry(nodes: readonly DemoNodeSpec[]): { saes: Array<Record<string, unknown>> } {
  return {
    saes: nodes.flatMap((n) => n.sae_ids.map((sae_id) => ({ sae_id, kme_id: n.kme_id, allowed_slaves: ['*'] }))),
  };
}
