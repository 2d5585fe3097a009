/**
 * Runs kmectl as a real child process, the way demo.json's `kmectl` says
 * (from the repository root), and collects its exit code and output.
 */
import { spawn } from 'node:child_process';
import type { DemoNet } from '../helpers/demo-net.js';
import { repoRoot } from '../helpers/demo-net.js';

export interface KmectlRun {
  code: number | null;
  stdout: string;
  stderr: string;
  /** stdout parsed, when --json was given. */
  json: any;
}

const ANSI = /\x1b\[/;

/** demo.json's kmectl command line with `args`, against node `kmeId` unless null. */
export function kmectlArgv(net: DemoNet, kmeId: string | null, args: string[]): string[] {
  const [node, ...rest] = net.demo.kmectl;
  if (node !== 'node') throw new Error(`demo.json's kmectl starts with ${node}`);
  return [...rest, ...(kmeId ? ['--node', kmeId] : []), ...args];
}

/** Run `node <argv>` from the repository root. */
export function runNode(argv: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number; cwd?: string } = {}): Promise<KmectlRun> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, argv, { cwd: opts.cwd ?? repoRoot, env: { ...process.env, ...opts.env }, stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stderr.on('data', (c: Buffer) => err.push(c));
    const timer = setTimeout(() => p.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    p.on('error', reject);
    p.on('close', (code) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      // Not a terminal: never colour.
      if (ANSI.test(stdout) || ANSI.test(stderr)) return reject(new Error(`colour codes in piped output:\n${stdout}${stderr}`));
      let json: unknown;
      if (argv.includes('--json')) {
        try {
          json = JSON.parse(stdout);
        } catch {
          return reject(new Error(`--json output is not one JSON document:\n${stdout}\n${stderr}`));
        }
      }
      resolve({ code, stdout, stderr, json });
    });
  });
}

/** kmectl with the node given by its configuration file (--config), not through the demo (so no demo CA). */
export function kmectlConfig(net: DemoNet, configPath: string, args: string[], opts: { env?: NodeJS.ProcessEnv } = {}): Promise<KmectlRun> {
  return runNode([net.demo.kmectl[1]!, ...args, '--config', configPath], opts);
}

export function kmectl(net: DemoNet, kmeId: string | null, args: string[], opts: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {}): Promise<KmectlRun> {
  return runNode(kmectlArgv(net, kmeId, args), opts);
}

/** Poll until `check` holds (or fail with the last value). */
export async function waitFor<T>(what: string, get: () => Promise<T>, check: (v: T) => boolean, timeoutMs = 30_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  let last: T = await get();
  while (!check(last)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(last).slice(0, 2000)}`);
    await new Promise((r) => setTimeout(r, 300));
    last = await get();
  }
  return last;
}
