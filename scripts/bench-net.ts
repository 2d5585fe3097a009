/**
 * What the benchmarks that run a throw-away demo network share
 * (scripts/bench.ts, scripts/bench-bigpool.ts): the demo network in a temp
 * folder, starting and stopping its processes (in their own process groups,
 * stopped in order, also on Ctrl-C), waiting for the pool via the ETSI status
 * call, running scripts/bench-load.js with CPU accounting, and reporting a phase.
 *
 * One benchmark per process: the state below (children, temp folders, the
 * "measuring" flag) is module-wide.
 */
import { cpus, loadavg } from 'node:os';
import { execFileSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { DemoDescription, DemoNode } from '../src/demo/description.js';
import { isInside } from '../src/demo/files.js';
import { prepareDemo, type PrepareOptions } from '../src/demo/prepare.js';
import { startProcess, withNodeArgs, type ManagedProcess, type ReadyTarget } from '../src/demo/processes.js';
import type { LoadJob, LoadResult } from './bench-types.js';

export const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
export const READY_TIMEOUT_MS = 20_000;
export const STOCK_TIMEOUT_MS = 60_000;

/** The load both ETSI benches put on a node: 16 keep-alive mTLS clients, a 1 s warm-up, 256-bit keys. */
export const CLIENTS = 16;
export const WARMUP_MS = 1_000;
export const KEY_BITS = 256;
/** Upper bound on the enc rate keys are planned for; an enc phase stops if it uses them all. */
export const PLANNED_MAX_ENC_RPS = 5_000;
/** Above this % of one core used by processes outside the benchmark, the run is flagged as noisy. */
export const NOISE_LIMIT_PCT = 20;
export const ENC_PATH = '/api/v1/keys/SAE_B1/enc_keys?number=1&size=256';
export const DEC_PATH = '/api/v1/keys/SAE_A1/dec_keys?key_ID=';

export const out = (line = '') => process.stdout.write(line + '\n');
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class BenchError extends Error {}

// ---------------------------------------------------------------- children

export interface Child {
  proc: ManagedProcess;
  /** Short name for tables: "api A", "keypoold B", "bare", "load" (+ a network's tag). */
  short: string;
  server: boolean;
}

export const children: Child[] = [];
let stopping = false;
/** Server warnings are collected only while measuring (start-up ones, e.g. "master key kept in a file", are expected). */
let measuring = false;
let interrupted = false;
export const logIssues: string[] = [];
let logIssueCount = 0;

export const setMeasuring = (on: boolean) => void (measuring = on);
export const wasInterrupted = () => interrupted;
export const logIssueTotal = () => logIssueCount;

/** BENCH_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") is given to every server process, for profiling. */
const extraNodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);

