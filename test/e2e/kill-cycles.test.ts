/**
 * Crash safety of the real processes over many SIGKILL cycles.
 *
 * The demo network runs under load in both directions (masters on KME_A for
 * slaves on KME_B and the reverse, unicast and multicast) while either
 * keypoold, or both, is killed with SIGKILL at random instants and restarted.
 * Slaves fetch some keys at once and some later (after restarts of the
 * master's node, or only once the storm is over).
 *
 * Afterwards:
 *   1. no key_ID appears twice among all successful enc_keys answers;
 *   2. no key material appears twice among them;
 *   3. every key an enc_keys answer delivered (none expires during the test)
 *      is served to each of its slaves, byte for byte, exactly once: the first
 *      successful dec_keys returns the master's bytes and a second one fails.
 *      dec_keys may fail transiently (503) while the slave's keypoold is down;
 *      it must succeed when retried. The only exception is a fetch whose
 *      keypoold was SIGKILLed while it answered: the fetch may have been
 *      recorded durably (it has to be, before the answer, for one-shot
 *      delivery) with the answer lost; such keys are counted and reported;
 *   4. with load stopped and both nodes up, both key stores settle by
 *      themselves, within a bound, to no reservation `pending` and no VOID
 *      unacknowledged (read from the SQLite stores, read-only), and the two
 *      ends agree on every reservation of the link: committed at both, or
 *      voided at both; a reservation whose keys a master received is
 *      committed at both. (The peer may hold one its owner never recorded:
 *      the owner died after sending it and before its own commit, so no
 *      master has those keys; counted as orphans.) Then fresh round trips,
 *      unicast and multicast, work both ways.
 *
 * The kill schedule (which node, delays) comes from a seeded PRNG: the seed is
 * printed, and KILL_SEED=<seed> replays the same schedule (the load's timing,
 * and so the exact instants hit, still vary). KILL_CYCLES sets the number of
 * cycles (default 20, each kills one keypoold or both).
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { NdjsonPoolClient } from '../../src/ipc/ndjson-client.js';
import { silentLogger } from '../../src/common/logger.js';
import { verifyAuditLog } from '../../src/common/audit-verify.js';
import { useDemoNet, type HttpResult, type ReservationCounts } from '../helpers/demo-net.js';

const SEED = process.env.KILL_SEED ? Number(process.env.KILL_SEED) : Math.floor(Math.random() * 2 ** 31);
const CYCLES = Number(process.env.KILL_CYCLES ?? 20);
/** Peer timeout for this test: recovery settles reservations pending for two of them. */
const PEER_TIMEOUT_MS = 4000;
/** Bound on reconciliation once load stops: two peer timeouts, a maintenance tick, slack for a loaded machine. */
const RECONCILE_MS = 2 * PEER_TIMEOUT_MS + 12_000;
/** About 60-90 s on a busy 2-core machine (process starts dominate); generous for slower ones. */
const TEST_TIMEOUT_MS = 150_000;
const NODES = ['KME_A', 'KME_B'] as const;
type Node = (typeof NODES)[number];

/** mulberry32: a small seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const killRand = prng(SEED);
const loadRand = prng(SEED ^ 0x5a5a5a5a);

const demoNet = useDemoNet({ patchConfig: (cfg) => void (cfg.peer.timeout_ms = PEER_TIMEOUT_MS) }, 20);
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const kmeOf = (sae: string): Node => (sae.startsWith('SAE_A') ? 'KME_A' : 'KME_B');

interface Key {
  key_ID: string;
  key: string;
}

interface Attempt {
  start: number;
  end: number;
  status: number; // 0: no HTTP answer
  text: string;
}

interface Fetch {
  slave: string;
  attempts: Attempt[];
  /**
   * served: 200 with the master's bytes. cut: refused after an attempt that a
   * SIGKILL of the slave's keypoold cut short (see 3. above). broken: refused
   * otherwise (a violation, recorded).
   */
  outcome?: 'served' | 'cut' | 'broken';
  /** Deferred fetch: not before this many kill cycles have passed, or only after the storm (Infinity). */
  notBeforeCycle: number;
  busy: boolean;
}

interface Batch {
  n: number;
  master: string;
  at: number;
  keys: Key[];
  fetches: Fetch[];
}

