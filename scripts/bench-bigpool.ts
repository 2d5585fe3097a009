/**
 * `npm run bench`, third part: a pool of 1,000,000 keys of 256 bits.
 *
 *   node dist/scripts/bench-bigpool.js     (BENCH_SECONDS=5, BENCH_ROUNDS=2 by default)
 *
 * Targets: keypoold resident memory <= 250 MB with that pool, restart to
 * serving <= 3 s, enc_keys/dec_keys throughput within 10% of a small pool.
 *
 * Two throw-away demo networks run side by side in one temp folder, built
 * alike (the demo's processes: qkd-sim process, socat ptys, serial driver,
 * kme-keypoold and kme-api per node; 65536-bit blocks; 16 keep-alive mTLS
 * clients in scripts/bench-load.js) and differing only in limits.max_key_count:
 *   small: the demo's 100,000, the pool scripts/bench.ts measures;
 *   big:   1,000,000. A link's pool is split between the two directions by
 *          block parity, so each keypoold stores 2 x 256 Mbit of blocks and
 *          KME_A (even blocks, the master's side) owns 1e6 keys of 256 bits.
 *
 * Filling: through the real ingestion path, not a pre-seeded store. The
 * simulator runs at 200 Mbit/s (both networks, so the only difference between
 * them is the pool size); keypoold ingests as fast as it stores (about 60-110
 * Mbit/s each on the 2-core VM, so 512 Mbit take well under the ~90 s at which
 * pre-seeding both stores through LinkPool.ingest would have been the better
 * choice). Once full, the simulator pauses on its full buffers and ingestion
 * only refills what enc_keys uses, as in bench.ts.
 *
 * Steps:
 * 1. start the small network and wait for its full pool; start the big one and
 *    time the fill (network start -> ETSI status of SAE_A1 -> SAE_B1 at KME_A
 *    answers stored_key_count >= 1e6);
 * 2. memory at rest: VmRSS/VmHWM of every keypoold (/proc/<pid>/status);
 * 3. restart to serving, KME_A's keypoold (kme-api keeps running): SIGTERM,
 *    then separately SIGKILL; from the new spawn, poll every 20 ms: keypoold's
 *    socket accepting, keypoold's own status (its local API), and the ETSI
 *    status through kme-api answering 200 with stored_key_count >= 1e6 (the
 *    figure the target is about); the log lines of the new keypoold and of
 *    kme-api say where the time went. The small network's KME_A keypoold is
 *    restarted likewise: a comparison, and it leaves both networks with a
 *    freshly started KME_A keypoold for the load (a restarted keypoold starts
 *    cold: in trials its first enc phase ran 15-40% slower). Done before any
 *    load, because a pool enc_keys has drawn from does not get back to
 *    max_key_count: ingestion pauses on the link's total stored bits, and the
 *    blocks the other KME owns stay until that KME carves from them, so refills
 *    give KME_A only half their bits;
 * 4. load, in BENCH_ROUNDS rounds (default 2) of: enc_keys at KME_A as SAE_A1
 *    for SAE_B1, keeping every key, then dec_keys at KME_B as SAE_B1 of each of
 *    them once, bytes checked; small and big pool alternately, small first in
 *    odd rounds and big first in even ones (enc small, enc big, dec big, dec
 *    small; enc big, enc small, dec small, dec big), so that drift on a shared
 *    machine falls on both pools alike. Besides req/s, the CPU the network's
 *    keypoolds and kme-apis spend per request (what the pool itself costs, less
 *    moved by other load);
 * 5. memory after the enc/dec phases; then, without a target, the status of
 *    the link pair (stored_key_count is counted in the store);
 * 6. a table with PASS/MISS per target, var/bench/last-bigpool.json.
 *
 * Exit 0 when the measurement ran cleanly (whether or not the targets are
 * met), 1 on request errors, key mismatches or a set-up failure, 130 when
 * interrupted. Every child process is stopped and the temp folders removed.
 */
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { Agent } from 'node:https';
import { connect } from 'node:net';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { DemoDescription } from '../src/demo/description.js';
import { freePorts } from '../src/demo/ports.js';
import { canConnect } from '../src/demo/processes.js';
import type { LoadJob, LoadResult } from './bench-types.js';
import {
  BenchError, ROOT, abs, addTempDir, cleanup, cpuSeconds, describePhase, fmt, getJson, hostPort, installSignalHandlers, logIssueTotal,
  logIssues, memoryOf, out, pad, prepareNet, runLoad, saeTls, setMeasuring, skipped, sleep, startNetwork, stripTls,
  waitForStatus, wasInterrupted, type MemoryFigures, type Net, type Phase,
  CLIENTS, DEC_PATH, ENC_PATH, KEY_BITS, NOISE_LIMIT_PCT, PLANNED_MAX_ENC_RPS, WARMUP_MS,
  machineFacts,
} from './bench-net.js';

