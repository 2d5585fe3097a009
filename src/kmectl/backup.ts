/**
 * kmectl backup <file> / restore <file>: the node's configuration only.
 *
 * In the backup: the node configuration, the SAE registry, the API and KME
 * certificates and their CA certificates. The TLS private keys (secrets, but
 * not key material) only with --passphrase-file, encrypted (scrypt +
 * AES-256-GCM); without it they are left out and the backup says so. Never:
 * the key store, the master key (file or HSM token), PIN files, the audit trail.
 *
 * restore validates the configuration (parseConfig) before writing anything,
 * writes files where the restored configuration names them (relative to the
 * target configuration's folder), skips identical files, and refuses to
 * replace a different one without --force.
 */
import { createCipheriv, createDecipheriv, createHash, randomBytes, scryptSync } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { ConfigError, parseConfig } from '../common/config.js';
import { SecretFileError, readSecretFile } from '../common/secret-file.js';
import type { CommandContext, CommandSpec } from './command.js';
import { writeNodeFile } from './files.js';
import { EXIT, KmectlError, table, usageError } from './output.js';

export const BACKUP_FORMAT = 'kme-config-backup';
const VERSION = 1;
const SCRYPT = { N: 1 << 15, r: 8, p: 1, maxmem: 64 * 1024 * 1024 };
const MIN_PASSPHRASE = 12;

type Role = 'config' | 'registry' | 'api_cert' | 'api_ca' | 'kme_cert' | 'kme_ca' | 'api_key' | 'kme_key';

interface Entry {
  role: Role;
  /** As the configuration writes it (relative to its folder, or absolute); the config itself: its file name. */
  path: string;
  mode: number;
  sha256: string;
  text: string;
}

interface BackupDoc {
  format: typeof BACKUP_FORMAT;
  version: number;
  created_at: string;
  kme_id: string;
  source_config: string;
  files: Entry[];
  /** The TLS private keys, encrypted (absent without --passphrase-file). */
  secrets?: { kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string }; cipher: 'aes-256-gcm'; iv: string; tag: string; data: string; roles: Role[] };
  excluded: Array<{ what: string; path?: string; why: string }>;
}

const sha = (s: string) => createHash('sha256').update(s).digest('hex');

function passphrase(path: string | undefined): Buffer | undefined {
  if (path === undefined) return undefined;
  let p: Buffer;
  try {
    p = readSecretFile(path, 'passphrase file');
  } catch (e) {
    if (e instanceof SecretFileError) throw new KmectlError(e.message, e.code === 'PERMISSIONS' ? `chmod 600 ${path}` : undefined, EXIT.USAGE, 'PASSPHRASE');
    throw e;
  }
  if (p.length < MIN_PASSPHRASE) {
    p.fill(0);
    throw new KmectlError(`the passphrase in ${path} is shorter than ${MIN_PASSPHRASE} characters`, 'use a longer passphrase', EXIT.USAGE, 'PASSPHRASE');
  }
  return p;
}

function kdf(pass: Buffer, salt: Buffer): Buffer {
  return scryptSync(pass, salt, 32, SCRYPT);
}

