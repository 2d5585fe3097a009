/**
 * `npm run bench`: throughput and latency of the ETSI GS QKD 014 API of a
 * two-node demo network, against a bare HTTPS server with the same TLS set-up.
 *
 *   node dist/scripts/bench.js          (BENCH_SECONDS=5 by default)
 *
 * 1. prepares a throw-away demo network in a fresh temp folder (free ports,
 *    50 Mbit/s simulated link), starts its four daemons and waits until
 *    KME_A holds enough keys for the enc phase;
 * 2. starts scripts/bench-bare.js (kme-api's TLS settings, no work);
 * 3. runs scripts/bench-load.js (16 keep-alive mTLS clients, its own process)
 *    four times: bare enc-shaped, KME_A enc_keys, bare dec-shaped, KME_B
 *    dec_keys of every key_ID the enc phase got (key bytes must match);
 * 4. prints a table, writes var/bench/last.json.
 *
 * Exit 0 when the measurement ran cleanly (whether or not the targets are
 * met), 1 on request errors, key mismatches or a set-up failure, 130 when
 * interrupted. Every child process is stopped and the temp folder removed.
 */
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadConfig } from '../src/common/config.js';
import type { DemoDescription, DemoNode } from '../src/demo/description.js';
import { isInside } from '../src/demo/files.js';
import { prepareDemo } from '../src/demo/prepare.js';
import { freePorts } from '../src/demo/ports.js';
import { startProcess, type ManagedProcess, type ReadyTarget } from '../src/demo/processes.js';
import type { LoadJob, LoadResult } from './bench-types.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const CLIENTS = 16;
const WARMUP_MS = 1_000;
/** Simulated secret key rate: enough to refill what 5,000 enc_keys/s consume, in both directions. */
const RATE_BPS = 4_000_000;
const KEY_BITS = 256;
/** Upper bound on the enc rate we plan keys for; the enc phase stops if it uses them all. */
const PLANNED_MAX_ENC_RPS = 5_000;
const STOCK_TIMEOUT_MS = 60_000;
const READY_TIMEOUT_MS = 20_000;
/** Above this % of one core used by processes outside the benchmark, the run is flagged as noisy. */
const NOISE_LIMIT_PCT = 20;
const TARGETS = { encRatio: 0.5, decRatio: 0.6, p99Ms: 25 };
/** Ports other people's runs use: never take them. */

const ENC_PATH = '/api/v1/keys/SAE_B1/enc_keys?number=1&size=256';
const DEC_PATH = '/api/v1/keys/SAE_A1/dec_keys?key_ID=';
const STATUS_PATH = '/api/v1/keys/SAE_A2/status';

const out = (line = '') => process.stdout.write(line + '\n');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

class BenchError extends Error {}

// ---------------------------------------------------------------- children

interface Child {
  proc: ManagedProcess;
  /** Short name for tables: "api A", "keypoold B", "bare", "load". */
  short: string;
  server: boolean;
}

const children: Child[] = [];
let stopping = false;
/** Server warnings are collected only while measuring (start-up ones, e.g. "master key kept in a file", are expected). */
let measuring = false;
let interrupted = false;
const logIssues: string[] = [];
let logIssueCount = 0;

/** BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") is given to every server process, for profiling. */
const extraNodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

function start(argv: string[], name: string, short: string, server: boolean, onStdout?: (line: string) => void): ManagedProcess {
  if (server && argv[0] === 'node') argv = ['node', ...extraNodeArgs, ...argv.slice(1)];
  const proc = startProcess(argv, {
    cwd: ROOT,
    name,
    ownProcessGroup: true, // Ctrl-C reaches only us; we stop the children in order
    keepLines: 100,
    onLine: (line, stream) => {
      if (stream === 'stdout' && onStdout) onStdout(line);
      if (server) noteLogLine(name, line);
    },
  });
  children.push({ proc, short, server });
  return proc;
}

/** Remember warn/error/fatal pino lines (level >= 40) of the servers. */
function noteLogLine(name: string, line: string): void {
  const m = /"level":(\d+)/.exec(line);
  if (!measuring || !m || Number(m[1]) < 40) return;
  logIssueCount++;
  if (logIssues.length < 10) logIssues.push(`${name}: ${line.slice(0, 400)}`);
}

