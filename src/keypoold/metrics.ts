/**
 * keypoold's Prometheus metrics and readiness, for the local admin listener
 * (src/common/admin-http.ts). Everything is read at scrape time from what
 * keypoold already keeps (health(), diag(), the master key watch, the data
 * key ring, the audit trail's head): serving keys costs nothing extra.
 * Labels name links and states, never SAE IDs, key IDs or key material.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import { certificateNotAfter, DAY_MS, startAdminHttp, type AdminHttp, type Readiness } from '../common/admin-http.js';
import type { MetricsListenerConfig } from '../common/config.js';
import type { Logger } from '../common/logger.js';
import type { DiagResult, HealthResult } from '../ipc/pool-protocol.js';

export interface KeypooldMetricsDeps {
  kmeId: string;
  /** Bits of a key of the default size (what available_keys counts). */
  defaultKeySize: number;
  health: () => HealthResult;
  diag: () => Promise<DiagResult>;
  /** The master key provider and whether its last check passed. */
  masterKey: { provider: string; ok: () => boolean };
  /** The current data key generation and whether a re-encryption pass runs. */
  dataKey: () => { generation: number; reencrypting: boolean };
  /** seq of the audit trail's last durable line. */
  auditSeq: () => number;
  /** The KME certificate (PEM) keypoold presents to its peers. */
  kmeCertPem: Buffer | string;
  now?: () => number;
}

const DRIVER_STATES = ['closed', 'opening', 'ready', 'degraded', 'failed'];

/** Driver counters (drivers/qkd) exposed as Prometheus counters: [counter key, metric name, help]. */
const MODULE_COUNTERS: ReadonlyArray<readonly [string, string, string]> = [
  ['framesIn', 'kme_qkd_frames_received_total', 'Frames received from the QKD module.'],
  ['framesOut', 'kme_qkd_frames_sent_total', 'Frames sent to the QKD module.'],
  ['crcErrors', 'kme_qkd_crc_errors_total', 'Frames from the QKD module dropped for a bad CRC.'],
  ['resyncs', 'kme_qkd_resyncs_total', 'Times the frame decoder hunted for the next start marker.'],
  ['reconnects', 'kme_qkd_reconnects_total', 'Reconnections to the QKD module.'],
  ['timeouts', 'kme_qkd_timeouts_total', 'Requests to the QKD module that timed out.'],
  ['alarms', 'kme_qkd_alarms_total', 'Alarms (block ranges to discard) received from the QKD module.'],
  ['blocksIn', 'kme_qkd_blocks_received_total', 'Key blocks received from the QKD module.'],
  ['resends', 'kme_qkd_resends_total', 'RESEND requests sent for missing blocks.'],
  ['lostBlocks', 'kme_qkd_lost_blocks_total', 'Blocks the module could no longer send (skipped).'],
  ['discardedBlocks', 'kme_qkd_discarded_blocks_total', 'Blocks discarded (alarms, duplicates of discarded ranges).'],
];

export interface KeypooldMetrics {
  registry: Registry;
  /** Refresh every gauge from keypoold's state, then render the exposition. */
  scrape(): Promise<{ contentType: string; body: string }>;
}