const BIG_KEYS = 1_000_000;
/** Simulated secret key rate of both networks: far above what keypoold stores, so the fill runs at ingestion speed. */
const RATE_BPS = 200_000_000;
const FILL_TIMEOUT_MS = 180_000;
const RESTART_TIMEOUT_MS = 30_000;
const POLL_MS = 20;
const TARGETS = { rssMb: 250, restartMs: 3_000, ratio: 0.9 };

const STATUS_PATH = '/api/v1/keys/SAE_B1/status';
const STATUS_ARGS = { caller: 'SAE_A1', slave: 'SAE_B1' };

// ---------------------------------------------------------------- helpers

/** One request on keypoold's local API (a fresh connection, no retry): its result, or a rejection. */
function poolCall(path: string, op: string, args: unknown, timeoutMs = 2_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = '';
    const done = (f: () => void) => {
      clearTimeout(timer);
      sock.destroy();
      f();
    };
    const timer = setTimeout(() => done(() => reject(new Error(`no answer within ${timeoutMs} ms`))), timeoutMs);
    sock.setEncoding('utf8');
    sock.on('connect', () => sock.write(JSON.stringify({ id: 1, op, args }) + '\n'));
    sock.on('data', (d: string) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i < 0) return;
      done(() => {
        try {
          const m = JSON.parse(buf.slice(0, i)) as { ok: boolean; result?: Record<string, unknown>; error?: { message?: string } };
          if (m.ok && m.result) resolve(m.result);
          else reject(new Error(m.error?.message ?? 'error'));
        } catch (e) {
          reject(e as Error);
        }
      });
    });
    sock.on('error', (e) => done(() => reject(e)));
    sock.on('close', () => done(() => reject(new Error('connection closed'))));
  });
}

const socketOf = (net: Net, name: string): string => {
  const r = net.ready.get(name);
  if (!r || !('unix_socket' in r)) throw new BenchError(`${name} has no Unix socket`);
  return r.unix_socket;
};

/** Edit a node's config.json in place. */
function editConfig(desc: DemoDescription, edit: (cfg: { limits: Record<string, number> }) => void): void {
  for (const node of desc.nodes) {
    const file = abs(node.config);
    const cfg = JSON.parse(readFileSync(file, 'utf8'));
    edit(cfg);
    writeFileSync(file, JSON.stringify(cfg, null, 2) + '\n');
  }
}

/** Bytes of the key store files (database, WAL) of a node. */
function storeBytes(desc: DemoDescription, kme: string): number {
  const node = desc.nodes.find((n) => n.kme_id === kme)!;
  const dir = abs(node.state_dir);
  try {
    return readdirSync(dir)
      .filter((f) => f.startsWith('keystore.sqlite'))
      .reduce((n, f) => n + statSync(join(dir, f)).size, 0);
  } catch {
    return 0;
  }
}

/** Other node processes on the machine (not this one, not its children): what else is running. */
function otherNodeProcesses(ours: Set<number>): number {
  let n = 0;
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d) || ours.has(Number(d))) continue;
    try {
      const cmd = readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0')[0] ?? '';
      if (/(^|\/)node$/.test(cmd)) n++;
    } catch {
      /* gone */
    }
  }
  return n;
}

/** Polls `probe` every POLL_MS until it says yes; ms since `since`, or undefined on timeout. */
async function pollUntil(probe: () => Promise<boolean>, since: number, deadline: number, gone: () => boolean): Promise<number | undefined> {
  for (;;) {
    const t = performance.now();
    try {
      if (await probe()) return performance.now() - since;
    } catch {
      /* not yet */
    }
    if (t >= deadline || gone()) return undefined;
    await sleep(Math.max(0, POLL_MS - (performance.now() - t)));
  }
}

interface Restart {
  pool: 'small' | 'big';
  signal: 'SIGTERM' | 'SIGKILL';
  /** Signal to exit. */
  stopMs: number;
  stopForced: boolean;
  /** From the new spawn: keypoold's socket accepts; keypoold's own status has >= 1e6 keys; the ETSI status via kme-api does. */
  socketMs?: number;
  poolMs?: number;
  etsiMs?: number;
  memoryAfter?: MemoryFigures;
  /** ms from the spawn to log lines of the new keypoold (and kme-api A reconnecting to it): where the time goes. */
  milestones: Record<string, number>;
}

