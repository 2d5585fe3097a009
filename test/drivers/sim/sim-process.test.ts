/**
 * The simulator as its own process (dist/, built by `npm test`) with two
 * socat pty modules, opened from here as a KME would open a serial device;
 * the control CLI against it.
 */
import { execFile } from 'node:child_process';
import { existsSync, lstatSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { SerialPort } from 'serialport';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blockMaterial } from '../../../drivers/sim/material.js';
import { startProcess, type ManagedProcess } from '../../../src/demo/processes.js';
import { sleep, TestHost } from './host.js';

const repo = resolve(import.meta.dirname, '../../..');
const MAIN = join(repo, 'dist/drivers/sim/main.js');
const CONTROL = join(repo, 'dist/drivers/sim/control.js');
const run = promisify(execFile);

const seed = Buffer.alloc(32, 0x3c);
let dir: string;
let sim: ManagedProcess;
const ports: SerialPort[] = [];

function writeConfig(name: string, over: Record<string, unknown> = {}): string {
  const file = join(dir, name);
  writeFileSync(
    file,
    JSON.stringify({
      link_id: 'L-AB',
      seed_file: 'link.seed',
      rate_bps: 64_000,
      block_bits: 1024,
      epoch_ms: Date.now(),
      buffer_blocks: 256,
      qber: 0.02,
      modules: [
        { module_id: 'MOD-A', kme_id: 'KME_A', device: { kind: 'pty', link: 'dev/qkd-a' } },
        { module_id: 'MOD-B', kme_id: 'KME_B', device: { kind: 'pty', link: 'dev/qkd-b' } },
      ],
      control: { path: 'sim-control.sock' },
      ...over,
    }),
  );
  return file;
}

/** Opens a module device the way a KME does: serialport on the pty path, raw bytes. */
async function openModule(path: string): Promise<TestHost> {
  const port = new SerialPort({ path, baudRate: 115200, autoOpen: false });
  await new Promise<void>((ok, fail) => port.open((e) => (e ? fail(e) : ok())));
  await new Promise<void>((ok) => port.flush(() => ok()));
  ports.push(port);
  return new TestHost(port);
}

async function control(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, [CONTROL, ...args], { timeout: 10_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const x = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof x.code === 'number' ? x.code : -1, stdout: x.stdout ?? '', stderr: x.stderr ?? '' };
  }
}

const isLink = (p: string) => {
  try {
    return lstatSync(p).isSymbolicLink();
  } catch {
    return false;
  }
};