function readEntry(role: Role, written: string, base: string): Entry {
  const abs = isAbsolute(written) ? written : resolve(base, written);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (e) {
    throw new KmectlError(`cannot read ${abs} (${role}): ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'fix the file (or the configuration) first', EXIT.ATTENTION, 'UNREADABLE');
  }
  return { role, path: written, mode: statSync(abs).mode & 0o777, sha256: sha(text), text };
}

export const backup: CommandSpec = {
  usage: ['backup <file> [--passphrase-file <file>] [--force]   (configuration only; TLS keys only encrypted)'],
  options: ['passphrase-file', 'force'],
  async run(ctx) {
    if (ctx.words.length !== 1) throw usageError('backup takes the file to write');
    const out = resolve(ctx.cwd, ctx.words[0]!);
    if (existsSync(out) && !ctx.opts.force) throw new KmectlError(`${out} already exists`, 'choose another file, or add --force to replace it', EXIT.ATTENTION, 'EXISTS');
    const cfg = ctx.node.config(); // validates
    const configPath = ctx.node.configPath;
    const base = dirname(configPath);
    const raw = JSON.parse(readFileSync(configPath, 'utf8')) as {
      registry_file: string; api: { tls: { cert: string; key: string; ca: string } }; peer: { tls: { cert: string; key: string; ca: string } };
    };
    const files: Entry[] = [{ ...readEntry('config', configPath, base), path: 'config.json' }];
    const seen = new Set<string>([configPath]);
    const add = (role: Role, written: string, into: Entry[]) => {
      const abs = isAbsolute(written) ? written : resolve(base, written);
      if (seen.has(abs)) return;
      seen.add(abs);
      into.push(readEntry(role, written, base));
    };
    add('registry', raw.registry_file, files);
    add('api_cert', raw.api.tls.cert, files);
    add('api_ca', raw.api.tls.ca, files);
    add('kme_cert', raw.peer.tls.cert, files);
    add('kme_ca', raw.peer.tls.ca, files);
    const excluded: BackupDoc['excluded'] = [
      { what: 'key store', path: cfg.state_dir, why: 'key material: never in a backup (a replaced node starts with an empty pool)' },
      cfg.master_key.provider === 'file'
        ? { what: 'master key file', path: cfg.master_key.path, why: 'the master key never leaves the node' }
        : { what: 'HSM token', why: `the master key stays on token '${cfg.master_key.token_label}'` },
      ...(cfg.master_key.provider === 'pkcs11' && cfg.master_key.pin_file ? [{ what: 'HSM PIN file', path: cfg.master_key.pin_file, why: 'a secret: set it up again on the new node' }] : []),
      { what: 'audit trail', path: cfg.audit.dir, why: 'evidence, not configuration: kmectl audit export' },
    ];
    const pass = passphrase(ctx.opts['passphrase-file']);
    let secrets: BackupDoc['secrets'];
    const keys: Entry[] = [];
    add('api_key', raw.api.tls.key, keys);
    add('kme_key', raw.peer.tls.key, keys);
    if (pass) {
      const salt = randomBytes(16);
      const iv = randomBytes(12);
      const k = kdf(pass, salt);
      pass.fill(0);
      const c = createCipheriv('aes-256-gcm', k, iv);
      c.setAAD(Buffer.from(`${BACKUP_FORMAT}/${VERSION}/${cfg.kme_id}`));
      const data = Buffer.concat([c.update(JSON.stringify(keys)), c.final()]);
      k.fill(0);
      secrets = {
        kdf: { name: 'scrypt', N: SCRYPT.N, r: SCRYPT.r, p: SCRYPT.p, salt: salt.toString('base64') },
        cipher: 'aes-256-gcm', iv: iv.toString('base64'), tag: c.getAuthTag().toString('base64'), data: data.toString('base64'),
        roles: keys.map((e) => e.role),
      };
    } else {
      for (const e of keys) excluded.push({ what: `TLS private key (${e.role})`, path: e.path, why: 'left out: give --passphrase-file to include the TLS keys encrypted' });
    }
    const doc: BackupDoc = {
      format: BACKUP_FORMAT, version: VERSION, created_at: new Date().toISOString(), kme_id: cfg.kme_id, source_config: configPath,
      files, ...(secrets ? { secrets } : {}), excluded,
    };
    mkdirSync(dirname(out), { recursive: true });
    writeNodeFile(out, JSON.stringify(doc, null, 2) + '\n', { mode: 0o600, secret: true });
    const { ui } = ctx;
    ui.line(`${ui.level('ok', 'written')} ${out} (mode 0600): configuration of ${cfg.kme_id}`);
    ui.lines(table([['IN THE BACKUP', 'FILE'], ...files.map((f) => [f.role, f.path]), ...(secrets ? keys.map((f) => [`${f.role} (encrypted)`, f.path]) : [])]).map((l) => `  ${l}`));
    ui.line('  not in it:');
    for (const x of excluded) ui.line(`    ${x.what}${x.path ? ` (${x.path})` : ''}: ${x.why}`);
    return {
      code: EXIT.OK,
      json: { ok: true, file: out, kme_id: cfg.kme_id, files: files.map((f) => ({ role: f.role, path: f.path })), encrypted_keys: secrets?.roles ?? [], excluded },
    };
  },
};

function readBackup(path: string): BackupDoc {
  let doc: BackupDoc;
  try {
    doc = JSON.parse(readFileSync(path, 'utf8')) as BackupDoc;
  } catch (e) {
    throw new KmectlError(`cannot read the backup ${path}: ${(e as Error).message}`, 'check the file (it is JSON written by kmectl backup)', EXIT.USAGE, 'BACKUP');
  }
  if (doc?.format !== BACKUP_FORMAT || doc.version !== VERSION || !Array.isArray(doc.files)) {
    throw new KmectlError(`${path} is not a kmectl backup (version ${VERSION})`, undefined, EXIT.USAGE, 'BACKUP');
  }
  for (const f of doc.files) {
    if (typeof f.text !== 'string' || sha(f.text) !== f.sha256) throw new KmectlError(`${path}: ${f.role} (${f.path}) is damaged (checksum)`, 'use another copy of the backup', EXIT.ATTENTION, 'BACKUP');
  }
  return doc;
}

function openSecrets(doc: BackupDoc, pass: Buffer): Entry[] {
  const s = doc.secrets!;
  const k = scryptSync(pass, Buffer.from(s.kdf.salt, 'base64'), 32, { N: s.kdf.N, r: s.kdf.r, p: s.kdf.p, maxmem: SCRYPT.maxmem });
  pass.fill(0);
  try {
    const d = createDecipheriv('aes-256-gcm', k, Buffer.from(s.iv, 'base64'));
    d.setAAD(Buffer.from(`${BACKUP_FORMAT}/${doc.version}/${doc.kme_id}`));
    d.setAuthTag(Buffer.from(s.tag, 'base64'));
    const plain = Buffer.concat([d.update(Buffer.from(s.data, 'base64')), d.final()]);
    const entries = JSON.parse(plain.toString('utf8')) as Entry[];
    plain.fill(0);
    return entries;
  } catch {
    throw new KmectlError('the TLS keys in the backup do not decrypt: wrong passphrase, or the backup was altered', 'check the passphrase file', EXIT.ATTENTION, 'PASSPHRASE');
  } finally {
    k.fill(0);
  }
}

export const restore: CommandSpec = {
  usage: ['restore <file> [--passphrase-file <file>] [--force]   (to the node selected by --config/--node)'],
  options: ['passphrase-file', 'force'],
  async run(ctx: CommandContext) {
    if (ctx.words.length !== 1) throw usageError('restore takes the backup file');
    const doc = readBackup(resolve(ctx.cwd, ctx.words[0]!));
    const configPath = ctx.node.configPath;
    const base = dirname(configPath);
    const configEntry = doc.files.find((f) => f.role === 'config');
    if (!configEntry) throw new KmectlError('the backup holds no configuration', undefined, EXIT.USAGE, 'BACKUP');
    try {
      parseConfig(JSON.parse(configEntry.text), base);
    } catch (e) {
      if (e instanceof ConfigError || e instanceof SyntaxError) {
        throw new KmectlError(`the configuration in the backup does not validate: ${e.message}`, 'nothing was written', EXIT.ATTENTION, 'CONFIG');
      }
      throw e;
    }
    let entries = doc.files;
    const skipped: string[] = [];
    if (doc.secrets) {
      const pass = passphrase(ctx.opts['passphrase-file']);
      if (pass) entries = [...entries, ...openSecrets(doc, pass)];
      else skipped.push(...doc.secrets.roles);
    }
    const target = (e: Entry) => (e.role === 'config' ? configPath : isAbsolute(e.path) ? e.path : resolve(base, e.path));
    const plan = entries.map((e) => {
      const path = target(e);
      const have = existsSync(path) ? readFileSync(path, 'utf8') : undefined;
      return { e, path, state: have === undefined ? 'new' : have === e.text ? 'same' : 'differs' };
    });
    const differs = plan.filter((p) => p.state === 'differs');
    if (differs.length > 0 && !ctx.opts.force) {
      throw new KmectlError(
        `restore would replace ${differs.length} file(s) that differ: ${differs.map((p) => p.path).join(', ')}`,
        'nothing was written; add --force to replace them (keep a backup of the current ones first: kmectl backup <file>)',
        EXIT.ATTENTION,
        'EXISTS',
      );
    }
    const written: string[] = [];
    for (const p of plan.filter((x) => x.state !== 'same')) {
      mkdirSync(dirname(p.path), { recursive: true, mode: 0o700 });
      const secret = p.e.role.endsWith('_key');
      const mode = secret ? 0o600 : p.e.role === 'config' || p.e.role === 'registry' ? p.e.mode & 0o640 : p.e.mode & 0o644;
      writeNodeFile(p.path, p.e.text, { mode, secret });
      written.push(p.path);
    }
    // Keys left in the backup (no passphrase) only matter when the node has none.
    const rawCfg = JSON.parse(configEntry.text) as { api: { tls: { key: string } }; peer: { tls: { key: string } } };
    const keyPaths = [rawCfg.api.tls.key, rawCfg.peer.tls.key].map((k) => (isAbsolute(k) ? k : resolve(base, k)));
    const keysMissing = skipped.length > 0 && keyPaths.some((k) => !existsSync(k));
    const { ui } = ctx;
    ui.line(`${ui.level('ok', 'restored')} configuration of ${doc.kme_id} (backup of ${doc.created_at}) to ${configPath}`);
    ui.lines(table([['FILE', 'ROLE', ''], ...plan.map((p) => [p.path, p.e.role, p.state === 'same' ? 'unchanged' : p.state === 'new' ? 'written' : 'replaced'])]).map((l) => `  ${l}`));
    if (skipped.length > 0) {
      ui.line(ui.c.yellow(`  TLS keys not restored (${skipped.join(', ')}): give --passphrase-file to decrypt them${keysMissing ? '; the node has no keys at those paths yet' : ''}`));
    }
    if (doc.excluded?.length) ui.line(`  not in the backup: ${doc.excluded.map((x) => x.what).join(', ')}`);
    ui.line('restart kme-keypoold and kme-api to use it; a new node also needs its master key (kmectl hsm init) and PIN file');
    return {
      code: keysMissing ? EXIT.ATTENTION : EXIT.OK,
      json: { ok: !keysMissing, action: 'restore', config: configPath, written, unchanged: plan.filter((p) => p.state === 'same').map((p) => p.path), skipped_keys: skipped, excluded: doc.excluded },
    };
  },
};
