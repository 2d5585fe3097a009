/**
 * sd_notify: the notifier's messages and the health-fed watchdog, first with
 * an injected transport, then for real over a Unix datagram socket playing
 * the service manager: a stand-in daemon whose health we toggle, and the
 * built kme-keypoold and kme-api (demo PKI, master key in a file that we take
 * away to make keypoold stop serving).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { createSdNotifier, startWatchdog, watchdogTimeoutMs } from '../../src/common/sd-notify.js';
import { prepareDemo } from '../../src/demo/prepare.js';
import { freePorts } from '../../src/demo/ports.js';
import { NotifyManager } from './notify-manager.js';

const repo = resolve(import.meta.dirname, '../..');
const dist = (p: string) => join(repo, 'dist', p);

describe('createSdNotifier', () => {
  it('is a no-op without NOTIFY_SOCKET', () => {
    const send = vi.fn();
    const n = createSdNotifier({ env: {}, send });
    expect(n.enabled).toBe(false);
    expect(n.notify('READY=1')).toBe(false);
    n.ready('x');
    n.watchdog();
    n.stopping();
    expect(send).not.toHaveBeenCalled();
  });

  it('refuses abstract and relative socket names with a warning', () => {
    for (const path of ['@/org/freedesktop/systemd1/notify', 'relative.sock']) {
      const warn = vi.fn();
      const n = createSdNotifier({ env: { NOTIFY_SOCKET: path }, send: vi.fn(), logger: { warn, info: vi.fn() } });
      expect(n.enabled).toBe(false);
      expect(warn).toHaveBeenCalledOnce();
    }
  });

  it('sends READY, STATUS, STOPPING and WATCHDOG datagrams; STATUS stays on one line', () => {
    const sent: string[] = [];
    const n = createSdNotifier({ env: { NOTIFY_SOCKET: '/run/x.sock' }, send: (p, m) => sent.push(`${p} ${m.toString()}`) });
    n.ready('serving\nkeys');
    n.status('s');
    n.watchdog();
    n.stopping('bye');
    expect(sent).toEqual(['/run/x.sock READY=1\nSTATUS=serving keys', '/run/x.sock STATUS=s', '/run/x.sock WATCHDOG=1', '/run/x.sock STOPPING=1\nSTATUS=bye']);
  });

  it('logs a failing manager socket once per failing spell', () => {
    const warn = vi.fn();
    const info = vi.fn();
    let fail = true;
    const n = createSdNotifier({
      env: { NOTIFY_SOCKET: '/run/x.sock' }, logger: { warn, info },
      send: () => {
        if (fail) throw new Error('ECONNREFUSED');
      },
    });
    expect(n.notify('WATCHDOG=1')).toBe(false);
    expect(n.notify('WATCHDOG=1')).toBe(false);
    expect(warn).toHaveBeenCalledOnce();
    fail = false;
    expect(n.notify('WATCHDOG=1')).toBe(true);
    expect(info).toHaveBeenCalledOnce();
  });
});

describe('startWatchdog', () => {
  afterEach(() => void vi.useRealTimers());

  it('reads the period from WATCHDOG_USEC, only for the process WATCHDOG_PID names', () => {
    expect(watchdogTimeoutMs({ WATCHDOG_USEC: '30000000' }, 7)).toBe(30_000);
    expect(watchdogTimeoutMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '7' }, 7)).toBe(30_000);
    expect(watchdogTimeoutMs({ WATCHDOG_USEC: '30000000', WATCHDOG_PID: '8' }, 7)).toBeUndefined();
    expect(watchdogTimeoutMs({}, 7)).toBeUndefined();
    expect(watchdogTimeoutMs({ WATCHDOG_USEC: 'x' }, 7)).toBeUndefined();
  });

  it('pings every half period while healthy, withholds pings while not, says so in STATUS', async () => {
    vi.useFakeTimers();
    const sent: string[] = [];
    const notifier = createSdNotifier({ env: { NOTIFY_SOCKET: '/run/x.sock' }, send: (_p, m) => sent.push(m.toString()) });
    let healthy = true;
    const w = startWatchdog({ notifier, env: { WATCHDOG_USEC: '1000000' }, check: () => ({ healthy, status: healthy ? 'ok' : 'bad' }) });
    expect(w.periodMs).toBe(500);
    await vi.advanceTimersByTimeAsync(1600); // the first check at once, then at 500, 1000, 1500
    expect(sent.filter((m) => m === 'WATCHDOG=1')).toHaveLength(4);
    expect(sent.filter((m) => m.startsWith('STATUS='))).toEqual(['STATUS=ok']);
    healthy = false;
    sent.length = 0;
    await vi.advanceTimersByTimeAsync(2000);
    expect(sent).toEqual(['STATUS=bad']);
    expect(w.healthy).toBe(false);
    healthy = true;
    await vi.advanceTimersByTimeAsync(500);
    expect(sent).toEqual(['STATUS=bad', 'STATUS=ok', 'WATCHDOG=1']);
    w.stop();
    sent.length = 0;
    await vi.advanceTimersByTimeAsync(5000);
    expect(sent).toEqual([]);
  });

  it('counts a throwing check, and one still running at the next period, as unhealthy', async () => {
    vi.useFakeTimers();
    const sent: string[] = [];
    const notifier = createSdNotifier({ env: { NOTIFY_SOCKET: '/run/x.sock' }, send: (_p, m) => sent.push(m.toString()) });
    let mode: 'throw' | 'hang' = 'throw';
    const w = startWatchdog({
      notifier, env: { WATCHDOG_USEC: '1000000' },
      check: () => {
        if (mode === 'throw') throw new Error('store gone');
        return new Promise<boolean>(() => {});
      },
    });
    await vi.advanceTimersByTimeAsync(1200);
    expect(sent).toEqual(['STATUS=health check failed: store gone']);
    mode = 'hang';
    sent.length = 0;
    await vi.advanceTimersByTimeAsync(2000);
    expect(sent).toEqual(['STATUS=health check did not finish within the watchdog period']);
    w.stop();
  });

  it('does nothing without WATCHDOG_USEC or without a manager', async () => {
    vi.useFakeTimers();
    const send = vi.fn();
    const check = vi.fn(() => true);
    const w1 = startWatchdog({ notifier: createSdNotifier({ env: { NOTIFY_SOCKET: '/run/x.sock' }, send }), env: {}, check });
    const w2 = startWatchdog({ notifier: createSdNotifier({ env: {}, send }), env: { WATCHDOG_USEC: '1000' }, check });
    await vi.advanceTimersByTimeAsync(5000);
    expect(w1.periodMs).toBeUndefined();
    expect(w2.periodMs).toBeUndefined();
    expect(check).not.toHaveBeenCalled();
    expect(send).not.toHaveBeenCalled();
  });
});

/** Spawn with the manager's socket and a watchdog of `watchdogMs`; output kept for failure messages. */
function spawnNotified(args: string[], manager: NotifyManager, watchdogMs: number, env: NodeJS.ProcessEnv = {}, cwd = repo) {
  const child = spawn(process.execPath, args, {
    cwd,
    env: { ...process.env, NOTIFY_SOCKET: manager.path, WATCHDOG_USEC: String(watchdogMs * 1000), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const out: string[] = [];
  child.stdout!.on('data', (b: Buffer) => out.push(b.toString()));
  child.stderr!.on('data', (b: Buffer) => out.push(b.toString()));
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, out, exited };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function stop(p: { child: ChildProcess; exited: Promise<number | null> }): Promise<number | null> {
  if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
  const t = setTimeout(() => p.child.kill('SIGKILL'), 10_000);
  const code = await p.exited;
  clearTimeout(t);
  return code;
}

describe('over a real notify socket', () => {
  it('a stand-in daemon: READY=1, WATCHDOG=1 only while healthy, STOPPING=1', async () => {
    const manager = new NotifyManager();
    const dir = mkdtempSync(join(tmpdir(), 'kme-notify-child-'));
    const sick = join(dir, 'sick');
    const p = spawnNotified([join(import.meta.dirname, 'fixtures', 'notify-child.mjs')], manager, 200, {
      SICK_FILE: sick, SD_NOTIFY_MODULE: dist('src/common/sd-notify.js'),
    });
    try {
      await manager.waitFor('READY=1', 10_000);
      let i = await manager.waitFor('WATCHDOG=1', 5_000);
      i = await manager.waitFor('WATCHDOG=1', 5_000, i + 1);
      writeFileSync(sick, '');
      const s = await manager.waitFor('STATUS=sick', 5_000, i + 1);
      await sleep(600); // six periods
      expect(manager.count('WATCHDOG=1', s + 1)).toBe(0);
      rmSync(sick);
      const w = await manager.waitFor('STATUS=well', 5_000, s + 1);
      await manager.waitFor('WATCHDOG=1', 5_000, w);
      p.child.kill('SIGTERM');
      await manager.waitFor('STOPPING=1', 5_000);
      expect(await p.exited).toBe(0);
      expect(p.out.join('')).toContain('enabled=true period=100');
    } finally {
      await stop(p);
      manager.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  describe('the built daemons', () => {
    let dir: string;
    let configFile: string;
    let config: any;

    beforeAll(async () => {
      dir = mkdtempSync(join(tmpdir(), 'kme-notify-demo-'));
      const [a1, a2, p1, p2] = await freePorts(4);
      await prepareDemo(repo, { dir, apiPorts: [a1!, a2!], peerPorts: [p1!, p2!] });
      configFile = join(dir, 'KME_A', 'config.json');
      config = JSON.parse(readFileSync(configFile, 'utf8'));
      // The master key in a file, so that taking the file away makes keypoold stop serving.
      config.master_key = { provider: 'file', path: 'notify-test-master.key' };
      writeFileSync(configFile, JSON.stringify(config, null, 2));
    }, 120_000);
    afterAll(() => rmSync(dir, { recursive: true, force: true }));

    it('kme-keypoold: READY=1 once its sockets listen, WATCHDOG=1 only while serving, STOPPING=1 on SIGTERM', async () => {
      const manager = new NotifyManager();
      const p = spawnNotified([dist('src/keypoold/main.js'), '--config', configFile], manager, 600, {}, dir);
      const keyFile = join(dir, 'KME_A', 'notify-test-master.key');
      try {
        const r = await manager.waitFor('READY=1', 30_000).catch((e: Error) => {
          throw new Error(`${e.message}\n${p.out.join('')}`);
        });
        const socketDir = join(dir, 'KME_A');
        const sock = (p: string) => (p.startsWith('/') ? p : join(socketDir, p));
        expect(existsSync(sock(config.keypoold.socket)), 'API socket exists at READY').toBe(true);
        expect(existsSync(sock(config.keypoold.admin_socket)), 'admin socket exists at READY').toBe(true);
        expect(manager.messages[r]!.lines).toContain('STATUS=serving keys as KME_A');
        let i = await manager.waitFor('WATCHDOG=1', 5_000, r);
        i = await manager.waitFor('WATCHDOG=1', 5_000, i + 1);
        expect(manager.find(/^STATUS=serving keys; peers reachable on \d+\/1 link\(s\)$/)).toBeGreaterThanOrEqual(0);

        // The master key goes away: keypoold stops serving within its 2 s check, and the pings stop.
        renameSync(keyFile, `${keyFile}.away`);
        const s = await manager.waitFor(/^STATUS=not serving keys: master key unavailable/, 10_000, i + 1);
        await sleep(1500); // five periods
        expect(manager.count('WATCHDOG=1', s + 1)).toBe(0);
        renameSync(`${keyFile}.away`, keyFile);
        const back = await manager.waitFor(/^STATUS=serving keys;/, 10_000, s + 1);
        await manager.waitFor('WATCHDOG=1', 5_000, back);

        p.child.kill('SIGTERM');
        await manager.waitFor('STOPPING=1', 10_000);
        expect(await p.exited).toBe(0);
      } finally {
        await stop(p);
        manager.close();
      }
    }, 90_000);

    it('kme-api: READY=1 once it listens (keypoold or not), WATCHDOG=1, STOPPING=1 on SIGTERM', async () => {
      const manager = new NotifyManager();
      const p = spawnNotified([dist('src/api/main.js'), '--config', configFile], manager, 400, {}, dir);
      try {
        const r = await manager.waitFor('READY=1', 30_000).catch((e: Error) => {
          throw new Error(`${e.message}\n${p.out.join('')}`);
        });
        expect(manager.messages[r]!.lines).toContain(`STATUS=listening on ${config.api.host}:${config.api.port}`);
        let i = await manager.waitFor('WATCHDOG=1', 5_000, r);
        i = await manager.waitFor('WATCHDOG=1', 5_000, i + 1);
        p.child.kill('SIGTERM');
        await manager.waitFor('STOPPING=1', 10_000, i);
        expect(await p.exited).toBe(0);
      } finally {
        await stop(p);
        manager.close();
      }
    }, 60_000);

    it('without NOTIFY_SOCKET the daemons run as before (no notifier, no watchdog)', async () => {
      const p = spawn(process.execPath, [dist('src/api/main.js'), '--config', configFile], {
        cwd: dir, env: { ...process.env, NOTIFY_SOCKET: '', WATCHDOG_USEC: '' }, stdio: ['ignore', 'pipe', 'pipe'],
      });
      const out: string[] = [];
      p.stdout.on('data', (b: Buffer) => out.push(b.toString()));
      const exited = new Promise<number | null>((r) => p.once('exit', (c) => r(c)));
      for (let t = 0; t < 200 && !out.join('').includes('"listening"'); t++) await sleep(100);
      expect(out.join('')).toContain('"listening"');
      expect(out.join('')).not.toContain('sd_notify');
      p.kill('SIGTERM');
      expect(await exited).toBe(0);
    }, 60_000);
  });
});
