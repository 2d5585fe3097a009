/**
 * `node dist/src/demo/run.js [--prepare-only]`: prepare the demo network under
 * the current folder, then run its five processes (the simulated QKD link, two
 * keypoolds, two ETSI APIs) in the foreground until Ctrl-C / SIGTERM (exit 0)
 * or until one of them dies (exit 1, naming it).
 */
import { existsSync } from 'node:fs';
import { relative, resolve } from 'node:path';
import { curlExamples, faultExample } from './curl.js';
import type { DemoDescription, DemoReadiness } from './description.js';
import { prefixer } from './log-lines.js';
import { prepareDemo } from './prepare.js';
import { Supervisor, type ServiceSpec } from './supervisor.js';

export interface RunIo {
  root: string;
  out: (line: string) => void;
  err: (line: string) => void;
}

const USAGE = 'usage: node dist/src/demo/run.js [--prepare-only]';

export async function runDemo(args: string[], io: RunIo): Promise<number> {
  const unknown = args.filter((a) => a !== '--prepare-only');
  if (args.includes('--help') || args.includes('-h')) {
    io.out(USAGE);
    return 0;
  }
  if (unknown.length > 0) {
    io.err(`unknown argument ${unknown[0]}\n${USAGE}`);
    return 2;
  }
  const desc = await prepareDemo(io.root);
  reportPreparation(desc, io);
  if (args.includes('--prepare-only')) return 0;

  const specs = serviceSpecs(desc);
  const missing = specs.map((s) => s.argv.find((a) => a.endsWith('.js'))!).filter((f) => !existsSync(resolve(desc.root, f)));
  if (missing.length > 0) {
    io.err(`not built: ${[...new Set(missing)].join(', ')} missing; run \`npm run build\` (npm start does it)`);
    return 1;
  }
  return supervise(desc, specs, io);
}

export function serviceSpecs(desc: DemoDescription): ServiceSpec[] {
  const ready = (r: DemoReadiness) => ('unix_socket' in r ? { unix_socket: resolve(desc.root, r.unix_socket) } : r);
  // The simulated QKD link first, then both keypoolds, then both APIs.
  const sim: ServiceSpec = { name: desc.qkd_sim.name, argv: desc.qkd_sim.argv, ready: ready(desc.qkd_sim.ready), stage: 0 };
  return [
    sim,
    ...desc.nodes.flatMap((n) =>
      n.processes.map((p) => ({
        name: `${n.kme_id} ${p.name}`,
        argv: p.argv,
        ready: ready(p.ready),
        stage: p.name === 'kme-keypoold' ? 1 : 2,
      })),
    ),
  ];
}

async function supervise(desc: DemoDescription, specs: ServiceSpec[], io: RunIo): Promise<number> {
  const prefix = prefixer(specs.map((s) => s.name));
  const sup = new Supervisor({
    cwd: desc.root,
    onLine: (name, line) => io.out(prefix(name, line)),
  });
  let signalled = false;
  let stopped: Promise<void> | undefined;
  let stopRequested!: (done: Promise<void>) => void;
  /** Settles once a signal asked us to stop and every process has stopped. */
  const stoppedBySignal = new Promise<void>((resolve) => (stopRequested = resolve));
  const onSignal = (sig: NodeJS.Signals) => {
    if (signalled) {
      io.err(`${sig} again: killing every demo process now`);
      sup.killAll();
      return;
    }
    signalled = true;
    io.out(`${sig}: stopping the demo network (Ctrl-C again to kill at once)`);
    stopped = sup.stopAll();
    stopRequested(stopped);
  };
  // Children run in their own process groups: a closed terminal (SIGHUP) must stop them too.
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const sig of signals) process.on(sig, onSignal);
  try {
    io.out(`starting ${specs.length} processes from ${relative(desc.root, desc.file) || desc.file}`);
    try {
      await sup.startAll(specs);
    } catch (e) {
      if (signalled) {
        await stopped;
        return 0;
      }
      io.err(`demo failed to start: ${(e as Error).message}`);
      return 1;
    }
    io.out('');
    io.out(`demo network up: ${desc.nodes.map((n) => `${n.kme_id} ${n.etsi_url}`).join(', ')}`);
    const metrics = desc.nodes.flatMap((n) => Object.entries(n.metrics_urls ?? {}).map(([d, u]) => `${n.kme_id} ${d} ${u}`));
    if (metrics.length > 0) io.out(`health (/healthz, /readyz) and metrics: ${metrics.join(', ')}`);
    io.out(`try it (from ${desc.root}):`);
    for (const l of curlExamples(desc)) io.out(`  ${l}`);
    io.out(`  ${faultExample(desc)}`);
    io.out(`  ${[...desc.kmectl, '--node', desc.nodes[0]!.kme_id, 'status'].join(' ')}`);
    io.out('Ctrl-C stops everything.');
    io.out('');

    const dead = await Promise.race([sup.firstUnexpectedExit(), stoppedBySignal.then(() => undefined)]);
    if (dead && !signalled) {
      io.err(`demo stopped: ${dead.describeExit()}`);
      await sup.stopAll();
      return 1;
    }
    await stopped;
    io.out('demo network stopped');
    return 0;
  } finally {
    for (const sig of signals) process.off(sig, onSignal);
  }
}

function reportPreparation(desc: DemoDescription, io: RunIo): void {
  const show = (p: string) => relative(desc.root, p) || p;
  io.out(`demo network described in ${show(desc.file)}`);
  if (desc.written.length > 0) {
    io.out(`written (${desc.written.length}):`);
    for (const f of desc.written) io.out(`  ${show(f)}`);
  }
  if (desc.reused.length > 0) io.out(`kept as they were: ${desc.reused.length} files`);
  for (const n of desc.notes) io.out(`note: ${n}`);
}