/** Pino lines of a process since `sinceEpochMs`: first time each message appeared, in ms after it. */
function logTimes(lines: string[], sinceEpochMs: number, wanted: Record<string, (msg: string, line: Record<string, unknown>) => boolean>): Record<string, number> {
  const found: Record<string, number> = {};
  for (const l of lines) {
    let j: Record<string, unknown>;
    try {
      j = JSON.parse(l) as Record<string, unknown>;
    } catch {
      continue;
    }
    if (typeof j.time !== 'number' || typeof j.msg !== 'string' || j.time < sinceEpochMs) continue;
    for (const [name, test] of Object.entries(wanted)) {
      if (found[name] === undefined && test(j.msg, j)) found[name] = j.time - sinceEpochMs;
    }
  }
  return found;
}

async function restartKeypooldA(net: Net, signal: Restart['signal'], wantKeys: number): Promise<Restart> {
  const kp = net.procs.get('keypoold A')!;
  const sock = socketOf(net, 'keypoold A');
  const tls = saeTls(net.desc, 'SAE_A1');
  const { host, port } = hostPort(tls.node.etsi_url);
  const agent = new Agent({ keepAlive: true, maxSockets: 1, cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.ca) });
  try {
    const t0 = performance.now();
    kp.kill(signal);
    let stopForced = false;
    try {
      await kp.waitForExit(10_000);
    } catch {
      stopForced = true;
      kp.kill('SIGKILL');
      await kp.exited;
    }
    const stopMs = performance.now() - t0;
    const spawnedAt = performance.now();
    const spawnedEpoch = Date.now();
    kp.spawn();
    const deadline = spawnedAt + RESTART_TIMEOUT_MS;
    const gone = () => !kp.running;
    const enough = (b: unknown) => typeof (b as { stored_key_count?: unknown }).stored_key_count === 'number' &&
      (b as { stored_key_count: number }).stored_key_count >= wantKeys;
    const [socketMs, poolMs, etsiMs] = await Promise.all([
      pollUntil(() => canConnect({ unix_socket: sock }, 500), spawnedAt, deadline, gone),
      pollUntil(async () => enough(await poolCall(sock, 'status', STATUS_ARGS)), spawnedAt, deadline, gone),
      pollUntil(async () => {
        const r = await getJson(host, port, STATUS_PATH, tls, { agent, timeoutMs: 2_000 });
        return r.status === 200 && enough(r.body);
      }, spawnedAt, deadline, gone),
    ]);
    if (!kp.running) throw new BenchError(`keypoold A did not come back after ${signal}: ${kp.describeExit()}`);
    const milestones = {
      ...logTimes(kp.output('stdout'), spawnedEpoch, {
        'first log line': () => true,
        'module driver ready': (m, j) => m === 'QKD module driver state' && j.state === 'ready',
        'peer reachable': (m) => m === 'peer reachable',
        'ready (socket listening)': (m) => m === 'ready',
      }),
      ...logTimes(net.procs.get('api A')!.output('stdout'), spawnedEpoch, { 'kme-api reconnected': (m) => m === 'connected' }),
    };
    const r: Restart = { pool: net.tag === 'small' ? 'small' : 'big', signal, stopMs: Math.round(stopMs), stopForced, milestones };
    if (socketMs !== undefined) r.socketMs = Math.round(socketMs);
    if (poolMs !== undefined) r.poolMs = Math.round(poolMs);
    if (etsiMs !== undefined) r.etsiMs = Math.round(etsiMs);
    const mem = memoryOf(kp.pid);
    if (mem) r.memoryAfter = mem;
    return r;
  } finally {
    agent.destroy();
  }
}

type MemoryRow = Record<string, MemoryFigures | null>;

type Tag = 'small' | 'big';
type Call = 'enc' | 'dec' | 'status';

interface Measured {
  tag: Tag;
  call: Call;
  round: number;
  result: LoadResult;
  /** CPU seconds of the network's keypoolds and kme-apis during the phase, and the requests sent (warm-up included). */
  cpuSeconds: number;
  requests: number;
}

interface Combined {
  rps: number;
  p50: number | undefined;
  p99: number | undefined;
  cpuMsPerRequest: number | undefined;
  errors: number;
}

