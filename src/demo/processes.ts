/**
 * Start, watch, stop and restart one child process (a daemon of the demo, or
 * of a test). Output is split into lines, remembered (last N per stream) and
 * optionally forwarded; readiness is "this Unix socket / TCP port accepts a
 * connection"; stopping is SIGTERM then SIGKILL after a grace period.
 *
 * `node` as argv[0] means the Node binary running this code (process.execPath).
 * Children still running when this process exits are SIGKILLed.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
  /** Set when the process could not be started at all (e.g. ENOENT). */
  error?: string;
}

export type StreamName = 'stdout' | 'stderr';

export interface StartOptions {
  cwd?: string;
  /** Shown in errors and given to onLine; default argv joined. */
  name?: string;
  /** Added to (and overriding) this process's environment. */
  env?: NodeJS.ProcessEnv;
  /** Called for every complete output line. */
  onLine?: (line: string, stream: StreamName, proc: ManagedProcess) => void;
  /** Lines remembered per stream (default 200). */
  keepLines?: number;
  /**
   * Put the child in its own process group (default false). A terminal's Ctrl-C
   * then reaches only the parent, which stops children in order; signals are
   * sent to the whole group.
   */
  ownProcessGroup?: boolean;
}

export type ReadyTarget = { unix_socket: string } | { tcp: { host?: string; port: number } };

export interface StopOptions {
  signal?: NodeJS.Signals;
  /** Wait this long after `signal` before SIGKILL (default 5000 ms). */
  graceMs?: number;
}

const live = new Set<ManagedProcess>();
let exitHookInstalled = false;

export function startProcess(argv: string[], opts: StartOptions = {}): ManagedProcess {
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.on('exit', () => {
      for (const p of live) p.kill('SIGKILL');
    });
  }
  const p = new ManagedProcess(argv, opts);
  p.spawn();
  return p;
}

export class ManagedProcess {
  readonly name: string;
  readonly argv: string[];
  private child: ChildProcess | undefined;
  private exit: ExitInfo | undefined;
  private exitPromise: Promise<ExitInfo> = Promise.resolve({ code: null, signal: null });
  private lines: Record<StreamName, string[]> = { stdout: [], stderr: [] };
  /** How many times spawned (1 after start, 2 after one restart...). */
  spawnCount = 0;

  constructor(
    argv: string[],
    private readonly opts: StartOptions,
  ) {
    if (argv.length === 0) throw new Error('startProcess: empty argv');
    this.argv = [...argv];
    this.name = opts.name ?? argv.join(' ');
  }

  get pid(): number | undefined {
    return this.child?.pid;
  }

  get running(): boolean {
    return this.child !== undefined && this.exit === undefined;
  }

  /** How the current incarnation ended, or undefined while it runs. */
  get exitInfo(): ExitInfo | undefined {
    return this.exit;
  }

  /** Resolves when the current incarnation exits (never rejects). */
  get exited(): Promise<ExitInfo> {
    return this.exitPromise;
  }

  /** Last remembered lines of one stream, oldest first. */
  output(stream: StreamName = 'stdout', last?: number): string[] {
    const l = this.lines[stream];
    return last === undefined ? [...l] : l.slice(-last);
  }

  stderrTail(last = 20): string {
    return this.output('stderr', last).join('\n');
  }

  /** "KME_A kme-api exited with code 1" (+ last stderr lines). */
  describeExit(withStderr = true): string {
    const e = this.exit;
    const how = !e
      ? 'is running'
      : e.error
        ? `could not start: ${e.error}`
        : e.signal
          ? `was killed by ${e.signal}`
          : `exited with code ${e.code}`;
    const tail = withStderr ? this.stderrTail() : '';
    return `${this.name} ${how}${tail ? `; last stderr lines:\n${indent(tail)}` : ''}`;
  }

