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
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { loadConfig } from '../src/common/config.js';
import type { DemoDescription } from '../src/demo/description.js';
import { freePorts } from '../src/demo/ports.js';
import type { LoadResult } from './bench-types.js';
import {
  BenchError, READY_TIMEOUT_MS, ROOT, abs, addTempDir, cleanup, describePhase, fmt, hostPort, installSignalHandlers,
  logIssueTotal, logIssues, out, pad, prepareNet, runLoad, saeTls, setMeasuring, skipped, sleep, start, startNetwork,
  stripTls, waitForStatus, wasInterrupted, type Phase,
  CLIENTS, DEC_PATH, ENC_PATH, KEY_BITS, NOISE_LIMIT_PCT, PLANNED_MAX_ENC_RPS, WARMUP_MS,
  machineFacts,
} from './bench-net.js';

/** Simulated secret key rate: enough to refill what 5,000 enc_keys/s consume, in both directions. */
const RATE_BPS = 4_000_000;
const TARGETS = { encRatio: 0.5, decRatio: 0.6, p99Ms: 25 };

const STATUS_PATH = '/api/v1/keys/SAE_A2/status';

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

// ---------------------------------------------------------------- report

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
  const tempDir = mkdtempSync(join(tmpdir(), 'kme-bench-'));
  addTempDir(tempDir);
  out(
    `benchmark: ${CLIENTS} clients, ${WARMUP_MS / 1000} s warm-up + ${seconds} s per phase, ${cpus().length} CPUs, ` +
      `node ${process.version}, load average ${loadavg()[0]!.toFixed(2)}`,
  );
  out(`preparing a demo network in ${tempDir} (API ports ${apiA}/${apiB}, peer ports ${peerA}/${peerB}, ${RATE_BPS / 1e6} Mbit/s)`);
  const desc = await prepareNet(tempDir, { apiPorts: [apiA!, apiB!], peerPorts: [peerA!, peerB!], rateBps: RATE_BPS });
  for (const n of desc.notes) out(`  note: ${n}`);

  // The bare server is measured first, on a quiet machine: the KME network is not started yet.
  const barePort = await startBare(desc);
  const a1 = saeTls(desc, 'SAE_A1');
  const b1 = saeTls(desc, 'SAE_B1');
  const common = { clients: CLIENTS, warmupMs: WARMUP_MS, durationMs, keyBytes: KEY_BITS / 8 };
  const kmeA = hostPort(a1.node.etsi_url);
  const kmeB = hostPort(b1.node.etsi_url);
  const bare = { host: kmeA.host, port: barePort };

  out('');
  out('measuring:');
  setMeasuring(true);
  const phases: Record<string, Phase> = {};
  phases.bareEnc = await runLoad({ ...common, ...bare, ...stripTls(a1), label: 'bare-enc', mode: 'enc', path: ENC_PATH });
  describePhase('(a) bare, enc-shaped ', phases.bareEnc);
  phases.bareDec = await runLoad({ ...common, ...bare, ...stripTls(b1), label: 'bare-dec', mode: 'dec', path: DEC_PATH });
  describePhase('(c) bare, dec-shaped ', phases.bareDec);
  setMeasuring(false);

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
  setMeasuring(true);
  phases.kmeEnc = await runLoad({
    ...common, ...kmeA, ...stripTls(a1), label: 'kme-enc', mode: 'enc', path: ENC_PATH, collectKeys: true, maxRequests: encBudget,
  });
  describePhase('(b) KME_A enc_keys   ', phases.kmeEnc);
  const keys = phases.kmeEnc.result.keys ?? [];
  delete phases.kmeEnc.result.keys;
  if (keys.length > 0) {
    phases.kmeDec = await runLoad({ ...common, ...kmeB, ...stripTls(b1), label: 'kme-dec', mode: 'dec', path: DEC_PATH, keys });
    describePhase('(d) KME_B dec_keys   ', phases.kmeDec);
    const used = keys.length - (phases.kmeDec.result.unusedKeys ?? 0);
    out(`  dec_keys fetched ${used} of the ${keys.length} key_IDs from enc_keys, each once`);
  } else {
    out('  (d) KME_B dec_keys    skipped: the enc phase obtained no keys');
    phases.kmeDec = { result: skipped('kme-dec', 'the enc phase obtained no keys'), cpuPct: {}, runQueuePct: {} };
  }

  // The floor of the two-process path: kme-api and keypoold with no key work (status of a same-node pair).
  phases.kmeStatus = await runLoad({ ...common, ...kmeA, ...stripTls(a1), label: 'kme-status', mode: 'status', path: STATUS_PATH });
  describePhase('(e) KME_A status     ', phases.kmeStatus);

  setMeasuring(false);
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
  if (logIssueTotal() > 0) {
    out('');
    out(`server log: ${logIssueTotal()} warn/error lines while measuring, first ones:`);
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
    ...machineFacts(),
    machine_quiet: quiet,
    other_processes_max_pct_of_core: othersMax,
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
    server_log_issues: { count: logIssueTotal(), first: logIssues },
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
    if (wasInterrupted()) return; // the signal handler stops everything and exits 130
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