/** Rejects as soon as one of the server processes exits while we are not stopping them. */
function serverDeath(): Promise<never> {
  return new Promise((_, reject) => {
    for (const c of children.filter((x) => x.server)) {
      void c.proc.exited.then(() => {
        if (!stopping) reject(new BenchError(`server process died during the benchmark: ${c.proc.describeExit()}`));
      });
    }
  });
}

let cleanupPromise: Promise<void> | undefined;
let tempDir: string | undefined;
const extraDirs: string[] = [];

function removeTemp(): void {
  for (const d of [tempDir, ...extraDirs]) {
    if (d) rmSync(d, { recursive: true, force: true });
  }
}

/** Stop load generators and the bare server, then the API servers, then keypoold; remove the temp folder. */
function cleanup(): Promise<void> {
  cleanupPromise ??= (async () => {
    stopping = true;
    const byKind = (test: (c: Child) => boolean) => children.filter(test).map((c) => c.proc.stop({ graceMs: 5_000 }));
    await Promise.all(byKind((c) => !c.server || c.short === 'bare'));
    await Promise.all(byKind((c) => c.short.startsWith('api')));
    await Promise.all(byKind((c) => c.short.startsWith('keypoold')));
    removeTemp();
  })();
  return cleanupPromise;
}

function installSignalHandlers(): void {
  let signalled = false;
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      process.stderr.write(`${sig} again: killing every benchmark process now\n`);
      for (const c of children) c.proc.kill('SIGKILL');
      removeTemp();
      process.exit(130);
    }
    signalled = true;
    interrupted = true;
    process.stderr.write(`\n${sig}: stopping the benchmark processes (again to kill them at once)\n`);
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

// ---------------------------------------------------------------- CPU accounting

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) a running process has used so far, or undefined (not Linux, gone). */
function cpuSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return undefined;
  }
}

/** Machine-wide busy and iowait CPU seconds so far (all cores), from /proc/stat; undefined off Linux. */
function machineCpu(): { busy: number; iowait: number } | undefined {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const [user = 0, nice = 0, system = 0, , iowait = 0, irq = 0, softirq = 0, steal = 0] = f;
    return { busy: (user + nice + system + irq + softirq + steal) / CLK_TCK, iowait: iowait / CLK_TCK };
  } catch {
    return undefined;
  }
}

/** Seconds the main (JavaScript) thread of a process spent runnable but waiting for a CPU (/proc/<pid>/schedstat). */
function runQueueSeconds(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const f = readFileSync(`/proc/${pid}/schedstat`, 'utf8').trim().split(/\s+/);
    const ns = Number(f[1]);
    return Number.isFinite(ns) ? ns / 1e9 : undefined;
  } catch {
    return undefined;
  }
}

function cpuSnapshot(): Map<string, { cpu: number; wait: number | undefined }> {
  const m = new Map<string, { cpu: number; wait: number | undefined }>();
  for (const c of children) {
    if (!c.server || !c.proc.running) continue;
    const cpu = cpuSeconds(c.proc.pid);
    if (cpu !== undefined) m.set(c.short, { cpu, wait: runQueueSeconds(c.proc.pid) });
  }
  return m;
}

// ---------------------------------------------------------------- helpers

interface ClientTls {
  cert: string;
  key: string;
  ca: string;
}

function getJson(host: string, port: number, path: string, tls: ClientTls): Promise<{ status: number; body: unknown }> {
  return new Promise((resolvePromise, reject) => {
    const req = request(
      {
        host,
        port,
        path,
        method: 'GET',
        agent: false,
        cert: readFileSync(tls.cert),
        key: readFileSync(tls.key),
        ca: readFileSync(tls.ca),
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let body: unknown = text;
          try {
            body = JSON.parse(text);
          } catch {
            /* keep the text */
          }
          resolvePromise({ status: res.statusCode ?? 0, body });
        });
        res.on('error', reject);
      },
    );
    req.setTimeout(5_000, () => req.destroy(new Error('no answer within 5 s')));
    req.on('error', reject);
    req.end();
  });
}

const abs = (p: string) => resolve(ROOT, p);

