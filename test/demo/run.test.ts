import { softHsmLibrary } from '../../src/demo/softhsm.js';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { prepareDemo } from '../../src/demo/prepare.js';
import { freePorts } from '../../src/demo/ports.js';
import { canConnect, startProcess, type ManagedProcess } from '../../src/demo/processes.js';
import { runDemo, serviceSpecs } from '../../src/demo/runner.js';
import { Supervisor, type ServiceSpec } from '../../src/demo/supervisor.js';

const REPO = resolve(import.meta.dirname, '../..');
const BUILT_RUN = join(REPO, 'dist/src/demo/run.js');
const BUILT_CONTROL = join(REPO, 'dist/drivers/sim/control.js');
const sh = promisify(execFile);

const tmpDirs: string[] = [];
const tmp = () => {
  const d = mkdtempSync(join(tmpdir(), 'kme-run-'));
  tmpDirs.push(d);
  return d;
};
afterAll(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

const procs: ManagedProcess[] = [];
const sups: Supervisor[] = [];
afterEach(async () => {
  for (const s of sups.splice(0)) await s.stopAll();
  for (const p of procs.splice(0)) await p.stop({ signal: 'SIGKILL' });
});

/**
 * Stand-in for dist/src/{keypoold,api}/main.js: reads --config, listens where
 * the real daemon would, logs one pino-style line; FAKE_DIE=<KME>/<role> makes
 * that one exit with an error after a moment. The keypoold refuses to start
 * unless its QKD module's device (made by the simulator) is there.
 */
const FAKE_MAIN = (role: 'keypoold' | 'api') => `
import { existsSync, readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
const file = process.argv[process.argv.indexOf('--config') + 1];
const cfg = JSON.parse(readFileSync(file, 'utf8'));
if (${role === 'keypoold'}) {
  const dev = resolve(dirname(file), cfg.links[0].qkd.path);
  if (!existsSync(dev)) { console.error('no QKD module at ' + dev); process.exit(3); }
  console.log(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, msg: 'module open', device: dev }));
}
const srv = createServer((s) => s.end());
const where = ${role === 'keypoold' ? 'resolve(dirname(file), cfg.keypoold.socket)' : 'cfg.api.port'};
srv.listen(where, ...(${role === 'api'} ? ['127.0.0.1'] : []), () =>
  console.log(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, msg: 'listening', where: String(where) })));
if (process.env.FAKE_DIE === cfg.kme_id + '/${role}') setTimeout(() => { console.error('boom: simulated failure'); process.exit(1); }, 300);
process.on('SIGTERM', () => { srv.close(); process.exit(0); });
`;

/**
 * Stand-in for dist/drivers/sim/main.js: reads --config (sim.json), puts each
 * module's device where the real simulator links its pty (a link to
 * /dev/null here), answers NDJSON requests on the control socket (logging
 * each), and removes it all on SIGTERM. FAKE_DIE=qkd-sim makes it exit with
 * an error after FAKE_DIE_MS (default 300) ms.
 */
const FAKE_SIM = `
import { readFileSync, rmSync, symlinkSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
const file = process.argv[process.argv.indexOf('--config') + 1];
const cfg = JSON.parse(readFileSync(file, 'utf8'));
const at = (p) => resolve(dirname(file), p);
const log = (msg, extra) => console.log(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, msg, ...extra }));
const devices = cfg.modules.map((m) => at(m.device.link));
const control = at(cfg.control.path);
const srv = createServer((s) => {
  let buf = '';
  s.setEncoding('utf8');
  s.on('error', () => {});
  s.on('data', (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf('\\n')) >= 0) {
      const req = JSON.parse(buf.slice(0, i));
      buf = buf.slice(i + 1);
      log('control request', { req });
      const seconds = Number(req.seconds);
      s.write(JSON.stringify({ ok: true, fault: req.fault, modules: [], seconds, until_ms: Date.now() + seconds * 1000 }) + '\\n');
    }
  });
});
srv.listen(control, () => {
  for (const d of devices) { rmSync(d, { force: true }); symlinkSync('/dev/null', d); }
  log('simulator ready', { control, devices });
});
if (process.env.FAKE_DIE === 'qkd-sim') setTimeout(() => { console.error('boom: simulated failure'); process.exit(1); }, Number(process.env.FAKE_DIE_MS ?? 300));
process.on('SIGTERM', () => { srv.close(); for (const p of [control, ...devices]) rmSync(p, { force: true }); process.exit(0); });
`;

async function fakeDemoRoot(): Promise<string> {
  const root = tmp();
  const [a, b, c, d] = await freePorts(4);
  await prepareDemo(root, { apiPorts: [a!, b!], peerPorts: [c!, d!] });
  for (const role of ['keypoold', 'api'] as const) {
    mkdirSync(join(root, 'dist/src', role), { recursive: true });
    writeFileSync(join(root, 'dist/src', role, 'main.js'), FAKE_MAIN(role));
  }
  mkdirSync(join(root, 'dist/drivers/sim'), { recursive: true });
  writeFileSync(join(root, 'dist/drivers/sim/main.js'), FAKE_SIM);
  // The real control CLI (it runs from the repository's dist/), talking to the stand-in.
  symlinkSync(BUILT_CONTROL, join(root, 'dist/drivers/sim/control.js'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}');
  return root;
}

async function waitForLine(p: ManagedProcess, re: RegExp, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!p.output('stdout', 1000).some((l) => re.test(l))) {
    if (!p.running) throw new Error(`runner exited early: ${p.describeExit()}\n${p.output('stdout').join('\n')}`);
    if (Date.now() > deadline) throw new Error(`no line matching ${re}:\n${p.output('stdout').join('\n')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('runDemo', () => {
  it('--prepare-only prepares, reports and exits 0; reruns keep everything', async () => {
    const root = tmp();
    const out: string[] = [];
    const io = { root, out: (l: string) => out.push(l), err: (l: string) => out.push(`ERR ${l}`) };
    expect(await runDemo(['--prepare-only'], io)).toBe(0);
    expect(out).toContain('demo network described in var/demo/demo.json');
    // 29 files, plus the SoftHSM2 conf and two PIN files when SoftHSM2 is installed.
    const files = softHsmLibrary() ? 32 : 29;
    expect(out).toContain(`written (${files}):`);
    expect(out).toContain('  var/demo/pki/SAE_A1.key');
    expect(out).toContain('  var/demo/qkd-sim/sim.json');
    out.length = 0;
    expect(await runDemo(['--prepare-only'], io)).toBe(0);
    expect(out).toEqual(['demo network described in var/demo/demo.json', `kept as they were: ${files} files`]);
  });

  it('rejects unknown arguments and an unbuilt tree', async () => {
    const root = tmp();
    const err: string[] = [];
    const io = { root, out: () => {}, err: (l: string) => err.push(l) };
    expect(await runDemo(['--bogus'], io)).toBe(2);
    expect(err.join('\n')).toMatch(/unknown argument --bogus/);
    expect(await runDemo([], io)).toBe(1);
    expect(err.join('\n')).toMatch(
      /not built: dist\/drivers\/sim\/main\.js, dist\/src\/keypoold\/main\.js, dist\/src\/api\/main\.js missing/,
    );
  });

  it('derives five services in three stages from demo.json: simulator, keypoolds, APIs, ready on socket / port', async () => {
    const root = tmp();
    const demo = await prepareDemo(root);
    const specs = serviceSpecs(demo);
    expect(specs.map((s) => [s.name, s.stage, s.ready])).toEqual([
      ['qkd-sim', 0, { unix_socket: join(root, 'var/demo/qkd-sim/control.sock') }],
      ['KME_A kme-keypoold', 1, { unix_socket: join(root, 'var/demo/KME_A/keypoold.sock') }],
      ['KME_A kme-api', 2, { tcp: { host: '127.0.0.1', port: 8443 } }],
      ['KME_B kme-keypoold', 1, { unix_socket: join(root, 'var/demo/KME_B/keypoold.sock') }],
      ['KME_B kme-api', 2, { tcp: { host: '127.0.0.1', port: 9443 } }],
    ]);
    // Run from the root, as demo.json says.
    expect(specs[0]!.argv).toEqual(['node', 'dist/drivers/sim/main.js', '--config', 'var/demo/qkd-sim/sim.json']);
    expect(specs[1]!.argv).toEqual(demo.nodes[0]!.processes[0]!.argv);
  });
});

describe('Supervisor', () => {
  it('starts stage by stage, reports an unexpected exit, stops the rest', async () => {
    const root = await fakeDemoRoot();
    const demo = await prepareDemo(root);
    const lines: string[] = [];
    const sup = new Supervisor({ cwd: root, graceMs: 2000, onLine: (n, l) => lines.push(`${n}: ${l}`) });
    sups.push(sup);
    const specs = serviceSpecs(demo);
    await sup.startAll(specs);
    for (const s of specs) expect(await canConnect(s.ready), s.name).toBe(true);
    // The simulator was ready before any keypoold opened its module; both keypoolds were listening before any api started.
    // A process's output can reach us a moment after its port accepts: wait for the lines.
    const expected = [/^qkd-sim: .*simulator ready/, /^KME_A kme-keypoold: .*listening/, /^KME_B kme-keypoold: .*listening/, /^KME_A kme-api: .*listening/, /^KME_B kme-api: .*listening/];
    for (let i = 0; i < 100 && !expected.every((re) => lines.some((l) => re.test(l))); i++) await new Promise((r) => setTimeout(r, 20));
    const idx = (re: RegExp) => {
      const i = lines.findIndex((l) => re.test(l));
      expect(i, String(re)).toBeGreaterThanOrEqual(0);
      return i;
    };
    expect(idx(/^qkd-sim: .*simulator ready/)).toBeLessThan(
      Math.min(idx(/^KME_A kme-keypoold: .*module open.*KME_A\/qkd0/), idx(/^KME_B kme-keypoold: .*module open.*KME_B\/qkd0/)),
    );
    expect(Math.max(idx(/^KME_A kme-keypoold: .*listening/), idx(/^KME_B kme-keypoold: .*listening/))).toBeLessThan(
      Math.min(idx(/^KME_A kme-api: .*listening/), idx(/^KME_B kme-api: .*listening/)),
    );

    const victim = sup.procs.find((p) => p.name === 'KME_B kme-api')!;
    victim.kill('SIGKILL');
    expect(await sup.firstUnexpectedExit()).toBe(victim);
    await sup.stopAll();
    expect(sup.procs.every((p) => !p.running)).toBe(true);
    for (const s of specs) expect(await canConnect(s.ready), s.name).toBe(false);
  });

  it('refuses to start over a port already in use, and stops what it started when one fails', async () => {
    const root = await fakeDemoRoot();
    const demo = await prepareDemo(root);
    const specs = serviceSpecs(demo);
    const busy = createServer();
    const apiA = specs.find((s) => s.name === 'KME_A kme-api')!.ready as { tcp: { port: number } };
    await new Promise<void>((r) => busy.listen(apiA.tcp.port, '127.0.0.1', r));
    try {
      const sup = new Supervisor({ cwd: root });
      sups.push(sup);
      await expect(sup.startAll(specs)).rejects.toThrow(/already accepts connections: is another KME_A kme-api still running/);
      expect(sup.procs.map((p) => [p.name, p.running])).toEqual([
        ['qkd-sim', false],
        ['KME_A kme-keypoold', false],
        ['KME_B kme-keypoold', false],
      ]);
      // The stand-in simulator cleaned up after itself.
      for (const id of ['KME_A', 'KME_B']) expect(existsSync(join(root, `var/demo/${id}/qkd0`))).toBe(false);
    } finally {
      busy.close();
    }

    const crashing: ServiceSpec[] = specs.map((s) =>
      s.name === 'KME_B kme-keypoold' ? { ...s, argv: ['node', '-e', 'console.error("no HSM"); process.exit(4)'] } : s,
    );
    const sup2 = new Supervisor({ cwd: root });
    sups.push(sup2);
    await expect(sup2.startAll(crashing)).rejects.toThrow(/KME_B kme-keypoold exited with code 4 before Unix socket[\s\S]*no HSM/);
    expect(sup2.procs.every((p) => !p.running)).toBe(true);

    // Without the simulator there is no module to open: no keypoold starts.
    const noSim: ServiceSpec[] = specs.map((s) => (s.name === 'qkd-sim' ? { ...s, argv: ['node', '-e', 'process.exit(2)'] } : s));
    const sup3 = new Supervisor({ cwd: root });
    sups.push(sup3);
    await expect(sup3.startAll(noSim)).rejects.toThrow(/qkd-sim exited with code 2 before Unix socket/);
    expect(sup3.procs.map((p) => p.name)).toEqual(['qkd-sim']);
  });
});

describe('dist/src/demo/run.js (built by `npm test`)', () => {
  it('runs the five processes with prefixed output, prints curl and fault lines, and stops on SIGINT with 0', async () => {
    const root = await fakeDemoRoot();
    const run = startProcess(['node', BUILT_RUN], { cwd: root, name: 'run' });
    procs.push(run);
    await waitForLine(run, /Ctrl-C stops everything/);
    // Prefixed, aligned, pino lines shortened.
    await waitForLine(run, /^KME_A kme-keypoold \| INFO  listening \{"where":".*KME_A\/keypoold\.sock"\}$/);
    await waitForLine(run, /^KME_B kme-api {6}\| INFO  listening \{"where":"\d+"\}$/);
    const out = run.output('stdout', 1000);
    const curls = out.filter((l) => l.trim().startsWith('curl '));
    expect(curls).toHaveLength(3);
    expect(curls[0]).toMatch(
      /--cacert var\/demo\/pki\/ca\.crt --cert var\/demo\/pki\/SAE_A1\.crt --key var\/demo\/pki\/SAE_A1\.key https:\/\/127\.0\.0\.1:\d+\/api\/v1\/keys\/SAE_B1\/status$/,
    );
    expect(curls[1]).toMatch(/SAE_A1\.key 'https:\/\/127\.0\.0\.1:\d+\/api\/v1\/keys\/SAE_B1\/enc_keys\?number=1&size=256'$/);
    expect(curls[2]).toMatch(/SAE_B1\.key 'https:\/\/127\.0\.0\.1:\d+\/api\/v1\/keys\/SAE_A1\/dec_keys\?key_ID=KEY_ID'$/);
    await waitForLine(run, /^qkd-sim {12}\| INFO  simulator ready /);

    // After the curl lines, one line injects a fault: demo.json's control argv + `link-down 5`, paths relative to the root.
    const fault = out[out.findIndex((l) => l === curls[2]) + 1]!;
    expect(fault).toBe(
      '  node dist/drivers/sim/control.js --socket var/demo/qkd-sim/control.sock link-down 5  # inject a fault: the QKD link goes down for 5 s',
    );
    const demo = await prepareDemo(root);
    expect(fault.trim().startsWith([...demo.qkd_sim.control, 'link-down', '5'].join(' ') + '  #')).toBe(true);
    // Then the technician's tool on the first node: demo.json's kmectl argv.
    const kmectl = out[out.findIndex((l) => l === fault) + 1]!;
    expect(kmectl).toBe(`  ${[...demo.kmectl, '--node', 'KME_A', 'status'].join(' ')}`);
    expect(kmectl).toBe('  node dist/scripts/kmectl.js --demo var/demo/demo.json --node KME_A status');
    expect(out[out.findIndex((l) => l === kmectl) + 1]).toBe('Ctrl-C stops everything.');
    // Pasted into a shell at the root, it reaches the running simulator.
    const { stdout } = await sh('sh', ['-c', fault], { cwd: root });
    expect(JSON.parse(stdout)).toMatchObject({ ok: true, fault: 'link-down', seconds: 5 });
    await waitForLine(run, /^qkd-sim {12}\| INFO  control request \{"req":\{"cmd":"fault","fault":"link-down","seconds":5\}\}$/);

    run.kill('SIGINT');
    expect(await run.waitForExit(15_000)).toEqual({ code: 0, signal: null });
    expect(run.output('stdout').at(-1)).toBe('demo network stopped');
    for (const s of serviceSpecs(await prepareDemo(root))) expect(await canConnect(s.ready), s.name).toBe(false);
    for (const id of ['KME_A', 'KME_B']) expect(existsSync(join(root, `var/demo/${id}/qkd0`))).toBe(false);
  });

  it.each([
    ['KME_B/api', 'KME_B kme-api', {}],
    ['qkd-sim', 'qkd-sim', { FAKE_DIE_MS: '1500' }],
  ])('exits 1 naming the process that died (%s), after stopping the others', async (die, name, env) => {
    const root = await fakeDemoRoot();
    const run = startProcess(['node', BUILT_RUN], { cwd: root, name: 'run', env: { FAKE_DIE: die, ...env } });
    procs.push(run);
    const info = await run.waitForExit(20_000);
    expect(info).toEqual({ code: 1, signal: null });
    const err = run.output('stderr').join('\n');
    expect(err).toMatch(new RegExp(`demo stopped: ${name} exited with code 1`));
    expect(err).toMatch(/boom: simulated failure/);
    for (const s of serviceSpecs(await prepareDemo(root))) expect(await canConnect(s.ready), s.name).toBe(false);
  });

  it('stops on SIGTERM too', async () => {
    const root = await fakeDemoRoot();
    const run = startProcess(['node', BUILT_RUN], { cwd: root, name: 'run' });
    procs.push(run);
    await waitForLine(run, /Ctrl-C stops everything/);
    expect(await run.stop({ graceMs: 15_000 })).toEqual({ code: 0, signal: null });
  });
});
