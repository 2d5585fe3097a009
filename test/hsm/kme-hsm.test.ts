/**
 * `kme-hsm init|check` as a real child process (dist/scripts/kme-hsm.js,
 * built by `npm test` or `npx tsc -p tsconfig.json`) against a SoftHSM2 token.
 */
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSoftHsm, type Pkcs11MasterKeyJson } from '../helpers/softhsm.js';

const repoRoot = resolve(import.meta.dirname, '../..');
const script = join(repoRoot, 'dist/scripts/kme-hsm.js');
const hsm = createSoftHsm({ label: 'kme-cli' });
afterAll(() => hsm.cleanup());

/** Every byte the command printed in this file, to check the PIN never appears. */
const printed: string[] = [];

beforeAll(() => {
  const sources = ['scripts/kme-hsm.ts', 'drivers/hsm/pkcs11-master-key.ts', 'drivers/hsm/pkcs11-session.ts', 'src/keypoold/master-key.ts'];
  const stale = sources.filter((s) => {
    const js = join(repoRoot, 'dist', s.replace(/\.ts$/, '.js'));
    return !existsSync(js) || statSync(js).mtimeMs < statSync(join(repoRoot, s)).mtimeMs;
  });
  if (stale.length) throw new Error(`dist/ is missing or older than ${stale.join(', ')}: run npx tsc -p tsconfig.json`);
});