/** Several phases of one call on one pool as one figure: rps over all measured windows, latency percentiles averaged. */
function combine(ms: Measured[]): Combined {
  const secs = ms.reduce((s, m) => s + m.result.seconds, 0);
  const ok = ms.reduce((s, m) => s + m.result.rps * m.result.seconds, 0);
  const lat = ms.map((m) => m.result.latencyMs).filter((l): l is NonNullable<typeof l> => l !== null);
  const mean = (xs: number[]) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : undefined);
  const reqs = ms.reduce((s, m) => s + m.requests, 0);
  return {
    rps: secs > 0 ? ok / secs : 0,
    p50: mean(lat.map((l) => l.p50)),
    p99: mean(lat.map((l) => l.p99)),
    cpuMsPerRequest: reqs > 0 ? (ms.reduce((s, m) => s + m.cpuSeconds, 0) * 1000) / reqs : undefined,
    errors: ms.reduce((s, m) => s + m.result.errors + m.result.mismatches, 0),
  };
}

function memoryRow(nets: Array<[string, Net]>): MemoryRow {
  const row: MemoryRow = {};
  for (const [tag, net] of nets) {
    for (const kme of ['A', 'B']) row[`keypoold ${kme} ${tag}`] = memoryOf(net.procs.get(`keypoold ${kme}`)?.pid) ?? null;
  }
  return row;
}

const ms = (x: number | undefined) => (x === undefined ? 'timeout' : `${x} ms`);

// ---------------------------------------------------------------- main

