/**
 * `npm run bench`, second part: key ingestion. The simulated link process
 * feeds both keypoolds through socat pty pairs (the real serial driver, the
 * real protocol) into their durable stores; we measure blocks/s and Mbit/s
 * stored and the CPU share keypoold takes, against the target of >= 20 Mbit/s
 * under 30% of one core.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, isAbsolute } from 'node:path';
import { fileURLToPath } from 'node:url';
import { prepareDemo } from '../src/demo/prepare.js';
import { freePorts } from '../src/demo/ports.js';
import { startProcess, withNodeArgs, type ManagedProcess } from '../src/demo/processes.js';
import { NdjsonPoolClient } from '../src/ipc/ndjson-client.js';
import { silentLogger } from '../src/common/logger.js';

const ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** Offered secret key rate: a little above the target, so the figure shows what keypoold keeps up with. */
const OFFERED_BPS = Number(process.env.BENCH_INGEST_BPS ?? 21_000_000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 5);
const TARGET_MBPS = 20;
const TARGET_CPU_PCT = 30;

const out = (s: string) => process.stdout.write(s + '\n');

function cpuTicks(pid: number): number {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return Number(fields[11]) + Number(fields[12]); // utime + stime
}

const TICKS_PER_S = 100;

async function main(): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'kme-bench-ingest-'));
  const procs: ManagedProcess[] = [];
  try {
    const [a1, a2, p1, p2] = await freePorts(4);
    const desc = await prepareDemo(ROOT, { dir, apiPorts: [a1!, a2!], peerPorts: [p1!, p2!], rateBps: OFFERED_BPS });
    const abs = (p: string) => (isAbsolute(p) ? p : join(desc.root, p));
    // Room for the whole run in both pools, so ingestion never pauses on a full pool.
    for (const n of desc.nodes) {
      const f = abs(n.config);
      const cfg = JSON.parse(readFileSync(f, 'utf8'));
      cfg.limits.max_key_count = 10_000_000;
      cfg.log_level = 'warn';
      writeFileSync(f, JSON.stringify(cfg, null, 2));
    }
    const simFile = abs(desc.qkd_sim.config);
    const sim = JSON.parse(readFileSync(simFile, 'utf8'));
    if (process.env.BENCH_INGEST_DEVICE === 'unix') {
      // Compare: the same protocol over Unix sockets instead of ptys.
      sim.modules.forEach((m: { kme_id: string; device: unknown }, i: number) => {
        const path = join(dir, `m${i}.sock`);
        m.device = { kind: 'unix', path };
        const f = abs(desc.nodes.find((n) => n.kme_id === m.kme_id)!.config);
        const cfg = JSON.parse(readFileSync(f, 'utf8'));
        cfg.links[0].qkd = { driver: 'socket', path };
        writeFileSync(f, JSON.stringify(cfg, null, 2));
      });
    }
    sim.buffer_blocks = 100_000;
    sim.log_level = 'warn';
    writeFileSync(simFile, JSON.stringify(sim, null, 2));

    out(`ingestion: simulated link at ${OFFERED_BPS / 1e6} Mbit/s, ${sim.block_bits}-bit blocks, into both keypoolds over socat ptys`);
    const simProc = startProcess(desc.qkd_sim.argv, { cwd: desc.root, name: 'qkd-sim' });
    procs.push(simProc);
    const sr = desc.qkd_sim.ready;
    await simProc.waitUntilReady('unix_socket' in sr ? { unix_socket: abs(sr.unix_socket) } : sr, 20_000);
    const keypoolds = desc.nodes.map((n) => {
      const p = n.processes.find((x) => x.name === 'kme-keypoold')!;
      const extra = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
      const proc = startProcess(withNodeArgs(p.argv, extra), { cwd: desc.root, name: `${n.kme_id} keypoold` });
      procs.push(proc);
      return { node: n, proc, ready: 'unix_socket' in p.ready ? { unix_socket: abs(p.ready.unix_socket) } : p.ready };
    });
    for (const k of keypoolds) await k.proc.waitUntilReady(k.ready, 20_000);
    const clients = keypoolds.map((k) => new NdjsonPoolClient({ path: abs(k.node.admin_socket), logger: silentLogger() }));
    const hw = async () => Promise.all(clients.map(async (c) => (await c.call('diag', {})).links[0]!.high_water));

    await new Promise((r) => setTimeout(r, 2000)); // warm-up: sessions up, credit flowing
    const h0 = await hw();
    const c0 = keypoolds.map((k) => cpuTicks(k.proc.pid!));
    const s0 = cpuTicks(simProc.pid!);
    const t0 = Date.now();
    await new Promise((r) => setTimeout(r, SECONDS * 1000));
    const h1 = await hw();
    const c1 = keypoolds.map((k) => cpuTicks(k.proc.pid!));
    const s1 = cpuTicks(simProc.pid!);
    const secs = (Date.now() - t0) / 1000;
    for (const c of clients) await c.close();

    const rows = keypoolds.map((k, i) => {
      const blocks = h1[i]! - h0[i]!;
      const mbps = (blocks * sim.block_bits) / secs / 1e6;
      const cpu = ((c1[i]! - c0[i]!) / TICKS_PER_S / secs) * 100;
      return { kme: k.node.kme_id, blocks_per_s: blocks / secs, mbps, cpu_pct: cpu };
    });
    out('');
    out('keypoold   blocks/s   Mbit/s stored   CPU (% of one core)');
    for (const r of rows) out(`${r.kme.padEnd(10)} ${r.blocks_per_s.toFixed(0).padStart(8)}   ${r.mbps.toFixed(1).padStart(13)}   ${r.cpu_pct.toFixed(1).padStart(6)}`);
    out(`(simulator: ${(((s1 - s0) / TICKS_PER_S / secs) * 100).toFixed(1)}% of one core for both modules)`);
    const met = rows.every((r) => r.mbps >= TARGET_MBPS && r.cpu_pct < TARGET_CPU_PCT);
    out('');
    out(`target: >= ${TARGET_MBPS} Mbit/s with < ${TARGET_CPU_PCT}% of one core, per keypoold: ${met ? 'met' : 'NOT met'}`);
    mkdirSync(join(ROOT, 'var', 'bench'), { recursive: true });
    writeFileSync(join(ROOT, 'var', 'bench', 'ingest.json'), JSON.stringify({ when: new Date().toISOString(), offered_bps: OFFERED_BPS, block_bits: sim.block_bits, seconds: secs, rows, met }, null, 2));
    return rows.every((r) => r.blocks_per_s > 0) ? 0 : 1;
  } finally {
    await Promise.all(procs.map((p) => p.stop({ graceMs: 3000 }).catch(() => {})));
    rmSync(dir, { recursive: true, force: true });
  }
}

main().then(
  (code) => process.exit(code),
  (e) => {
    process.stderr.write(`bench-ingest: ${(e as Error).stack ?? e}\n`);
    process.exit(1);
  },
);
