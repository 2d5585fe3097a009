/**
 * kmectl hsm init|check|rotate. init and check are kme-hsm's (scripts/kme-hsm.ts):
 * they open the master key as keypoold does, and exit with its codes 20-28 on
 * an HSM fault. rotate asks keypoold (maintenance socket) for a new master key,
 * then a new data key, and follows the store's re-encryption with a progress bar.
 */
import { pino } from 'pino';
import { ConfigError } from '../common/config.js';
import type { RotationStatus } from '../ipc/pool-protocol.js';
import { MasterKeyError, masterKeyExitCode } from '../keypoold/master-key.js';
import { hsmCheck, hsmInit, type HsmCommandResult } from '../../scripts/kme-hsm.js';
import type { CommandContext, CommandSpec } from './command.js';
import { EXIT, KmectlError, usageError } from './output.js';

const HSM_HINTS: Partial<Record<string, string>> = {
  LIBRARY_NOT_FOUND: 'check master_key.module in the config points at the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)',
  TOKEN_NOT_FOUND: 'check the HSM is plugged in and master_key.token_label matches a token listed above',
  WRONG_PIN: 'check the PIN file; a few more wrong PINs lock the token',
  PIN_LOCKED: 'the security officer must unlock the user PIN on the token',
  KEY_MISSING: 'kmectl hsm init creates the master key (only on a new node: an existing store needs its own key)',
  PIN_UNREADABLE: 'create the PIN file (mode 0600) or the systemd credential',
  FILE_PERMISSIONS: 'chmod 600 the PIN/key file',
  UNWRAP_FAILED: 'this token does not hold the key of this store: plug in the right token',
};

async function runHsm(ctx: CommandContext, what: 'init' | 'check'): Promise<{ code: number; json: unknown }> {
  if (ctx.words.length > 0) throw usageError(`hsm ${what} takes no arguments`);
  const cfg = ctx.node.config();
  const logger = pino({ level: 'silent' });
  // The PKCS#11 library reads its own variables (the demo's SOFTHSM2_CONF) from the process environment.
  for (const [k, v] of Object.entries(ctx.node.demo?.env ?? {})) process.env[k] ??= v;
  let r: HsmCommandResult;
  try {
    r = what === 'init' ? await hsmInit(cfg.master_key, logger, ctx.node.env) : await hsmCheck(cfg.master_key, logger, ctx.node.env);
  } catch (e) {
    if (e instanceof MasterKeyError) {
      throw new KmectlError(e.message, HSM_HINTS[e.code], masterKeyExitCode(e.code), e.code);
    }
    if (e instanceof ConfigError) throw new KmectlError(e.message, undefined, EXIT.USAGE, 'CONFIG');
    throw e;
  }
  if (!r.ok) throw new KmectlError(r.message, 'check the HSM is plugged in and answers; journalctl -u kme-keypoold', r.exitCode, r.code ?? 'UNHEALTHY');
  ctx.ui.line(`${ctx.ui.level('ok')} ${r.message.replace(/^OK: /, '')}`);
  if (cfg.master_key.provider === 'file') ctx.ui.line(ctx.ui.c.yellow('the master key is a file on this board, not in an HSM'));
  return { code: EXIT.OK, json: { ...r } };
}

export const hsmInitCmd: CommandSpec = {
  usage: ['hsm init     (creates the master key unless it exists; idempotent)'],
  options: [],
  run: (ctx) => runHsm(ctx, 'init'),
};

export const hsmCheckCmd: CommandSpec = {
  usage: ['hsm check'],
  options: [],
  run: (ctx) => runHsm(ctx, 'check'),
};

const POLL_MS = 250;

export const hsmRotate: CommandSpec = {
  usage: ['hsm rotate [--only master|data]   (new master key, then new data key; the store is re-encrypted in the background)'],
  options: ['only'],
  async run(ctx) {
    const { ui, opts } = ctx;
    if (ctx.words.length > 0) throw usageError('hsm rotate takes no arguments');
    if (opts.only !== undefined && opts.only !== 'master' && opts.only !== 'data') throw usageError('--only takes master or data');
    const admin = ctx.admin();
    const before = await admin.call('rotation_status', {});
    if (before.data_key.state === 'running') {
      throw new KmectlError('a data key re-encryption is still running', 'wait for it: kmectl status shows the data key state', EXIT.ATTENTION, 'BUSY');
    }
    const out: Record<string, unknown> = { ok: true };
    if (opts.only !== 'data') {
      ui.line(`master key: rotating (${before.master_key.provider}, key ${before.master_key.key_id})...`);
      const r = await admin.call('rotate', { what: 'master' }, 300_000);
      ui.line(`${ui.level('ok')} master key ${before.master_key.key_id} -> ${r.master_key.key_id}: data keys rewrapped, old master key destroyed`);
      out.master_key = { before: before.master_key.key_id, after: r.master_key.key_id, provider: r.master_key.provider };
    }
    if (opts.only !== 'master') {
      const started = await admin.call('rotate', { what: 'data' }, 60_000);
      const gen = started.data_key.generation;
      ui.line(`data key: generation ${before.data_key.generation} -> ${gen}; new records are sealed with it now, re-encrypting the rest...`);
      const bar = ui.progress('re-encrypting');
      let st: RotationStatus = started;
      while (st.data_key.state === 'running' || st.data_key.state === 'idle') {
        bar.update(st.data_key.done, st.data_key.total);
        await new Promise((r) => setTimeout(r, POLL_MS));
        st = await admin.call('rotation_status', {});
        if (st.data_key.state === 'idle' && st.data_key.generation === gen) break; // nothing was left to re-encrypt
      }
      const d = st.data_key;
      bar.end(d.done, d.total, d.state === 'failed' ? 'FAILED' : 'done');
      out.data_key = { generation: d.generation, state: d.state, done: d.done, total: d.total, resealed: d.resealed, ...(d.error ? { error: d.error } : {}) };
      if (d.state === 'failed') {
        out.ok = false;
        ui.line(ui.level('fail', `re-encryption failed: ${d.error ?? '?'}`));
        ui.line('  -> it resumes at keypoold\'s next start; see journalctl -u kme-keypoold');
        return { code: EXIT.ATTENTION, json: out };
      }
      ui.line(`${ui.level('ok')} data key generation ${d.generation}: ${d.resealed} records re-encrypted, the old data key erased`);
    }
    return { code: EXIT.OK, json: out };
  },
};