async function bench(): Promise<number> {
  const startedAt = Date.now();
  const seconds = Number(process.env.BENCH_SECONDS ?? '5');
  if (!(seconds > 0) || !Number.isFinite(seconds)) {
    throw new BenchError(`BENCH_SECONDS must be a positive number, got ${process.env.BENCH_SECONDS}`);
  }
  const durationMs = Math.round(seconds * 1000);
  const rounds = Number(process.env.BENCH_ROUNDS ?? '2');
  if (!Number.isInteger(rounds) || rounds < 1) throw new BenchError(`BENCH_ROUNDS must be a positive integer, got ${process.env.BENCH_ROUNDS}`);
  const ports = await freePorts(8);
  const tempDir = mkdtempSync(join(tmpdir(), 'kme-bigpool-'));
  addTempDir(tempDir);
  const othersAtStart = otherNodeProcesses(new Set([process.pid]));
  out(
    `big-pool benchmark: ${CLIENTS} clients, ${WARMUP_MS / 1000} s warm-up + ${seconds} s per phase, ${cpus().length} CPUs, ` +
      `node ${process.version}, load average ${loadavg()[0]!.toFixed(2)}, other node processes running: ${othersAtStart}`,
  );
  out(
    `preparing two demo networks in ${tempDir} (simulated link ${RATE_BPS / 1e6} Mbit/s): ` +
      `small (the demo's max_key_count) and big (max_key_count ${BIG_KEYS})`,
  );
  const [p0, p1, p2, p3, p4, p5, p6, p7] = ports as [number, number, number, number, number, number, number, number];
  const smallDesc = await prepareNet(join(tempDir, 'small'), { apiPorts: [p0, p1], peerPorts: [p2, p3], rateBps: RATE_BPS });
  const bigDesc = await prepareNet(join(tempDir, 'big'), { apiPorts: [p4, p5], peerPorts: [p6, p7], rateBps: RATE_BPS });
  for (const n of [...smallDesc.notes, ...bigDesc.notes]) out(`  note: ${n}`);
  editConfig(bigDesc, (cfg) => void (cfg.limits.max_key_count = BIG_KEYS));

  // 1. The small network first (fills in about a second), then the big one, timed.
  const small = await startNetwork(smallDesc, 'small');
  const smallStock = (
    await waitForStatus(smallDesc, 'stored_key_count = max_key_count', (s) => s.stored_key_count >= s.max_key_count)
  ).stored_key_count;
  out(`small network up; KME_A holds ${smallStock} keys for SAE_A1 -> SAE_B1`);
  out('');
  out('filling the big pool (qkd-sim process -> socat ptys -> serial driver -> keypoold ingestion -> sealed store, both nodes):');
  const fillStart = performance.now();
  const big = await startNetwork(bigDesc, 'big');
  const bigStock = (
    await waitForStatus(bigDesc, `stored_key_count >= ${BIG_KEYS}`, (s) => s.stored_key_count >= BIG_KEYS, {
      timeoutMs: FILL_TIMEOUT_MS,
      pollMs: 100,
    })
  ).stored_key_count;
  const fillMs = Math.round(performance.now() - fillStart);
  const diag = await Promise.all(
    bigDesc.nodes.map(async (node) => {
      // diag is served on the maintenance socket where keypoold has one.
      const sock = abs(node.admin_socket);
      const d = (await poolCall(sock, 'diag', {})) as { links: Array<{ stored_bits: number; blocks: number }> };
      return d.links[0]!;
    }),
  );
  const storedMbit = diag.map((l) => Math.round(l.stored_bits / 1e5) / 10);
  out(
    `  KME_A serves stored_key_count ${bigStock} after ${(fillMs / 1000).toFixed(1)} s (from starting the big network); ` +
      `stored: ${storedMbit.map((m, i) => `keypoold ${'AB'[i]} ${m} Mbit in ${diag[i]!.blocks} blocks`).join(', ')} ` +
      `(${fmt(storedMbit[0]! / (fillMs / 1000), 0)} Mbit/s)`,
  );
  // 2. At rest: ingestion stopped on the full pool.
  await sleep(1_000);
  const storeMb = ['KME_A', 'KME_B'].map((k) => Math.round(storeBytes(bigDesc, k) / 1e5) / 10);
  const memRest = memoryRow([['big', big], ['small', small]]);
  out(`  key store on disk: ${storeMb.map((m, i) => `KME_${'AB'[i]} ${m} MB`).join(', ')}`);
  out(`  memory at rest: ${describeMemory(memRest)}`);

  // 3. Restart to serving: big KME_A's keypoold (the target), and the small one's likewise for comparison. Both
  // networks' KME_A keypoolds are then fresh processes in the load phases (a restarted keypoold starts cold: in
  // trials its first enc phase ran 15-40% slower, whatever its pool; restarting only the big one would bias the
  // comparison). Before any load: after enc_keys has used keys, a pool does not get back to max_key_count.
  out('');
  out(`restart to serving, KME_A's keypoold (kme-api keeps running; polled every ${POLL_MS} ms from the spawn):`);
  const restarts: Restart[] = [];
  for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
    for (const [net, want] of [[big, BIG_KEYS], [small, smallStock]] as const) {
      const r = await restartKeypooldA(net, signal, want);
      restarts.push(r);
      out(
        `  ${r.pool.padEnd(5)} pool, ${signal}: exited in ${r.stopMs} ms${r.stopForced ? ' (forced with SIGKILL)' : ''}; from spawn: ` +
          `socket accepts ${ms(r.socketMs)}, keypoold status >= ${want} keys ${ms(r.poolMs)}, ETSI status via kme-api ${ms(r.etsiMs)}` +
          `${r.memoryAfter ? `; VmRSS then ${r.memoryAfter.vmRssMb} MB` : ''}`,
      );
      out(`    log lines, ms after the spawn: ${Object.entries(r.milestones).sort((x, y) => x[1] - y[1]).map(([k, v]) => `${k} ${v}`).join(', ')}`);
      await sleep(500);
    }
  }

  // 4. Load, in rounds: small enc, big enc, big dec, small dec; then big enc, small enc, small dec, big dec...
  const common = { clients: CLIENTS, warmupMs: WARMUP_MS, durationMs, keyBytes: KEY_BITS / 8 };
  const budget = (max: number) => Math.min(max, Math.ceil(((WARMUP_MS + durationMs) / 1000) * PLANNED_MAX_ENC_RPS));
  const encBudget = { small: budget(smallStock), big: budget(BIG_KEYS) };
  const nets = { small, big };
  const phases: Record<string, Phase> = {};
  const measured: Measured[] = [];
  const measure = async (tag: Tag, call: Call, round: number, job: Omit<LoadJob, 'label'>, title: string): Promise<Phase> => {
    const names = ['keypoold A', 'keypoold B', 'api A', 'api B'];
    const pids = names.map((n) => nets[tag].procs.get(n)?.pid);
    const before = pids.map(cpuSeconds);
    const p = await runLoad({ ...job, label: `${tag}-${call}-${round}` });
    const after = pids.map(cpuSeconds);
    const cpu = after.reduce<number>((sum, x, i) => sum + (x !== undefined && before[i] !== undefined ? x - before[i]! : 0), 0);
    const requests = p.result.requests + p.result.warmupRequests;
    phases[`${tag}-${call}-${round}`] = p;
    measured.push({ tag, call, round, result: p.result, cpuSeconds: cpu, requests });
    describePhase(`${title}${rounds > 1 && call !== 'status' ? ` (round ${round})` : ''}`, p);
    out(`    keypoold A+B and kme-api A+B used ${fmt(requests ? (cpu * 1000) / requests : undefined, 3)} ms of CPU per request`);
    return p;
  };
  const keys: Record<string, Array<[string, string]>> = {};
  const enc = async (tag: Tag, round: number) => {
    const a1 = saeTls(nets[tag].desc, 'SAE_A1');
    const p = await measure(tag, 'enc', round, {
      ...common, ...hostPort(a1.node.etsi_url), ...stripTls(a1), mode: 'enc', path: ENC_PATH, collectKeys: true, maxRequests: encBudget[tag],
    }, `${tag.padEnd(5)} pool, KME_A enc_keys`);
    keys[`${tag}-${round}`] = p.result.keys ?? [];
    delete p.result.keys;
  };
  const dec = async (tag: Tag, round: number) => {
    const list = keys[`${tag}-${round}`] ?? [];
    if (list.length === 0) {
      out(`  ${tag.padEnd(5)} pool, KME_B dec_keys: skipped, the enc phase obtained no keys`);
      const result = skipped(`${tag}-dec-${round}`, 'the enc phase obtained no keys');
      phases[`${tag}-dec-${round}`] = { result, cpuPct: {}, runQueuePct: {} };
      measured.push({ tag, call: 'dec', round, result, cpuSeconds: 0, requests: 0 });
      return;
    }
    const b1 = saeTls(nets[tag].desc, 'SAE_B1');
    const p = await measure(tag, 'dec', round, {
      ...common, ...hostPort(b1.node.etsi_url), ...stripTls(b1), mode: 'dec', path: DEC_PATH, keys: list,
    }, `${tag.padEnd(5)} pool, KME_B dec_keys`);
    out(`    fetched ${list.length - (p.result.unusedKeys ?? 0)} of the ${list.length} key_IDs from enc_keys, each once`);
  };
  const status = async (tag: Tag) => {
    const a1 = saeTls(nets[tag].desc, 'SAE_A1');
    await measure(tag, 'status', 1, { ...common, ...hostPort(a1.node.etsi_url), ...stripTls(a1), mode: 'status', path: STATUS_PATH },
      `${tag.padEnd(5)} pool, KME_A status  `);
  };
  out('');
  out(
    `measuring: ${rounds} round(s) of enc then dec, small and big pool alternately (small first in odd rounds, big first in even ones); ` +
      'then the status of the link pair, small and big (no target):',
  );
  setMeasuring(true);
  for (let round = 1; round <= rounds; round++) {
    const order: Tag[] = round % 2 === 1 ? ['small', 'big'] : ['big', 'small'];
    for (const tag of order) await enc(tag, round);
    for (const tag of [...order].reverse()) await dec(tag, round);
  }
  // 5. Memory after the enc/dec phases (then, with no target, the status of the link pair).
  const memAfter = memoryRow([['big', big], ['small', small]]);
  await status('small');
  await status('big');
  setMeasuring(false);
  out(`  memory after the enc/dec phases: ${describeMemory(memAfter)}`);

  const othersMax = Math.max(0, ...Object.values(phases).map((p) => p.machinePct?.others ?? 0));
  const quiet = othersMax <= NOISE_LIMIT_PCT;
  if (!quiet) {
    out(
      `  WARNING: the machine was not idle: processes outside this benchmark used up to ${othersMax}% of one core ` +
        `during a phase; the figures below move with that load`,
    );
  }

  // 6. Report.
  const rows = (['enc', 'dec', 'status'] as const).map((call) => {
    const small = combine(measured.filter((m) => m.tag === 'small' && m.call === call));
    const big = combine(measured.filter((m) => m.tag === 'big' && m.call === call));
    const ratio = small.rps > 0 ? big.rps / small.rps : Number.NaN;
    return { call: call === 'status' ? 'status' : `${call}_keys`, small, big, ratio };
  });
  out('');
  printLoadTable(rows, rounds);
  out('');
  printMemoryTable(memRest, memAfter);

  // Memory of the big pool's keypoolds; A's 'after' figures are of the process the SIGKILL restart started.
  const bigMem = (row: MemoryRow) => ['A', 'B'].map((k) => row[`keypoold ${k} big`]).filter((m): m is MemoryFigures => !!m);
  const allBig = [...bigMem(memRest), ...bigMem(memAfter)];
  const maxRss = allBig.length ? Math.max(...allBig.map((m) => m.vmRssMb)) : undefined;
  const maxHwm = allBig.length ? Math.max(...allBig.map((m) => m.vmHwmMb)) : undefined;
  const restartSecs = (r: Restart | undefined) => (r?.etsiMs === undefined ? undefined : r.etsiMs / 1000);
  const term = restarts.find((r) => r.pool === 'big' && r.signal === 'SIGTERM');
  const kill = restarts.find((r) => r.pool === 'big' && r.signal === 'SIGKILL');
  const targets = [
    { what: `keypoold VmRSS <= ${TARGETS.rssMb} MB (big, rest + after)`, value: maxRss, unit: 'MB', met: maxRss !== undefined && maxRss <= TARGETS.rssMb },
    { what: `keypoold VmHWM <= ${TARGETS.rssMb} MB (peak, fill incl.)`, value: maxHwm, unit: 'MB', met: maxHwm !== undefined && maxHwm <= TARGETS.rssMb },
    { what: `restart to serving, SIGTERM <= ${TARGETS.restartMs / 1000} s`, value: restartSecs(term), unit: 's', met: (term?.etsiMs ?? Infinity) <= TARGETS.restartMs },
    { what: `restart to serving, SIGKILL <= ${TARGETS.restartMs / 1000} s`, value: restartSecs(kill), unit: 's', met: (kill?.etsiMs ?? Infinity) <= TARGETS.restartMs },
    ...rows
      .filter((r) => r.call !== 'status')
      .map((r) => ({ what: `${r.call} rps big/small >= ${TARGETS.ratio}`, value: r.ratio, unit: '', met: r.ratio >= TARGETS.ratio })),
  ];
  out('');
  out('targets:');
  for (const t of targets) {
    const v = t.value === undefined || !Number.isFinite(t.value) ? '-' : t.unit === 'MB' ? t.value.toFixed(1) : t.value.toFixed(2);
    out(`  ${t.what.padEnd(44)} ${pad(`${v}${t.unit ? ` ${t.unit}` : ''}`, 10)}   ${t.met ? 'PASS' : 'MISS'}`);
  }

  const all = Object.values(phases).map((p) => p.result);
  const errors = all.reduce((s, r) => s + r.errors, 0);
  const mismatches = all.reduce((s, r) => s + r.mismatches, 0);
  const empty = all.filter((r) => r.latencyMs === null).map((r) => r.label);
  const restartFailed = restarts.filter((r) => r.etsiMs === undefined).map((r) => `${r.signal} (${r.pool} pool)`);
  if (logIssueTotal() > 0) {
    out('');
    out(`server log: ${logIssueTotal()} warn/error lines while measuring, first ones:`);
    for (const l of logIssues) out(`  ${l}`);
  }
  const ok = errors === 0 && mismatches === 0 && empty.length === 0 && restartFailed.length === 0;
  out('');
  if (ok) out('measurement OK (exit 0; a target missed is a finding, not a failure)');
  else {
    out(
      `measurement FAILED: ${errors} request errors, ${mismatches} key mismatches` +
        `${empty.length ? `, no successful measured request in ${empty.join(', ')}` : ''}` +
        `${restartFailed.length ? `, not serving within ${RESTART_TIMEOUT_MS / 1000} s after ${restartFailed.join(', ')}` : ''}`,
    );
  }

  const round = (x: number | undefined, d = 3) => (x === undefined || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
  const report = {
    when: new Date().toISOString(),
    ok,
    ...machineFacts(),
    other_node_processes_at_start: othersAtStart,
    machine_quiet: quiet,
    other_processes_max_pct_of_core: othersMax,
    clients: CLIENTS,
    warmup_seconds: WARMUP_MS / 1000,
    seconds,
    rate_bps: RATE_BPS,
    key_bits: KEY_BITS,
    small: { stored_keys_at_start: smallStock, enc_key_budget: encBudget.small },
    big: {
      max_key_count: BIG_KEYS,
      stored_keys_at_start: bigStock,
      enc_key_budget: encBudget.big,
      fill: { method: 'qkd-sim process -> socat pty -> serial driver -> keypoold ingestion', ms: fillMs, stored_mbit: storedMbit, blocks: diag.map((d) => d.blocks) },
      store_mb: storeMb,
    },
    memory_mb: { at_rest: memRest, after_enc_dec: memAfter },
    restarts,
    rounds,
    table: rows.map((r) => ({
      call: r.call,
      small_rps: round(r.small.rps, 1),
      big_rps: round(r.big.rps, 1),
      ratio: round(r.ratio),
      small_p50_ms: round(r.small.p50),
      small_p99_ms: round(r.small.p99),
      big_p50_ms: round(r.big.p50),
      big_p99_ms: round(r.big.p99),
      small_cpu_ms_per_request: round(r.small.cpuMsPerRequest),
      big_cpu_ms_per_request: round(r.big.cpuMsPerRequest),
      errors: r.small.errors + r.big.errors,
    })),
    targets: targets.map((t) => ({ what: t.what, value: round(t.value), unit: t.unit, met: t.met })),
    phases,
    server_log_issues: { count: logIssueTotal(), first: logIssues },
  };
  const reportFile = join(ROOT, 'var', 'bench', 'last-bigpool.json');
  mkdirSync(dirname(reportFile), { recursive: true });
  writeFileSync(reportFile, JSON.stringify(report, null, 2) + '\n');
  out(`results written to var/bench/last-bigpool.json (${((Date.now() - startedAt) / 1000).toFixed(1)} s in all)`);
  return ok ? 0 : 1;
}

