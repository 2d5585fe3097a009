/**
 * kme-hsm: provisions and checks a node's master key.
 *
 *   node dist/scripts/kme-hsm.js init  --config <node-config.json> [--json]
 *   node dist/scripts/kme-hsm.js check --config <node-config.json> [--json]
 *
 * init   logs in and creates the master key unless it exists (idempotent), then
 *        proves it works; prints whether it created or found it, and its id.
 * check  opens the master key as keypoold does and runs its health check.
 *
 * One line of plain text (stdout on success, stderr on failure), or one JSON
 * object on stdout with --json. Exit 0 on success, 2 for a usage or
 * configuration error, otherwise the MasterKeyError's exit code (20-28, see
 * src/keypoold/master-key.ts). The PIN is never printed.
 */
import { existsSync, realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { pino } from 'pino';
import { ConfigError, loadConfig, type MasterKeyConfig } from '../src/common/config.js';
import type { Logger } from '../src/common/logger.js';
import {
  FileMasterKeyProvider, MasterKeyError, masterKeyExitCode, openMasterKeyProvider, type MasterKeyErrorCode,
} from '../src/keypoold/master-key.js';

export interface HsmCommandResult {
  ok: boolean;
  command: 'init' | 'check';
  provider?: 'file' | 'pkcs11';
  keyId?: string;
  /** init: the key was created now (false: it was there already). */
  created?: boolean;
  code?: MasterKeyErrorCode | 'USAGE' | 'CONFIG' | 'UNHEALTHY';
  message: string;
  exitCode: number;
}

const USAGE = 'usage: kme-hsm <init|check> --config <node-config.json> [--json]';

function where(mk: MasterKeyConfig): string {
  return mk.provider === 'file' ? `in file ${mk.path} (a file, not an HSM)` : `on token '${mk.token_label}' (${mk.module})`;
}

function keyName(mk: MasterKeyConfig): string {
  return mk.provider === 'file' ? 'master key' : `master key '${mk.key_label}'`;
}

/** Creates the master key if absent, then checks it works. */
export async function hsmInit(mk: MasterKeyConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<HsmCommandResult> {
  let created: boolean;
  if (mk.provider === 'pkcs11') {
    const { createMasterKeyIfAbsent } = await import('../drivers/hsm/pkcs11-master-key.js');
    created = (await createMasterKeyIfAbsent(mk, logger, env)).created;
  } else {
    created = !existsSync(mk.path);
    await FileMasterKeyProvider.open(mk.path, logger).close();
  }
  const check = await hsmCheck(mk, logger, env);
  if (!check.ok) return { ...check, command: 'init', created };
  const keyId = check.keyId!;
  const message = created
    ? `created ${keyName(mk)} ${where(mk)}, id ${keyId}`
    : `found ${keyName(mk)} ${where(mk)}, id ${keyId}: nothing to do`;
  return { ok: true, command: 'init', provider: mk.provider, keyId, created, message, exitCode: 0 };
}

/** Opens the master key as keypoold does and runs its health check. */
export async function hsmCheck(mk: MasterKeyConfig, logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<HsmCommandResult> {
  const p = await openMasterKeyProvider(mk, logger, env);
  try {
    const h = await p.health();
    if (!h.ok) {
      return {
        ok: false, command: 'check', provider: mk.provider, keyId: p.currentKeyId, code: 'UNHEALTHY',
        message: h.reason, exitCode: masterKeyExitCode('HSM_ERROR'),
      };
    }
    return {
      ok: true, command: 'check', provider: mk.provider, keyId: p.currentKeyId,
      message: `OK: ${keyName(mk)} ${where(mk)}, id ${p.currentKeyId}, works`, exitCode: 0,
    };
  } finally {
    await p.close();
  }
}

/** The command line: parses argv (without node and script), runs, prints, returns the exit code. */
export async function runKmeHsm(
  argv: string[], env: NodeJS.ProcessEnv = process.env,
  out: { stdout: (s: string) => void; stderr: (s: string) => void } = {
    stdout: (s) => process.stdout.write(s), stderr: (s) => process.stderr.write(s),
  },
): Promise<number> {
  const json = argv.includes('--json');
  const ci = argv.indexOf('--config');
  const command = argv.find((a, i) => !a.startsWith('--') && i !== ci + 1);
  let result: HsmCommandResult;
  if ((command !== 'init' && command !== 'check') || ci < 0 || !argv[ci + 1]) {
    result = { ok: false, command: command === 'init' ? 'init' : 'check', code: 'USAGE', message: USAGE, exitCode: 2 };
  } else {
    result = await runCommand(command, argv[ci + 1]!, env);
  }
  if (json) out.stdout(`${JSON.stringify(result)}\n`);
  else if (result.ok) out.stdout(`${result.message}\n`);
  else out.stderr(`kme-hsm ${result.command}: ${result.code === 'USAGE' ? '' : `${result.code}: `}${result.message}\n`);
  return result.exitCode;
}

async function runCommand(command: 'init' | 'check', configPath: string, env: NodeJS.ProcessEnv): Promise<HsmCommandResult> {
  const logger = pino({ name: 'kme-hsm', level: env.KME_LOG_LEVEL ?? 'error', base: null }, pino.destination(2));
  try {
    const mk = loadConfig(configPath).master_key;
    return command === 'init' ? await hsmInit(mk, logger, env) : await hsmCheck(mk, logger, env);
  } catch (e) {
    if (e instanceof MasterKeyError) return { ok: false, command, code: e.code, message: e.message, exitCode: masterKeyExitCode(e.code) };
    if (e instanceof ConfigError) return { ok: false, command, code: 'CONFIG', message: e.message, exitCode: 2 };
    throw e;
  }
}

const invoked = process.argv[1];
if (invoked && import.meta.url === pathToFileURL(realpathSync(invoked)).href) {
  runKmeHsm(process.argv.slice(2)).then(
    (code) => (process.exitCode = code),
    (e: unknown) => {
      process.stderr.write(`kme-hsm: unexpected failure: ${(e as Error)?.stack ?? String(e)}\n`);
      process.exitCode = 1;
    },
  );
}
