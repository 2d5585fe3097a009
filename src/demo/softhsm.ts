/**
 * The demo's HSM: when SoftHSM2 is installed, one token per node in
 * <demo>/softhsm (its own softhsm2.conf), the user PIN in <node>/hsm.pin
 * (0600), the SO PIN beside the tokens (0600), and the master key created by
 * the provisioning command (scripts/kme-hsm.ts), as a technician would.
 * Without SoftHSM2 the demo keeps its master key in a file (keypoold warns).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ensureDir, SECRET_MODE, writeFileDurable, type FileLog } from './files.js';

export interface DemoSoftHsm {
  /** The PKCS#11 library. */
  module: string;
  confPath: string;
  /** Environment a process needs to find these tokens (SOFTHSM2_CONF). */
  env: Record<string, string>;
}

/** The SoftHSM2 library, if SoftHSM2 (library and softhsm2-util) is installed. */
export function softHsmLibrary(env: NodeJS.ProcessEnv = process.env): string | undefined {
  const lib = env.KME_PKCS11_LIB ?? '/usr/lib/softhsm/libsofthsm2.so';
  if (!existsSync(lib)) return undefined;
  try {
    execFileSync('softhsm2-util', ['--version'], { stdio: 'ignore' });
  } catch {
    return undefined;
  }
  return lib;
}

/** Make (or reuse) the demo's SoftHSM2 folder and one token per node, labelled with the KME ID. */
export function ensureDemoSoftHsm(demoDir: string, kmeIds: string[], pinFile: (kmeId: string) => string, log: FileLog): DemoSoftHsm | undefined {
  const module = softHsmLibrary();
  if (!module) return undefined;
  const dir = join(demoDir, 'softhsm');
  const tokenDir = join(dir, 'tokens');
  ensureDir(tokenDir, 0o700);
  const confPath = join(dir, 'softhsm2.conf');
  if (!existsSync(confPath)) {
    writeFileDurable(confPath, [`directories.tokendir = ${tokenDir}`, 'objectstore.backend = file', 'log.level = ERROR', 'slots.removable = false', ''].join('\n'));
    log.written.push(confPath);
  } else log.reused.push(confPath);
  const env = { SOFTHSM2_CONF: confPath };
  const util = (args: string[]) => execFileSync('softhsm2-util', args, { env: { ...process.env, ...env }, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  const present = util(['--show-slots']);
  for (const id of kmeIds) {
    const pinPath = pinFile(id);
    const hasToken = new RegExp(`Label:\\s+${id}\\s*$`, 'm').test(present);
    if (hasToken && existsSync(pinPath)) {
      log.reused.push(pinPath);
      continue;
    }
    // A token whose PIN file is gone cannot be used: start it afresh (demo only).
    if (hasToken) util(['--delete-token', '--token', id]);
    const pin = randomBytes(12).toString('hex');
    const soPin = randomBytes(12).toString('hex');
    writeFileDurable(pinPath, `${pin}\n`, SECRET_MODE);
    writeFileDurable(join(dir, `${id}.so-pin`), `${soPin}\n`, SECRET_MODE);
    util(['--init-token', '--free', '--label', id, '--so-pin', soPin, '--pin', pin]);
    log.written.push(pinPath);
  }
  return { module, confPath, env };
}

/** The built provisioning command of this code tree (dist/scripts/kme-hsm.js), whether we run from dist/ or from sources. */
function kmeHsmScript(): string {
  for (let d = import.meta.dirname; d !== dirname(d); d = dirname(d)) {
    const f = join(d, 'dist', 'scripts', 'kme-hsm.js');
    if (existsSync(f)) return f;
  }
  throw new Error('dist/scripts/kme-hsm.js not found: run npm run build');
}

/** Create a node's master key on its token with the provisioning command (idempotent). */
export function provisionMasterKey(root: string, configFile: string, hsm: DemoSoftHsm): void {
  try {
    execFileSync(process.execPath, [kmeHsmScript(), 'init', '--config', configFile], {
      cwd: root,
      env: { ...process.env, ...hsm.env },
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new Error(`could not create the master key for ${configFile}: ${(err.stderr ?? err.message).trim()}`);
  }
}