function saeTls(desc: DemoDescription, sae: string): ClientTls & { node: DemoNode } {
  for (const node of desc.nodes) {
    const s = node.saes.find((x) => x.sae_id === sae);
    if (s) return { node, cert: abs(s.cert), key: abs(s.key), ca: abs(desc.api_ca_cert || desc.ca_cert) };
  }
  throw new BenchError(`the demo network has no ${sae}`);
}

function hostPort(etsiUrl: string): { host: string; port: number } {
  const u = new URL(etsiUrl);
  return { host: u.hostname, port: Number(u.port) };
}

// ---------------------------------------------------------------- steps

async function startNetwork(desc: DemoDescription): Promise<void> {
  // The simulated QKD link, then keypoold of both nodes (kme-api talks to it), then both kme-api.
  const sim = start(desc.qkd_sim.argv, desc.qkd_sim.name, 'qkd-sim', true);
  const simReady = desc.qkd_sim.ready;
  await sim.waitUntilReady('unix_socket' in simReady ? { unix_socket: abs(simReady.unix_socket) } : simReady, READY_TIMEOUT_MS);
  for (const stage of ['kme-keypoold', 'kme-api'] as const) {
    const started: Array<{ proc: ManagedProcess; ready: ReadyTarget }> = [];
    for (const node of desc.nodes) {
      const p = node.processes.find((x) => x.name === stage);
      if (!p) throw new BenchError(`demo.json: ${node.kme_id} has no ${stage}`);
      const short = `${stage === 'kme-api' ? 'api' : 'keypoold'} ${node.kme_id.replace(/^KME_/, '')}`;
      const proc = start(p.argv, `${node.kme_id} ${p.name}`, short, true);
      const ready: ReadyTarget = 'unix_socket' in p.ready ? { unix_socket: abs(p.ready.unix_socket) } : p.ready;
      started.push({ proc, ready });
    }
    for (const s of started) await s.proc.waitUntilReady(s.ready, READY_TIMEOUT_MS);
  }
}

interface StatusBody {
  stored_key_count: number;
  max_key_count: number;
}

/**
 * Poll KME_A's status for SAE_A1 -> SAE_B1 (the ETSI API, as SAE_A1) until
 * `enough` accepts the answer; fails after STOCK_TIMEOUT_MS naming the last answer.
 */
async function waitForStatus(desc: DemoDescription, what: string, enough: (s: StatusBody) => boolean): Promise<StatusBody> {
  const tls = saeTls(desc, 'SAE_A1');
  const { host, port } = hostPort(tls.node.etsi_url);
  const deadline = Date.now() + STOCK_TIMEOUT_MS;
  let last = 'no answer yet';
  for (;;) {
    try {
      const r = await getJson(host, port, '/api/v1/keys/SAE_B1/status', tls);
      const body = r.body as Partial<StatusBody>;
      if (r.status === 200 && typeof body.stored_key_count === 'number' && typeof body.max_key_count === 'number') {
        const st = { stored_key_count: body.stored_key_count, max_key_count: body.max_key_count };
        if (enough(st)) return st;
        last = `stored_key_count ${st.stored_key_count}`;
      } else {
        last = `HTTP ${r.status} ${JSON.stringify(r.body).slice(0, 300)}`;
      }
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() >= deadline) {
      throw new BenchError(
        `KME_A status for SAE_A1 -> SAE_B1: ${what} not reached within ${STOCK_TIMEOUT_MS / 1000} s (last: ${last})`,
      );
    }
    await sleep(200);
  }
}

async function startBare(desc: DemoDescription): Promise<number> {
  const node = desc.nodes[0]!;
  const cfg = loadConfig(abs(node.config));
  const args = { host: cfg.api.host, port: 0, cert: cfg.api.tls.cert, key: cfg.api.tls.key, ca: cfg.api.tls.ca };
  let announce!: (port: number) => void;
  const announced = new Promise<number>((r) => (announce = r));
  const proc = start(['node', 'dist/scripts/bench-bare.js', JSON.stringify(args)], 'bench-bare', 'bare', true, (line) => {
    try {
      const port = (JSON.parse(line) as { port?: unknown }).port;
      if (typeof port === 'number') announce(port);
    } catch {
      /* not the announcement */
    }
  });
  const timeout = sleep(READY_TIMEOUT_MS).then(() => {
    throw new BenchError(`bench-bare did not start listening within ${READY_TIMEOUT_MS / 1000} s`);
  });
  const died = proc.exited.then(() => {
    throw new BenchError(`bench-bare ${proc.describeExit()}`);
  });
  return Promise.race([announced, timeout, died]);
}

