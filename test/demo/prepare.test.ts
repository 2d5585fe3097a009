import { softHsmLibrary } from '../../src/demo/softhsm.js';
import { spawnSync } from 'node:child_process';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadSimConfig, parseSimConfig } from '../../drivers/sim/config.js';
import { loadConfig, parseConfig } from '../../src/common/config.js';
import { prepareDemo, type DemoDescription } from '../../src/demo/prepare.js';
import { DEMO_BLOCK_BITS } from '../../src/demo/sim-config.js';

const tmpRoots: string[] = [];
function tmpRoot(): string {
  const d = mkdtempSync(join(tmpdir(), 'kme-demo-test-'));
  tmpRoots.push(d);
  return d;
}
afterAll(() => {
  for (const d of tmpRoots) rmSync(d, { recursive: true, force: true });
});

const mode = (p: string) => statSync(p).mode & 0o777;
const repoRoot = join(import.meta.dirname, '../..');
/** keypoold's argv starts with SOFTHSM2_CONF when the demo keeps its master keys on SoftHSM2 tokens. */
const hsmEnv = (demoDir: string) => (softHsmLibrary() ? ['env', `SOFTHSM2_CONF=${join(demoDir, 'softhsm/softhsm2.conf')}`] : []);
const read = (p: string) => readFileSync(p);