async function waitFor(cond: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

beforeAll(async () => {
  if (!existsSync(MAIN)) throw new Error(`${MAIN} is missing: build first (npm run build)`);
  dir = mkdtempSync(join(tmpdir(), 'sim-proc-'));
  writeFileSync(join(dir, 'link.seed'), seed.toString('hex'));
  sim = startProcess(['node', MAIN, '--config', writeConfig('sim.json')], { name: 'kme-sim' });
  await sim.waitForSocket(join(dir, 'sim-control.sock'), 10_000);
});

afterAll(async () => {
  for (const p of ports) if (p.isOpen) await new Promise((r) => p.close(r));
  await sim?.stop({ graceMs: 3000 });
  rmSync(dir, { recursive: true, force: true });
});

describe('simulator process with socat pty modules', { timeout: 60_000 }, () => {
  let first = 0;
  let hostA: TestHost;
  let hostB: TestHost;

  it('both KME-side ptys give the same blocks under the same ids', async () => {
    const [a, b] = await Promise.all([openModule(join(dir, 'dev/qkd-a')), openModule(join(dir, 'dev/qkd-b'))]);
    const [ia, ib] = await Promise.all([
      a.ask({ type: 'hello', hostVersion: 1, hostId: 'KME_A' }, 'identify', 5000),
      b.ask({ type: 'hello', hostVersion: 1, hostId: 'KME_B' }, 'identify', 5000),
    ]);
    expect(ia).toMatchObject({ moduleSerial: 'MOD-A', peerModuleId: 'MOD-B', linkId: 'L-AB' });
    expect(ib).toMatchObject({ moduleSerial: 'MOD-B', peerModuleId: 'MOD-A', linkId: 'L-AB' });
    expect(ia.firstBlockId).toBe(ib.firstBlockId);
    first = ia.firstBlockId;
    hostB = b;
    a.send({ type: 'credit', upToBlockId: first + 19 });
    b.send({ type: 'credit', upToBlockId: first + 19 });
    await Promise.all([a.until(() => a.blockIds().length >= 20, 5000), b.until(() => b.blockIds().length >= 20, 5000)]);
    const want = Array.from({ length: 20 }, (_, i) => first + i);
    expect(a.blockIds()).toEqual(want);
    expect(b.blockIds()).toEqual(want);
    const am = a.all('key_block').map((k) => k.material.toString('hex'));
    expect(b.all('key_block').map((k) => k.material.toString('hex'))).toEqual(am);
    expect(am[7]).toBe(blockMaterial(seed, first + 7, 1024).toString('hex'));
    a.send({ type: 'ack', blockId: first + 9 });
    b.send({ type: 'ack', blockId: first + 19 });
    await a.ask({ type: 'status_request' }, 'link_status');

    const st = await control('--socket', join(dir, 'sim-control.sock'), 'status');
    expect(st.code).toBe(0);
    const status = JSON.parse(st.stdout);
    expect(status.link).toMatchObject({ up: true, first_block_id: first });
    expect(status.modules.map((m: { session: boolean }) => m.session)).toEqual([true, true]);
    expect(status.modules.map((m: { first_unacked: number }) => m.first_unacked)).toEqual([first + 10, first + 20]);
    expect(status.modules[0].device).toMatchObject({ kind: 'pty', link: join(dir, 'dev/qkd-a'), plugged: true });
    expect(st.stdout).not.toContain(am[0]);
  });

  it('unplug: the pty path disappears and comes back; the module offers its unacknowledged blocks again', async () => {
    const path = join(dir, 'dev/qkd-a');
    // (That the KME's serial port sees the hang-up is the serial transport's test; here, the device.)
    const r = await control('--socket', join(dir, 'sim-control.sock'), '--module', 'MOD-A', 'unplug', '1');
    expect(r.code, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, fault: 'unplug', modules: ['MOD-A'], seconds: 1 });
    await waitFor(() => !isLink(path), 5000, 'the KME-side path to disappear');
    expect(isLink(join(dir, 'dev/qkd-b'))).toBe(true);
    ports[0]!.close(() => {});
    await waitFor(() => isLink(path), 10_000, 'the KME-side path to come back');
    const a = await openModule(path);
    const id = await a.ask({ type: 'hello', hostVersion: 1, hostId: 'KME_A' }, 'identify', 10_000);
    expect(id.firstBlockId).toBe(first + 10);
    a.send({ type: 'credit', upToBlockId: first + 14 });
    await a.until(() => a.blockIds().length >= 5, 10_000);
    expect(a.blockIds()).toEqual([10, 11, 12, 13, 14].map((i) => first + i));
    hostA = a;
  });

  it('module-reboot: the module goes quiet, the peer hears the link go down, then it announces itself again', async () => {
    const b = hostB;
    const fromA = hostA.frames.length;
    const fromB = b.frames.length;
    const r = await control('--socket', join(dir, 'sim-control.sock'), '--module', 'MOD-B', 'module-reboot', '0.6');
    expect(r.code, r.stderr).toBe(0);
    expect(await hostA.next('link_status', (m) => !m.up, 5000, fromA)).toMatchObject({ up: false });
    b.send({ type: 'status_request' });
    await sleep(200);
    expect(b.frames.length).toBe(fromB);
    // Unsolicited IDENTIFY once booted: the session is new, the unacknowledged blocks come again.
    const id = await b.next('identify', () => true, 8000, fromB);
    expect(id.firstBlockId).toBe(first + 20);
    await hostA.next('link_status', (m) => m.up, 5000, fromA);
    b.send({ type: 'credit', upToBlockId: first + 22 });
    await b.until(() => b.blockIds().length >= 23, 10_000);
    expect(b.blockIds().slice(20)).toEqual([20, 21, 22].map((i) => first + i));
  });

  it('the control CLI refuses bad input and says when no simulator runs', async () => {
    const sock = join(dir, 'sim-control.sock');
    const unknown = await control('--socket', sock, 'meteor-strike', '5');
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toMatch(/unknown fault "meteor-strike"; known faults: link-down, eavesdrop-alarm/);
    for (const bad of ['0', '-3', 'five', '1e9']) {
      const r = await control('--socket', sock, 'link-down', bad);
      expect(r.code, bad).toBe(2);
      expect(r.stderr).toMatch(/bad duration/);
    }
    expect((await control('--socket', sock, 'link-down')).code).toBe(2);
    expect((await control('link-down', '5')).stderr).toMatch(/missing --socket/);
    const mod = await control('--socket', sock, '--module', 'MOD-Z', 'stall', '1');
    expect(mod.code).toBe(1);
    expect(mod.stderr).toMatch(/refused: no module "MOD-Z"/);
    const none = await control('--socket', join(dir, 'nobody.sock'), 'status');
    expect(none.code).toBe(1);
    expect(none.stderr).toMatch(/no simulator is running at .*nobody\.sock/);
    const ok = await control('--socket', sock, 'link-down', '0.2');
    expect(ok.code).toBe(0);
    expect(JSON.parse(ok.stdout)).toMatchObject({ ok: true, fault: 'link-down', modules: [] });
  });

  it('refuses a bad config, and pty devices without socat', async () => {
    const bad = await run(process.execPath, [MAIN, '--config', writeConfig('bad.json', { rate_bps: -1, buffer_blocks: 0 })]).catch((e) => e);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/rate_bps/);
    expect(bad.stderr).toMatch(/buffer_blocks/);
    const cfg = writeConfig('nosocat.json', { control: { path: 'other.sock' } });
    const nosocat = await run(process.execPath, [MAIN, '--config', cfg], { env: { ...process.env, PATH: '/nonexistent' } }).catch((e) => e);
    expect(nosocat.code).toBe(2);
    expect(nosocat.stderr).toMatch(/socat is not installed.*MOD-A, MOD-B.*'pty' devices/s);
    expect(nosocat.stderr).toMatch(/"kind": "unix"/);
  });

  it('SIGTERM: exits 0, kills its socats and removes its paths', async () => {
    const info = await sim.stop({ graceMs: 5000 });
    expect(info.code).toBe(0);
    expect(isLink(join(dir, 'dev/qkd-a'))).toBe(false);
    expect(isLink(join(dir, 'dev/qkd-b'))).toBe(false);
    expect(existsSync(join(dir, 'sim-control.sock'))).toBe(false);
    const lines = sim.output('stdout').map((l) => JSON.parse(l) as { msg: string });
    expect(lines.some((l) => l.msg === 'simulator ready')).toBe(true);
    expect(lines.some((l) => l.msg === 'stopped')).toBe(true);
    // Never key material in the logs.
    const all = sim.output('stdout').join('\n');
    expect(all).not.toContain(blockMaterial(seed, first, 1024).toString('hex').slice(0, 32));
    expect(all).not.toContain(seed.toString('hex'));
  });
});
