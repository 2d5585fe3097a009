/**
 * keypoold's answers to the local pool API: authorisation against the SAE
 * registry, routing a request to its link (or to local randomness for a
 * same-node pair), and one-shot delivery to slaves.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { EtsiMessage, KmeError, badRequest, unauthorized, unavailable } from '../common/errors.js';
import type { Limits } from '../common/config.js';
import type { Logger } from '../common/logger.js';
import type { Clock } from '../../drivers/types.js';
import type { DecKeysArgs, EncKeysArgs, HealthResult, KeyResult, StatusArgs, StatusResult } from '../ipc/pool-protocol.js';
import { keyAad } from './block-aad.js';
import { storeKeyRecords, type LinkPool } from './link-pool.js';
import type { IssuedKey, LinkSync } from './link-sync.js';
import type { Audit } from './audit-sink.js';
import type { LowWatermark } from './low-watermark.js';
import type { PairQuota } from './pair-quota.js';
import type { Registry } from './registry.js';
import type { Sealer } from './seal.js';
import type { Store } from './store.js';
import type { TxBatcher } from './tx-batcher.js';

export interface KeyServiceDeps {
  kmeId: string;
  limits: Limits;
  ttlMs: number;
  /** An unfetched key stays this long past its expiry time (clock skew between the two KMEs). */
  graceMs: number;
  registry: Registry;
  store: Store;
  sealer: Sealer;
  batcher: TxBatcher;
  /** Link syncs and pools by peer KME ID. */
  links: Map<string, { sync: LinkSync; pool: LinkPool }>;
  clock: Clock;
  logger: Logger;
  /** The audit trail. */
  audit?: Audit;
  /** Low-watermark events per link. */
  lowWatermark?: LowWatermark;
  /** Optional quota per SAE pair. */
  quota?: PairQuota;
  /** Why the node must not serve keys now (e.g. its HSM is gone), or undefined when it may. */
  stopReason?: () => string | undefined;
  /** The technician's detail of stopReason (health only; SAEs hear the short reason). */
  stopDetail?: () => string | undefined;
}

type Route = { kind: 'local' } | { kind: 'link'; sync: LinkSync };

/** Reservations looked at per step of a sweep. */
const SWEEP_CHUNK = 1000;

export class KeyService {
  readonly #d: KeyServiceDeps;

  constructor(deps: KeyServiceDeps) {
    this.#d = deps;
  }

  isRegisteredHere(sae: string): boolean {
    return this.#d.registry.get(sae)?.kme_id === this.#d.kmeId;
  }