export function keypooldMetrics(d: KeypooldMetricsDeps): KeypooldMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ kme_id: d.kmeId });
  collectDefaultMetrics({ register: registry });
  const now = d.now ?? Date.now;
  const certNotAfter = certificateNotAfter(d.kmeCertPem);
  const gauge = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name, help, labelNames, registers: [registry] });

  const available = gauge('kme_pool_available_keys', `Keys of the default size (${d.defaultKeySize} bits) this node can hand out on the link now.`, ['link']);
  const storedBits = gauge('kme_pool_stored_bits', 'Bits of key material held for the link (both directions).', ['link']);
  const blocks = gauge('kme_pool_blocks', 'Key blocks held for the link.', ['link']);
  const low = gauge('kme_pool_low', '1 while the link is below its low watermark.', ['link']);
  const peerUp = gauge('kme_peer_reachable', '1 while the peer KME of the link answers.', ['link', 'peer_kme_id']);
  const linkUp = gauge('kme_qkd_link_up', '1 while the QKD module reports its link up.', ['link']);
  const keyRate = gauge('kme_qkd_key_rate_bps', 'Secret key rate the QKD module reports, bits per second.', ['link']);
  const qber = gauge('kme_qkd_qber_ratio', 'Quantum bit error rate the QKD module reports (0..1).', ['link']);
  const driverState = gauge('kme_qkd_driver_state', '1 for the QKD module driver state the link is in, 0 for the others.', ['link', 'state']);
  const counters = MODULE_COUNTERS.map(([key, name, help]) => [key, new Counter({ name, help, labelNames: ['link'], registers: [registry] })] as const);
  const serving = gauge('kme_serving', '1 while the node serves keys (0: stopped, e.g. the master key is unavailable).');
  const masterOk = gauge('kme_master_key_ok', '1 while the master key (HSM) passes its periodic check.', ['provider']);
  const generation = gauge('kme_data_key_generation', 'Generation of the current data key.');
  const reencrypting = gauge('kme_data_key_reencryption_running', '1 while the store is being re-encrypted under a new data key.');
  const auditSeq = gauge('kme_audit_last_seq', 'seq of the last durable line of the audit trail.');
  const certDays = gauge('kme_certificate_expiry_days', 'Days until the certificate expires (negative: expired).', ['cert']);

  const refresh = async () => {
    const h = d.health();
    const diag = await d.diag();
    for (const g of [available, storedBits, blocks, low, peerUp, linkUp, keyRate, qber, driverState]) g.reset();
    // The driver keeps the running totals; each counter shows them as they are.
    for (const [, c] of counters) c.reset();
    for (const l of h.links) {
      available.set({ link: l.link_id }, l.available_keys);
      blocks.set({ link: l.link_id }, l.blocks);
      low.set({ link: l.link_id }, l.low ? 1 : 0);
      peerUp.set({ link: l.link_id, peer_kme_id: l.peer_kme_id }, l.peer_reachable ? 1 : 0);
    }
    for (const l of diag.links) {
      const link = l.link_id;
      storedBits.set({ link }, l.stored_bits);
      const st = l.module.status as { up?: boolean; qber?: number; keyRateBps?: number };
      linkUp.set({ link }, st.up ? 1 : 0);
      if (typeof st.qber === 'number') qber.set({ link }, st.qber);
      if (typeof st.keyRateBps === 'number') keyRate.set({ link }, st.keyRateBps);
      for (const s of new Set([...DRIVER_STATES, l.module.state])) driverState.set({ link, state: s }, s === l.module.state ? 1 : 0);
      for (const [key, c] of counters) {
        const v = l.module.counters[key];
        if (typeof v === 'number' && v >= 0) c.inc({ link }, v);
      }
    }
    serving.set(h.serving ? 1 : 0);
    masterOk.reset();
    masterOk.set({ provider: d.masterKey.provider }, d.masterKey.ok() ? 1 : 0);
    const dk = d.dataKey();
    generation.set(dk.generation);
    reencrypting.set(dk.reencrypting ? 1 : 0);
    auditSeq.set(d.auditSeq());
    if (certNotAfter !== undefined) certDays.set({ cert: 'kme' }, (certNotAfter - now()) / DAY_MS);
  };

  return {
    registry,
    async scrape() {
      await refresh();
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

export interface KeypooldReadinessDeps {
  health: () => HealthResult;
  /** Throws if the key store cannot be read. */
  checkStore: () => void;
  stopping: () => boolean;
}

/** Ready: serving keys, the store answers, not shutting down. */
export function keypooldReadiness(d: KeypooldReadinessDeps): () => Readiness {
  return () => {
    if (d.stopping()) return { ready: false, reason: 'stopping' };
    try {
      d.checkStore();
    } catch (e) {
      return { ready: false, reason: `key store unavailable: ${(e as Error).message}` };
    }
    const h = d.health();
    if (!h.serving) return { ready: false, reason: `not serving keys: ${h.stop_reason ?? 'unknown reason'}`, detail: { kme_id: h.kme_id } };
    return { ready: true, detail: { kme_id: h.kme_id, links: h.links.map((l) => ({ link_id: l.link_id, peer_reachable: l.peer_reachable, available_keys: l.available_keys })) } };
  };
}

/** keypoold's admin listener: readiness and metrics over what main.ts built. */
export function startKeypooldAdmin(
  listen: MetricsListenerConfig, logger: Logger, d: KeypooldMetricsDeps & KeypooldReadinessDeps,
): Promise<AdminHttp> {
  return startAdminHttp({ ...listen, logger, readiness: keypooldReadiness(d), metrics: keypooldMetrics(d).scrape });
}