  /** @internal Spawns a new incarnation; use startProcess or restart. */
  spawn(): void {
    if (this.running) throw new Error(`${this.name} is already running (pid ${this.pid})`);
    const [cmd, ...args] = this.argv;
    const exe = cmd === 'node' ? process.execPath : cmd!;
    this.exit = undefined;
    this.lines = { stdout: [], stderr: [] };
    const child = spawn(exe, args, {
      cwd: this.opts.cwd,
      env: { ...process.env, ...this.opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: this.opts.ownProcessGroup ?? false,
    });
    this.child = child;
    this.spawnCount++;
    live.add(this);
    const flushers = (['stdout', 'stderr'] as const).map((s) => this.splitLines(child, s));
    this.exitPromise = new Promise<ExitInfo>((resolve) => {
      const settle = (info: ExitInfo) => {
        if (this.child !== child || this.exit) return;
        for (const f of flushers) f();
        this.exit = info;
        live.delete(this);
        resolve(info);
      };
      // 'close' comes after the output streams ended, so every line is in.
      child.on('close', (code, signal) => settle({ code, signal }));
      child.on('error', (err) => {
        if (child.pid === undefined) settle({ code: null, signal: null, error: err.message });
      });
    });
  }

  /** Send a signal (to the process group with ownProcessGroup). False if not running. */
  kill(signal: NodeJS.Signals = 'SIGTERM'): boolean {
    const pid = this.child?.pid;
    if (!this.running || pid === undefined) return false;
    try {
      if (this.opts.ownProcessGroup) process.kill(-pid, signal);
      else process.kill(pid, signal);
      return true;
    } catch {
      return false;
    }
  }

  /** Wait for the current incarnation to exit; rejects after timeoutMs if given. */
  async waitForExit(timeoutMs?: number): Promise<ExitInfo> {
    if (timeoutMs === undefined) return this.exitPromise;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} did not exit within ${timeoutMs} ms`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exitPromise, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGTERM (or `signal`), then SIGKILL after graceMs; resolves with how it ended. */
  async stop(opts: StopOptions = {}): Promise<ExitInfo> {
    if (!this.running) return this.exit ?? (await this.exitPromise);
    this.kill(opts.signal ?? 'SIGTERM');
    try {
      return await this.waitForExit(opts.graceMs ?? 5000);
    } catch {
      this.kill('SIGKILL');
      return this.exitPromise;
    }
  }

  /** Stop (as `stop`) and start the same argv again. */
  async restart(opts: StopOptions = {}): Promise<void> {
    await this.stop(opts);
    this.spawn();
  }

  /** Resolves once `target` accepts a connection; rejects if this process exits first or on timeout. */
  async waitUntilReady(target: ReadyTarget, timeoutMs = 15_000): Promise<void> {
    const what = describeTarget(target);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running) throw new Error(`${this.describeExit(false)} before ${what} accepted connections${this.tailSuffix()}`);
      if (await canConnect(target)) return;
      if (Date.now() >= deadline) {
        throw new Error(`${this.name} did not accept connections on ${what} within ${timeoutMs} ms${this.tailSuffix()}`);
      }
      await Promise.race([sleep(50), this.exitPromise]);
    }
  }

  waitForSocket(path: string, timeoutMs?: number): Promise<void> {
    return this.waitUntilReady({ unix_socket: path }, timeoutMs);
  }

  waitForPort(port: number, host = '127.0.0.1', timeoutMs?: number): Promise<void> {
    return this.waitUntilReady({ tcp: { host, port } }, timeoutMs);
  }

  private tailSuffix(): string {
    const tail = this.stderrTail();
    return tail ? `; last stderr lines:\n${indent(tail)}` : '';
  }

  /** Splits a stream into lines; returns a function that flushes the last partial line. */
  private splitLines(child: ChildProcess, stream: StreamName): () => void {
    let pending = '';
    const keep = this.opts.keepLines ?? 200;
    const emit = (line: string) => {
      const store = this.lines[stream];
      store.push(line);
      if (store.length > keep) store.splice(0, store.length - keep);
      this.opts.onLine?.(line, stream, this);
    };
    const s = child[stream];
    s?.setEncoding('utf8');
    s?.on('data', (chunk: string) => {
      pending += chunk;
      let i: number;
      while ((i = pending.indexOf('\n')) >= 0) {
        emit(pending.slice(0, i).replace(/\r$/, ''));
        pending = pending.slice(i + 1);
      }
    });
    return () => {
      if (pending) emit(pending);
      pending = '';
    };
  }
}

/** True if `target` accepts a connection right now. */
export function canConnect(target: ReadyTarget, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock =
      'unix_socket' in target
        ? connect({ path: target.unix_socket })
        : connect({ host: target.tcp.host ?? '127.0.0.1', port: target.tcp.port });
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(timeoutMs, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

export function describeTarget(target: ReadyTarget): string {
  return 'unix_socket' in target
    ? `Unix socket ${target.unix_socket}`
    : `TCP ${target.tcp.host ?? '127.0.0.1'}:${target.tcp.port}`;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const indent = (text: string) =>
  text
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');

/** `argv` with `nodeArgs` given to the Node binary it runs (after any `env VAR=...` prefix); unchanged if it runs no `node`. */
export function withNodeArgs(argv: string[], nodeArgs: string[]): string[] {
  const i = argv.indexOf('node');
  return i < 0 || nodeArgs.length === 0 ? argv : [...argv.slice(0, i + 1), ...nodeArgs, ...argv.slice(i + 1)];
}