export function start(argv: string[], name: string, short: string, server: boolean, onStdout?: (line: string) => void): ManagedProcess {
  if (server) argv = withNodeArgs(argv, extraNodeArgs);
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
export function serverDeath(): Promise<never> {
  return new Promise((_, reject) => {
    for (const c of children.filter((x) => x.server)) {
      void c.proc.exited.then(() => {
        if (!stopping) reject(new BenchError(`server process died during the benchmark: ${c.proc.describeExit()}`));
      });
    }
  });
}

let cleanupPromise: Promise<void> | undefined;
const tempDirs: string[] = [];

/** A folder removed at the end (also on Ctrl-C); the first one also holds the load jobs. */
export function addTempDir(dir: string): void {
  tempDirs.push(dir);
}

function removeTemp(): void {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
}

/** Stop load generators and the bare server, then the API servers, then keypoold, then the rest (the simulators); remove the temp folders. */
export function cleanup(): Promise<void> {
  cleanupPromise ??= (async () => {
    stopping = true;
    const byKind = (test: (c: Child) => boolean) => children.filter(test).map((c) => c.proc.stop({ graceMs: 5_000 }));
    await Promise.all(byKind((c) => !c.server || c.short === 'bare'));
    await Promise.all(byKind((c) => c.short.startsWith('api')));
    await Promise.all(byKind((c) => c.short.startsWith('keypoold')));
    await Promise.all(byKind(() => true));
    removeTemp();
  })();
  return cleanupPromise;
}

export function installSignalHandlers(): void {
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

// ---------------------------------------------------------------- CPU and memory accounting

const CLK_TCK = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** CPU seconds (user + system) a running process has used so far, or undefined (not Linux, gone). */
export function cpuSeconds(pid: number | undefined): number | undefined {
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
export function machineCpu(): { busy: number; iowait: number } | undefined {
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

export interface MemoryFigures {
  /** Resident set now and its peak (high-water mark), MB (10^6 bytes). */
  vmRssMb: number;
  vmHwmMb: number;
}

/** VmRSS and VmHWM of a running process from /proc/<pid>/status, or undefined (not Linux, gone). */
export function memoryOf(pid: number | undefined): MemoryFigures | undefined {
  if (pid === undefined) return undefined;
  try {
    const s = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(s)?.[1]);
    const rss = kb('VmRSS');
    const hwm = kb('VmHWM');
    if (!Number.isFinite(rss) || !Number.isFinite(hwm)) return undefined;
    const mb = (k: number) => Math.round((k * 1024) / 1e5) / 10;
    return { vmRssMb: mb(rss), vmHwmMb: mb(hwm) };
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- helpers

export interface ClientTls {
  cert: string;
  key: string;
  ca: string;
}

/** One GET. `agent`: a keep-alive agent carrying the TLS options; without it, a fresh connection with `tls`. */
export function getJson(
  host: string, port: number, path: string, tls: ClientTls, opts: { agent?: Agent; timeoutMs?: number } = {},
): Promise<{ status: number; body: unknown }> {
  return new Promise((resolvePromise, reject) => {
    const conn = opts.agent
      ? { agent: opts.agent }
      : { agent: false as const, cert: readFileSync(tls.cert), key: readFileSync(tls.key), ca: readFileSync(tls.ca) };
    const req = request({ host, port, path, method: 'GET', ...conn }, (res) => {
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
    });
    const timeoutMs = opts.timeoutMs ?? 5_000;
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on('error', reject);
    req.end();
  });
}

export const abs = (p: string) => resolve(ROOT, p);

export function saeTls(desc: DemoDescription, sae: string): ClientTls & { node: DemoNode } {
  for (const node of desc.nodes) {
    const s = node.saes.find((x) => x.sae_id === sae);
    if (s) return { node, cert: abs(s.cert), key: abs(s.key), ca: abs(desc.api_ca_cert || desc.ca_cert) };
  }
  throw new BenchError(`the demo network has no ${sae}`);
}

export const stripTls = (t: ClientTls): ClientTls => ({ cert: t.cert, key: t.key, ca: t.ca });

export function hostPort(etsiUrl: string): { host: string; port: number } {
  const u = new URL(etsiUrl);
  return { host: u.hostname, port: Number(u.port) };
}

// ---------------------------------------------------------------- the demo network

/**
 * prepareDemo in `dir` (a folder under a temp folder already registered with
 * addTempDir); a keypoold socket too long for its node folder lives in a folder
 * of its own under the OS temp folder, registered here for removal.
 */
export async function prepareNet(dir: string, opts: Omit<PrepareOptions, 'dir'>): Promise<DemoDescription> {
  const desc = await prepareDemo(ROOT, { ...opts, dir });
  const sockets = desc.nodes.flatMap((n) => [n.keypoold_socket, n.admin_socket].map(abs));
  if ('unix_socket' in desc.qkd_sim.ready) sockets.push(abs(desc.qkd_sim.ready.unix_socket));
  for (const sock of sockets) {
    const folder = dirname(sock);
    if (!isInside(dir, sock) && basename(folder).startsWith('kme-demo-') && !tempDirs.includes(folder)) tempDirs.push(folder);
  }
  return desc;
}

export interface Net {
  desc: DemoDescription;
  /** As given to startNetwork ('' for none). */
  tag: string;
  /** By short name without the tag: "qkd-sim", "keypoold A", "api B"... */
  procs: Map<string, ManagedProcess>;
  /** Each process's readiness target, by the same names. */
  ready: Map<string, ReadyTarget>;
}

const readyOf = (r: DemoDescription['qkd_sim']['ready']): ReadyTarget =>
  'unix_socket' in r ? { unix_socket: abs(r.unix_socket) } : r;

/**
 * The simulated QKD link, then keypoold of both nodes (kme-api talks to it),
 * then both kme-api. `tag` (e.g. "big") is appended to the processes' short
 * names when more than one network runs.
 */
export async function startNetwork(desc: DemoDescription, tag = ''): Promise<Net> {
  const suffix = tag ? ` ${tag}` : '';
  const net: Net = { desc, tag, procs: new Map(), ready: new Map() };
  const sim = start(desc.qkd_sim.argv, `${desc.qkd_sim.name}${suffix}`, `qkd-sim${suffix}`, true);
  net.procs.set('qkd-sim', sim);
  net.ready.set('qkd-sim', readyOf(desc.qkd_sim.ready));
  await sim.waitUntilReady(readyOf(desc.qkd_sim.ready), READY_TIMEOUT_MS);
  for (const stage of ['kme-keypoold', 'kme-api'] as const) {
    const started: Array<{ proc: ManagedProcess; ready: ReadyTarget }> = [];
    for (const node of desc.nodes) {
      const p = node.processes.find((x) => x.name === stage);
      if (!p) throw new BenchError(`demo.json: ${node.kme_id} has no ${stage}`);
      const short = `${stage === 'kme-api' ? 'api' : 'keypoold'} ${node.kme_id.replace(/^KME_/, '')}`;
      const proc = start(p.argv, `${node.kme_id} ${p.name}${suffix}`, `${short}${suffix}`, true);
      const ready: ReadyTarget = readyOf(p.ready);
      net.procs.set(short, proc);
      net.ready.set(short, ready);
      started.push({ proc, ready });
    }
    for (const s of started) await s.proc.waitUntilReady(s.ready, READY_TIMEOUT_MS);
  }
  return net;
}

/** Stop one network's processes in order (kme-api, keypoold, simulator). */
export async function stopNetwork(net: Net): Promise<void> {
  const stop = (names: string[]) => Promise.all(names.map((n) => net.procs.get(n)?.stop({ graceMs: 5_000 })));
  await stop(['api A', 'api B']);
  await stop(['keypoold A', 'keypoold B']);
  await stop(['qkd-sim']);
}

export interface StatusBody {
  stored_key_count: number;
  max_key_count: number;
}

/**
 * Poll KME_A's status for SAE_A1 -> SAE_B1 (the ETSI API, as SAE_A1) until
 * `enough` accepts the answer; fails after `timeoutMs` naming the last answer.
 */
export async function waitForStatus(
  desc: DemoDescription, what: string, enough: (s: StatusBody) => boolean,
  opts: { timeoutMs?: number; pollMs?: number } = {},
): Promise<StatusBody> {
  const tls = saeTls(desc, 'SAE_A1');
  const { host, port } = hostPort(tls.node.etsi_url);
  const timeoutMs = opts.timeoutMs ?? STOCK_TIMEOUT_MS;
  const deadline = Date.now() + timeoutMs;
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
        `KME_A status for SAE_A1 -> SAE_B1: ${what} not reached within ${timeoutMs / 1000} s (last: ${last})`,
      );
    }
    await sleep(opts.pollMs ?? 200);
  }
}

// ---------------------------------------------------------------- load phases

export interface Phase {
  result: LoadResult;
  /** % of one core each server process (and the load generator) used during the phase. */
  cpuPct: Record<string, number>;
  /** % of the phase each server's main thread was runnable but waiting for a CPU (contention). */
  runQueuePct: Record<string, number>;
  /** Whole machine during the phase, % of one core: busy, busy outside our processes, waiting for I/O. */
  machinePct?: { busy: number; others: number; iowait: number };
}

export async function runLoad(job: LoadJob): Promise<Phase> {
  const jobDir = tempDirs[0];
  if (jobDir === undefined) throw new BenchError('runLoad: no temp folder registered');
  const file = join(jobDir, `job-${job.label}.json`);
  writeFileSync(file, JSON.stringify(job));
  let line: string | undefined;
  const before = cpuSnapshot();
  const machineBefore = machineCpu();
  const t0 = Date.now();
  const proc = start(['node', 'dist/scripts/bench-load.js', file], `bench-load ${job.label}`, 'load', false, (l) => {
    if (l.startsWith('{')) line = l;
  });
  const limitMs = job.warmupMs + job.durationMs + 30_000;
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BenchError(`bench-load ${job.label} did not finish within ${limitMs / 1000} s`)), limitMs);
  });
  const exit = await Promise.race([proc.exited, serverDeath(), timeout]).finally(() => clearTimeout(timer));
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

export function skipped(label: string, why: string): LoadResult {
  return {
    label, ok: false, requests: 0, warmupRequests: 0, seconds: 0, rps: 0, latencyMs: null, errors: 0, errorSamples: [],
    mismatches: 0, mismatchSamples: [], connections: 0, stoppedEarly: `skipped: ${why}`, cpuSeconds: 0,
  };
}

export function describePhase(name: string, p: Phase): void {
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

/** The machine a report was measured on, for the JSON results. */
export function machineFacts() {
  return {
    node: process.version,
    cpus: cpus().length,
    cpu_model: cpus()[0]?.model,
    loadavg_1min_at_end: Math.round(loadavg()[0]! * 100) / 100,
  };
}

export const fmt = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(digits));
export const pad = (s: string, n: number) => s.padStart(n);