  #requireLocalCaller(caller: string): void {
    if (this.#d.registry.get(caller)?.kme_id !== this.#d.kmeId) {
      throw unauthorized(`SAE ${caller} is not registered at ${this.#d.kmeId}`);
    }
  }

  /** Where the keys for these slaves come from; checks registration and the master's allow-list. */
  #route(caller: string, slaves: string[]): Route {
    this.#requireLocalCaller(caller);
    const { registry } = this.#d;
    let kme: string | undefined;
    for (const s of slaves) {
      if (s === caller) throw badRequest('the slave SAE must differ from the master SAE');
      const e = registry.get(s);
      if (!e) throw badRequest(`slave SAE ${s} is not known to ${this.#d.kmeId}`);
      if (!registry.mayTarget(caller, s)) throw unauthorized(`SAE ${caller} may not request keys for ${s}`);
      if (kme !== undefined && e.kme_id !== kme) throw badRequest('all slave SAEs must be attached to the same KME');
      kme = e.kme_id;
    }
    if (kme === this.#d.kmeId) return { kind: 'local' };
    const link = this.#d.links.get(kme!);
    if (!link) throw badRequest(`no QKD link from ${this.#d.kmeId} to ${kme}, the KME of the slave SAE`);
    return { kind: 'link', sync: link.sync };
  }

  #checkLimits(number: number, size: number, extra: number): void {
    const l = this.#d.limits;
    if (!Number.isSafeInteger(number) || number < 1 || number > l.max_key_per_request) {
      throw badRequest(`number must be an integer from 1 to ${l.max_key_per_request}`);
    }
    if (!Number.isSafeInteger(size) || size < l.min_key_size || size > l.max_key_size) {
      throw badRequest(`size must be an integer from ${l.min_key_size} to ${l.max_key_size}`);
    }
    if (size % 8 !== 0) throw badRequest(EtsiMessage.sizeNotMultipleOf8);
    if (extra > l.max_SAE_ID_count) throw badRequest(`at most ${l.max_SAE_ID_count} additional_slave_SAE_IDs`);
  }

  /** Fail closed while the node must not serve keys (503, saying why). */
  #requireServing(): void {
    const why = this.#d.stopReason?.();
    if (why !== undefined) throw unavailable(`${this.#d.kmeId} is not serving keys: ${why}`);
  }

  status(a: StatusArgs): StatusResult {
    this.#requireServing();
    const route = this.#route(a.caller, [a.slave]);
    const l = this.#d.limits;
    const stored = route.kind === 'local' ? l.max_key_count : Math.min(l.max_key_count, route.sync.availableKeys(l.default_key_size));
    return {
      source_KME_ID: this.#d.kmeId,
      target_KME_ID: route.kind === 'local' ? this.#d.kmeId : route.sync.peerKmeId,
      master_SAE_ID: a.caller,
      slave_SAE_ID: a.slave,
      key_size: l.default_key_size,
      stored_key_count: stored,
      max_key_count: l.max_key_count,
      max_key_per_request: l.max_key_per_request,
      max_key_size: l.max_key_size,
      min_key_size: l.min_key_size,
      max_SAE_ID_count: l.max_SAE_ID_count,
      status_extension: { key_source: route.kind === 'local' ? 'local_csprng' : 'qkd_link' },
    };
  }

  async encKeys(a: EncKeysArgs): Promise<{ keys: KeyResult[] }> {
    const slaves = [a.slave, ...a.additional];
    try {
      const issued = await this.#encKeys(a, slaves);
      // The trail's line is committed (to the store's outbox) before the keys leave, so no crash
      // of this process loses it. Like the owner's own carve, it is not fsynced first: a power cut
      // may take it back, while the slave's KME holds its `reserved` line durably.
      const { audit, batcher } = this.#d;
      if (audit) {
        try {
          await batcher.runVolatile(() => audit.record({ event: 'delivered', master: a.caller, slaves, key_ids: issued.map((k) => k.keyId), size: a.size }));
        } catch (e) {
          issued.forEach((k) => k.material.fill(0));
          throw e;
        }
      }
      return { keys: encode(issued) };
    } catch (e) {
      this.#refused(e, { master: a.caller, slaves, count: a.number });
      throw e;
    }
  }

  /** A refused request in the audit trail: who asked, and the reason the caller was given. */
  #refused(e: unknown, who: { master: string; slaves?: string[]; sae?: string; count: number }): void {
    if (!(e instanceof KmeError)) return;
    this.#d.audit?.record({ event: 'refused', ...who, reason: `${e.code}: ${e.message}`.slice(0, 200) });
  }

  async #encKeys(a: EncKeysArgs, slaves: string[]): Promise<IssuedKey[]> {
    if (new Set(slaves).size !== slaves.length) throw badRequest('additional_slave_SAE_IDs repeats a slave SAE ID');
    this.#checkLimits(a.number, a.size, a.additional.length);
    const route = this.#route(a.caller, slaves);
    this.#requireServing();
    const { quota } = this.#d;
    quota?.take(a.caller, slaves, a.number);
    let issued: IssuedKey[];
    try {
      issued =
        route.kind === 'local'
          ? await this.#localKeys(a.caller, slaves, a.number, a.size)
          : await route.sync.request({ master: a.caller, slaves, number: a.number, size: a.size });
    } catch (e) {
      quota?.giveBack(a.caller, slaves, a.number);
      throw e;
    }
    return issued;
  }

  /** Same-node pair: fresh key from the OS CSPRNG, stored sealed for the slaves. */
  async #localKeys(master: string, slaves: string[], number: number, size: number): Promise<IssuedKey[]> {
    const { store, sealer, batcher, clock } = this.#d;
    const keys = Array.from({ length: number }, () => ({ keyId: randomUUID(), material: randomBytes(size / 8) }));
    const now = clock.now();
    const rid = randomUUID();
    try {
      await batcher.run(() => {
        const ids = keys.map((k) => k.keyId);
        storeKeyRecords(store, sealer, rid, master, slaves, ids, keys.map((k) => k.material), now + this.#d.ttlMs);
        store.s.resPut.run({
          rid, link: null, role: 'local', state: 'committed', master, slaves: JSON.stringify(slaves),
          key_ids: JSON.stringify(ids), size, expires_at: now + this.#d.ttlMs, created_at: now, peer_acked: 1,
          first_block: null, last_block: null,
        });
      });
    } catch (e) {
      keys.forEach((k) => k.material.fill(0));
      throw e;
    }
    return keys;
  }

  async decKeys(a: DecKeysArgs): Promise<{ keys: KeyResult[] }> {
    try {
      return await this.#decKeys(a);
    } catch (e) {
      this.#refused(e, { sae: a.caller, master: a.master, count: a.key_ids.length });
      throw e;
    }
  }

  async #decKeys(a: DecKeysArgs): Promise<{ keys: KeyResult[] }> {
    this.#requireLocalCaller(a.caller);
    this.#requireServing();
    if (a.key_ids.length < 1 || a.key_ids.length > this.#d.limits.max_key_per_request) {
      throw badRequest(`from 1 to ${this.#d.limits.max_key_per_request} key_IDs per request`);
    }
    const { store, sealer, batcher, clock } = this.#d;
    const issued = await batcher.run(() => {
      const now = clock.now() - this.#d.graceMs;
      const rows = a.key_ids.map((id) => {
        const row = store.s.keyGet.get(id);
        if (!row || row.master !== a.master || row.expires_at <= now) throw badRequest(EtsiMessage.keysNotFound);
        const slaves = JSON.parse(row.slaves) as string[];
        if (!slaves.includes(a.caller)) throw unauthorized(`SAE ${a.caller} is not a slave of key ${id}`);
        const fetched = JSON.parse(row.fetched) as string[];
        if (fetched.includes(a.caller)) throw badRequest(EtsiMessage.keysNotFound);
        fetched.push(a.caller);
        return { row, fetched, last: fetched.length >= slaves.length };
      });
      const out: IssuedKey[] = [];
      try {
        for (const { row } of rows) out.push({ keyId: row.key_id, material: sealer.open(row.sealed, keyAad(row.key_id)) });
      } catch (e) {
        out.forEach((k) => k.material.fill(0));
        throw e;
      }
      try {
        for (const { row, fetched, last } of rows) {
          if (last) store.eraseKey(row.key_id);
          else store.s.keyFetched.run(JSON.stringify(fetched), row.key_id);
        }
        // In the commit, so the trail is durable with it.
        this.#d.audit?.record({ event: 'fetched', sae: a.caller, master: a.master, key_ids: rows.map((r) => r.row.key_id) });
      } catch (e) {
        out.forEach((k) => k.material.fill(0));
        throw e;
      }
      return out;
    });
    return { keys: encode(issued) };
  }

  /**
   * Erase the keys of expired reservations and forget the reservations,
   * oldest first (expiry follows insertion order). A reservation still
   * pending, or whose VOID the peer has not acknowledged, is kept.
   */
  async sweep(): Promise<number> {
    const { store, batcher, clock, graceMs } = this.#d;
    return batcher.run(() => {
      const limit = clock.now() - graceMs;
      let erased = 0;
      let after = 0;
      for (let chunk = 0; chunk < 20; chunk++) {
        const rows = store.s.resOldest.all(after, SWEEP_CHUNK);
        let expired = 0;
        for (const r of rows) {
          after = r.seq;
          if (r.expires_at >= limit) continue;
          expired++;
          if (r.state === 'pending' || r.peer_acked === 0) continue;
          const gone = store.eraseKeysOf(r);
          if (gone.length > 0) this.#d.audit?.record({ event: 'expired', rid: r.rid, key_ids: gone, reason: 'not fetched before it expired' });
          store.s.resDelete.run(r.seq);
          erased++;
        }
        if (rows.length < SWEEP_CHUNK || expired < rows.length) break;
      }
      return erased;
    });
  }

  health(): HealthResult {
    const size = this.#d.limits.default_key_size;
    const links = [...this.#d.links.values()].map(({ sync, pool }) => {
      const st = pool.stats();
      return {
        link_id: sync.linkId,
        peer_kme_id: sync.peerKmeId,
        peer_reachable: sync.peerReachable,
        owned_available_bits: sync.peerReachable ? pool.ownedAvailableBits(sync.peerHw) : 0,
        blocks: st.blocks,
        available_keys: sync.availableKeys(size),
        low: this.#d.lowWatermark?.isLow(sync.linkId) ?? false,
      };
    });
    const stop = this.#d.stopReason?.();
    return {
      kme_id: this.#d.kmeId,
      ok: stop === undefined && links.every((l) => l.peer_reachable),
      serving: stop === undefined,
      ...(stop !== undefined ? { stop_reason: this.#d.stopDetail?.() ?? stop } : {}),
      links,
    };
  }

  /** Look at every link's level against the low watermark (raises events on crossings). */
  watchLevels(): void {
    const w = this.#d.lowWatermark;
    if (!w) return;
    const size = this.#d.limits.default_key_size;
    for (const { sync, pool } of this.#d.links.values()) w.observe(sync.linkId, Math.floor(pool.ownedAvailableBits(sync.peerHw) / size));
  }
}

/** Standard padded base64; the buffers are zeroed once encoded. */
function encode(keys: IssuedKey[]): KeyResult[] {
  return keys.map((k) => {
    const r = { key_ID: k.keyId, key: k.material.toString('base64') };
    k.material.fill(0);
    return r;
  });
}

