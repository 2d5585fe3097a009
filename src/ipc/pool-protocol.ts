/**
 * The local pool API: what kme-api (and maintenance tools) ask keypoold over
 * its Unix socket. Requests have already been authenticated (the caller SAE ID
 * comes from a verified client certificate) and shape-validated by kme-api;
 * keypoold re-checks limits and does all authorisation and key work.
 *
 * Wire format: newline-delimited JSON, one object per line.
 *   request:  {"id": <int>, "op": <op>, "args": {...}}
 *   response: {"id": <int>, "ok": true, "result": {...}}
 *          or {"id": <int>, "ok": false, "error": {"code": KmeErrorCode, "message": string, "details"?: [...]}}
 * Responses may come back in any order; `id` matches them to requests.
 */
import type { KmeErrorCode } from '../common/errors.js';

export interface StatusArgs {
  caller: string;
  slave: string;
}

export interface StatusResult {
  source_KME_ID: string;
  target_KME_ID: string;
  master_SAE_ID: string;
  slave_SAE_ID: string;
  key_size: number;
  stored_key_count: number;
  max_key_count: number;
  max_key_per_request: number;
  max_key_size: number;
  min_key_size: number;
  max_SAE_ID_count: number;
  /** Where this pair's keys come from: the QKD link, or local randomness for a same-node pair. */
  status_extension?: { key_source: 'qkd_link' | 'local_csprng' };
}

export interface EncKeysArgs {
  caller: string;
  slave: string;
  /** additional_slave_SAE_IDs, already checked for shape (may be empty). */
  additional: string[];
  number: number;
  /** Bits, already defaulted and range-checked by kme-api. */
  size: number;
}

export interface DecKeysArgs {
  caller: string;
  master: string;
  key_ids: string[];
}

/** Key material travels as standard padded base64, as the ETSI container wants it. */
export interface KeyResult {
  key_ID: string;
  key: string;
}

export interface KeysResult {
  keys: KeyResult[];
}

export interface PoolOps {
  status: { args: StatusArgs; result: StatusResult };
  enc_keys: { args: EncKeysArgs; result: KeysResult };
  dec_keys: { args: DecKeysArgs; result: KeysResult };
  /** Is this SAE registered at this KME? (kme-api asks before answering 400 to a bad request.) */
  whoami: { args: { caller: string }; result: { registered: boolean } };
  /** Liveness and a short health summary for tools. */
  health: { args: Record<string, never>; result: HealthResult };
  /** Per-link diagnostics: module driver state and counters, pool, peer. */
  diag: { args: Record<string, never>; result: DiagResult };
  /** Start a rotation: `master` rewraps the data keys under a new master key (done when it answers); `data` starts re-encrypting the store under a new data key. */
  rotate: { args: { what: 'master' | 'data' }; result: RotationStatus };
  /** How the last rotation stands. */
  rotation_status: { args: Record<string, never>; result: RotationStatus };
  /** Read the SAE registry file again (kmectl sae add/remove); an invalid file is refused and the registry in use kept. */
  reload: { args: Record<string, never>; result: { saes: number } };
  /** A key round trip through both KMEs of a link (or of each link), never delivered: see src/keypoold/selftest.ts. */
  selftest: { args: { link?: string }; result: SelftestResult };
}

export interface SelftestLinkResult {
  link_id: string;
  peer_kme_id: string;
  ok: boolean;
  /** Why it failed. */
  reason?: string;
  /** Bits of the test key. */
  key_size: number;
  /** The test reservation (voided on both sides), when one was made. */
  rid?: string;
  /** Milliseconds: carving the test key here, the peer's answer, and the whole test. */
  carve_ms?: number;
  peer_ms?: number;
  elapsed_ms: number;
}

export interface SelftestResult {
  kme_id: string;
  links: SelftestLinkResult[];
}

export interface DiagResult {
  kme_id: string;
  links: Array<{
    link_id: string;
    peer_kme_id: string;
    peer_reachable: boolean;
    peer_high_water: number;
    high_water: number;
    blocks: number;
    stored_bits: number;
    owned_available_bits: number;
    module: { state: string; status: Record<string, unknown>; counters: Record<string, number> };
  }>;
}

export interface HealthResult {
  kme_id: string;
  ok: boolean;
  /** False while the node refuses to serve keys; `stop_reason` says why. */
  serving: boolean;
  stop_reason?: string;
  links: Array<{
    link_id: string;
    peer_kme_id: string;
    peer_reachable: boolean;
    owned_available_bits: number;
    blocks: number;
    /** Keys of the default size this node can hand out on the link now. */
    available_keys: number;
    /** Below the low watermark. */
    low: boolean;
  }>;
}

/** Progress of a rotation (data key re-encryption runs in the background). */
export interface RotationStatus {
  master_key: { provider: string; key_id: string };
  data_key: {
    generation: number;
    state: 'idle' | 'running' | 'done' | 'failed';
    replacing: number[];
    done: number;
    total: number;
    resealed: number;
    started_at?: string;
    finished_at?: string;
    error?: string;
  };
}

export type PoolOp = keyof PoolOps;

export interface PoolRequest<O extends PoolOp = PoolOp> {
  id: number;
  op: O;
  args: PoolOps[O]['args'];
}

export interface PoolErrorBody {
  code: KmeErrorCode;
  message: string;
  details?: Array<Record<string, unknown>>;
}

export type PoolResponse =
  | { id: number; ok: true; result: unknown }
  | { id: number; ok: false; error: PoolErrorBody };

/** What kme-api depends on; implemented by the socket client and, in unit tests, by keypoold directly. */
export interface PoolClient {
  call<O extends PoolOp>(op: O, args: PoolOps[O]['args']): Promise<PoolOps[O]['result']>;
  close(): Promise<void>;
}

/** Largest line either side accepts, to bound memory on a confused peer. */
export const MAX_IPC_LINE_BYTES = 4 * 1024 * 1024;