let n = 0;
/** Writes a node configuration whose master_key is `mk`; returns its path. */
function config(mk: object): string {
  const tls = { cert: 'c.crt', key: 'c.key', ca: 'ca.crt' };
  const p = join(hsm.dir, `node-${n++}.json`);
  writeFileSync(p, JSON.stringify({
    kme_id: 'KME_A', state_dir: 'state', registry_file: 'registry.json', keypoold: { socket: 'k.sock' },
    api: { port: 8443, tls }, peer: { port: 8444, tls }, master_key: mk,
  }));
  return p;
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function kmeHsm(args: string[], env: NodeJS.ProcessEnv = hsm.env): Promise<Run> {
  return new Promise((done) => {
    execFile(process.execPath, [script, ...args], { env, cwd: repoRoot, timeout: 20_000 }, (err, stdout, stderr) => {
      printed.push(stdout, stderr);
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      done({ code, stdout, stderr });
    });
  });
}

const mk = (over: Partial<Pkcs11MasterKeyJson> = {}) => config(hsm.masterKey(over));

describe('kme-hsm', () => {
  it('check before init: exit 24 (KEY_MISSING) and says to run init', async () => {
    const r = await kmeHsm(['check', '--config', mk()]);
    expect(r.code).toBe(24);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(
      "kme-hsm check: KEY_MISSING: master key 'kme-master' not on token 'kme-cli': run `node dist/scripts/kme-hsm.js init --config <path>`\n",
    );
  });

  it('init creates the key and prints its id; a second init finds it; check passes', async () => {
    const cfg = mk();
    const first = await kmeHsm(['init', '--config', cfg]);
    expect(first.code).toBe(0);
    const m = /^created master key 'kme-master' on token 'kme-cli' \(.*libsofthsm2\.so\), id ([0-9a-f]{16})\n$/.exec(first.stdout);
    expect(m).not.toBeNull();
    const id = m![1]!;
    const second = await kmeHsm(['init', '--config', cfg]);
    expect(second.code).toBe(0);
    expect(second.stdout).toMatch(new RegExp(`^found master key 'kme-master' on token 'kme-cli' .*, id ${id}: nothing to do\\n$`));
    const check = await kmeHsm(['check', '--config', cfg]);
    expect(check.code).toBe(0);
    expect(check.stdout).toMatch(new RegExp(`^OK: master key 'kme-master' on token 'kme-cli' .*, id ${id}, works\\n$`));
    const json = await kmeHsm(['check', '--config', cfg, '--json']);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, command: 'check', provider: 'pkcs11', keyId: id, exitCode: 0 });
  });

  it('exits with the class code and says what to do for each failure', async () => {
    const wrongPin = join(hsm.dir, 'wrong.pin');
    writeFileSync(wrongPin, 'wrong-pin-1234\n', { mode: 0o600 });
    const loose = join(hsm.dir, 'loose.pin');
    writeFileSync(loose, `${hsm.pin}\n`);
    chmodSync(loose, 0o644);
    const cases: Array<[Partial<Pkcs11MasterKeyJson>, number, RegExp]> = [
      [{ module: '/nonexistent/libpkcs11.so' }, 20, /LIBRARY_NOT_FOUND: cannot load the PKCS#11 library \/nonexistent\/libpkcs11\.so .*fix master_key\.module/],
      [{ token_label: 'nope' }, 21, /TOKEN_NOT_FOUND: token 'nope' not found in .*; slots seen: 'kme-cli', 1 uninitialised; initialise it or fix master_key\.token_label/],
      [{ pin_file: wrongPin }, 22, /WRONG_PIN: token 'kme-cli' refused the user PIN from PIN file .*wrong\.pin/],
      [{ key_label: 'absent' }, 24, /KEY_MISSING: master key 'absent' not on token 'kme-cli': run `node dist\/scripts\/kme-hsm\.js init/],
      [{ pin_file: join(hsm.dir, 'no.pin') }, 26, /PIN_UNREADABLE: cannot read the HSM PIN file .*no\.pin \(ENOENT\)/],
      [{ pin_file: undefined, pin_credential: 'hsm-pin' }, 26, /PIN_UNREADABLE: .*CREDENTIALS_DIRECTORY is not set/],
      [{ pin_file: loose }, 27, /FILE_PERMISSIONS: the HSM PIN file .*loose\.pin is accessible to group or others \(mode 0644\); run: chmod 600/],
    ];
    for (const [over, code, message] of cases) {
      const r = await kmeHsm(['check', '--config', mk(over)]);
      expect({ code: r.code, stdout: r.stdout }).toEqual({ code, stdout: '' });
      expect(r.stderr).toMatch(message);
      expect(r.stderr).not.toContain('wrong-pin-1234');
      const j = await kmeHsm(['check', '--config', mk(over), '--json']);
      expect(j.code).toBe(code);
      expect(JSON.parse(j.stdout)).toMatchObject({ ok: false, exitCode: code });
    }
  });

  it('reads the PIN from a systemd credential', async () => {
    const creds = join(hsm.dir, 'creds');
    mkdirSync(creds, { recursive: true });
    writeFileSync(join(creds, 'hsm-pin'), hsm.pin, { mode: 0o400 });
    const r = await kmeHsm(['check', '--config', mk({ pin_file: undefined, pin_credential: 'hsm-pin' })], { ...hsm.env, CREDENTIALS_DIRECTORY: creds });
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^OK: /);
  });

  it('usage and configuration errors exit 2', async () => {
    const usage = await kmeHsm(['frobnicate']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('usage: kme-hsm <init|check> --config <node-config.json> [--json]');
    const noConfig = await kmeHsm(['check']);
    expect(noConfig.code).toBe(2);
    const bad = join(hsm.dir, 'bad.json');
    writeFileSync(bad, '{"kme_id": 1}');
    const cfg = await kmeHsm(['check', '--config', bad]);
    expect(cfg.code).toBe(2);
    expect(cfg.stderr).toMatch(/^kme-hsm check: CONFIG: invalid configuration:/);
  });

  it('works for the file provider too: init creates a 0600 key file, check passes', async () => {
    const path = join(hsm.dir, 'file-master.key');
    const cfg = config({ provider: 'file', path });
    const init = await kmeHsm(['init', '--config', cfg]);
    expect(init.code).toBe(0);
    expect(init.stdout).toMatch(new RegExp(`^created master key in file ${path} \\(a file, not an HSM\\), id [0-9a-f]{16}\\n$`));
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const check = await kmeHsm(['check', '--config', cfg, '--json']);
    expect(JSON.parse(check.stdout)).toMatchObject({ ok: true, provider: 'file' });
  });

  it('never printed the PIN', () => {
    expect(printed.length).toBeGreaterThan(20);
    for (const out of printed) expect(out).not.toContain(hsm.pin);
  });
});
