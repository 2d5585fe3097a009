/**
 * The agreement between the two keypoolds of a link (key-agreement.md).
 *
 * Owner side: SAE requests queue up and go out in batches (a few batches in
 * flight per link). A batch is carved and written `pending` in one
 * transaction; its message leaves for the peer from inside that transaction,
 * so the peer's commit overlaps ours, and the SAEs are answered once ours is
 * committed and the peer's is durable. The owner does not wait for its own
 * fsync: should a power cut take back its last commits, the worst it can do
 * is carve the same slices again, and the peer, whose cursor is durable,
 * refuses them; keys the peer committed stay promised there. Refusal or timeout: the SAE gets 503, the reservation
 * is voided here and a VOID is sent until acknowledged. Messages travel in
 * carve order on one ordered connection, so the peer can check each block's
 * slices against a monotonic cursor. (The same holds if this process dies
 * after sending but before its own commit.)
 *
 * Peer side: reservations are checked (blocks held, owned by the sender,
 * slices beyond the cursor, SAEs registered where they should be), committed
 * with their keys materialised, in one fsync, before answering.
 */
import { randomUUID } from 'node:crypto';
import { KmeError, unavailable } from '../common/errors.js';
import { isCanonicalUuid } from '../common/ids.js';
import type { Logger } from '../common/logger.js';
import type { Clock } from '../../drivers/types.js';
import { blockSpan, type Carved, type LinkPool } from './link-pool.js';
import type { PeerClient } from './peer-client.js';
import type {
  HelloResponse, PeerReservation, PeerRidState, QueryResponse, ReservationsRequest, ReservationsResponse, VoidResponse,
} from './peer-protocol.js';
import type { AuditEvent } from './audit-log.js';
import type { Audit } from './audit-sink.js';
import type { Registry } from './registry.js';
import type { Slice, Store } from './store.js';
import type { TxBatcher } from './tx-batcher.js';

export interface KeyRequest {
  master: string;
  slaves: string[];
  number: number;
  size: number;
}

export interface IssuedKey {
  keyId: string;
  /** Secret; zeroed by the caller once encoded. */
  material: Buffer;
}

interface Queued {
  req: KeyRequest;
  resolve: (keys: IssuedKey[]) => void;
  reject: (e: unknown) => void;
}

/** Most keys carved and sent to the peer in one batch (bounds the message and the peer's commit). */
const MAX_BATCH_KEYS = 2048;
/**
 * Batches on their way to the peer at once, per link. One measured best: on a
 * loaded board, larger batches cost less CPU per key than overlapping ones.
 */
const MAX_IN_FLIGHT = 1;
/** Most requests waiting for a batch; beyond it the SAE gets 503 at once. */
const MAX_QUEUE = 4096;
/** How far past the highest block held an alarm may name blocks (a module buffers far fewer). */
const MAX_ALARM_AHEAD_BLOCKS = 1_000_000;
/** How long a count of the keys available is reused (status polling). */
const AVAILABLE_TTL_MS = 200;
/** Most rids per recovery or VOID message. */
const RECOVERY_CHUNK = 500;

export interface LinkSyncDeps {
  pool: LinkPool;
  store: Store;
  batcher: TxBatcher;
  client: PeerClient;
  registry: Registry;
  clock: Clock;
  logger: Logger;
  ttlMs: number;
  /** Clock skew tolerated between the two KMEs when checking a peer's expiry time. */
  skewMs: number;
  /** How long a peer call may take before the reservation is voided. */
  peerTimeoutMs: number;
  myKmeId: string;
  /** The audit trail (key events, never key material). */
  audit?: Audit;
  /**
   * Most uncarved bits this side keeps in blocks it owns (max_key_count keys of the default size);
   * beyond it the oldest are burnt. Undefined: no bound.
   */
  maxOwnedBits?: number;
  /** Why this node must not take on reservations now (e.g. its HSM is gone). */
  stopReason?: () => string | undefined;
}

