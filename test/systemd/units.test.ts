/**
 * The shipped systemd files: every unit passes `systemd-analyze verify` with
 * no complaint at all, each daemon's `systemd-analyze security --offline`
 * exposure is at most 2.5, and the units, sysusers, tmpfiles, udev rule and
 * configuration skeleton agree with each other. The checks are shown to fail
 * on a broken unit and on an unhardened one, so a pass means something.
 *
 * `verify` needs ExecStart's binary to exist: the copies checked here have
 * /opt/kme/bin/node (where scripts/install puts it) replaced by this Node's
 * path, and nothing else changed.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/common/config.js';

const repo = resolve(import.meta.dirname, '../..');
const unitDir = join(repo, 'systemd');
const UNITS = ['kme-keypoold.service', 'kme-api.service', 'kme.target'];
const DAEMONS = ['kme-keypoold.service', 'kme-api.service'];
const INSTALLED_NODE = '/opt/kme/bin/node';
const MAX_EXPOSURE = 2.5;

function run(cmd: string, args: string[], cwd?: string) {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw new Error(`${cmd}: ${r.error.message} (scripts/ensure-system-deps.sh installs systemd)`);
  return { code: r.status, out: `${r.stdout}${r.stderr}`.trim() };
}

/** `systemd-analyze verify` on these files: passes only with exit 0 and not a word of output. */
function verify(dir: string, files: string[]): { ok: boolean; out: string } {
  const r = run('systemd-analyze', ['verify', ...files.map((f) => `./${f}`)], dir);
  return { ok: r.code === 0 && r.out === '', out: r.out };
}

function exposure(dir: string, unit: string): number {
  const r = run('systemd-analyze', ['security', '--offline=true', `./${unit}`], dir);
  const m = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(r.out);
  if (!m) throw new Error(`no exposure level for ${unit}:\n${r.out}`);
  return Number(m[1]);
}

