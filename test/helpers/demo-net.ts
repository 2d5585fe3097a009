/**
 * A real two-node demo network for end-to-end tests: prepareDemo in a temp
 * folder with free ports, the four real processes (from dist/, built by
 * `npm test`), and mTLS clients for each SAE.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { request, Agent } from 'node:https';
import { tmpdir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { prepareDemo, type DemoDescription } from '../../src/demo/prepare.js';
import { startProcess, type ManagedProcess } from '../../src/demo/processes.js';
import { freePorts } from '../../src/demo/ports.js';
import type { MetricsPorts } from '../../src/demo/topology.js';

export const repoRoot = resolve(import.meta.dirname, '../..');

export interface HttpResult {
  status: number;
  body: any;
  text: string;
  headers: Record<string, string | string[] | undefined>;
}

export interface SaeClient {
  saeId: string;
  kmeId: string;
  get(path: string): Promise<HttpResult>;
  post(path: string, body?: unknown, headers?: Record<string, string>): Promise<HttpResult>;
}

export function httpsCall(
  url: string, method: string, tls: { cert?: Buffer; key?: Buffer; ca: Buffer; agent?: Agent },
  body?: string, headers: Record<string, string> = {},
): Promise<HttpResult> {
  return new Promise((resolveP, reject) => {
    const req = request(url, { method, cert: tls.cert, key: tls.key, ca: tls.ca, agent: tls.agent ?? false, headers }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed: unknown;
        try {
          parsed = JSON.parse(text);
        } catch {
          parsed = undefined;
        }
        resolveP({ status: res.statusCode ?? 0, body: parsed, text, headers: res.headers });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

/** Reservations in one node's key store, by state, and those whose VOID the peer has not acknowledged. */
export interface ReservationCounts {
  pending: number;
  committed: number;
  voided: number;
  unacked: number;
}

/** One reservation as a node's key store holds it (see DemoNet.reservationRows). */
export interface ReservationRowView {
  rid: string;
  role: 'owner' | 'peer';
  state: 'pending' | 'committed' | 'voided';
  peer_acked: number;
  master: string;
  key_ids: string[];
}

/** Lines kept per process name across all its incarnations (see DemoNet.history). */
const HISTORY_LINES = 20_000;

export class DemoNet {
  readonly procs = new Map<string, ManagedProcess>();
  readonly #history = new Map<string, string[]>();

  constructor(readonly demo: DemoDescription, readonly dir: string) {}

  path(p: string): string {
    return isAbsolute(p) ? p : join(this.demo.root, p);
  }

  node(kmeId: string) {
    const n = this.demo.nodes.find((x) => x.kme_id === kmeId);
    if (!n) throw new Error(`no node ${kmeId}`);
    return n;
  }

  proc(kmeId: string, name: 'kme-keypoold' | 'kme-api'): ManagedProcess {
    return this.procs.get(`${kmeId}/${name}`)!;
  }