export class LinkSync {
  readonly #d: LinkSyncDeps;
  #queue: Queued[] = [];
  #inFlight = 0;
  #peerHw = -1;
  #peerReachable = false;
  /** Alarm ranges seen by this process, to catch batches carved before an alarm and answered after it. */
  #alarmRanges: Array<{ seq: number; first: number; last: number; at: number }> = [];
  #alarmSeq = 0;

  #maintaining: Promise<void> | undefined;

  constructor(deps: LinkSyncDeps) {
    this.#d = deps;
    // A lost channel means no reservation can be confirmed: say so to SAEs at once (503) rather
    // than at the next heartbeat; a new channel is checked (hello, VOIDs, recovery) at once.
    deps.client.onConnectionChange?.((up) => {
      if (up) this.maintain().catch(() => {});
      else this.#peerDown(new Error('connection to the peer lost'));
    });
  }

  get peerHw(): number {
    return this.#peerHw;
  }

  get peerReachable(): boolean {
    return this.#peerReachable;
  }

  get linkId(): string {
    return this.#d.pool.linkId;
  }

  get peerKmeId(): string {
    return this.#d.pool.opts.peerKmeId;
  }

  /** Keys the owner can promise now for keys of `size` bits. */
  availableKeys(size: number): number {
    if (!this.#peerReachable) return 0;
    // Counting is a scan of the link's blocks: SAEs polling `status` share one count per 200 ms.
    const now = this.#d.clock.now();
    let a = this.#available;
    if (!a || a.peerHw !== this.#peerHw || now - a.at >= AVAILABLE_TTL_MS) {
      a = this.#available = { at: now, peerHw: this.#peerHw, bits: this.#d.pool.ownedAvailableBits(this.#peerHw) };
    }
    return Math.floor(a.bits / size);
  }

  #available: { at: number; peerHw: number; bits: number } | undefined;

  // ---------------------------------------------------------------- owner side

  request(req: KeyRequest): Promise<IssuedKey[]> {
    if (!this.#peerReachable) return Promise.reject(unavailable(`peer KME ${this.peerKmeId} is unreachable`));
    if (this.#queue.length >= MAX_QUEUE) return Promise.reject(unavailable('too many requests waiting for key; try again'));
    return new Promise((resolve, reject) => {
      this.#queue.push({ req, resolve, reject });
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#inFlight < MAX_IN_FLIGHT && this.#queue.length > 0) {
      let keys = 0;
      let n = 0;
      while (n < this.#queue.length && (n === 0 || keys + this.#queue[n]!.req.number <= MAX_BATCH_KEYS)) keys += this.#queue[n++]!.req.number;
      const batch = this.#queue.splice(0, n);
      this.#inFlight++;
      this.#sendBatch(batch)
        .catch((e) => this.#d.logger.error({ err: (e as Error).message }, 'reservation batch failed'))
        .finally(() => {
          this.#inFlight--;
          this.#pump();
        });
    }
  }

  async #sendBatch(batch: Queued[]): Promise<void> {
    const { pool, store, batcher, client, clock } = this.#d;
    const now = clock.now();
    const expiresAt = now + this.#d.ttlMs;
    const alarmsAtCarve = this.#alarmSeq;
    let carved: { results: Array<Carved | KmeError>; reservations: Array<PeerReservation | null> };
    let sent: Promise<unknown> | undefined;
    let sentRids: string[] = [];
    try {
      // Volatile: the peer's durable per-block cursor, not our fsync, is what
      // keeps a slice from being used twice (see the comment at the top).
      carved = await batcher.runVolatile(() => {
        const results = pool.carve(batch.map((q) => q.req), this.#peerHw);
        const reservations = results.map((r, i) => {
          if (r instanceof KmeError) return null;
          const q = batch[i]!.req;
          const res: PeerReservation = {
            rid: randomUUID(), master: q.master, slaves: q.slaves, key_ids: r.material.map(() => randomUUID()),
            slices: r.slices, size: q.size, expires_at: expiresAt,
          };
          store.s.resPut.run({
            rid: res.rid, link: pool.linkId, role: 'owner', state: 'pending', master: res.master,
            slaves: JSON.stringify(res.slaves), key_ids: JSON.stringify(res.key_ids),
            size: res.size, expires_at: expiresAt, created_at: now, peer_acked: 1, ...blockSpan(res.slices),
          });
          return res;
        });
        const toSend = reservations.filter((r): r is PeerReservation => r !== null);
        if (toSend.length > 0) {
          const body: ReservationsRequest = { from: this.#d.myKmeId, hw: pool.highWater(), erasable_below: pool.erasableBelow(), reservations: toSend };
          sentRids = toSend.map((r) => r.rid);
          sent = client.call('reservations', body as unknown as Record<string, unknown>, true);
          sent.catch(() => {}); // handled below
        }
        return { results, reservations };
      });
    } catch (e) {
      for (const q of batch) q.reject(e);
      if (sent) {
        // Our commit failed after the message left: nobody gets these keys; ask the peer to drop them
        // (best effort: nothing here is durable, and unfetched keys expire at the peer anyway).
        this.#d.logger.error({ link: this.linkId }, 'reservation commit failed after sending; voiding at the peer');
        client.call('void', { rids: sentRids }).catch(() => {});
      }
      return;
    }
    const zero = () => carved.results.forEach((r) => r instanceof KmeError || r.material.forEach((m) => m.fill(0)));
    let states = new Map<string, PeerRidState>();
    if (sent) {
      try {
        const res = (await sent) as ReservationsResponse;
        this.#sawPeer(res.hw);
        states = new Map(res.results.map((r) => [r.rid, r.state]));
      } catch (e) {
        this.#peerDown(e);
      }
    }
    const committed: string[] = [];
    const voided: string[] = [];
    const alarmed = (res: PeerReservation) =>
      this.#hitByAlarmSince(alarmsAtCarve, res.slices);
    carved.results.forEach((r, i) => {
      const q = batch[i]!;
      if (r instanceof KmeError) return q.reject(r);
      const res = carved.reservations[i]!;
      if (states.get(res.rid) === 'committed' && !alarmed(res)) {
        committed.push(res.rid);
        q.resolve(res.key_ids.map((keyId, k) => ({ keyId, material: Buffer.from(r.material[k]!) })));
      } else {
        voided.push(res.rid);
      }
    });
    zero();
    if (voided.length > 0) {
      // Burn the slices and remember to tell the peer, durably, before anyone hears 503.
      try {
        await batcher.runVolatile(() => voided.forEach((rid) => store.s.resSetState.run('voided', 0, rid)));
        carved.reservations.forEach(
          (res) => res && voided.includes(res.rid) && this.#audit({ event: 'voided', link: this.linkId, rid: res.rid, master: res.master, slaves: res.slaves, reason: 'the peer did not confirm the reservation' }),
        );
      } catch (e) {
        this.#d.logger.error({ err: (e as Error).message }, 'could not record voided reservations');
      }
      const err = unavailable(`peer KME ${this.peerKmeId} did not confirm the reservation`);
      carved.reservations.forEach((res, i) => res && voided.includes(res.rid) && batch[i]!.reject(err));
      this.#d.logger.warn({ link: this.linkId, count: voided.length }, 'reservations voided: peer did not confirm');
    }
    if (committed.length > 0) {
      // Not awaited: recovery asks the peer about any rid still pending after a crash.
      batcher.runVolatile(() => committed.forEach((rid) => store.s.resSetState.run('committed', 1, rid))).catch(() => {});
    }
  }

  #sawPeer(hw: number): void {
    if (Number.isSafeInteger(hw)) this.#peerHw = hw;
    if (!this.#peerReachable) this.#d.logger.info({ link: this.linkId, peer: this.peerKmeId }, 'peer reachable');
    this.#peerReachable = true;
  }

  #peerDown(e: unknown): void {
    if (this.#peerReachable) this.#d.logger.warn({ link: this.linkId, peer: this.peerKmeId, err: (e as Error).message }, 'peer unreachable');
    this.#peerReachable = false;
  }

  /** Heartbeat, VOID delivery and recovery of pending reservations. Called periodically and on reconnect; one at a time. */
  maintain(): Promise<void> {
    return (this.#maintaining ??= this.#maintain().finally(() => (this.#maintaining = undefined)));
  }

  async #maintain(): Promise<void> {
    const { client, store, batcher, pool } = this.#d;
    // Key this side will not use in time is burnt, oldest first, so that one-way traffic does
    // not fill the pool (and stop ingestion) with blocks nobody carves; the heartbeat then lets
    // the peer erase its copies.
    if (this.#d.maxOwnedBits !== undefined) {
      const max = this.#d.maxOwnedBits;
      const peerHw = this.#peerHw;
      const burnt = peerHw < 0 ? 0 : await batcher.runVolatile(() => pool.trimOwned(max, peerHw));
      if (burnt > 0) this.#d.logger.debug({ link: this.linkId, blocks: burnt }, 'oldest unused blocks burnt: pool full in this direction');
    }
    try {
      const hello = (await client.call('hello', { erasable_below: pool.erasableBelow() })) as HelloResponse;
      this.#sawPeer(hello.hw);
    } catch (e) {
      this.#peerDown(e);
      return;
    }
    const unacked = store.s.resUnacked.all(this.linkId, RECOVERY_CHUNK).map((r) => r.rid);
    if (unacked.length > 0) {
      const res = (await client.call('void', { rids: unacked })) as VoidResponse;
      await batcher.run(() => res.voided.forEach((rid) => store.s.resAcked.run(rid)));
    }
    // Reservations left pending by a crash between our commit and the peer's answer.
    // (Those younger than two peer timeouts may still be on their way.)
    const settledBefore = this.#d.clock.now() - 2 * this.#d.peerTimeoutMs;
    const pending = store.s.resPending.all(this.linkId, settledBefore, RECOVERY_CHUNK).map((r) => r.rid);
    if (pending.length > 0) {
      const q = (await client.call('query', { rids: pending })) as QueryResponse;
      await batcher.run(() => {
        for (const rid of pending) {
          if (q.states[rid] === 'committed') store.s.resSetState.run('committed', 1, rid);
          else {
            store.s.resSetState.run('voided', 0, rid);
            this.#audit({ event: 'voided', link: this.linkId, rid, reason: 'recovery: the peer never committed it' });
          }
        }
      });
      this.#d.logger.info({ link: this.linkId, count: pending.length }, 'recovered pending reservations');
    }
  }

  // -------------------------------------------------------------------- alarms

  /** Did an alarm heard after `seq` name a block these slices lie in? */
  #hitByAlarmSince(seq: number, slices: Slice[][]): boolean {
    const recent = this.#alarmRanges.filter((a) => a.seq > seq);
    return recent.length > 0 && slices.some((l) => l.some(([b]) => recent.some((a) => b >= a.first && b <= a.last)));
  }

  /** Alarm ranges are only needed while a batch or message from before them may still be answered. */
  #trimAlarms(): void {
    const keepAfter = this.#d.clock.now() - 4 * this.#d.peerTimeoutMs - 10_000;
    if (this.#alarmRanges.some((a) => a.at < keepAfter)) this.#alarmRanges = this.#alarmRanges.filter((a) => a.at >= keepAfter);
  }

  /**
   * The module says blocks [first, last] are compromised: discard them here,
   * void every reservation with a slice in them (erasing the keys a slave
   * would fetch here), and tell the peer at once (its own module should say
   * so too; whichever hears first protects both).
   */
  async onModuleAlarm(first: number, last: number, reason: string): Promise<void> {
    await this.applyAlarm(first, last, reason, 'module');
    this.#d.client.call('alarm', { first, last, reason }).catch((e) =>
      this.#d.logger.warn({ link: this.linkId, err: (e as Error).message }, 'could not pass the alarm to the peer; it relies on its own module'),
    );
  }

  async applyAlarm(first: number, last: number, reason: string, from: 'module' | 'peer'): Promise<{ blocks: number; voided: number }> {
    if (!Number.isSafeInteger(first) || !Number.isSafeInteger(last) || first < 0 || last < first) {
      throw new KmeError('BAD_REQUEST', 'alarm needs a block range first <= last');
    }
    // Blocks not produced yet can be named, but not without bound: a range reaching far past
    // what either end holds would stop the link for good.
    const horizon = Math.max(this.#d.pool.highWater(), this.#peerHw) + MAX_ALARM_AHEAD_BLOCKS;
    if (last > horizon) throw new KmeError('BAD_REQUEST', `alarm range ends beyond block ${horizon}: not a range any module buffers`);
    this.#trimAlarms();
    this.#alarmRanges.push({ seq: ++this.#alarmSeq, first, last, at: this.#d.clock.now() });
    const { pool, store, batcher } = this.#d;
    const res = await batcher.run(() => {
      const blocks = pool.discard(first, last);
      const rows = store.s.resInBlocks.all({ link: this.linkId, first, last });
      this.#audit({ event: 'alarm', link: this.linkId, blocks: [first, last], reason: reason.slice(0, 200), detail: { from } });
      for (const r of rows) {
        if (r.role === 'peer') store.eraseKeysOf(r);
        // An owner also tells the peer to void, in case the peer missed the alarm.
        store.s.resSetState.run('voided', r.role === 'owner' ? 0 : 1, r.rid);
        this.#audit({ event: 'voided', link: this.linkId, rid: r.rid, master: r.master, slaves: JSON.parse(r.slaves) as string[], reason: 'QKD module alarm' });
      }
      return { blocks, voided: rows.length };
    });
    this.#d.logger.warn({ link: this.linkId, first, last, reason, from, ...res }, 'alarm: blocks discarded and reservations voided');
    return res;
  }

  // ----------------------------------------------------------------- peer side

  async onReservations(body: ReservationsRequest): Promise<ReservationsResponse> {
    const { pool, batcher, registry, myKmeId } = this.#d;
    if (body.from !== this.peerKmeId) throw new KmeError('UNAUTHORIZED', 'sender is not the peer of this link');
    const alarmsBefore = this.#alarmSeq;
    const results = await batcher.run(() => {
      const stop = this.#d.stopReason?.();
      const out = pool.acceptAll(body.reservations, (r) => (stop !== undefined ? `${myKmeId} is not serving keys: ${stop}` : this.#checkShape(r, registry, myKmeId)));
      if (Number.isSafeInteger(body.erasable_below)) pool.erasePeerBlocksBelow(body.erasable_below);
      const byRid = new Map(body.reservations.map((r) => [r?.rid, r]));
      for (const r of out) {
        const res = byRid.get(r.rid);
        if (r.state === 'committed' && res) {
          this.#audit({ event: 'reserved', link: this.linkId, rid: r.rid, master: res.master, slaves: res.slaves, key_ids: res.key_ids, size: res.size });
        } else {
          this.#audit({ event: 'refused', link: this.linkId, ...(isCanonicalUuid(r.rid) ? { rid: r.rid } : {}), reason: (r.reason ?? r.state).slice(0, 200) });
        }
      }
      return out;
    });
    // An alarm applied after this message was checked voided what it names: say so, never 'committed'.
    if (this.#alarmSeq > alarmsBefore) {
      const byRid = new Map(body.reservations.map((r) => [r?.rid, r]));
      for (const r of results) {
        const res = byRid.get(r.rid);
        if (r.state === 'committed' && res && this.#hitByAlarmSince(alarmsBefore, res.slices)) r.state = 'voided';
      }
    }
    this.#sawPeer(body.hw);
    for (const r of results) if (r.state !== 'committed') this.#d.logger.warn({ link: this.linkId, rid: r.rid, reason: r.reason }, 'refused reservation');
    return { hw: pool.highWater(), results };
  }

  #checkShape(r: PeerReservation, registry: Registry, me: string): string | undefined {
    if (!r || !isCanonicalUuid(r.rid)) return 'bad rid';
    if (!Array.isArray(r.key_ids) || !r.key_ids.every(isCanonicalUuid)) return 'bad key_ids';
    if (!Array.isArray(r.slices) || !Number.isSafeInteger(r.size) || !Number.isSafeInteger(r.expires_at)) return 'bad reservation';
    const now = this.#d.clock.now();
    if (r.expires_at < now - this.#d.skewMs || r.expires_at > now + this.#d.ttlMs + this.#d.skewMs) {
      return 'expiry time out of range: are the two KMEs\' clocks in step?';
    }
    if (registry.get(r.master)?.kme_id !== this.peerKmeId) return `master ${r.master} is not attached to ${this.peerKmeId}`;
    if (!Array.isArray(r.slaves) || r.slaves.length === 0) return 'no slaves';
    for (const s of r.slaves) if (registry.get(s)?.kme_id !== me) return `slave ${s} is not attached to ${me}`;
    for (const list of r.slices) {
      if (!Array.isArray(list)) return 'bad slices';
      for (const sl of list) if (!Array.isArray(sl) || sl.length !== 3 || !sl.every((n) => Number.isSafeInteger(n))) return 'bad slice';
    }
    return undefined;
  }

  async onVoid(rids: string[]): Promise<VoidResponse> {
    const { store, batcher, clock } = this.#d;
    const ok = rids.filter(isCanonicalUuid).slice(0, RECOVERY_CHUNK);
    await batcher.run(() => {
      for (const rid of ok) {
        const r = store.s.resGet.get(rid);
        if (r && r.role !== 'peer') continue; // never the peer's to void
        this.#audit({ event: 'voided', link: this.linkId, rid, reason: r ? 'voided by the owner' : 'voided by the owner before it arrived' });
        if (r) {
          store.eraseKeysOf(r);
          store.s.resSetState.run('voided', 1, rid);
        } else {
          // Tombstone: a late copy of this reservation must never commit.
          store.s.resPut.run({
            rid, link: this.linkId, role: 'peer', state: 'voided', master: '', slaves: '[]', key_ids: '[]',
            size: 0, expires_at: clock.now() + 2 * this.#d.ttlMs, created_at: clock.now(), peer_acked: 1,
            first_block: null, last_block: null,
          });
        }
      }
    });
    return { voided: ok };
  }

  #audit(e: AuditEvent): void {
    this.#d.audit?.record(e);
  }

  onQuery(rids: string[]): QueryResponse {
    const states: Record<string, PeerRidState> = {};
    for (const rid of rids.filter(isCanonicalUuid).slice(0, RECOVERY_CHUNK)) {
      const r = this.#d.store.s.resGet.get(rid);
      states[rid] = r && r.role === 'peer' ? r.state : 'unknown';
    }
    return { states };
  }

  onHello(erasableBelow?: unknown): HelloResponse {
    if (Number.isSafeInteger(erasableBelow)) {
      // Queued behind any reservations that arrived before this heartbeat (same order as sent).
      const below = erasableBelow as number;
      this.#d.batcher.runVolatile(() => this.#d.pool.erasePeerBlocksBelow(below)).catch((e) =>
        this.#d.logger.warn({ link: this.linkId, err: (e as Error).message }, 'could not erase the peer\'s spent blocks'),
      );
    }
    return { kme_id: this.#d.myKmeId, link: this.linkId, hw: this.#d.pool.highWater() };
  }
}