interface Phase {
  result: LoadResult;
  /** % of one core each server process (and the load generator) used during the phase. */
  cpuPct: Record<string, number>;
  /** % of the phase each server's main thread was runnable but waiting for a CPU (contention). */
  runQueuePct: Record<string, number>;
  /** Whole machine during the phase, % of one core: busy, busy outside our processes, waiting for I/O. */
  machinePct?: { busy: number; others: number; iowait: number };
}

async function runLoad(job: LoadJob): Promise<Phase> {
  const file = join(tempDir!, `job-${job.label}.json`);
  writeFileSync(file, JSON.stringify(job));
  let line: string | undefined;
  const before = cpuSnapshot();
  const machineBefore = machineCpu();
  const t0 = Date.now();
  const proc = start(['node', 'dist/scripts/bench-load.js', file], `bench-load ${job.label}`, 'load', false, (l) => {
    if (l.startsWith('{')) line = l;
  });
  const limitMs = job.warmupMs + job.durationMs + 30_000;
  const timeout = sleep(limitMs).then(() => {
    throw new BenchError(`bench-load ${job.label} did not finish within ${limitMs / 1000} s`);
  });
  const exit = await Promise.race([proc.exited, serverDeath(), timeout]);
  const wall = (Date.now() - t0) / 1000;
  const after = cpuSnapshot();
  const machineAfter = machineCpu();
  if (exit.code !== 0 || line === undefined) throw new BenchError(`bench-load ${job.label} failed: ${proc.describeExit()}`);
  const result = JSON.parse(line) as LoadResult;
  const cpuPct: Record<string, number> = {};
  const runQueuePct: Record<string, number> = {};
  for (const [k, v] of after) {
    const b = before.get(k);
    if (b === undefined) continue;
    cpuPct[k] = Math.round(((v.cpu - b.cpu) / wall) * 100);
    if (v.wait !== undefined && b.wait !== undefined) runQueuePct[k] = Math.round(((v.wait - b.wait) / wall) * 100);
  }
  cpuPct.load = Math.round((result.cpuSeconds / wall) * 100);
  const phase: Phase = { result, cpuPct, runQueuePct };
  if (machineBefore && machineAfter) {
    const busy = Math.round(((machineAfter.busy - machineBefore.busy) / wall) * 100);
    const ours = Object.values(cpuPct).reduce((a, b) => a + b, 0);
    const iowait = Math.round(((machineAfter.iowait - machineBefore.iowait) / wall) * 100);
    phase.machinePct = { busy, others: Math.max(0, busy - ours), iowait };
  }
  return phase;
}

function skipped(label: string, why: string): LoadResult {
  return {
    label, ok: false, requests: 0, warmupRequests: 0, seconds: 0, rps: 0, latencyMs: null, errors: 0, errorSamples: [],
    mismatches: 0, mismatchSamples: [], connections: 0, stoppedEarly: `skipped: ${why}`, cpuSeconds: 0,
  };
}

function describePhase(name: string, p: Phase): void {
  const r = p.result;
  const lat = r.latencyMs ? `p50 ${r.latencyMs.p50} ms, p99 ${r.latencyMs.p99} ms` : 'no latency';
  const cpu = Object.entries(p.cpuPct)
    .filter(([k, v]) => v > 0 || k === 'load')
    .map(([k, v]) => `${k} ${v}%${p.runQueuePct[k] ? ` (+${p.runQueuePct[k]}% waiting)` : ''}`)
    .join(', ');
  out(
    `  ${name}: ${r.rps} req/s over ${r.seconds} s (${r.requests} measured + ${r.warmupRequests} warm-up), ${lat}, ` +
      `errors ${r.errors}, connections ${r.connections}${r.stoppedEarly ? `, stopped early: ${r.stoppedEarly}` : ''}`,
  );
  const m = p.machinePct;
  const machine = m ? `; machine busy ${m.busy}% (other processes ${m.others}%), iowait ${m.iowait}%` : '';
  out(`    CPU, % of one core (+ % of the time its main thread waited for a CPU): ${cpu}${machine}`);
  for (const e of r.errorSamples) out(`    error: ${e}`);
  for (const m of r.mismatchSamples) out(`    MISMATCH: ${m}`);
}

