/** A socat pseudo-terminal pair for tests: `<dir>/a` and `<dir>/b` are two ends of one line. Killing socat is an unplug. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PtyPair {
  a: string;
  b: string;
  proc: ChildProcess;
  /** Kill socat (the line disappears) and wait for it to exit. */
  kill(): Promise<void>;
  /** kill() if still running, and remove the directory. */
  dispose(): Promise<void>;
}

/** `dir`: reuse a directory (plug the same line back in); default a new temporary one. */
export async function ptyPair(dir = mkdtempSync(join(tmpdir(), 'kme-pty-')), timeoutMs = 5000): Promise<PtyPair & { dir: string }> {
  const a = join(dir, 'a');
  const b = join(dir, 'b');
  const proc = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${a}`, `pty,raw,echo=0,link=${b}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const end = Date.now() + timeoutMs;
  // socat logs "starting data transfer loop" once both ptys exist.
  while (!(existsSync(a) && existsSync(b) && stderr.includes('starting data transfer loop'))) {
    if (proc.exitCode !== null || Date.now() > end) {
      proc.kill('SIGKILL');
      throw new Error(`socat did not make the pty pair: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
  const kill = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
    await exited;
  };
  return {
    dir,
    a,
    b,
    proc,
    kill,
    dispose: async () => {
      await kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