/** The [Section] Key=value pairs of a unit (repeated keys keep every value). */
function directives(text: string): Map<string, string[]> {
  const out = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const s = /^\[(.+)\]$/.exec(line);
    if (s) {
      section = s[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    const key = `${section}.${line.slice(0, eq)}`;
    out.set(key, [...(out.get(key) ?? []), line.slice(eq + 1)]);
  }
  return out;
}
const one = (d: Map<string, string[]>, key: string) => d.get(key)?.at(-1);

describe('systemd units', () => {
  let dir: string;
  const text = (u: string) => readFileSync(join(unitDir, u), 'utf8');

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'kme-units-'));
    for (const u of UNITS) {
      const t = text(u);
      const copy = t.replaceAll(INSTALLED_NODE, process.execPath);
      // The only change is the binary's path.
      expect(copy.replaceAll(process.execPath, INSTALLED_NODE)).toBe(t);
      writeFileSync(join(dir, u), copy);
    }
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('every unit passes systemd-analyze verify without a warning', () => {
    const r = verify(dir, UNITS);
    expect(r.out).toBe('');
    expect(r.ok).toBe(true);
  });

  it('verify catches a broken unit (so the check above means something)', () => {
    const bad = mkdtempSync(join(tmpdir(), 'kme-units-bad-'));
    try {
      for (const [u, edit] of [
        ['kme-api.service', (t: string) => t.replace('WatchdogSec=20s', 'WatchdogSec=soon')],
        ['kme-keypoold.service', (t: string) => t.replace('[Service]\n', '[Service]\nProtectEverything=yes\n')],
        ['kme-api.service', (t: string) => t.replace(process.execPath, '/opt/kme/bin/nodejs-missing')],
      ] as const) {
        for (const x of UNITS) writeFileSync(join(bad, x), readFileSync(join(dir, x), 'utf8'));
        writeFileSync(join(bad, u), edit(readFileSync(join(dir, u), 'utf8')));
        const r = verify(bad, UNITS);
        expect(r.ok, `${u} edited should fail verify`).toBe(false);
      }
    } finally {
      rmSync(bad, { recursive: true, force: true });
    }
  });

  it.each(DAEMONS)(`%s: systemd-analyze security exposure at most ${MAX_EXPOSURE}`, (u) => {
    const level = exposure(dir, u);
    console.log(`${u}: exposure ${level}`);
    expect(level).toBeLessThanOrEqual(MAX_EXPOSURE);
  });

  it('the exposure check fails an unhardened unit', () => {
    const bare = mkdtempSync(join(tmpdir(), 'kme-units-bare-'));
    try {
      writeFileSync(join(bare, 'bare.service'), `[Service]\nType=notify\nExecStart=${process.execPath} /opt/kme/dist/src/api/main.js\nUser=kme-api\n`);
      expect(exposure(bare, 'bare.service')).toBeGreaterThan(MAX_EXPOSURE);
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  });

  it('both daemons: Type=notify with a watchdog, main-PID notifications, JIT-friendly, no core dumps or swap', () => {
    for (const u of DAEMONS) {
      const d = directives(text(u));
      expect(one(d, 'Service.Type'), u).toBe('notify');
      expect(one(d, 'Service.NotifyAccess'), u).toBe('main');
      expect(one(d, 'Service.WatchdogSec'), u).toMatch(/^\d+s$/);
      expect(one(d, 'Service.Restart'), u).toBe('on-failure');
      expect(one(d, 'Service.MemoryDenyWriteExecute'), u).not.toBe('yes');
      expect(one(d, 'Service.LimitCORE'), u).toBe('0');
      expect(one(d, 'Service.MemorySwapMax'), u).toBe('0');
      expect(one(d, 'Service.NoNewPrivileges'), u).toBe('yes');
      expect(one(d, 'Service.ProtectSystem'), u).toBe('strict');
      expect(one(d, 'Service.CapabilityBoundingSet'), u).toBe('');
      expect(one(d, 'Service.ExecStart'), u).toMatch(new RegExp(`^${INSTALLED_NODE} /opt/kme/dist/src/(keypoold|api)/main\\.js --config /etc/kme/kme\\.json$`));
      expect(one(d, 'Service.ConfigurationDirectory'), u).toBe('kme');
      expect(one(d, 'Install.WantedBy'), u).toBe('kme.target');
      expect(one(d, 'Unit.PartOf'), u).toBe('kme.target');
    }
  });

  it('keypoold: its own user, state and runtime folders, the PIN as a credential, the QKD module only', () => {
    const d = directives(text('kme-keypoold.service'));
    const cfg = JSON.parse(readFileSync(join(unitDir, 'etc', 'kme.json'), 'utf8'));
    expect(one(d, 'Service.User')).toBe('kme-keypoold');
    expect(one(d, 'Service.Group')).toBe('kme');
    expect(one(d, 'Service.SupplementaryGroups')).toBe('kme-hw');
    expect(one(d, 'Service.StateDirectory')).toBe('kme');
    expect(one(d, 'Service.StateDirectoryMode')).toBe('0700');
    expect(cfg.state_dir).toBe('/var/lib/kme');
    // The PIN credential the configuration names is the one the unit loads.
    expect(one(d, 'Service.LoadCredential')).toBe(`${cfg.master_key.pin_credential}:/etc/kme/hsm.pin`);
    // The API socket in /run/kme (group kme may enter), the admin socket in a folder closed to the group.
    expect(one(d, 'Service.RuntimeDirectory')).toBe('kme');
    expect(one(d, 'Service.RuntimeDirectoryMode')).toBe('0750');
    expect(cfg.keypoold.socket).toBe('/run/kme/keypoold.socket');
    expect(cfg.keypoold.admin_socket).toBe('/run/kme/admin/keypoold-admin.sock');
    expect(one(d, 'Service.ExecStartPre')).toBe('/usr/bin/install -d -m 0700 /run/kme/admin');
    expect(one(d, 'Service.DevicePolicy')).toBe('closed');
    expect(d.get('Service.DeviceAllow')).toContain('/dev/qkd0 rw');
    expect(cfg.links[0].qkd.path).toBe('/dev/qkd0');
    // No restart loop on a wrong PIN: retries would lock the token.
    expect(one(d, 'Service.RestartPreventExitStatus')?.split(' ')).toEqual(expect.arrayContaining(['2', '22', '23']));
  });

  it('kme-api: no devices, no keypoold state, no PIN, no peer TLS key, no supplementary groups', () => {
    const d = directives(text('kme-api.service'));
    expect(one(d, 'Service.User')).toBe('kme-api');
    expect(one(d, 'Service.Group')).toBe('kme');
    expect(d.has('Service.SupplementaryGroups')).toBe(false);
    expect(one(d, 'Service.PrivateDevices')).toBe('yes');
    expect(one(d, 'Service.DevicePolicy')).toBe('closed');
    expect(d.has('Service.DeviceAllow')).toBe(false);
    expect(d.has('Service.StateDirectory')).toBe(false);
    expect(d.has('Service.LoadCredential')).toBe(false);
    expect(one(d, 'Service.InaccessiblePaths')?.split(' ')).toEqual(['-/var/lib/kme', '-/etc/kme/peer', '-/etc/kme/hsm.pin']);
  });

  it('the configuration skeleton is a valid configuration with TLS files where the units expect them', () => {
    const cfg = parseConfig(JSON.parse(readFileSync(join(unitDir, 'etc', 'kme.json'), 'utf8')), '/etc/kme');
    expect(cfg.api.tls.key.startsWith('/etc/kme/api/')).toBe(true);
    expect(cfg.peer.tls.key.startsWith('/etc/kme/peer/')).toBe(true);
    expect(cfg.registry_file).toBe('/etc/kme/registry.json');
    expect(JSON.parse(readFileSync(join(unitDir, 'etc', 'registry.json'), 'utf8'))).toEqual({ saes: [] });
  });

  describe('sysusers and tmpfiles, applied to a scratch root', () => {
    let root: string;
    beforeAll(() => {
      root = mkdtempSync(join(tmpdir(), 'kme-sysusers-'));
      mkdirSync(join(root, 'etc'));
      mkdirSync(join(root, 'usr/lib/sysusers.d'), { recursive: true });
      mkdirSync(join(root, 'usr/lib/tmpfiles.d'), { recursive: true });
      writeFileSync(join(root, 'usr/lib/sysusers.d/kme.conf'), readFileSync(join(unitDir, 'kme.sysusers')));
      writeFileSync(join(root, 'usr/lib/tmpfiles.d/kme.conf'), readFileSync(join(unitDir, 'kme.tmpfiles')));
    });
    afterAll(() => rmSync(root, { recursive: true, force: true }));

    it('users kme-keypoold and kme-api in group kme; only keypoold in kme-hw', () => {
      const r = run('systemd-sysusers', [`--root=${root}`, 'kme.conf']);
      expect(r.code, r.out).toBe(0);
      const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8');
      const group = readFileSync(join(root, 'etc/group'), 'utf8');
      const gid = (g: string) => new RegExp(`^${g}:x:(\\d+):(.*)$`, 'm').exec(group);
      const kme = gid('kme')!;
      const hw = gid('kme-hw')!;
      for (const u of ['kme-keypoold', 'kme-api']) {
        const line = new RegExp(`^${u}:x:\\d+:(\\d+):[^:]*:[^:]*:/usr/sbin/nologin$`, 'm').exec(passwd);
        expect(line, u).not.toBeNull();
        expect(line![1], `${u} primary group`).toBe(kme[1]);
      }
      expect(hw[2]!.split(',')).toEqual(['kme-keypoold']);
      // A second run changes nothing.
      const before = readFileSync(join(root, 'etc/passwd'), 'utf8') + group;
      expect(run('systemd-sysusers', [`--root=${root}`, 'kme.conf']).code).toBe(0);
      expect(readFileSync(join(root, 'etc/passwd'), 'utf8') + readFileSync(join(root, 'etc/group'), 'utf8')).toBe(before);
    });

    it('tmpfiles creates the configuration folders and puts loosened modes back', () => {
      mkdirSync(join(root, 'etc/kme'), { mode: 0o777 });
      writeFileSync(join(root, 'etc/kme/kme.json'), '{}', { mode: 0o666 });
      writeFileSync(join(root, 'etc/kme/hsm.pin'), '1234', { mode: 0o644 });
      chmodSync(join(root, 'etc/kme'), 0o777);
      chmodSync(join(root, 'etc/kme/kme.json'), 0o666);
      chmodSync(join(root, 'etc/kme/hsm.pin'), 0o644);
      const r = run('systemd-tmpfiles', [`--root=${root}`, '--create', 'kme.conf']);
      expect(r.code, r.out).toBe(0);
      const mode = (p: string) => (spawnSync('stat', ['-c', '%a', join(root, p)], { encoding: 'utf8' }).stdout.trim());
      expect(mode('etc/kme')).toBe('750');
      expect(mode('etc/kme/api')).toBe('750');
      expect(mode('etc/kme/peer')).toBe('750');
      expect(mode('etc/kme/kme.json')).toBe('640');
      expect(mode('etc/kme/hsm.pin')).toBe('600');
    });
  });

  it('the udev rule gives the module /dev/qkd0, group kme-hw, mode 0660', () => {
    const rules = readFileSync(join(unitDir, '70-kme-qkd.rules'), 'utf8')
      .split('\n').filter((l) => l.trim() !== '' && !l.trimStart().startsWith('#'));
    expect(rules.length).toBeGreaterThan(0);
    // Each rule: comma-separated KEY{attr}=="value" matches and KEY="value"/KEY+="value" assignments.
    const pair = /^\s*[A-Z_]+(\{[A-Za-z0-9_.-]+\})?\s*(==|!=|=|\+=|-=|:=)\s*"[^"]*"\s*$/;
    for (const r of rules) for (const p of r.split(',')) expect(p, r).toMatch(pair);
    const tty = rules.find((r) => r.includes('SUBSYSTEM=="tty"'))!;
    expect(tty).toContain('SYMLINK+="qkd0"');
    expect(tty).toContain('GROUP="kme-hw"');
    expect(tty).toContain('MODE="0660"');
    expect(readdirSync(unitDir)).toContain('kme.sysusers');
  });
});
