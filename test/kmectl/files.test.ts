import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { writeNodeFile } from '../../src/kmectl/files.js';

const dir = mkdtempSync(join(tmpdir(), 'kmectl-files-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const root = process.getuid?.() === 0;
const st = (p: string) => statSync(p);

describe('writeNodeFile', () => {
  it('replaces a file keeping its owner, group and mode (registry.json stays readable by the daemon)', () => {
    const f = join(dir, 'registry.json');
    writeFileSync(f, 'old');
    chmodSync(f, 0o640);
    if (root) chownSync(f, 4321, 4322);
    const before = st(f);
    writeNodeFile(f, 'new', { mode: 0o600 });
    expect(readFileSync(f, 'utf8')).toBe('new');
    expect(st(f).mode & 0o777).toBe(0o640);
    expect([st(f).uid, st(f).gid]).toEqual([before.uid, before.gid]);
    expect(st(f).ino).not.toBe(before.ino); // a new file renamed over the old one
  });

  it('a secret: an owner-only mode is kept, a looser one becomes 0600; the owner stays', () => {
    const k = join(dir, 'server.key');
    writeFileSync(k, 'k1');
    chmodSync(k, 0o400);
    if (root) chownSync(k, 4321, 4322);
    writeNodeFile(k, 'k2', { mode: 0o600, secret: true });
    expect(st(k).mode & 0o777).toBe(0o400);
    expect(st(k).uid).toBe(root ? 4321 : process.getuid!());
    chmodSync(k, 0o644);
    writeNodeFile(k, 'k3', { mode: 0o600, secret: true });
    expect(st(k).mode & 0o777).toBe(0o600);
    expect(readFileSync(k, 'utf8')).toBe('k3');
  });

  it('a new file gets the mode asked (past the umask) and its folder\'s group', () => {
    const sub = join(dir, 'etc');
    mkdirSync(sub);
    if (root) chownSync(sub, 0, 4322);
    const f = join(sub, 'api.crt');
    writeNodeFile(f, 'cert', { mode: 0o644 });
    expect(st(f).mode & 0o777).toBe(0o644);
    expect(st(f).gid).toBe(st(sub).gid);
    expect(st(f).uid).toBe(process.getuid!());
  });
});
