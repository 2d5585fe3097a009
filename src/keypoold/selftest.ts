/**
 * The link self-test (maintenance socket op `selftest`, `kmectl selftest`): a
 * full key round trip through both KMEs of a link, with no SAE involved and
 * nothing delivered.
 *
 * Owner (the KME asked): carves one key of the default size from its own
 * blocks the peer holds, exactly as for an SAE, records the reservation
 * `voided` at once (the bits are burnt: never part of another key), computes
 * HMAC-SHA256 keyed with the test key over a fresh random nonce and the
 * reservation's identity, zeroes the key, and sends the slices and the nonce
 * (never key material) to the peer on the link's ordered channel, from inside
 * the carve's transaction like any reservation.
 *
 * Peer: checks the slices as for any reservation (blocks held, owned by the
 * sender, beyond each block's cursor), materialises the key, computes the same
 * HMAC, erases the key and records the reservation `voided`, all in one
 * durable commit before answering. The test key never exists outside that
 * transaction, so no slave can ever fetch it.
 *
 * The owner compares the two MACs. Both ends write `reserved` then `voided`
 * lines with a reason starting "selftest" in their audit trails.
 */
import { createHmac, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { KmeError, badRequest } from '../common/errors.js';
import { isCanonicalUuid } from '../common/ids.js';
import type { Logger } from '../common/logger.js';
import type { Clock } from '../../drivers/types.js';
import type { SelftestLinkResult, SelftestResult } from '../ipc/pool-protocol.js';
import type { Audit } from './audit-sink.js';
import { keyAad } from './block-aad.js';
import { blockSpan, type LinkPool } from './link-pool.js';
import type { LinkSync } from './link-sync.js';
import type { PeerClient } from './peer-client.js';
import type { PeerReservation, SelftestRequest, SelftestResponse } from './peer-protocol.js';
import type { Sealer } from './seal.js';
import type { Slice, Store } from './store.js';
import type { TxBatcher } from './tx-batcher.js';

/** Stands for the master and slave of a self-test reservation (no SAE is involved). */
export const SELFTEST_PARTY = 'selftest';
const NONCE_BYTES = 32;

export interface SelftestLink {
  sync: LinkSync;
  pool: LinkPool;
  client: PeerClient;
}

export interface SelftestDeps {
  kmeId: string;
  /** Size of the test key in bits (the default key size). */
  keyBits: number;
  /** Expiry given to the test reservation (it is voided at once; the sweep forgets it after this). */
  ttlMs: number;
  /** By link id. */
  links: Map<string, SelftestLink>;
  store: Store;
  batcher: TxBatcher;
  sealer: Sealer;
  clock: Clock;
  logger: Logger;
  audit?: Audit;
  /** Why this node must not serve keys now, if so. */
  stopReason?: () => string | undefined;
}

/** The check value both ends compute: HMAC-SHA256 keyed with the test key. */
function checkMac(key: Buffer, link: string, rid: string, keyId: string, nonce: Buffer): Buffer {
  return createHmac('sha256', key).update(`kme-selftest v1\n${link}\n${rid}\n${keyId}\n`).update(nonce).digest();
}

const ms = (t0: number) => Math.round((performance.now() - t0) * 10) / 10;

export class LinkSelftest {
  readonly #d: SelftestDeps;

  constructor(deps: SelftestDeps) {
    this.#d = deps;
  }

  /** Test one link (by id), or every link in turn. */
  async run(linkId?: string): Promise<SelftestResult> {
    const { links, kmeId } = this.#d;
    if (linkId !== undefined && !links.has(linkId)) {
      throw badRequest(`no link ${linkId} at ${kmeId} (links: ${[...links.keys()].join(', ') || 'none'})`);
    }
    const ids = linkId !== undefined ? [linkId] : [...links.keys()];
    const out: SelftestLinkResult[] = [];
    for (const id of ids) out.push(await this.#runOne(id, links.get(id)!));
    return { kme_id: kmeId, links: out };
  }

  async #runOne(linkId: string, { sync, pool, client }: SelftestLink): Promise<SelftestLinkResult> {
    const { store, batcher, clock, kmeId, keyBits } = this.#d;
    const t0 = performance.now();
    const base = { link_id: linkId, peer_kme_id: sync.peerKmeId, key_size: keyBits };
    const fail = (reason: string, extra: Partial<SelftestLinkResult> = {}): SelftestLinkResult => ({ ...base, ok: false, reason, ...extra, elapsed_ms: ms(t0) });
    const stop = this.#d.stopReason?.();
    if (stop !== undefined) return fail(`${kmeId} is not serving keys: ${stop}`);
    if (!sync.peerReachable) return fail(`peer KME ${sync.peerKmeId} is unreachable`);

    const rid = randomUUID();
    const keyId = randomUUID();
    const nonce = randomBytes(NONCE_BYTES);
    let expected: Buffer | undefined;
    let sent: Promise<unknown> | undefined;
    let carveMs = 0;
    try {
      const carved = await batcher.runVolatile(() => {
        const [r] = pool.carve([{ number: 1, size: keyBits }], sync.peerHw);
        if (!r || r instanceof KmeError) return false;
        const key = r.material[0]!;
        try {
          expected = checkMac(key, linkId, rid, keyId, nonce);
        } finally {
          key.fill(0);
        }
        const slices = r.slices[0]!;
        const now = clock.now();
        store.s.resPut.run({
          rid, link: linkId, role: 'owner', state: 'voided', master: SELFTEST_PARTY, slaves: JSON.stringify([SELFTEST_PARTY]),
          key_ids: JSON.stringify([keyId]), size: keyBits, expires_at: now + this.#d.ttlMs, created_at: now, peer_acked: 1,
          ...blockSpan([slices]),
        });
        this.#audit({ event: 'reserved', link: linkId, rid, key_ids: [keyId], size: keyBits, reason: 'selftest: test key carved, never delivered' });
        const body: SelftestRequest = { from: kmeId, rid, key_id: keyId, slices, size: keyBits, nonce: nonce.toString('hex') };
        // Last, and from inside the carve's transaction: messages leave in carve order.
        sent = client.call('selftest', body as unknown as Record<string, unknown>, true);
        sent.catch(() => {});
        return true;
      });
      carveMs = ms(t0);
      if (!carved) return fail(`no ${keyBits}-bit key available on the link yet (the pool is empty or the peer holds none of this KME's blocks)`);
    } catch (e) {
      return fail(`could not carve the test key: ${(e as Error).message}`);
    }

    const tPeer = performance.now();
    let answer: SelftestResponse;
    try {
      answer = (await sent!) as SelftestResponse;
    } catch (e) {
      const m = (e as Error).message;
      return this.#done(linkId, rid, keyId, fail(/unknown operation/.test(m) ? `peer KME ${sync.peerKmeId} does not know the self-test (older firmware?)` : `peer KME ${sync.peerKmeId}: ${m}`, { rid }));
    }
    const peerMs = ms(tPeer);
    if (answer?.state !== 'ok' || typeof answer.mac !== 'string') {
      return this.#done(linkId, rid, keyId, fail(`peer KME ${sync.peerKmeId} refused the test key: ${String(answer?.reason ?? 'no reason given')}`, { rid, peer_ms: peerMs }));
    }
    const got = Buffer.from(answer.mac, 'hex');
    const same = got.length === expected!.length && timingSafeEqual(got, expected!);
    if (!same) {
      return this.#done(linkId, rid, keyId, fail(`peer KME ${sync.peerKmeId} holds different key material for the same slices`, { rid, peer_ms: peerMs }));
    }
    const ok: SelftestLinkResult = { ...base, ok: true, rid, carve_ms: carveMs, peer_ms: peerMs, elapsed_ms: ms(t0) };
    return this.#done(linkId, rid, keyId, ok);
  }

  #done(link: string, rid: string, keyId: string, r: SelftestLinkResult): SelftestLinkResult {
    this.#audit({
      event: 'voided', link, rid, key_ids: [keyId],
      reason: r.ok ? 'selftest: passed; test key erased on both sides' : 'selftest: failed; test key burnt',
      detail: { ok: r.ok, elapsed_ms: r.elapsed_ms },
    });
    this.#d.logger.info({ link, ok: r.ok, reason: r.reason, elapsed_ms: r.elapsed_ms }, 'link self-test');
    return r;
  }

  /**
   * Peer side: the owner's test key, named by its slices. Answers with the
   * check value once the key is erased here (one durable commit). Called in
   * arrival order, with no await before the commit is queued.
   */
  onPeer(linkId: string, args: Record<string, unknown>): Promise<SelftestResponse> {
    const link = this.#d.links.get(linkId);
    if (!link) return Promise.reject(badRequest('unknown link'));
    const req = parseRequest(args, link.sync.peerKmeId);
    if (typeof req === 'string') return Promise.resolve({ state: 'refused', reason: req });
    const { store, batcher, sealer, clock, kmeId } = this.#d;
    return batcher.run((): SelftestResponse => {
      if (store.s.resGet.get(req.rid)) return { state: 'refused', reason: 'rid in use' };
      const stop = this.#d.stopReason?.();
      const res: PeerReservation = {
        rid: req.rid, master: SELFTEST_PARTY, slaves: [SELFTEST_PARTY], key_ids: [req.key_id], slices: [req.slices],
        size: req.size, expires_at: clock.now() + this.#d.ttlMs,
      };
      const [r] = link.pool.acceptAll([res], () => (stop !== undefined ? `${kmeId} is not serving keys: ${stop}` : undefined));
      if (!r || r.state !== 'committed') {
        return { state: 'refused', reason: r?.reason ?? `reservation ${r?.state ?? 'refused'}` };
      }
      const row = store.s.keyGet.get(req.key_id);
      if (!row) return { state: 'refused', reason: 'test key already erased' };
      const key = sealer.open(row.sealed, keyAad(req.key_id));
      let mac: Buffer;
      try {
        mac = checkMac(key, linkId, req.rid, req.key_id, Buffer.from(req.nonce, 'hex'));
      } finally {
        key.fill(0);
      }
      store.eraseKey(req.key_id);
      store.s.resSetState.run('voided', 1, req.rid);
      this.#audit({ event: 'reserved', link: linkId, rid: req.rid, key_ids: [req.key_id], size: req.size, reason: "selftest: the peer's test key, never delivered" });
      this.#audit({ event: 'voided', link: linkId, rid: req.rid, key_ids: [req.key_id], reason: 'selftest: checked and erased' });
      return { state: 'ok', mac: mac.toString('hex') };
    });
  }

  #audit(e: Parameters<Audit['record']>[0]): void {
    this.#d.audit?.record(e);
  }
}

function parseRequest(a: Record<string, unknown>, peer: string): (SelftestRequest & { slices: Slice[] }) | string {
  if (a.from !== peer) return 'sender is not the peer of this link';
  if (!isCanonicalUuid(a.rid) || !isCanonicalUuid(a.key_id)) return 'bad rid or key_id';
  if (typeof a.nonce !== 'string' || !/^[0-9a-f]{64}$/.test(a.nonce)) return 'bad nonce';
  if (!Number.isSafeInteger(a.size) || (a.size as number) <= 0 || (a.size as number) % 8 !== 0 || (a.size as number) > 65536) return 'bad size';
  const slices = a.slices;
  if (!Array.isArray(slices) || slices.length === 0 || slices.length > 64) return 'bad slices';
  for (const s of slices) if (!Array.isArray(s) || s.length !== 3 || !s.every((n) => Number.isSafeInteger(n) && n >= 0)) return 'bad slice';
  return { from: peer, rid: a.rid, key_id: a.key_id, nonce: a.nonce, size: a.size as number, slices: slices as Slice[] };
}
