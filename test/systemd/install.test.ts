/**
 * scripts/install into a scratch root (--root, DESTDIR-style), twice: the
 * layout, the users, the configuration skeleton and its modes; a second run
 * changes nothing and keeps a configuration a technician edited; an update
 * removes files the firmware no longer ships; the installed code runs.
 *
 * The script runs from a snapshot of this checkout (dist/ copied, node_modules
 * linked), so a build elsewhere in the tree meanwhile cannot disturb the
 * "changes nothing" check.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const repo = resolve(import.meta.dirname, '../..');
const asRoot = process.getuid?.() === 0;

/** Every path under `dir` with its type, mode, owner, size, mtime and (files) content hash. */
function snapshot(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      const s = lstatSync(p);
      const rel = p.slice(dir.length);
      if (s.isSymbolicLink()) out.set(rel, `link ${readlinkSync(p)}`);
      else if (s.isDirectory()) {
        out.set(rel, `dir ${s.mode.toString(8)} ${s.uid}:${s.gid}`);
        walk(p);
      } else {
        const hash = s.size < 1_000_000 ? createHash('sha256').update(readFileSync(p)).digest('hex').slice(0, 16) : '';
        out.set(rel, `file ${s.mode.toString(8)} ${s.uid}:${s.gid} ${s.size} ${Math.trunc(s.mtimeMs)} ${hash}`);
      }
    }
  };
  walk(dir);
  return out;
}

function diff(a: Map<string, string>, b: Map<string, string>): string[] {
  const d: string[] = [];
  for (const [k, v] of a) if (b.get(k) !== v) d.push(`${k}: ${v} -> ${b.get(k) ?? '(gone)'}`);
  for (const [k, v] of b) if (!a.has(k)) d.push(`${k}: (new) ${v}`);
  return d;
}