function describeMemory(row: MemoryRow): string {
  return Object.entries(row)
    .map(([k, m]) => `${k} ${m ? `${m.vmRssMb} MB (peak ${m.vmHwmMb})` : '-'}`)
    .join(', ');
}

function printLoadTable(rows: Array<{ call: string; small: Combined; big: Combined; ratio: number }>, rounds: number): void {
  const head = ['call', 'small rps', 'big rps', 'big/small', 'small p50', 'small p99', 'big p50', 'big p99', 'CPU/req S', 'CPU/req B', 'errors'];
  const w = [9, 11, 10, 10, 10, 10, 9, 9, 10, 10, 7];
  out(head.map((h, i) => (i === 0 ? h.padEnd(w[i]!) : pad(h, w[i]!))).join(''));
  for (const r of rows) {
    const cells = [
      r.call.padEnd(w[0]!),
      fmt(r.small.rps),
      fmt(r.big.rps),
      fmt(r.ratio, 2),
      fmt(r.small.p50, 2),
      fmt(r.small.p99, 2),
      fmt(r.big.p50, 2),
      fmt(r.big.p99, 2),
      fmt(r.small.cpuMsPerRequest, 3),
      fmt(r.big.cpuMsPerRequest, 3),
      String(r.small.errors + r.big.errors),
    ];
    out(cells.map((c, i) => (i === 0 ? c : pad(c, w[i]!))).join(''));
  }
  out(
    `(rps: 200 responses per second over the measured windows of ${rounds} round(s); p50/p99 in ms, mean over rounds; ` +
      'CPU/req: ms of CPU keypoold A+B and kme-api A+B used per request, warm-up included, less moved by other load than rps; ' +
      'errors: non-200/failed/mismatched requests; status: of the link pair, no target)',
  );
}