describe('prepareDemo, first run', () => {
  let root: string;
  let demo: DemoDescription;
  const at = (rel: string) => join(root, rel);

  beforeAll(async () => {
    root = tmpRoot();
    demo = await prepareDemo(root);
  });

  it('writes demo.json with the documented structure, paths relative to the root', () => {
    const onDisk = JSON.parse(readFileSync(at('var/demo/demo.json'), 'utf8'));
    expect(demo.file).toBe(at('var/demo/demo.json'));
    expect(onDisk).toMatchObject({ ca_cert: 'var/demo/pki/ca.crt', ca_key: 'var/demo/pki/ca.key' });
    expect(onDisk.nodes).toHaveLength(2);
    for (const [i, id] of ['KME_A', 'KME_B'].entries()) {
      const letter = id.slice(-1);
      const n = onDisk.nodes[i];
      expect(n).toMatchObject({
        kme_id: id,
        etsi_url: `https://127.0.0.1:${i === 0 ? 8443 : 9443}`,
        config: `var/demo/${id}/config.json`,
        peer_url: `https://127.0.0.1:${i === 0 ? 8444 : 9444}`,
        metrics_urls: {
          'kme-keypoold': `http://127.0.0.1:${i === 0 ? 8445 : 9445}/metrics`,
          'kme-api': `http://127.0.0.1:${i === 0 ? 8446 : 9446}/metrics`,
        },
      });
      expect(n.processes.map((p: { name: string; argv: string[] }) => [p.name, p.argv])).toEqual([
        ['kme-keypoold', [...hsmEnv(at('var/demo')), 'node', 'dist/src/keypoold/main.js', '--config', `var/demo/${id}/config.json`]],
        ['kme-api', ['node', 'dist/src/api/main.js', '--config', `var/demo/${id}/config.json`]],
      ]);
      expect(n.saes).toEqual(
        [1, 2, 3].map((k) => ({
          sae_id: `SAE_${letter}${k}`,
          cert: `var/demo/pki/SAE_${letter}${k}.crt`,
          key: `var/demo/pki/SAE_${letter}${k}.key`,
        })),
      );
    }
    // The simulated QKD link: its own process, started from the root, ready on its control socket.
    expect(onDisk.qkd_sim).toEqual({
      name: 'qkd-sim',
      argv: ['node', 'dist/drivers/sim/main.js', '--config', 'var/demo/qkd-sim/sim.json'],
      ready: { unix_socket: 'var/demo/qkd-sim/control.sock' },
      control: ['node', 'dist/drivers/sim/control.js', '--socket', 'var/demo/qkd-sim/control.sock'],
      config: 'var/demo/qkd-sim/sim.json',
    });
    // kmectl against this demo, from the root (a node is picked with --node).
    expect(onDisk.kmectl).toEqual(['node', 'dist/scripts/kmectl.js', '--demo', 'var/demo/demo.json']);
    // The link as sim.json has it, and each KME's end of its module.
    const sim = loadSimConfig(at('var/demo/qkd-sim/sim.json'));
    expect(onDisk.links).toEqual([
      {
        link_id: 'KME_A-KME_B',
        kme_ids: ['KME_A', 'KME_B'],
        module_devices: ['var/demo/KME_A/qkd0', 'var/demo/KME_B/qkd0'],
        seed_file: 'var/demo/link-KME_A-KME_B.seed',
        rate_bps: 1_000_000,
        epoch_ms: sim.epoch_ms,
      },
    ]);
    // The returned description is demo.json plus bookkeeping.
    const { root: r, dir, file, written, reused, notes, ...json } = demo;
    expect(json).toEqual(onDisk);
    expect({ r, dir, reused, notes }).toEqual({ r: root, dir: at('var/demo'), reused: [], notes: [] });
    expect(written).toContain(file);
  });

  it('writes configs that pass parseConfig, with the demo settings', () => {
    const [a, b] = ['KME_A', 'KME_B'].map((id) => loadConfig(at(`var/demo/${id}/config.json`)));
    expect(a!.kme_id).toBe('KME_A');
    expect(a!.state_dir).toBe(at('var/demo/KME_A/state'));
    expect(a!.registry_file).toBe(at('var/demo/KME_A/registry.json'));
    expect(a!.keypoold.socket).toBe(at('var/demo/KME_A/keypoold.sock'));
    if (softHsmLibrary()) {
      // On a SoftHSM2 token of its own, with the master key already made by the provisioning command.
      expect(a!.master_key).toEqual({
        provider: 'pkcs11', module: softHsmLibrary(), token_label: 'KME_A', key_label: 'kme-master', pin_file: at('var/demo/KME_A/hsm.pin'),
      });
      expect(statSync(at('var/demo/KME_A/hsm.pin')).mode & 0o777).toBe(0o600);
      const check = spawnSync(process.execPath, ['dist/scripts/kme-hsm.js', 'check', '--config', at('var/demo/KME_A/config.json')], {
        cwd: repoRoot, env: { ...process.env, SOFTHSM2_CONF: at('var/demo/softhsm/softhsm2.conf') }, encoding: 'utf8',
      });
      expect(check.stdout).toMatch(/^OK: master key 'kme-master' on token 'KME_A'/);
      expect(check.status).toBe(0);
    } else {
      expect(a!.master_key).toEqual({ provider: 'file', path: at('var/demo/KME_A/master.key') });
      expect(existsSync((a!.master_key as { path: string }).path)).toBe(false); // keypoold creates it
    }
    expect(a!.api).toMatchObject({ host: '127.0.0.1', port: 8443 });
    expect(a!.api.tls).toEqual({
      cert: at('var/demo/pki/KME_A.api.crt'),
      key: at('var/demo/pki/KME_A.api.key'),
      ca: at('var/demo/pki/ca.crt'),
    });
    expect(a!.peer).toMatchObject({ host: '127.0.0.1', port: 8444 });
    expect(a!.peer.tls.cert).toBe(at('var/demo/pki/KME_A.kme.crt'));
    expect(b!.api.port).toBe(9443);
    expect(b!.peer.port).toBe(9444);
    // Each daemon's admin listener (health, readiness, metrics), on loopback.
    expect([a!.keypoold.metrics, a!.api.metrics, b!.keypoold.metrics, b!.api.metrics]).toEqual(
      [8445, 8446, 9445, 9446].map((port) => ({ host: '127.0.0.1', port })),
    );
    expect(a!.limits).toEqual({
      default_key_size: 256,
      min_key_size: 64,
      max_key_size: 8192,
      max_key_per_request: 128,
      max_key_count: 100000,
      max_SAE_ID_count: 2,
    });
    expect(a!.key_ttl_seconds).toBe(300);

    expect(a!.links).toHaveLength(1);
    expect(b!.links).toHaveLength(1);
    const [la, lb] = [a!.links[0]!, b!.links[0]!];
    expect(la).toMatchObject({ link_id: 'KME_A-KME_B', peer_kme_id: 'KME_B', peer_url: 'https://127.0.0.1:9444' });
    expect(lb).toMatchObject({ link_id: 'KME_A-KME_B', peer_kme_id: 'KME_A', peer_url: 'https://127.0.0.1:8444' });
    // Each KME opens its end of the simulator's pty pair as a serial port.
    expect(la.qkd).toMatchObject({ driver: 'serial', path: at('var/demo/KME_A/qkd0'), baud_rate: 115200 });
    expect(lb.qkd).toMatchObject({ driver: 'serial', path: at('var/demo/KME_B/qkd0'), baud_rate: 115200 });

    // Paths inside the file are relative to its folder.
    const raw = JSON.parse(readFileSync(at('var/demo/KME_A/config.json'), 'utf8'));
    expect(raw.state_dir).toBe('state');
    expect(raw.links[0].qkd).toEqual({ driver: 'serial', path: 'qkd0', baud_rate: 115200 });
    expect(parseConfig(raw, at('var/demo/KME_A'))).toEqual(a);

    for (const c of [a!, b!]) {
      expect(statSync(c.state_dir).isDirectory()).toBe(true);
      for (const f of [c.api.tls.cert, c.api.tls.key, c.api.tls.ca, c.peer.tls.cert, c.peer.tls.key]) {
        expect(existsSync(f)).toBe(true);
      }
    }
  });

  it('writes qkd-sim/sim.json for the simulator: the shared seed, KME_A and KME_B on pty links, a control socket', () => {
    const file = at('var/demo/qkd-sim/sim.json');
    expect(mode(at('var/demo/qkd-sim'))).toBe(0o700);
    const raw = JSON.parse(readFileSync(file, 'utf8'));
    // Paths inside the file are relative to its folder.
    expect(raw).toMatchObject({
      link_id: 'KME_A-KME_B',
      seed_file: '../link-KME_A-KME_B.seed',
      modules: [
        { kme_id: 'KME_A', device: { kind: 'pty', link: '../KME_A/qkd0' } },
        { kme_id: 'KME_B', device: { kind: 'pty', link: '../KME_B/qkd0' } },
      ],
      control: { path: 'control.sock' },
    });
    const sim = parseSimConfig(raw, at('var/demo/qkd-sim'));
    expect(loadSimConfig(file)).toEqual(sim);
    expect(sim).toMatchObject({
      link_id: 'KME_A-KME_B',
      seed_file: at('var/demo/link-KME_A-KME_B.seed'),
      rate_bps: 1_000_000,
      block_bits: DEMO_BLOCK_BITS,
      control: { path: at('var/demo/qkd-sim/control.sock') },
    });
    expect(Math.abs(sim.epoch_ms - Date.now())).toBeLessThan(60_000);
    expect(sim.modules.map((m) => [m.kme_id, m.device])).toEqual([
      ['KME_A', { kind: 'pty', link: at('var/demo/KME_A/qkd0') }],
      ['KME_B', { kind: 'pty', link: at('var/demo/KME_B/qkd0') }],
    ]);
    expect(sim.modules[0]!.module_id).not.toBe(sim.modules[1]!.module_id);
    // The node configs point at the modules' devices; the simulator makes them (not the preparation).
    for (const [i, id] of ['KME_A', 'KME_B'].entries()) {
      const q = loadConfig(at(`var/demo/${id}/config.json`)).links[0]!.qkd;
      expect(q.driver === 'serial' && q.path).toBe((sim.modules[i]!.device as { link: string }).link);
      expect(existsSync(at(`var/demo/${id}/qkd0`))).toBe(false);
    }
    // The control socket's folder exists; the socket is the simulator's to make.
    expect(statSync(at('var/demo/qkd-sim')).isDirectory()).toBe(true);
    expect(existsSync(sim.control.path)).toBe(false);
  });

  it('writes the shared seed and private keys with mode 0600', () => {
    const seed = readFileSync(at('var/demo/link-KME_A-KME_B.seed'), 'utf8');
    expect(seed).toMatch(/^[0-9a-f]{64}$/);
    expect(mode(at('var/demo/link-KME_A-KME_B.seed'))).toBe(0o600);
    const keys = ['ca', 'KME_A.api', 'KME_A.kme', 'KME_B.api', 'KME_B.kme', 'SAE_A1', 'SAE_A2', 'SAE_A3', 'SAE_B1', 'SAE_B2', 'SAE_B3'];
    for (const k of keys) {
      expect(mode(at(`var/demo/pki/${k}.key`)), k).toBe(0o600);
      expect(mode(at(`var/demo/pki/${k}.crt`)), k).toBe(0o644);
    }
  });

  it('writes the same SAE registry for both nodes', () => {
    const regA = JSON.parse(readFileSync(at('var/demo/KME_A/registry.json'), 'utf8'));
    const regB = JSON.parse(readFileSync(at('var/demo/KME_B/registry.json'), 'utf8'));
    expect(regA).toEqual(regB);
    expect(regA.saes).toEqual(
      ['A1', 'A2', 'A3', 'B1', 'B2', 'B3'].map((s) => ({
        sae_id: `SAE_${s}`,
        kme_id: `KME_${s[0]}`,
        allowed_slaves: ['*'],
      })),
    );
  });

  it('issues certificates with the right names, usages and issuer', () => {
    const ca = new X509Certificate(read(at('var/demo/pki/ca.crt')));
    expect(ca.ca).toBe(true);
    const leaf = (stem: string) => {
      const x = new X509Certificate(read(at(`var/demo/pki/${stem}.crt`)));
      expect(x.ca, stem).toBe(false);
      expect(x.checkIssued(ca), stem).toBe(true);
      expect(x.verify(ca.publicKey), stem).toBe(true);
      expect(x.checkPrivateKey(createPrivateKey(read(at(`var/demo/pki/${stem}.key`)))), stem).toBe(true);
      return x;
    };
    for (const sae of demo.nodes.flatMap((n) => n.saes)) {
      const x = leaf(sae.sae_id);
      expect(x.subject).toBe(`CN=${sae.sae_id}`);
      expect(x.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    }
    for (const id of ['KME_A', 'KME_B']) {
      const kme = leaf(`${id}.kme`);
      expect(kme.subject).toBe(`CN=${id}`);
      expect(kme.keyUsage?.sort()).toEqual(['1.3.6.1.5.5.7.3.1', '1.3.6.1.5.5.7.3.2']);
      expect(kme.checkIP('127.0.0.1')).toBe('127.0.0.1');
      const api = leaf(`${id}.api`);
      expect(api.subject).not.toBe(`CN=${id}`);
      expect(api.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
      expect(api.checkHost('localhost')).toBe('localhost');
      expect(api.checkIP('127.0.0.1')).toBe('127.0.0.1');
    }
  });

  it('reuses everything on a second run, byte for byte', async () => {
    const files = [...demo.written].filter((f) => existsSync(f));
    const before = new Map(files.map((f) => [f, read(f)]));
    const again = await prepareDemo(root);
    expect(again.written).toEqual([]);
    expect(new Set(again.reused)).toEqual(new Set(demo.written));
    for (const [f, bytes] of before) expect(read(f).equals(bytes), f).toBe(true);
    const { written: _w, reused: _r, ...a } = again;
    const { written: _w2, reused: _r2, ...b } = demo;
    expect(a).toEqual(b);
  });

  it('issues only what is missing, from the existing CA, and keeps sim.json and its epoch', async () => {
    const caBefore = read(at('var/demo/pki/ca.crt'));
    const a1Before = read(at('var/demo/pki/SAE_A1.crt'));
    const simBefore = read(at('var/demo/qkd-sim/sim.json'));
    const epoch = loadSimConfig(at('var/demo/qkd-sim/sim.json')).epoch_ms;
    expect(demo.links[0]!.epoch_ms).toBe(epoch);
    unlinkSync(at('var/demo/pki/SAE_B3.crt'));
    unlinkSync(at('var/demo/pki/SAE_B3.key'));
    unlinkSync(at('var/demo/KME_B/config.json'));
    await new Promise((r) => setTimeout(r, 5));
    const again = await prepareDemo(root);
    expect(again.written.sort()).toEqual(
      [at('var/demo/pki/SAE_B3.crt'), at('var/demo/pki/SAE_B3.key'), at('var/demo/KME_B/config.json')].sort(),
    );
    expect(read(at('var/demo/pki/ca.crt')).equals(caBefore)).toBe(true);
    expect(read(at('var/demo/pki/SAE_A1.crt')).equals(a1Before)).toBe(true);
    const b3 = new X509Certificate(read(at('var/demo/pki/SAE_B3.crt')));
    expect(b3.checkIssued(new X509Certificate(caBefore))).toBe(true);
    expect(again.reused).toContain(at('var/demo/qkd-sim/sim.json'));
    expect(read(at('var/demo/qkd-sim/sim.json')).equals(simBefore)).toBe(true);
    expect(again.links[0]!.epoch_ms).toBe(epoch);
    expect(loadConfig(at('var/demo/KME_B/config.json')).links[0]!.qkd).toMatchObject({
      driver: 'serial',
      path: at('var/demo/KME_B/qkd0'),
    });
    expect(again.notes).toEqual([]);
  });

  it('refuses a half-present key pair instead of overwriting it', async () => {
    unlinkSync(at('var/demo/pki/SAE_A2.key'));
    await expect(prepareDemo(root)).rejects.toThrow(/SAE_A2.*incomplete|incomplete.*SAE_A2/s);
  });
});

describe('prepareDemo, isolated instances', () => {
  it('honours other ports, rate and a folder outside the root (absolute paths)', async () => {
    const root = tmpRoot();
    const dir = join(tmpRoot(), 'demo');
    const demo = await prepareDemo(root, {
      dir,
      apiPorts: [18443, 19443],
      peerPorts: [18444, 19444],
      rateBps: 5000,
    });
    expect(demo.ca_cert).toBe(join(dir, 'pki/ca.crt'));
    expect(demo.nodes.map((n) => n.etsi_url)).toEqual(['https://127.0.0.1:18443', 'https://127.0.0.1:19443']);
    // Own ports and no metricsPorts: no admin listeners (the demo's fixed ones are left alone).
    expect(demo.nodes.map((n) => n.metrics_urls)).toEqual([undefined, undefined]);
    expect(demo.nodes[0]!.processes[0]!.argv).toEqual([
      ...hsmEnv(dir),
      'node',
      'dist/src/keypoold/main.js',
      '--config',
      join(dir, 'KME_A/config.json'),
    ]);
    for (const p of demo.nodes.flatMap((n) => n.saes.flatMap((s) => [s.cert, s.key]))) {
      expect(isAbsolute(p)).toBe(true);
      expect(existsSync(p)).toBe(true);
    }
    const a = loadConfig(join(dir, 'KME_A/config.json'));
    expect(a.links[0]!.peer_url).toBe('https://127.0.0.1:19444');
    expect(a.links[0]!.qkd).toMatchObject({ driver: 'serial', path: join(dir, 'KME_A/qkd0') });
    expect(loadSimConfig(join(dir, 'qkd-sim/sim.json')).rate_bps).toBe(5000);
    expect(demo.links[0]).toMatchObject({
      rate_bps: 5000,
      seed_file: join(dir, 'link-KME_A-KME_B.seed'),
      module_devices: [join(dir, 'KME_A/qkd0'), join(dir, 'KME_B/qkd0')],
    });
    expect(demo.qkd_sim).toEqual({
      name: 'qkd-sim',
      argv: ['node', 'dist/drivers/sim/main.js', '--config', join(dir, 'qkd-sim/sim.json')],
      ready: { unix_socket: join(dir, 'qkd-sim/control.sock') },
      control: ['node', 'dist/drivers/sim/control.js', '--socket', join(dir, 'qkd-sim/control.sock')],
      config: join(dir, 'qkd-sim/sim.json'),
    });
    expect(demo.kmectl).toEqual(['node', 'dist/scripts/kmectl.js', '--demo', join(dir, 'demo.json')]);
    expect(existsSync(join(root, 'var'))).toBe(false);

    // Asking for other ports or another rate later keeps the existing configs and sim.json, and says so.
    const again = await prepareDemo(root, { dir });
    expect(again.written).toEqual([]);
    expect(again.nodes[0]!.etsi_url).toBe('https://127.0.0.1:18443');
    expect(again.links[0]!.rate_bps).toBe(5000);
    expect(again.notes.join('\n')).toMatch(/KME_A\/config\.json kept as it is/);
    expect(again.notes.join('\n')).toMatch(/sim\.json kept as it is \(rate 5000 bit\/s; asked 1000000\)/);
    expect(again.notes.join('\n')).toMatch(/KME_A\/config\.json kept as it is \(metrics ports none \/ none; asked 8445 \/ 8446\)/);
  });

  it('writes the admin listeners asked for into the configs and demo.json', async () => {
    const root = tmpRoot();
    const demo = await prepareDemo(root, { apiPorts: [18443, 19443], peerPorts: [18444, 19444], metricsPorts: [[18445, 18446], [19445, 19446]] });
    expect(demo.nodes.map((n) => n.metrics_urls)).toEqual([
      { 'kme-keypoold': 'http://127.0.0.1:18445/metrics', 'kme-api': 'http://127.0.0.1:18446/metrics' },
      { 'kme-keypoold': 'http://127.0.0.1:19445/metrics', 'kme-api': 'http://127.0.0.1:19446/metrics' },
    ]);
    const b = loadConfig(join(root, 'var/demo/KME_B/config.json'));
    expect([b.keypoold.metrics, b.api.metrics]).toEqual([{ host: '127.0.0.1', port: 19445 }, { host: '127.0.0.1', port: 19446 }]);
    await expect(prepareDemo(tmpRoot(), { apiPorts: [18443, 19443], peerPorts: [18444, 19444], metricsPorts: [[18445, 18443], [19445, 19446]] })).rejects.toThrow(
      /ports must all differ/,
    );
  });

  it('takes the schedule of an older demo whose nodes ran the simulator in-process, and says their configs are stale', async () => {
    const root = tmpRoot();
    await prepareDemo(root);
    const at = (rel: string) => join(root, rel);
    // What the configs of an older demo held: the in-process simulator with its schedule. Block ids
    // follow from epoch, rate and block size together, so all three carry over into sim.json.
    const old = { epoch_ms: 1_700_000_000_000, rate_bps: 250_000, block_bits: 16384 };
    expect(old.block_bits).not.toBe(DEMO_BLOCK_BITS);
    for (const id of ['KME_A', 'KME_B']) {
      const f = at(`var/demo/${id}/config.json`);
      const cfg = JSON.parse(readFileSync(f, 'utf8'));
      cfg.links[0].qkd = { driver: 'sim', seed_file: '../link-KME_A-KME_B.seed', ...old };
      writeFileSync(f, JSON.stringify(cfg, null, 2) + '\n');
    }
    unlinkSync(at('var/demo/qkd-sim/sim.json'));
    const again = await prepareDemo(root);
    expect(again.written).toEqual([at('var/demo/qkd-sim/sim.json'), at('var/demo/demo.json')]);
    expect(loadSimConfig(at('var/demo/qkd-sim/sim.json'))).toMatchObject(old);
    expect(again.links[0]).toMatchObject({ epoch_ms: old.epoch_ms, rate_bps: old.rate_bps, module_devices: ['(sim)', '(sim)'] });
    const notes = again.notes.join('\n');
    for (const id of ['KME_A', 'KME_B']) {
      expect(notes).toContain(
        `${id} does not use the qkd-sim process: its QKD module is driver 'sim', but the simulator serves it at serial ${at(`var/demo/${id}/qkd0`)}; ` +
          `delete ${at(`var/demo/${id}/config.json`)} to have it written again`,
      );
    }

    // Deleting them (the state stays) brings them onto the simulator, with sim.json and its epoch kept.
    unlinkSync(at('var/demo/KME_A/config.json'));
    unlinkSync(at('var/demo/KME_B/config.json'));
    const third = await prepareDemo(root, { rateBps: old.rate_bps });
    expect(third.notes).toEqual([]);
    expect(third.reused).toContain(at('var/demo/qkd-sim/sim.json'));
    expect(loadSimConfig(at('var/demo/qkd-sim/sim.json'))).toMatchObject(old);
    expect(third.links[0]).toMatchObject({ epoch_ms: old.epoch_ms, module_devices: ['var/demo/KME_A/qkd0', 'var/demo/KME_B/qkd0'] });
  });

  it('rejects an invalid sim.json, naming it', async () => {
    const root = tmpRoot();
    await prepareDemo(root);
    const f = join(root, 'var/demo/qkd-sim/sim.json');
    const cfg = JSON.parse(readFileSync(f, 'utf8'));
    cfg.block_bits = 1001;
    writeFileSync(f, JSON.stringify(cfg));
    await expect(prepareDemo(root)).rejects.toThrow(/qkd-sim\/sim\.json: invalid simulator config:[\s\S]*block_bits[\s\S]*delete it/);
  });

  it('moves the keypoold socket under the temp folder when the demo path is too long', async () => {
    const root = tmpRoot();
    const dir = join(root, 'x'.repeat(60), 'y'.repeat(30));
    const demo = await prepareDemo(root, { dir, apiPorts: [28443, 29443], peerPorts: [28444, 29444] });
    const c = loadConfig(join(dir, 'KME_A/config.json'));
    expect(c.keypoold.socket.startsWith(tmpdir())).toBe(true);
    expect(Buffer.byteLength(c.keypoold.socket)).toBeLessThan(100);
    expect(statSync(join(c.keypoold.socket, '..')).isDirectory()).toBe(true);
    expect(demo.nodes[0]!.keypoold_socket).toBe(c.keypoold.socket);
    expect(demo.notes.join('\n')).toMatch(/KME_A keypoold socket is/);
    // The simulator's control socket too, in the same per-demo folder.
    const control = loadSimConfig(join(dir, 'qkd-sim/sim.json')).control.path;
    expect(control).toBe(join(c.keypoold.socket, '..', 'qkd-sim-control.sock'));
    expect(demo.qkd_sim.ready).toEqual({ unix_socket: control });
    expect(demo.qkd_sim.control).toEqual(['node', 'dist/drivers/sim/control.js', '--socket', control]);
    expect(demo.notes.join('\n')).toMatch(/qkd-sim control socket is /);
    rmSync(join(c.keypoold.socket, '..'), { recursive: true, force: true });
  });

  it('rejects clashing or invalid ports', async () => {
    const root = tmpRoot();
    await expect(prepareDemo(root, { apiPorts: [8443, 8443] })).rejects.toThrow(/differ/);
    await expect(prepareDemo(root, { peerPorts: [0, 9444] })).rejects.toThrow(/range/);
  });
});