describe('scripts/install --root', () => {
  let src: string;
  let root: string;
  let first: { code: number | null; out: string };
  let hostPasswd: string;

  const install = (...args: string[]) => {
    const r = spawnSync('bash', [join(src, 'scripts/install'), '--root', root, '--node', process.execPath, ...args], {
      encoding: 'utf8', timeout: 120_000,
    });
    return { code: r.status, out: `${r.stdout}${r.stderr}` };
  };
  const at = (p: string) => join(root, p);
  const mode = (p: string) => (lstatSync(at(p)).mode & 0o7777).toString(8);

  beforeAll(() => {
    src = mkdtempSync(join(tmpdir(), 'kme-install-src-'));
    root = mkdtempSync(join(tmpdir(), 'kme-install-root-'));
    for (const p of ['dist', 'systemd', 'package.json', 'package-lock.json', 'README.md']) cpSync(join(repo, p), join(src, p), { recursive: true, preserveTimestamps: true });
    mkdirSync(join(src, 'scripts'));
    cpSync(join(repo, 'scripts/install'), join(src, 'scripts/install'));
    symlinkSync(join(repo, 'node_modules'), join(src, 'node_modules'));
    hostPasswd = readFileSync('/etc/passwd', 'utf8');
    first = install();
  }, 180_000);
  afterAll(() => {
    rmSync(src, { recursive: true, force: true });
    rmSync(root, { recursive: true, force: true });
  });

  it('first run: succeeds with a summary', () => {
    expect(first.code, first.out).toBe(0);
    expect(first.out).toMatch(/^summary: \d+ changed, \d+ unchanged, 0 kept/m);
    expect(first.out).not.toMatch(/^summary: 0 changed/m);
  });

  it('code in /opt/kme: dist, production packages only, the Node binary, and it runs', () => {
    expect(existsSync(at('opt/kme/dist/src/keypoold/main.js'))).toBe(true);
    expect(existsSync(at('opt/kme/dist/src/api/main.js'))).toBe(true);
    expect(mode('opt/kme/bin/node')).toBe('755');
    expect(readFileSync(at('opt/kme/bin/node')).equals(readFileSync(process.execPath))).toBe(true);
    for (const p of ['better-sqlite3', 'unix-dgram', 'hono', 'pkcs11js', 'serialport']) expect(existsSync(at(`opt/kme/node_modules/${p}/package.json`)), p).toBe(true);
    for (const p of ['vitest', 'typescript', 'vite']) expect(existsSync(at(`opt/kme/node_modules/${p}`)), p).toBe(false);
    // Every static import resolves from the installed tree: the daemons get as far as reading their files.
    for (const [daemon, said] of [['keypoold', 'kme-keypoold: cannot read'], ['api', 'kme-api: cannot read']] as const) {
      const r = spawnSync(at('opt/kme/bin/node'), [at(`opt/kme/dist/src/${daemon}/main.js`), '--config', at('etc/kme/missing.json')], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(2);
      expect(r.stderr).toContain(said);
    }
    const addon = spawnSync(at('opt/kme/bin/node'), ['-e', `require(${JSON.stringify(at('opt/kme/node_modules/unix-dgram'))}).createSocket('unix_dgram').close()`], { encoding: 'utf8' });
    expect(addon.status, addon.stderr).toBe(0);
  });

  it('units, sysusers, tmpfiles and the udev rule, as shipped', () => {
    for (const [from, to] of [
      ['kme-keypoold.service', 'etc/systemd/system/kme-keypoold.service'],
      ['kme-api.service', 'etc/systemd/system/kme-api.service'],
      ['kme.target', 'etc/systemd/system/kme.target'],
      ['kme.sysusers', 'usr/lib/sysusers.d/kme.conf'],
      ['kme.tmpfiles', 'usr/lib/tmpfiles.d/kme.conf'],
      ['70-kme-qkd.rules', 'usr/lib/udev/rules.d/70-kme-qkd.rules'],
    ] as const) {
      expect(readFileSync(at(to), 'utf8'), to).toBe(readFileSync(join(repo, 'systemd', from), 'utf8'));
      expect(mode(to), to).toBe('644');
    }
    // kmectl on PATH, running the installed code with the shipped Node binary.
    expect(readFileSync(at('usr/bin/kmectl'), 'utf8')).toBe(readFileSync(join(repo, 'systemd', 'kmectl'), 'utf8'));
    expect(mode('usr/bin/kmectl')).toBe('755');
    expect(readFileSync(at('usr/bin/kmectl'), 'utf8')).toContain('exec /opt/kme/bin/node /opt/kme/dist/scripts/kmectl.js "$@"');
    expect(existsSync(at('opt/kme/dist/scripts/kmectl.js'))).toBe(true);
    expect(readlinkSync(at('etc/systemd/system/multi-user.target.wants/kme.target'))).toBe('/etc/systemd/system/kme.target');
    expect(readlinkSync(at('etc/systemd/system/kme.target.wants/kme-keypoold.service'))).toBe('/etc/systemd/system/kme-keypoold.service');
    expect(readlinkSync(at('etc/systemd/system/kme.target.wants/kme-api.service'))).toBe('/etc/systemd/system/kme-api.service');
  });

  it('users in the root\'s own databases, not the host\'s', () => {
    const passwd = readFileSync(at('etc/passwd'), 'utf8');
    expect(passwd).toMatch(/^kme-keypoold:x:\d+:\d+:/m);
    expect(passwd).toMatch(/^kme-api:x:\d+:\d+:/m);
    expect(readFileSync(at('etc/group'), 'utf8')).toMatch(/^kme-hw:x:\d+:kme-keypoold$/m);
    expect(readFileSync('/etc/passwd', 'utf8')).toBe(hostPasswd);
  });

  it('configuration skeleton in /etc/kme with its modes (and owners, as root)', () => {
    expect(readFileSync(at('etc/kme/kme.json'), 'utf8')).toBe(readFileSync(join(repo, 'systemd/etc/kme.json'), 'utf8'));
    expect(JSON.parse(readFileSync(at('etc/kme/registry.json'), 'utf8'))).toEqual({ saes: [] });
    expect(readFileSync(at('etc/kme/hsm.pin'), 'utf8')).toBe('');
    expect([mode('etc/kme'), mode('etc/kme/api'), mode('etc/kme/peer')]).toEqual(['750', '750', '750']);
    expect([mode('etc/kme/kme.json'), mode('etc/kme/registry.json'), mode('etc/kme/hsm.pin')]).toEqual(['640', '640', '600']);
    if (asRoot) {
      const kmeGid = Number(/^kme:x:(\d+):/m.exec(readFileSync(at('etc/group'), 'utf8'))![1]);
      for (const p of ['etc/kme', 'etc/kme/kme.json', 'etc/kme/api']) expect(lstatSync(at(p)).gid, p).toBe(kmeGid);
      expect(lstatSync(at('etc/kme/hsm.pin')).gid).toBe(0);
    }
  });

  it('second run changes nothing and keeps an edited configuration', () => {
    const edited = '{ "kme_id": "KME_EDITED_BY_A_TECHNICIAN" }\n';
    writeFileSync(at('etc/kme/kme.json'), edited);
    writeFileSync(at('etc/kme/hsm.pin'), '123456');
    const before = snapshot(root);
    const second = install();
    expect(second.code, second.out).toBe(0);
    expect(second.out).toMatch(/^summary: 0 changed, \d+ unchanged, 3 kept/m);
    expect(second.out).toContain('tree: 0 added, 0 updated, 0 removed');
    expect(diff(before, snapshot(root))).toEqual([]);
    expect(readFileSync(at('etc/kme/kme.json'), 'utf8')).toBe(edited);
    expect(readFileSync(at('etc/kme/hsm.pin'), 'utf8')).toBe('123456');
  });

  it('an update replaces changed firmware files and removes ones no longer shipped', () => {
    writeFileSync(at('opt/kme/dist/src/obsolete.js'), '');
    writeFileSync(at('etc/systemd/system/kme-api.service'), '# changed by hand\n');
    const r = install();
    expect(r.code, r.out).toBe(0);
    expect(r.out).toContain('tree: 0 added, 0 updated, 1 removed');
    expect(r.out).toMatch(/updated\s+\/etc\/systemd\/system\/kme-api\.service/);
    expect(existsSync(at('opt/kme/dist/src/obsolete.js'))).toBe(false);
    expect(readFileSync(at('etc/systemd/system/kme-api.service'), 'utf8')).toBe(readFileSync(join(repo, 'systemd/kme-api.service'), 'utf8'));
  });

  it.skipIf(!asRoot)('without systemd-sysusers: users through useradd, also idempotent', () => {
    const r2 = mkdtempSync(join(tmpdir(), 'kme-install-useradd-'));
    try {
      mkdirSync(join(r2, 'etc'));
      writeFileSync(join(r2, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/bash\n');
      writeFileSync(join(r2, 'etc/group'), 'root:x:0:\n');
      writeFileSync(join(r2, 'etc/shadow'), 'root:*:19000:0:99999:7:::\n', { mode: 0o600 });
      writeFileSync(join(r2, 'etc/gshadow'), 'root:*::\n', { mode: 0o600 });
      const run = () => spawnSync('bash', [join(src, 'scripts/install'), '--root', r2, '--node', process.execPath, '--users', 'useradd', '--no-enable'], { encoding: 'utf8' });
      const a = run();
      expect(a.status, a.stdout + a.stderr).toBe(0);
      expect(a.stdout).toMatch(/created\s+kme-keypoold, kme-api, groups kme, kme-hw \(useradd\)/);
      expect(readFileSync(join(r2, 'etc/group'), 'utf8')).toMatch(/^kme-hw:x:\d+:kme-keypoold$/m);
      const kmeGid = /^kme:x:(\d+):/m.exec(readFileSync(join(r2, 'etc/group'), 'utf8'))![1];
      expect(readFileSync(join(r2, 'etc/passwd'), 'utf8')).toMatch(new RegExp(`^kme-api:x:\\d+:${kmeGid}:`, 'm'));
      const b = run();
      expect(b.status, b.stdout + b.stderr).toBe(0);
      expect(b.stdout).toMatch(/^summary: 0 changed/m);
    } finally {
      rmSync(r2, { recursive: true, force: true });
    }
  });

  it('refuses to run from an unbuilt checkout', () => {
    const bare = mkdtempSync(join(tmpdir(), 'kme-install-bare-'));
    try {
      mkdirSync(join(bare, 'scripts'));
      cpSync(join(repo, 'scripts/install'), join(bare, 'scripts/install'));
      const r = spawnSync('bash', [join(bare, 'scripts/install'), '--root', join(bare, 'root'), '--node', process.execPath], { encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain('is not built');
    } finally {
      rmSync(bare, { recursive: true, force: true });
    }
  });
});
