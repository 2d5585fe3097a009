/**
 * Runs a set of services in stages (all of a stage started, then all waited
 * for), watches for unexpected exits, and stops everything in reverse order.
 */
import { canConnect, describeTarget, startProcess, type ManagedProcess, type ReadyTarget, type StreamName } from './processes.js';

export interface ServiceSpec {
  name: string;
  argv: string[];
  ready: ReadyTarget;
  /** Services of a lower stage are started and ready before the next stage starts. */
  stage: number;
}

export interface SupervisorOptions {
  cwd: string;
  env?: NodeJS.ProcessEnv;
  /** Per-service readiness timeout (default 20 s). */
  startTimeoutMs?: number;
  /** SIGTERM-to-SIGKILL grace (default 5 s). */
  graceMs?: number;
  onLine?: (service: string, line: string, stream: StreamName) => void;
}

export class Supervisor {
  readonly procs: ManagedProcess[] = [];
  private stopping = false;
  private unexpected: Promise<ManagedProcess>;
  private reportUnexpected!: (p: ManagedProcess) => void;

  constructor(private readonly opts: SupervisorOptions) {
    this.unexpected = new Promise((resolve) => (this.reportUnexpected = resolve));
  }

  get isStopping(): boolean {
    return this.stopping;
  }

  /** Starts every service; on any failure stops what was started and rethrows. */
  async startAll(specs: ServiceSpec[]): Promise<void> {
    const stages = [...new Set(specs.map((s) => s.stage))].sort((a, b) => a - b);
    try {
      for (const stage of stages) {
        const group = specs.filter((s) => s.stage === stage);
        for (const s of group) {
          if (await canConnect(s.ready)) {
            throw new Error(`${describeTarget(s.ready)} already accepts connections: is another ${s.name} still running?`);
          }
        }
        const started = group.map((s) => ({ spec: s, proc: this.start(s) }));
        for (const { spec, proc } of started) {
          if (this.stopping) throw new Error('stopped while starting');
          await proc.waitUntilReady(spec.ready, this.opts.startTimeoutMs ?? 20_000);
        }
      }
    } catch (e) {
      await this.stopAll();
      throw e;
    }
  }

  /** Resolves with the first service that exits while we are not stopping. */
  firstUnexpectedExit(): Promise<ManagedProcess> {
    return this.unexpected;
  }

  /** Stops all services, latest started first. Idempotent. */
  async stopAll(): Promise<void> {
    this.stopping = true;
    for (const p of [...this.procs].reverse()) {
      await p.stop({ graceMs: this.opts.graceMs ?? 5000 });
    }
  }

  /** Immediate SIGKILL of everything still running (a second Ctrl-C). */
  killAll(): void {
    this.stopping = true;
    for (const p of this.procs) p.kill('SIGKILL');
  }

  private start(spec: ServiceSpec): ManagedProcess {
    const proc = startProcess(spec.argv, {
      cwd: this.opts.cwd,
      name: spec.name,
      env: this.opts.env,
      ownProcessGroup: true,
      onLine: (line, stream) => this.opts.onLine?.(spec.name, line, stream),
    });
    this.procs.push(proc);
    void proc.exited.then(() => {
      if (!this.stopping) this.reportUnexpected(proc);
    });
    return proc;
  }
}