// ---------------------------------------------------------------- report

const fmt = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));
const pad = (s: string, n: number) => s.padStart(n);

interface Row {
  call: 'enc_keys' | 'dec_keys';
  bare: LoadResult;
  kme: LoadResult;
  ratio: number;
}

const row = (call: Row['call'], bare: LoadResult, kme: LoadResult): Row => ({ call, bare, kme, ratio: kme.rps / bare.rps });

function printTable(rows: Row[]): Array<{ what: string; value: number | undefined; limit: string; met: boolean }> {
  const head = ['call', 'bare rps', 'KME rps', 'KME/bare', 'KME p50', 'KME p99', 'bare p50', 'bare p99', 'errors'];
  const w = [9, 10, 10, 9, 9, 9, 9, 9, 11];
  out(head.map((h, i) => (i === 0 ? h.padEnd(w[i]!) : pad(h, w[i]!))).join(''));
  for (const r of rows) {
    const cells = [
      r.call.padEnd(w[0]!),
      fmt(r.bare.rps),
      fmt(r.kme.rps),
      fmt(r.ratio, 2),
      fmt(r.kme.latencyMs?.p50, 2),
      fmt(r.kme.latencyMs?.p99, 2),
      fmt(r.bare.latencyMs?.p50, 2),
      fmt(r.bare.latencyMs?.p99, 2),
      `${r.kme.errors + r.kme.mismatches}${r.bare.errors + r.bare.mismatches ? `/${r.bare.errors + r.bare.mismatches}b` : ''}`,
    ];
    out(cells.map((c, i) => (i === 0 ? c : pad(c, w[i]!))).join(''));
  }
  out('(rps: 200 responses per second; latencies in ms; errors: KME non-200/failed/mismatched requests)');
  const enc = rows.find((r) => r.call === 'enc_keys')!;
  const dec = rows.find((r) => r.call === 'dec_keys')!;
  const targets = [
    { what: 'enc_keys KME/bare >= 0.5', value: enc.ratio, limit: `>= ${TARGETS.encRatio}`, met: enc.ratio >= TARGETS.encRatio },
    { what: 'dec_keys KME/bare >= 0.6', value: dec.ratio, limit: `>= ${TARGETS.decRatio}`, met: dec.ratio >= TARGETS.decRatio },
    ...[enc, dec].map((r) => {
      const p99 = r.kme.latencyMs?.p99;
      const met = p99 !== undefined && p99 <= TARGETS.p99Ms;
      return { what: `${r.call} KME p99 <= ${TARGETS.p99Ms} ms`, value: p99, limit: `<= ${TARGETS.p99Ms} ms`, met };
    }),
  ];
  out('');
  out('targets:');
  for (const t of targets) out(`  ${t.what.padEnd(26)} ${pad(fmt(t.value, 2), 8)}   ${t.met ? 'met' : 'NOT met'}`);
  return targets;
}

// ---------------------------------------------------------------- main

