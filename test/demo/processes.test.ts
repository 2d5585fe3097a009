import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { canConnect, startProcess, type ManagedProcess } from '../../src/demo/processes.js';

/** A stand-in daemon: listens on a Unix socket or a TCP port, or crashes. */
const FAKE_DAEMON = `// A stand-in daemon for process tests: listens on a Unix socket or TCP port.
// usage: node fake-daemon.mjs unix <path> | tcp <port> | crash <message> | stubborn <port>
import net from 'node:net';

const [kind, where] = process.argv.slice(2);
if (kind === 'crash') {
  console.error(\`fatal: \${where}\`);
  process.exit(3);
}
const delay = Number(process.env.FAKE_DELAY_MS ?? 0);
setTimeout(() => {
  const srv = net.createServer((s) => s.end());
  if (kind === 'unix') srv.listen(where);
  else srv.listen(Number(where), '127.0.0.1');
  srv.on('listening', () => console.log(\`listening on \${where}\${process.env.FAKE_TAG ? \` \${process.env.FAKE_TAG}\` : ''}\`));
  process.on('SIGTERM', () => {
    if (kind === 'stubborn') return console.log('ignoring SIGTERM');
    console.log('bye');
    srv.close();
    process.exit(0);
  });
}, delay);
console.error('starting');
`;

const dir = mkdtempSync(join(tmpdir(), 'kme-proc-'));
const fake = join(dir, 'fake-daemon.mjs');
writeFileSync(fake, FAKE_DAEMON);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const started: ManagedProcess[] = [];
const start = (args: string[], env: NodeJS.ProcessEnv = {}, name = 'fake') => {
  const p = startProcess(['node', fake, ...args], { cwd: dir, name, env });
  started.push(p);
  return p;
};
afterEach(async () => {
  for (const p of started.splice(0)) await p.stop({ signal: 'SIGKILL' });
});

async function freePort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const { port } = srv.address() as { port: number };
  await new Promise((r) => srv.close(r));
  return port;
}

describe('startProcess', () => {
  it('waits for a Unix socket, captures output, stops with SIGTERM and restarts', async () => {
    const sock = join(dir, 'a.sock');
    const p = start(['unix', sock], { FAKE_DELAY_MS: '200' });
    expect(p.running).toBe(true);
    expect(await canConnect({ unix_socket: sock })).toBe(false);
    await p.waitForSocket(sock, 10_000);
    expect(await canConnect({ unix_socket: sock })).toBe(true);
    expect(p.output('stdout')).toEqual([`listening on ${sock}`]);
    expect(p.output('stderr')).toEqual(['starting']);

    const firstPid = p.pid;
    expect(await p.stop()).toEqual({ code: 0, signal: null });
    expect(p.running).toBe(false);
    expect(p.output('stdout')).toEqual([`listening on ${sock}`, 'bye']);
    rmSync(sock, { force: true });

    await p.restart();
    expect(p.spawnCount).toBe(2);
    expect(p.pid).not.toBe(firstPid);
    await p.waitForSocket(sock, 10_000);
    p.kill('SIGKILL');
    expect(await p.waitForExit(5000)).toEqual({ code: null, signal: 'SIGKILL' });
    expect(p.describeExit(false)).toBe('fake was killed by SIGKILL');
  });

  it('waits for a TCP port and passes env', async () => {
    const port = await freePort();
    const lines: string[] = [];
    const p = startProcess(['node', fake, 'tcp', String(port)], {
      cwd: dir,
      name: 'tcp',
      env: { FAKE_TAG: 'tagged' },
      onLine: (l, s) => lines.push(`${s}: ${l}`),
    });
    started.push(p);
    await p.waitForPort(port, '127.0.0.1', 10_000);
    expect(lines).toEqual(['stderr: starting', `stdout: listening on ${port} tagged`]);
  });

  it('names the process and its last stderr lines when it dies before it is ready', async () => {
    const p = start(['crash', 'no master key'], {}, 'KME_A kme-keypoold');
    const err = await p.waitForSocket(join(dir, 'never.sock'), 10_000).catch((e: Error) => e);
    expect(err).toBeInstanceOf(Error);
    expect((err as Error).message).toMatch(/^KME_A kme-keypoold exited with code 3 before Unix socket .*never\.sock/);
    expect((err as Error).message).toContain('fatal: no master key');
    expect(p.exitInfo).toEqual({ code: 3, signal: null });
  });

  it('times out with a clear error when the process never gets ready', async () => {
    const port = await freePort();
    const p = start(['unix', join(dir, 'b.sock')], {}, 'slow');
    await expect(p.waitForPort(port, '127.0.0.1', 300)).rejects.toThrow(
      new RegExp(`^slow did not accept connections on TCP 127\\.0\\.0\\.1:${port} within 300 ms`),
    );
  });

  it('SIGKILLs a process that ignores SIGTERM after the grace period', async () => {
    const port = await freePort();
    const p = start(['stubborn', String(port)]);
    await p.waitForPort(port, '127.0.0.1', 10_000);
    const t0 = Date.now();
    expect(await p.stop({ graceMs: 300 })).toEqual({ code: null, signal: 'SIGKILL' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(290);
    expect(p.output('stdout')).toContain('ignoring SIGTERM');
  });

  it('reports a command that cannot be started', async () => {
    const p = startProcess(['/nonexistent/daemon'], { name: 'ghost' });
    const info = await p.waitForExit(5000);
    expect(info.error).toMatch(/ENOENT/);
    expect(p.describeExit()).toMatch(/^ghost could not start: .*ENOENT/);
  });
});
