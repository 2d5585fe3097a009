/**
 * A fresh SoftHSM2 token in a temporary folder, for tests that need a real
 * PKCS#11 token (never a mock).
 *
 *   const hsm = createSoftHsm();            // at the top of the test file
 *   afterAll(() => hsm.cleanup());
 *   // hsm.masterKey() -> a pkcs11 master_key config for this token
 *   // hsm.env         -> environment for child processes (SOFTHSM2_CONF set)
 *
 * The token starts empty. To give it a master key, as `kme-hsm init` would:
 *   await createMasterKeyIfAbsent(hsm.masterKey(), logger, hsm.env)   // drivers/hsm/pkcs11-master-key.ts
 * or run `node dist/scripts/kme-hsm.js init --config <cfg>` with `env: hsm.env`.
 *
 * SoftHSM2 reads SOFTHSM2_CONF in C_Initialize, so createSoftHsm() sets
 * process.env.SOFTHSM2_CONF (unless `setProcessEnv: false`) and must run
 * before this process first initialises the library. vitest's `forks` pool
 * runs each test file in its own process, so one call per file is enough.
 *
 * The conf: directories.tokendir = <tmp>/tokens, objectstore.backend = file,
 * log.level = ERROR, slots.removable = false, library.reset_on_fork = false.
 * The library is $KME_PKCS11_LIB, else /usr/lib/softhsm/libsofthsm2.so.
 * The user PIN is random per call, so a test can check it is never printed.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const SOFTHSM_UTIL = 'softhsm2-util';

export interface SoftHsmOptions {
  /** Label of the first token (default 'kme-test'). */
  label?: string;
  /** Set process.env.SOFTHSM2_CONF (default true). */
  setProcessEnv?: boolean;
}

export interface SoftHsm {
  /** Path of the PKCS#11 library. */
  module: string;
  /** The temporary folder holding everything below. */
  dir: string;
  confPath: string;
  tokenDir: string;
  /** Label of the first token. */
  label: string;
  /** User PIN of every token made here (random). */
  pin: string;
  soPin: string;
  /** A file holding the user PIN followed by a newline, mode 0600. */
  pinFile: string;
  /** process.env plus SOFTHSM2_CONF, for child processes. */
  env: NodeJS.ProcessEnv;
  /** A pkcs11 master_key configuration for a token here (default: the first one). */
  masterKey(over?: Partial<Pkcs11MasterKeyJson>): Pkcs11MasterKeyJson;
  /** Initialises one more token with this PIN. */
  addToken(label: string): void;
  /** Deletes a token from another process (`softhsm2-util --delete-token`), as if it were pulled out. */
  deleteToken(label?: string): void;
  /** Removes the temporary folder (and restores SOFTHSM2_CONF if it was set here). */
  cleanup(): void;
}

export interface Pkcs11MasterKeyJson {
  provider: 'pkcs11';
  module: string;
  token_label: string;
  key_label: string;
  pin_file?: string;
  pin_credential?: string;
}

export function pkcs11Library(env: NodeJS.ProcessEnv = process.env): string {
  return env.KME_PKCS11_LIB ?? '/usr/lib/softhsm/libsofthsm2.so';
}

export function createSoftHsm(opts: SoftHsmOptions = {}): SoftHsm {
  const label = opts.label ?? 'kme-test';
  const dir = mkdtempSync(join(tmpdir(), 'kme-softhsm-'));
  const tokenDir = join(dir, 'tokens');
  mkdirSync(tokenDir, { mode: 0o700 });
  const confPath = join(dir, 'softhsm2.conf');
  writeFileSync(
    confPath,
    [
      `directories.tokendir = ${tokenDir}`,
      'objectstore.backend = file',
      'log.level = ERROR',
      'slots.removable = false',
      'library.reset_on_fork = false',
      '',
    ].join('\n'),
  );
  const pin = `pin-${randomBytes(6).toString('hex')}`;
  const soPin = `so-${randomBytes(6).toString('hex')}`;
  const pinFile = join(dir, 'user.pin');
  writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
  chmodSync(pinFile, 0o600);
  const env: NodeJS.ProcessEnv = { ...process.env, SOFTHSM2_CONF: confPath };
  const util = (args: string[]) => execFileSync(SOFTHSM_UTIL, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  const previousConf = process.env.SOFTHSM2_CONF;
  const hsm: SoftHsm = {
    module: pkcs11Library(),
    dir,
    confPath,
    tokenDir,
    label,
    pin,
    soPin,
    pinFile,
    env,
    masterKey: (over = {}) => ({ provider: 'pkcs11', module: hsm.module, token_label: label, key_label: 'kme-master', pin_file: pinFile, ...over }),
    addToken: (l) => void util(['--init-token', '--free', '--label', l, '--so-pin', soPin, '--pin', pin]),
    deleteToken: (l = label) => void util(['--delete-token', '--token', l]),
    cleanup: () => {
      if (opts.setProcessEnv !== false) {
        if (previousConf === undefined) delete process.env.SOFTHSM2_CONF;
        else process.env.SOFTHSM2_CONF = previousConf;
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    hsm.addToken(label);
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`cannot create a SoftHSM2 token (is softhsm2 installed?): ${err.stderr?.toString().trim() || err.message}`);
  }
  if (opts.setProcessEnv !== false) process.env.SOFTHSM2_CONF = confPath;
  return hsm;
}