  async startProc(kmeId: string, name: 'kme-keypoold' | 'kme-api'): Promise<void> {
    const spec = this.node(kmeId).processes.find((p) => p.name === name)!;
    const key = `${kmeId}/${name}`;
    const incarnation = (this.#history.get(key) ?? []).filter((l) => l.startsWith('#### start')).length + 1;
    this.#remember(key, `#### start ${incarnation} at ${new Date().toISOString()}`);
    const p = startProcess(spec.argv, { cwd: this.demo.root, name: key, onLine: (line) => this.#remember(key, line) });
    this.procs.set(key, p);
    const ready = 'unix_socket' in spec.ready ? { unix_socket: this.path(spec.ready.unix_socket) } : spec.ready;
    await p.waitUntilReady(ready, 20_000);
  }

  /** The simulated QKD link process. */
  async startSim(): Promise<void> {
    const s = this.demo.qkd_sim;
    const p = startProcess(s.argv, { cwd: this.demo.root, name: s.name });
    this.procs.set(s.name, p);
    await p.waitUntilReady('unix_socket' in s.ready ? { unix_socket: this.path(s.ready.unix_socket) } : s.ready, 20_000);
  }

  /** Inject a fault into the running simulator (`link-down`, 5) and return what the control command printed. */
  async fault(name: string, seconds: number, module?: string): Promise<string> {
    const only = module === undefined ? [] : ['--module', module];
    const p = startProcess([...this.demo.qkd_sim.control, ...only, name, String(seconds)], { cwd: this.demo.root, name: `fault ${name}` });
    const exit = await p.waitForExit(10_000);
    if (exit.code !== 0) throw new Error(`fault ${name} failed: ${p.describeExit()}`);
    return p.output('stdout').join('\n');
  }

  #remember(key: string, line: string): void {
    let h = this.#history.get(key);
    if (!h) this.#history.set(key, (h = []));
    h.push(line);
    if (h.length > HISTORY_LINES) h.splice(0, h.length - HISTORY_LINES);
  }

  /**
   * Every output line of a daemon across all its incarnations (the process's own
   * output() is reset at each start), each incarnation opened by a `#### start` line;
   * `filter` keeps only matching lines. For post-mortems of kill/restart tests.
   */
  history(kmeId: string, name: 'kme-keypoold' | 'kme-api', filter?: (line: string) => boolean): string[] {
    const h = this.#history.get(`${kmeId}/${name}`) ?? [];
    return filter ? h.filter((l) => l.startsWith('#### start') || filter(l)) : [...h];
  }

  /** SIGKILL a daemon (no chance to clean up) and wait until it is gone. */
  async kill(kmeId: string, name: 'kme-keypoold' | 'kme-api'): Promise<void> {
    const p = this.proc(kmeId, name);
    p.kill('SIGKILL');
    await p.waitForExit(10_000);
  }

  /**
   * Count the reservations in a node's key store, read-only (SQLite WAL lets
   * this reader run beside a live keypoold; the connection is closed at once so
   * it never holds back a checkpoint).
   */
  reservationCounts(kmeId: string): ReservationCounts {
    const db = new Database(join(this.path(this.node(kmeId).state_dir), 'keystore.sqlite'), { readonly: true, fileMustExist: true });
    try {
      db.pragma('busy_timeout = 2000');
      const out: ReservationCounts = { pending: 0, committed: 0, voided: 0, unacked: 0 };
      for (const r of db.prepare('SELECT state, count(*) AS n FROM reservations GROUP BY state').all() as Array<{ state: string; n: number }>) {
        if (r.state === 'pending' || r.state === 'committed' || r.state === 'voided') out[r.state] = r.n;
      }
      out.unacked = (db.prepare('SELECT count(*) AS n FROM reservations WHERE peer_acked = 0').get() as { n: number }).n;
      return out;
    } finally {
      db.close();
    }
  }

  /** Every reservation of a node's link(s) (not same-node ones), read-only, for comparing the two ends. */
  reservationRows(kmeId: string): ReservationRowView[] {
    const db = new Database(join(this.path(this.node(kmeId).state_dir), 'keystore.sqlite'), { readonly: true, fileMustExist: true });
    try {
      db.pragma('busy_timeout = 2000');
      const rows = db.prepare("SELECT rid, role, state, peer_acked, master, key_ids FROM reservations WHERE role != 'local'").all() as Array<
        Omit<ReservationRowView, 'key_ids'> & { key_ids: string }
      >;
      return rows.map((r) => ({ ...r, key_ids: JSON.parse(r.key_ids) as string[] }));
    } finally {
      db.close();
    }
  }

  async restart(kmeId: string, name: 'kme-keypoold' | 'kme-api', signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await this.proc(kmeId, name).stop({ signal, graceMs: 5000 });
    await this.startProc(kmeId, name);
  }

  sae(saeId: string): SaeClient {
    for (const n of this.demo.nodes) {
      const s = n.saes.find((x) => x.sae_id === saeId);
      if (!s) continue;
      const tls = { cert: readFileSync(this.path(s.cert)), key: readFileSync(this.path(s.key)), ca: readFileSync(this.path(this.demo.ca_cert)) };
      const base = n.etsi_url;
      return {
        saeId,
        kmeId: n.kme_id,
        get: (p) => httpsCall(base + p, 'GET', tls),
        post: (p, body, headers) =>
          httpsCall(base + p, 'POST', tls, body === undefined ? undefined : JSON.stringify(body), {
            'content-type': 'application/json',
            ...headers,
          }),
      };
    }
    throw new Error(`no SAE ${saeId}`);
  }

  /** Wait until a master sees at least `n` keys for a slave (the pool is stocked and the peer reachable). */
  async waitForStock(master: string, slave: string, n = 1, timeoutMs = 20_000): Promise<void> {
    const c = this.sae(master);
    const end = Date.now() + timeoutMs;
    let last: HttpResult | undefined;
    while (Date.now() < end) {
      last = await c.get(`/api/v1/keys/${slave}/status`).catch(() => undefined);
      if (last?.status === 200 && last.body.stored_key_count >= n) return;
      await new Promise((r) => setTimeout(r, 200));
    }
    throw new Error(`no stock for ${master}->${slave}: ${last?.status} ${last?.text}`);
  }

  /** The last lines of every process's output, for a failed test's report. */
  logs(last = 25): string {
    return [...this.procs].map(([name, p]) => `--- ${name} (${p.running ? 'running' : p.describeExit(false)})\n${[...p.output('stdout', last), ...p.output('stderr', last)].join('\n')}`).join('\n');
  }

  async stop(): Promise<void> {
    await Promise.all([...this.procs.values()].map((p) => p.stop({ graceMs: 3000 }).catch(() => {})));
  }

  destroy(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface StartOptions {
  rateBps?: number;
  /** Admin listener ports ([keypoold, kme-api] per node); default: free ones; false: none. */
  metricsPorts?: MetricsPorts | false;
  /** Edit each node's config.json before the first start. */
  patchConfig?: (cfg: any, kmeId: string) => void;
  /** Edit the simulator's sim.json before the first start. */
  patchSim?: (cfg: any) => void;
  start?: boolean;
}

export async function startDemoNet(opts: StartOptions = {}): Promise<DemoNet> {
  const dir = mkdtempSync(join(tmpdir(), 'kme-e2e-'));
  const [a1, a2, p1, p2, m1, m2, m3, m4] = await freePorts(8);
  const metricsPorts = opts.metricsPorts === false ? undefined : (opts.metricsPorts ?? [[m1!, m2!], [m3!, m4!]]);
  const demo = await prepareDemo(repoRoot, { dir, apiPorts: [a1!, a2!], peerPorts: [p1!, p2!], metricsPorts, rateBps: opts.rateBps ?? 4_000_000 });
  const net = new DemoNet(demo, dir);
  for (const n of demo.nodes) {
    const f = net.path(n.config);
    const cfg = JSON.parse(readFileSync(f, 'utf8'));
    // A loaded test machine can take more than the demo's 2 s for a peer's first answer after a
    // restart (cold JIT, catching up on blocks); tests of the timeout itself set their own.
    cfg.peer.timeout_ms = 10_000;
    opts.patchConfig?.(cfg, n.kme_id);
    writeFileSync(f, JSON.stringify(cfg, null, 2));
  }
  if (opts.patchSim) {
    const f = net.path(demo.qkd_sim.config);
    const cfg = JSON.parse(readFileSync(f, 'utf8'));
    opts.patchSim(cfg);
    writeFileSync(f, JSON.stringify(cfg, null, 2));
  }
  if (opts.start !== false) {
    try {
      await net.startSim();
      for (const n of demo.nodes) await net.startProc(n.kme_id, 'kme-keypoold');
      for (const n of demo.nodes) await net.startProc(n.kme_id, 'kme-api');
    } catch (e) {
      await net.stop();
      throw e;
    }
  }
  return net;
}

/**
 * One demo network for a whole test file: started before its tests (and
 * stocked with keys both ways), its process output printed when a test
 * fails, stopped and removed afterwards. Returns a getter for it.
 */
export function useDemoNet(opts: StartOptions = {}, stock = 10): () => DemoNet {
  let net: DemoNet | undefined;
  beforeAll(async () => {
    net = await startDemoNet(opts);
    await net.waitForStock('SAE_A1', 'SAE_B1', stock);
    await net.waitForStock('SAE_B1', 'SAE_A1', stock);
  }, 90_000);
  afterEach((ctx) => {
    if (ctx.task.result?.state === 'fail' && net) console.log(`process output at the failure:\n${net.logs()}`);
  });
  afterAll(async () => {
    await net?.stop();
    net?.destroy();
  });
  return () => net!;
}
