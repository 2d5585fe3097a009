import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { prepareDemo } from '../../src/demo/prepare.js';
import { canConnect, startProcess, type ManagedProcess } from '../../src/demo/processes.js';
import { runDemo, serviceSpecs } from '../../src/demo/runner.js';
import { Supervisor, type ServiceSpec } from '../../src/demo/supervisor.js';

const REPO = resolve(import.meta.dirname, '../..');
const BUILT_RUN = join(REPO, 'dist/src/demo/run.js');

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

async function freePorts(n: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: n }, async () => {
      const s = createServer();
      await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
      return s;
    }),
  );
  const ports = servers.map((s) => (s.address() as { port: number }).port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/**
 * Stand-in for dist/src/{keypoold,api}/main.js: reads --config, listens where
 * the real daemon would, logs one pino-style line; FAKE_DIE=<KME>/<role> makes
 * that one exit with an error after a moment.
 */
const FAKE_MAIN = (role: 'keypoold' | 'api') => `
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, resolve } from 'node:path';
const file = process.argv[process.argv.indexOf('--config') + 1];
const cfg = JSON.parse(readFileSync(file, 'utf8'));
const srv = createServer((s) => s.end());
const where = ${role === 'keypoold' ? 'resolve(dirname(file), cfg.keypoold.socket)' : 'cfg.api.port'};
srv.listen(where, ...(${role === 'api'} ? ['127.0.0.1'] : []), () =>
  console.log(JSON.stringify({ level: 30, time: Date.now(), pid: process.pid, msg: 'listening', where: String(where) })));
if (process.env.FAKE_DIE === cfg.kme_id + '/${role}') setTimeout(() => { console.error('boom: simulated failure'); process.exit(1); }, 300);
process.on('SIGTERM', () => { srv.close(); process.exit(0); });
`;

async function fakeDemoRoot(): Promise<string> {
  const root = tmp();
  const [a, b, c, d] = await freePorts(4);
  await prepareDemo(root, { apiPorts: [a!, b!], peerPorts: [c!, d!] });
  for (const role of ['keypoold', 'api'] as const) {
    mkdirSync(join(root, 'dist/src', role), { recursive: true });
    writeFileSync(join(root, 'dist/src', role, 'main.js'), FAKE_MAIN(role));
  }
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
    expect(out).toContain('written (28):');
    expect(out).toContain('  var/demo/pki/SAE_A1.key');
    out.length = 0;
    expect(await runDemo(['--prepare-only'], io)).toBe(0);
    expect(out).toEqual(['demo network described in var/demo/demo.json', 'kept as they were: 28 files']);
  });

  it('rejects unknown arguments and an unbuilt tree', async () => {
    const root = tmp();
    const err: string[] = [];
    const io = { root, out: () => {}, err: (l: string) => err.push(l) };
    expect(await runDemo(['--bogus'], io)).toBe(2);
    expect(err.join('\n')).toMatch(/unknown argument --bogus/);
    expect(await runDemo([], io)).toBe(1);
    expect(err.join('\n')).toMatch(/not built: dist\/src\/keypoold\/main\.js, dist\/src\/api\/main\.js missing/);
  });

  it('derives four services from demo.json: keypoolds first, ready on socket / port', async () => {
    const root = tmp();
    const demo = await prepareDemo(root);
    expect(serviceSpecs(demo).map((s) => [s.name, s.stage, s.ready])).toEqual([
      ['KME_A kme-keypoold', 0, { unix_socket: join(root, 'var/demo/KME_A/keypoold.sock') }],
      ['KME_A kme-api', 1, { tcp: { host: '127.0.0.1', port: 8443 } }],
      ['KME_B kme-keypoold', 0, { unix_socket: join(root, 'var/demo/KME_B/keypoold.sock') }],
      ['KME_B kme-api', 1, { tcp: { host: '127.0.0.1', port: 9443 } }],
    ]);
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
    // Both keypoolds were listening before any api started.
    const idx = (re: RegExp) => lines.findIndex((l) => re.test(l));
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
        ['KME_A kme-keypoold', false],
        ['KME_B kme-keypoold', false],
      ]);
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
  });
});

describe('dist/src/demo/run.js (built by `npm test`)', () => {
  it('runs the four processes with prefixed output, prints curl lines, and stops on SIGINT with 0', async () => {
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

    run.kill('SIGINT');
    expect(await run.waitForExit(15_000)).toEqual({ code: 0, signal: null });
    expect(run.output('stdout').at(-1)).toBe('demo network stopped');
    for (const s of serviceSpecs(await prepareDemo(root))) expect(await canConnect(s.ready), s.name).toBe(false);
  });

  it('exits 1 naming the process that died, after stopping the others', async () => {
    const root = await fakeDemoRoot();
    const run = startProcess(['node', BUILT_RUN], { cwd: root, name: 'run', env: { FAKE_DIE: 'KME_B/api' } });
    procs.push(run);
    const info = await run.waitForExit(20_000);
    expect(info).toEqual({ code: 1, signal: null });
    const err = run.output('stderr').join('\n');
    expect(err).toMatch(/KME_B kme-api exited with code 1/);
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