/** A load pattern: master, slave and additional slaves (all on the other node). */
const FLOWS: Array<{ master: string; slaves: string[]; size: number }> = [
  { master: 'SAE_A1', slaves: ['SAE_B1'], size: 256 },
  { master: 'SAE_A2', slaves: ['SAE_B2', 'SAE_B3'], size: 256 },
  { master: 'SAE_A3', slaves: ['SAE_B1'], size: 1024 },
  { master: 'SAE_B1', slaves: ['SAE_A1'], size: 256 },
  { master: 'SAE_B2', slaves: ['SAE_A2', 'SAE_A3'], size: 512 },
  { master: 'SAE_B3', slaves: ['SAE_A1'], size: 256 },
];

describe('SIGKILL cycles of the keypoolds under load', () => {
  it(`keeps every promise, never hands out a key twice and reconciles by itself (seed ${SEED})`, async () => {
    const net = demoNet();
    const t0 = Date.now();
    const tag = `[kill-cycles seed=${SEED}; replay with KILL_SEED=${SEED}]`;
    console.log(`${tag} ${CYCLES} cycles`);
    // Invariant 3 assumes no delivered key expires before the end of the test.
    const ttlMs = (JSON.parse(readFileSync(net.path(net.node('KME_A').config), 'utf8')) as { key_ttl_seconds: number }).key_ttl_seconds * 1000;
    expect(ttlMs, 'the demo key TTL must outlast this test').toBeGreaterThan(TEST_TIMEOUT_MS);

    // ---------------------------------------------------------------- state
    const batches: Batch[] = [];
    const idSeen = new Map<string, number>(); // key_ID -> batch n
    const keySeen = new Map<string, number>(); // key bytes (base64) -> batch n
    const violations: string[] = [];
    const violate = (msg: string) => {
      if (violations.length < 50) violations.push(msg);
    };
    const kills: Array<{ node: Node; at: number; readyAt: number; cycle: number }> = [];
    const down = new Set<Node>();
    let cycle = 0;
    let storming = true;
    let inFlight = 0;
    let encOk = 0;
    let lastEncOkAt = 0;
    const encFailed = new Map<string, number>(); // status and message -> count
    let decAttempts = 0;
    let decTransient = 0;
    let decCut = 0;
    const cutDetails: string[] = [];
    let killsUnderLoad = 0;
    let flowWaitMs = 0;
    let restartMs = 0;

    /** Was the slave's keypoold SIGKILLed while this attempt was being answered? */
    const cutByKill = (node: Node, a: Attempt) => kills.some((k) => k.node === node && k.at >= a.start && k.at <= a.end);

    /** One dec_keys attempt for one slave of a batch, checked against what enc_keys gave. */
    const fetch = async (b: Batch, f: Fetch): Promise<void> => {
      if (f.outcome || f.busy) return;
      f.busy = true;
      const start = Date.now();
      decAttempts++;
      inFlight++;
      let r: HttpResult | undefined;
      let err: string | undefined;
      try {
        r = await net.sae(f.slave).post(`/api/v1/keys/${b.master}/dec_keys`, { key_IDs: b.keys.map((k) => ({ key_ID: k.key_ID })) });
      } catch (e) {
        err = (e as Error).message;
      } finally {
        inFlight--;
        f.busy = false;
      }
      const a: Attempt = { start, end: Date.now(), status: r?.status ?? 0, text: (r?.text ?? err ?? '').slice(0, 200) };
      f.attempts.push(a);
      const node = kmeOf(f.slave);
      if (a.status === 200) {
        const got = JSON.stringify(r!.body?.keys);
        if (got !== JSON.stringify(b.keys)) violate(`batch ${b.n} ${b.master}->${f.slave}: dec_keys answered other keys or bytes than enc_keys gave`);
        f.outcome = 'served';
      } else if (a.status === 503 || a.status === 0) {
        decTransient++; // keypoold down or killed meanwhile: try again later
        if (cutByKill(node, a)) decCut++;
      } else if (a.status === 400 && f.attempts.slice(0, -1).some((p) => p.status !== 200 && p.status !== 400 && cutByKill(node, p))) {
        f.outcome = 'cut';
        const p = [...f.attempts].reverse().find((x) => cutByKill(node, x))!;
        const k = kills.find((x) => x.node === node && x.at >= p.start && x.at <= p.end)!;
        cutDetails.push(`batch ${b.n} ${b.master}->${f.slave} key_IDs ${b.keys.map((x) => x.key_ID).join(',')}: attempt ${p.start - t0}..${p.end - t0} ms (${p.status}), ${node} killed at ${k.at - t0} ms`);
      } else {
        violate(
          `batch ${b.n} ${b.master}->${f.slave} (${b.keys.length} keys, delivered ${b.at - t0} ms): dec_keys ${a.status} ${a.text} ` +
            `at ${a.start - t0} ms; earlier attempts: ${JSON.stringify(f.attempts.slice(0, -1).map((p) => [p.start - t0, p.end - t0, p.status]))}`,
        );
        f.outcome = 'broken'; // stop retrying it
      }
    };

    // ----------------------------------------------------------------- load
    const encLoop = async (flow: (typeof FLOWS)[number]): Promise<void> => {
      const c = net.sae(flow.master);
      const [slave, ...additional] = flow.slaves;
      while (storming) {
        const number = 1 + Math.floor(loadRand() * 4);
        const body = additional.length > 0 ? { number, size: flow.size, additional_slave_SAE_IDs: additional } : { number, size: flow.size };
        const at = Date.now();
        inFlight++;
        let r: HttpResult | undefined;
        let err = '';
        try {
          r = await c.post(`/api/v1/keys/${slave}/enc_keys`, body);
        } catch (e) {
          err = (e as Error).message;
        } finally {
          inFlight--;
        }
        if (r?.status !== 200) {
          const why = r ? `${r.status} ${String(r.body?.message ?? '').replace(/[0-9a-f-]{36}/g, '<id>').slice(0, 60)}` : `error ${err.split(' ')[0]}`;
          encFailed.set(why, (encFailed.get(why) ?? 0) + 1);
          if (r && r.status !== 503) violate(`enc_keys ${flow.master}->${slave}: ${r.status} ${r.text}`); // fail closed means 503
          await sleep(40 + loadRand() * 80);
          continue;
        }
        encOk++;
        lastEncOkAt = Date.now();
        const keys = r.body.keys as Key[];
        const n = batches.length;
        if (keys.length !== number) violate(`batch ${n}: asked ${number} keys, got ${keys.length}`);
        for (const k of keys) {
          if (idSeen.has(k.key_ID)) violate(`key_ID ${k.key_ID} delivered twice (batches ${idSeen.get(k.key_ID)} and ${n})`);
          if (keySeen.has(k.key)) violate(`key material delivered twice (batches ${keySeen.get(k.key)} and ${n}, key_IDs differ: ${k.key_ID})`);
          if (Buffer.from(k.key, 'base64').length !== flow.size / 8) violate(`batch ${n}: key of ${Buffer.from(k.key, 'base64').length} bytes`);
          idSeen.set(k.key_ID, n);
          keySeen.set(k.key, n);
        }
        const u = loadRand();
        // 40% fetched at once, 35% after one or two more kill cycles, 25% only after the storm.
        const notBefore = u < 0.4 ? cycle : u < 0.75 ? cycle + 1 + Math.floor(loadRand() * 2) : Infinity;
        const b: Batch = {
          n, master: flow.master, at, keys,
          fetches: flow.slaves.map((s) => ({ slave: s, attempts: [], notBeforeCycle: notBefore, busy: false })),
        };
        batches.push(b);
        if (notBefore === cycle) await Promise.all(b.fetches.map((f) => fetch(b, f)));
      }
    };

    /** Fetches deferred batches once their cycle has come, and retries transient failures. */
    const fetchLoop = async (): Promise<void> => {
      while (storming) {
        const due = batches.flatMap((b) => b.fetches.filter((f) => !f.outcome && !f.busy && f.notBeforeCycle <= cycle && !down.has(kmeOf(f.slave))).map((f) => [b, f] as const));
        for (let i = 0; i < due.length && storming; i += 6) await Promise.all(due.slice(i, i + 6).map(([b, f]) => fetch(b, f)));
        await sleep(150);
      }
    };

    // ---------------------------------------------------------- kill cycles
    const storm = async (): Promise<void> => {
      for (cycle = 0; cycle < CYCLES; ) {
        // Every other cycle or so, let keys flow again after the last restart (the peers
        // reconnected, reservations in flight); otherwise strike during recovery itself.
        const since = Date.now();
        if (killRand() < 0.6) while (lastEncOkAt < (kills.at(-1)?.readyAt ?? 0) && Date.now() - since < 8000) await sleep(50);
        flowWaitMs += Date.now() - since;
        await sleep(50 + killRand() * 600);
        const u = killRand();
        const victims: Node[] = u < 0.45 ? ['KME_A'] : u < 0.9 ? ['KME_B'] : ['KME_A', 'KME_B'];
        const downFor = killRand() * 500;
        if (inFlight > 0) killsUnderLoad++;
        const at = Date.now();
        const killed = victims.map((v) => ({ node: v, at, readyAt: Infinity, cycle }));
        kills.push(...killed); // before the signal: an attempt it cuts short must see it
        for (const v of victims) down.add(v);
        await Promise.all(victims.map((v) => net.kill(v, 'kme-keypoold')));
        await sleep(downFor);
        await Promise.all(victims.map((v) => net.startProc(v, 'kme-keypoold')));
        for (const k of killed) k.readyAt = Date.now();
        restartMs += Date.now() - at;
        for (const v of victims) down.delete(v);
        cycle++;
      }
    };

    const loops = [...FLOWS.map(encLoop), fetchLoop()];
    try {
      await storm();
    } finally {
      storming = false;
      await Promise.all(loops);
    }
    const stormMs = Date.now() - t0;

    // ------------------------------------------------------- reconciliation
    // Load stopped, both nodes up: the stores settle by themselves.
    const diagOf = async (node: Node) => {
      const c = new NdjsonPoolClient({ path: net.path(net.node(node).admin_socket), logger: silentLogger() });
      try {
        return await c.call('diag', {});
      } finally {
        await c.close();
      }
    };
    const reconcileStart = Date.now();
    let counts: Record<Node, ReservationCounts | undefined> = { KME_A: undefined, KME_B: undefined };
    let reachable: Array<boolean | string> = [];
    let settled = false;
    while (Date.now() - reconcileStart < RECONCILE_MS) {
      counts = { KME_A: net.reservationCounts('KME_A'), KME_B: net.reservationCounts('KME_B') };
      // Each node's view of its peer: true, false, or why diag failed.
      const views = await Promise.all(NODES.map((n) => diagOf(n).then((x) => x.links[0]?.peer_reachable === true, (e: Error) => e.message)));
      reachable = views;
      if (views.every((v) => v === true) && NODES.every((n) => counts[n]!.pending === 0 && counts[n]!.unacked === 0)) {
        settled = true;
        break;
      }
      await sleep(250);
    }
    const reconcileMs = Date.now() - reconcileStart;

    // The two ends agree on every reservation of the link: committed at both, or voided at the
    // owner and voided (or a tombstone) at the peer. A reservation whose keys a master received
    // is committed at both. The peer may also hold one its owner has no record of: the owner was
    // killed after sending it and before its own commit, so no master heard of those keys.
    const agreement = { committed_both: 0, voided_both: 0, voided_owner_only: 0, orphans_at_peer: 0 };
    const rowsOf = { KME_A: new Map(net.reservationRows('KME_A').map((r) => [r.rid, r])), KME_B: new Map(net.reservationRows('KME_B').map((r) => [r.rid, r])) };
    for (const owner of NODES) {
      const peer: Node = owner === 'KME_A' ? 'KME_B' : 'KME_A';
      for (const r of rowsOf[owner].values()) {
        if (r.role !== 'owner') continue;
        const p = rowsOf[peer].get(r.rid);
        const delivered = r.key_ids.filter((id) => idSeen.has(id)).length;
        if (r.state === 'committed' && p?.role === 'peer' && p.state === 'committed') agreement.committed_both++;
        else if (r.state === 'voided' && delivered === 0 && (!p || (p.role === 'peer' && p.state === 'voided'))) agreement[p ? 'voided_both' : 'voided_owner_only']++;
        else violate(`reservation ${r.rid} of ${r.master}: ${r.state} at its owner ${owner}, ${p ? `${p.role} ${p.state}` : 'unknown'} at ${peer}; ${delivered} of its ${r.key_ids.length} keys delivered to the master`);
      }
      for (const p of rowsOf[peer].values()) {
        if (p.role !== 'peer' || rowsOf[owner].has(p.rid)) continue;
        agreement.orphans_at_peer++;
        const delivered = p.key_ids.filter((id) => idSeen.has(id)).length;
        if (delivered > 0) violate(`reservation ${p.rid} of ${p.master}: ${p.state} at ${peer}, unknown to its owner ${owner}, yet ${delivered} of its keys were delivered`);
      }
    }

    // ------------------------------------------- every promise kept, once
    // Everything not fetched yet, now (the slave's node is up); retry transient failures.
    const open = () => batches.flatMap((b) => b.fetches.filter((f) => !f.outcome).map((f) => [b, f] as const));
    const fetchDeadline = Date.now() + 20_000;
    while (open().length > 0 && Date.now() < fetchDeadline) {
      const o = open();
      for (let i = 0; i < o.length; i += 8) await Promise.all(o.slice(i, i + 8).map(([b, f]) => fetch(b, f)));
      if (open().length > 0) await sleep(300);
    }
    for (const [b, f] of open()) {
      violate(`batch ${b.n} ${b.master}->${f.slave}: never served; attempts ${JSON.stringify(f.attempts.map((a) => [a.start - t0, a.status, a.text.slice(0, 80)]))}`);
    }
    // A second fetch of each served key by the same slave fails (400: not found, or 401).
    const served = batches.flatMap((b) => b.fetches.filter((f) => f.outcome === 'served').map((f) => [b, f] as const));
    let refusedAgain = 0;
    for (let i = 0; i < served.length; i += 8) {
      await Promise.all(
        served.slice(i, i + 8).map(async ([b, f]) => {
          const r = await net.sae(f.slave).post(`/api/v1/keys/${b.master}/dec_keys`, { key_IDs: b.keys.map((k) => ({ key_ID: k.key_ID })) });
          if (r.status === 400 || r.status === 401) refusedAgain++;
          else violate(`batch ${b.n} ${b.master}->${f.slave}: second dec_keys answered ${r.status} ${r.text.slice(0, 120)}`);
        }),
      );
    }

    // ------------------------------------------------ a fresh round trip
    const fresh: string[] = [];
    for (const [m, s, extra] of [['SAE_A1', 'SAE_B1', []], ['SAE_B1', 'SAE_A1', []], ['SAE_A2', 'SAE_B2', ['SAE_B3']]] as const) {
      const r = await net.sae(m).post(`/api/v1/keys/${s}/enc_keys`, { number: 2, additional_slave_SAE_IDs: [...extra] });
      if (r.status !== 200) {
        fresh.push(`${m}->${s}: enc_keys ${r.status} ${r.text}`);
        continue;
      }
      for (const slave of [s, ...extra]) {
        const d = await net.sae(slave).post(`/api/v1/keys/${m}/dec_keys`, { key_IDs: r.body.keys.map((k: Key) => ({ key_ID: k.key_ID })) });
        if (d.status !== 200 || JSON.stringify(d.body.keys) !== JSON.stringify(r.body.keys)) fresh.push(`${m}->${slave}: dec_keys ${d.status} ${d.text}`);
      }
    }

    // ------------------------------------------------------- audit trails
    // Each node's trail verifies, and shows every delivery at the master's node and every fetch
    // (also one cut by a kill after its durable record) at the slave's: no line was lost to a kill.
    await sleep(1500); // flushed within a second
    const auditGaps: string[] = [];
    const trail = new Map<Node, Array<{ event: string; sae?: string; key_ids?: string[] }>>();
    for (const n of NODES) {
      const dir = join(net.path(net.node(n).state_dir), 'audit');
      const v = verifyAuditLog(dir);
      if (!v.ok) auditGaps.push(`${n}: audit trail broken: ${JSON.stringify(v.break)}`);
      trail.set(n, readdirSync(dir).sort().flatMap((f) => readFileSync(join(dir, f), 'utf8').split('\n').filter(Boolean)).map((l) => JSON.parse(l)));
    }
    const idsOf = (n: Node, event: string, sae?: string) =>
      new Set(trail.get(n)!.filter((l) => l.event === event && (sae === undefined || l.sae === sae)).flatMap((l) => l.key_ids ?? []));
    for (const b of batches) {
      const delivered = idsOf(kmeOf(b.master), 'delivered');
      if (!b.keys.every((k) => delivered.has(k.key_ID))) auditGaps.push(`batch ${b.n}: no 'delivered' line at ${kmeOf(b.master)}`);
      for (const f of b.fetches) {
        if (f.outcome !== 'served' && f.outcome !== 'cut') continue;
        const got = idsOf(kmeOf(f.slave), 'fetched', f.slave);
        if (!b.keys.every((k) => got.has(k.key_ID))) auditGaps.push(`batch ${b.n}: no 'fetched' line for ${f.slave} at ${kmeOf(f.slave)} (${f.outcome})`);
      }
    }

    // -------------------------------------------------------------- report
    const keys = batches.reduce((n, b) => n + b.keys.length, 0);
    const fetchesServed = served.length;
    const lostInCut = cutDetails.length;
    const summary = {
      seed: SEED,
      cycles: cycle,
      kills: { KME_A: kills.filter((k) => k.node === 'KME_A').length, KME_B: kills.filter((k) => k.node === 'KME_B').length, both: kills.length - cycle, under_load: killsUnderLoad },
      enc_ok: encOk,
      enc_failed: Object.fromEntries(encFailed),
      keys_delivered: keys,
      batches: batches.length,
      multicast_batches: batches.filter((b) => b.fetches.length > 1).length,
      slave_fetches_served: fetchesServed,
      fetched_after_storm: batches.reduce((n, b) => n + b.fetches.filter((f) => f.outcome === 'served' && f.attempts.at(-1)!.start >= t0 + stormMs).length, 0),
      dec_attempts: decAttempts,
      dec_transient_failures: decTransient,
      dec_attempts_cut_by_kill: decCut,
      fetches_lost_to_kill_mid_answer: lostInCut,
      second_fetch_refused: refusedAgain,
      reconcile_ms: reconcileMs,
      reservations_agreement: agreement,
      reservations: counts,
      storm_ms: stormMs,
      mean_cycle_ms: { waiting_for_keys_to_flow: Math.round(flowWaitMs / cycle), kill_to_ready: Math.round(restartMs / cycle) },
      total_ms: Date.now() - t0,
    };
    console.log(`${tag} summary ${JSON.stringify(summary)}`);
    if (cutDetails.length > 0) console.log(`${tag} fetches recorded but cut by a kill before the answer:\n  ${cutDetails.join('\n  ')}`);
    if (violations.length > 0 || !settled || fresh.length > 0) {
      const interesting = (l: string) => /"level":(40|50|60)/.test(l) || /recovered|voided|refused/.test(l);
      for (const n of NODES) console.log(`--- ${n}/kme-keypoold warnings across incarnations (last 80):\n${net.history(n, 'kme-keypoold', interesting).slice(-80).join('\n')}`);
      console.log(`${tag} kills: ${JSON.stringify(kills.map((k) => [k.node, k.at - t0, k.readyAt - t0]))}`);
    }

    expect(violations, `${tag} invariant violations`).toEqual([]);
    expect(settled, `${tag} not reconciled within ${RECONCILE_MS} ms: peers reachable=${JSON.stringify(reachable)} ${JSON.stringify(counts)}`).toBe(true);
    expect(fresh, `${tag} fresh round trips after the storm`).toEqual([]);
    expect(auditGaps, `${tag} audit trails`).toEqual([]);
    // The test must have tested something.
    expect(cycle).toBe(CYCLES);
    expect(killsUnderLoad).toBeGreaterThanOrEqual(CYCLES / 2);
    expect(encOk).toBeGreaterThan(CYCLES * 2);
    expect(fetchesServed).toBeGreaterThan(CYCLES * 2);
    // At-most-once delivery loses a fetch only to a kill landing between its durable record and its
    // answer (one fsync): a minority of the fetches a kill cuts short, most of which had not reached
    // their commit yet. Most of them lost would mean keys erased by the kill itself.
    expect(lostInCut, `${tag} fetches lost to kills vs fetches cut by kills`).toBeLessThanOrEqual(Math.max(2, Math.ceil(decCut / 2)));
  }, TEST_TIMEOUT_MS);
});