function printMemoryTable(rest: MemoryRow, after: MemoryRow): void {
  out('memory, MB         at rest (full pool)   after enc/dec');
  out('                    VmRSS    VmHWM        VmRSS    VmHWM');
  for (const k of Object.keys(rest)) {
    const a = rest[k];
    const b = after[k];
    out(
      `${k.padEnd(18)}${pad(fmt(a?.vmRssMb), 7)}  ${pad(fmt(a?.vmHwmMb), 7)}      ${pad(fmt(b?.vmRssMb), 7)}  ${pad(fmt(b?.vmHwmMb), 7)}`,
    );
  }
  out("(VmHWM: the peak since the process started; 'after' of keypoold A is the process the SIGKILL restart started)");
}

async function main(): Promise<void> {
  installSignalHandlers();
  let code = 1;
  try {
    code = await bench();
  } catch (e) {
    const err = e as Error;
    if (wasInterrupted()) return; // the signal handler stops everything and exits 130
    const plain = err instanceof BenchError || err.constructor === Error;
    process.stderr.write(`\nbig-pool benchmark set-up/run failed: ${plain ? err.message : err.stack ?? err.message}\n`);
    if (logIssues.length > 0) process.stderr.write(`server log warnings/errors:\n${logIssues.map((l) => `  ${l}`).join('\n')}\n`);
    code = 1;
  } finally {
    await cleanup();
  }
  process.exit(code);
}

void main();