async function bench(): Promise<number> {
  const startedAt = Date.now();
  const seconds = Number(process.env.BENCH_SECONDS ?? '5');
  if (!(seconds > 0) || !Number.isFinite(seconds)) {
    throw new BenchError(`BENCH_SECONDS must be a positive number, got ${process.env.BENCH_SECONDS}`);
  }
  const durationMs = Math.round(seconds * 1000);

  const [apiA, apiB, peerA, peerB] = await freePorts(4);
  tempDir = mkdtempSync(join(tmpdir(), 'kme-bench-'));
  out(
    `benchmark: ${CLIENTS} clients, ${WARMUP_MS / 1000} s warm-up + ${seconds} s per phase, ${cpus().length} CPUs, ` +
      `node ${process.version}, load average ${loadavg()[0]!.toFixed(2)}`,
  );
  out(`preparing a demo network in ${tempDir} (API ports ${apiA}/${apiB}, peer ports ${peerA}/${peerB}, ${RATE_BPS / 1e6} Mbit/s)`);
  const desc = await prepareDemo(ROOT, { dir: tempDir, apiPorts: [apiA!, apiB!], peerPorts: [peerA!, peerB!], rateBps: RATE_BPS });
  for (const n of desc.notes) out(`  note: ${n}`);
  for (const node of desc.nodes) {
    // A keypoold socket too long for its node folder lives in a folder of its own under the OS temp folder.
    const sock = abs(node.keypoold_socket);
    if (!isInside(tempDir, sock) && basename(dirname(sock)).startsWith('kme-demo-')) extraDirs.push(dirname(sock));
  }

  // The bare server is measured first, on a quiet machine: the KME network is not started yet.
  const barePort = await startBare(desc);
  const a1 = saeTls(desc, 'SAE_A1');
  const b1 = saeTls(desc, 'SAE_B1');
  const common = { clients: CLIENTS, warmupMs: WARMUP_MS, durationMs, keyBytes: KEY_BITS / 8 };
  const kmeA = hostPort(a1.node.etsi_url);
  const kmeB = hostPort(b1.node.etsi_url);
  const bare = { host: kmeA.host, port: barePort };
  const strip = (t: ClientTls & { node: DemoNode }): ClientTls => ({ cert: t.cert, key: t.key, ca: t.ca });

  out('');
  out('measuring:');
  measuring = true;
  const phases: Record<string, Phase> = {};
  phases.bareEnc = await runLoad({ ...common, ...bare, ...strip(a1), label: 'bare-enc', mode: 'enc', path: ENC_PATH });
  describePhase('(a) bare, enc-shaped ', phases.bareEnc);
  phases.bareDec = await runLoad({ ...common, ...bare, ...strip(b1), label: 'bare-dec', mode: 'dec', path: DEC_PATH });
  describePhase('(c) bare, dec-shaped ', phases.bareDec);
  measuring = false;

  // Then the KME network, measured once its pools are full (ingestion then only refills what is used).
  await startNetwork(desc);
  const first = await waitForStatus(desc, 'an answer', () => true);
  const encBudget = Math.min(first.max_key_count, Math.ceil(((WARMUP_MS + durationMs) / 1000) * PLANNED_MAX_ENC_RPS));
  const t0 = Date.now();
  const stock = (await waitForStatus(desc, `stored_key_count = max_key_count`, (s) => s.stored_key_count >= s.max_key_count))
    .stored_key_count;
  out(
    `network up in ${((Date.now() - startedAt) / 1000).toFixed(1)} s; KME_A holds ${stock} keys for SAE_A1 -> SAE_B1 ` +
      `(waited ${((Date.now() - t0) / 1000).toFixed(1)} s for a full pool)`,
  );
  measuring = true;
  phases.kmeEnc = await runLoad({
    ...common, ...kmeA, ...strip(a1), label: 'kme-enc', mode: 'enc', path: ENC_PATH, collectKeys: true, maxRequests: encBudget,
  });
  describePhase('(b) KME_A enc_keys   ', phases.kmeEnc);
  const keys = phases.kmeEnc.result.keys ?? [];
  delete phases.kmeEnc.result.keys;
  if (keys.length > 0) {
    phases.kmeDec = await runLoad({ ...common, ...kmeB, ...strip(b1), label: 'kme-dec', mode: 'dec', path: DEC_PATH, keys });
    describePhase('(d) KME_B dec_keys   ', phases.kmeDec);
    const used = keys.length - (phases.kmeDec.result.unusedKeys ?? 0);
    out(`  dec_keys fetched ${used} of the ${keys.length} key_IDs from enc_keys, each once`);
  } else {
    out('  (d) KME_B dec_keys    skipped: the enc phase obtained no keys');
    phases.kmeDec = { result: skipped('kme-dec', 'the enc phase obtained no keys'), cpuPct: {}, runQueuePct: {} };
  }

  // The floor of the two-process path: kme-api and keypoold with no key work (status of a same-node pair).
  phases.kmeStatus = await runLoad({ ...common, ...kmeA, ...strip(a1), label: 'kme-status', mode: 'status', path: STATUS_PATH });
  describePhase('(e) KME_A status     ', phases.kmeStatus);

  measuring = false;
  const othersMax = Math.max(0, ...Object.values(phases).map((p) => p.machinePct?.others ?? 0));
  const quiet = othersMax <= NOISE_LIMIT_PCT;
  if (!quiet) {
    out(
      `  WARNING: the machine was not idle: processes outside this benchmark used up to ${othersMax}% of one core ` +
        `during a phase; the figures below move with that load`,
    );
  }

  const rows: Row[] = [
    row('enc_keys', phases.bareEnc.result, phases.kmeEnc.result),
    row('dec_keys', phases.bareDec.result, phases.kmeDec.result),
  ];
  out('');
  const floor = phases.kmeStatus.result.rps && phases.bareEnc.result.rps ? phases.kmeStatus.result.rps / phases.bareEnc.result.rps : undefined;
  out(`floor: status of a same-node pair (kme-api + keypoold, no key work) ${phases.kmeStatus.result.rps?.toFixed(1)} req/s, ${floor?.toFixed(2)} of the bare server`);
  const targets = printTable(rows).map((t) => ({ ...t, value: t.value === undefined ? null : Math.round(t.value * 1000) / 1000 }));

  const all = Object.values(phases).map((p) => p.result);
  const errors = all.reduce((s, r) => s + r.errors, 0);
  const mismatches = all.reduce((s, r) => s + r.mismatches, 0);
  const empty = all.filter((r) => r.latencyMs === null).map((r) => r.label);
  if (logIssueCount > 0) {
    out('');
    out(`server log: ${logIssueCount} warn/error lines while measuring, first ones:`);
    for (const l of logIssues) out(`  ${l}`);
  }
  const ok = errors === 0 && mismatches === 0 && empty.length === 0;
  out('');
  if (ok) out('measurement OK (exit 0; a target not met is a finding, not a failure)');
  else {
    out(
      `measurement FAILED: ${errors} request errors, ${mismatches} key mismatches` +
        `${empty.length ? `, no successful measured request in ${empty.join(', ')}` : ''}`,
    );
  }

  const report = {
    when: new Date().toISOString(),
    ok,
    node: process.version,
    cpus: cpus().length,
    cpu_model: cpus()[0]?.model,
    machine_quiet: quiet,
    other_processes_max_pct_of_core: othersMax,
    loadavg_1min_at_end: Math.round(loadavg()[0]! * 100) / 100,
    clients: CLIENTS,
    warmup_seconds: WARMUP_MS / 1000,
    seconds,
    rate_bps: RATE_BPS,
    enc_key_budget: encBudget,
    stored_keys_at_start: stock,
    table: rows.map((r) => ({
      call: r.call,
      bare_rps: r.bare.rps,
      kme_rps: r.kme.rps,
      ratio: Math.round(r.ratio * 1000) / 1000,
      kme_p50_ms: r.kme.latencyMs?.p50 ?? null,
      kme_p99_ms: r.kme.latencyMs?.p99 ?? null,
      bare_p50_ms: r.bare.latencyMs?.p50 ?? null,
      bare_p99_ms: r.bare.latencyMs?.p99 ?? null,
      kme_errors: r.kme.errors,
      kme_mismatches: r.kme.mismatches,
      bare_errors: r.bare.errors,
    })),
    targets,
    phases,
    server_log_issues: { count: logIssueCount, first: logIssues },
  };
  const reportFile = join(ROOT, 'var', 'bench', 'last.json');
  mkdirSync(dirname(reportFile), { recursive: true });
  writeFileSync(reportFile, JSON.stringify(report, null, 2) + '\n');
  out(`results written to var/bench/last.json (${((Date.now() - startedAt) / 1000).toFixed(1)} s in all)`);
  return ok ? 0 : 1;
}

async function main(): Promise<void> {
  installSignalHandlers();
  let code = 1;
  try {
    code = await bench();
  } catch (e) {
    const err = e as Error;
    if (interrupted) return; // the signal handler stops everything and exits 130
    const plain = err instanceof BenchError || err.constructor === Error;
    process.stderr.write(`\nbenchmark set-up/run failed: ${plain ? err.message : err.stack ?? err.message}\n`);
    if (logIssues.length > 0) process.stderr.write(`server log warnings/errors:\n${logIssues.map((l) => `  ${l}`).join('\n')}\n`);
    code = 1;
  } finally {
    await cleanup();
  }
  process.exit(code);
}

void main();
