/**
 * kmectl sae list|add|remove|reissue: the SAE registry and SAE client
 * certificates. Edits go to the registry file (validated as keypoold
 * validates it), then keypoold is asked to reload it, so they take effect at
 * once (or at its next start when it is not running).
 *
 * Certificates (an SAE attached to this node): issued by the API's CA when its
 * key is at hand (--ca-key; the demo's CA for --node); when the CA is offline,
 * a key and a CSR are written and the CSR printed to be signed, or a
 * certificate signed elsewhere is checked and accepted (--cert), or an SAE's
 * own CSR is signed (--csr).
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { NodeConfig } from '../common/config.js';
import { isValidEntityId } from '../common/ids.js';
import type { SaeEntry } from '../keypoold/registry.js';
import { certInfo, issueLeaf, loadCa, newCsr, readCsr, saeCertProblem, type CertInfo } from './certs.js';
import { intOption, list, type CommandContext, type CommandSpec } from './command.js';
import { writeNodeFile } from './files.js';
import { EXIT, KmectlError, table, usageError } from './output.js';
import { openRegistry, reloadRegistry, saveRegistry, type ReloadOutcome } from './registry-file.js';

const CERT_OPTS = ['issue', 'csr', 'cert', 'ca-key', 'ca-cert', 'out', 'days', 'force'] as const;

/** Where SAE certificates are written: --out, the demo's PKI folder, else <config folder>/saes. */
function certDir(ctx: CommandContext): string {
  return ctx.opts.out ?? (ctx.node.demo ? dirname(ctx.node.demo.caKey) : join(dirname(ctx.node.configPath), 'saes'));
}

function checkSaeId(id: string | undefined, cfg: NodeConfig): string {
  if (id === undefined) throw usageError('give the SAE ID');
  if (!isValidEntityId(id)) {
    throw usageError(`"${id}" is not a valid SAE ID: 1 to 128 printable ASCII characters, no space at either end`, 'use letters, digits, "_" and "-", e.g. SAE_A4');
  }
  const kmes = [cfg.kme_id, ...cfg.links.map((l) => l.peer_kme_id)];
  if (kmes.includes(id)) {
    throw new KmectlError(`${id} is a KME ID: an SAE may not have the ID of a KME`, 'choose another SAE ID', EXIT.ATTENTION, 'REFUSED');
  }
  return id;
}

const uriPrefix = (cfg: NodeConfig) => (cfg.api.identity.source === 'san_uri' ? cfg.api.identity.prefix : undefined);

interface CertPlan {
  mode: 'issued' | 'signed_csr' | 'accepted' | 'csr_written' | 'none';
  files: Array<{ path: string; data: string; mode: number }>;
  /** PEM of a CSR to show the technician (CA offline). */
  csr?: string;
  info?: CertInfo;
}

/** Work out the certificate of a local SAE (nothing is written yet). */
async function planCert(ctx: CommandContext, saeId: string, cfg: NodeConfig, overwrite: boolean): Promise<CertPlan> {
  const { opts } = ctx;
  const chosen = [opts.issue, opts.csr !== undefined, opts.cert !== undefined].filter(Boolean).length;
  if (chosen > 1) throw usageError('give one of --issue, --csr <file> and --cert <file>');
  if (chosen === 0) return { mode: 'none', files: [] };
  if (saeId.length > 64) throw usageError(`an SAE ID in a certificate CN is at most 64 characters; ${saeId} has ${saeId.length}`);
  const dir = certDir(ctx);
  const crt = join(dir, `${saeId}.crt`);
  const key = join(dir, `${saeId}.key`);
  const days = intOption('days', opts.days, 825, 1, 3650);
  const caKey = opts['ca-key'] ?? ctx.node.demo?.caKey;
  const caCert = opts['ca-cert'] ?? cfg.api.tls.ca;
  const prefix = uriPrefix(cfg);
  const leaf = { cn: saeId, usage: 'client' as const, days, uris: prefix !== undefined ? [prefix + saeId] : [] };
  const refuseExisting = (paths: string[]) => {
    const there = paths.filter((p) => existsSync(p));
    if (there.length > 0 && !overwrite) {
      throw new KmectlError(`${there.join(' and ')} already exist`, 'move them away, or add --force to replace them', EXIT.ATTENTION, 'EXISTS');
    }
  };
  if (opts.cert !== undefined) {
    const pem = readInput(opts.cert, 'certificate');
    const why = saeCertProblem(pem, readInput(caCert, 'CA certificate'), saeId, prefix);
    if (why) throw new KmectlError(`the certificate ${opts.cert} will not do for ${saeId}: ${why}`, `have the CA issue a client certificate with CN=${saeId}`, EXIT.ATTENTION, 'BAD_CERT');
    refuseExisting([crt]);
    return { mode: 'accepted', files: [{ path: crt, data: pem, mode: 0o644 }] };
  }
  if (opts.csr !== undefined) {
    if (caKey === undefined) throw new KmectlError('signing a CSR needs the CA key', 'give it with --ca-key <file>, or have the CA sign the CSR and use --cert <file>', EXIT.USAGE, 'CA');
    const { cn, publicKey } = await readCsr(readInput(opts.csr, 'CSR'), opts.csr);
    if (cn !== saeId) throw new KmectlError(`the CSR ${opts.csr} is for CN=${cn ?? '(none)'}, not ${saeId}`, `ask the SAE for a CSR with CN=${saeId}`, EXIT.ATTENTION, 'CSR');
    refuseExisting([crt]);
    const issued = await issueLeaf(await loadCa(caCert, caKey), leaf, publicKey);
    return { mode: 'signed_csr', files: [{ path: crt, data: issued.cert, mode: 0o644 }] };
  }
  refuseExisting([crt, key]);
  if (caKey === undefined) {
    const { csr, key: k } = await newCsr(saeId, leaf.uris);
    const csrPath = join(dir, `${saeId}.csr`);
    return { mode: 'csr_written', csr, files: [{ path: key, data: k, mode: 0o600 }, { path: csrPath, data: csr, mode: 0o644 }] };
  }
  const issued = await issueLeaf(await loadCa(caCert, caKey), leaf);
  return { mode: 'issued', files: [{ path: key, data: issued.key!, mode: 0o600 }, { path: crt, data: issued.cert, mode: 0o644 }] };
}

function readInput(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new KmectlError(`cannot read the ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'check the path', EXIT.USAGE, 'USAGE');
  }
}

function writeCert(plan: CertPlan, saeId: string): CertPlan {
  for (const f of plan.files) {
    mkdirSync(dirname(f.path), { recursive: true, mode: 0o700 });
    writeNodeFile(f.path, f.data, { mode: f.mode, secret: f.mode === 0o600 });
  }
  const crt = plan.files.find((f) => f.path.endsWith('.crt'));
  return crt ? { ...plan, info: certInfo(saeId, crt.path) } : plan;
}

function reportCert(ctx: CommandContext, plan: CertPlan, saeId: string, caKey: string | undefined): void {
  const { ui } = ctx;
  const key = plan.files.find((f) => f.path.endsWith('.key'))?.path;
  const crt = plan.files.find((f) => f.path.endsWith('.crt'))?.path;
  switch (plan.mode) {
    case 'none':
      ui.line(`no certificate made: give the SAE a client certificate with CN=${saeId} from the API's CA (kmectl sae reissue ${saeId} --issue --ca-key <CA key>)`);
      return;
    case 'issued':
    case 'signed_csr':
    case 'accepted':
      ui.line(`certificate ${crt}  (expires ${plan.info?.not_after?.slice(0, 10) ?? '?'}; ${plan.mode === 'issued' ? `issued by the CA, new key ${key} (mode 0600)` : plan.mode === 'signed_csr' ? "signed from the SAE's CSR; its key stays with the SAE" : 'checked: issued by the API\'s CA'})`);
      if (plan.mode === 'issued') ui.line(`install both on the SAE, then delete ${key} from this node`);
      return;
    case 'csr_written':
      ui.line(`the CA key is not here${caKey === undefined ? ' (give --ca-key <file> when it is)' : ''}: wrote a new key ${key} (mode 0600) and a CSR; have your CA sign it (client auth, CN=${saeId}), then:`);
      ui.line(`  kmectl sae reissue ${saeId} --cert <signed certificate>   (checks it)`);
      ui.line(plan.csr!.trimEnd());
  }
}

function reportReload(ctx: CommandContext, r: ReloadOutcome): void {
  if (r.reloaded) ctx.ui.line(`keypoold reloaded the registry (${r.saes} SAEs): in effect now`);
  else ctx.ui.line(ctx.ui.c.yellow(`keypoold not reached (${r.why})`));
}

const certJson = (plan: CertPlan) => ({
  mode: plan.mode,
  files: plan.files.map((f) => f.path),
  ...(plan.info ? { not_after: plan.info.not_after } : {}),
  ...(plan.csr ? { csr: plan.csr } : {}),
});

export const saeList: CommandSpec = {
  usage: ['sae list'],
  options: ['out'],
  async run(ctx) {
    const cfg = ctx.node.config();
    const saes = (await openRegistry(cfg.registry_file)).data.saes;
    const dir = certDir(ctx);
    const rows = saes.map((s) => {
      const local = s.kme_id === cfg.kme_id;
      const crt = join(dir, `${s.sae_id}.crt`);
      const info = local && existsSync(crt) ? certInfo(s.sae_id, crt) : undefined;
      return { ...s, here: local, certificate: info };
    });
    ctx.ui.lines(
      table([
        ['SAE', 'KME', 'MAY REQUEST KEYS FOR', 'CERTIFICATE'],
        ...rows.map((r) => [
          r.sae_id,
          r.here ? `${r.kme_id} (here)` : r.kme_id,
          r.allowed_slaves.join(',') === '*' ? 'any SAE' : r.allowed_slaves.join(', '),
          r.certificate?.not_after ? `expires ${r.certificate.not_after.slice(0, 10)} (${r.certificate.days_left} days)` : r.here ? ctx.ui.c.dim(`no file in ${dir}`) : '',
        ]),
      ]),
    );
    ctx.ui.line(ctx.ui.c.dim(`${saes.length} SAEs, ${rows.filter((r) => r.here).length} at ${cfg.kme_id} (${cfg.registry_file})`));
    return { code: EXIT.OK, json: { ok: true, kme_id: cfg.kme_id, registry_file: cfg.registry_file, saes: rows } };
  },
};

export const saeAdd: CommandSpec = {
  usage: [
    'sae add <SAE_ID> [--allow <slave,...>|*] [--kme <KME_ID>] [--issue | --csr <file> | --cert <file>]',
    '        [--ca-key <file>] [--ca-cert <file>] [--out <dir>] [--days N] [--force]',
  ],
  options: ['allow', 'kme', ...CERT_OPTS],
  async run(ctx) {
    const cfg = ctx.node.config();
    if (ctx.words.length !== 1) throw usageError('sae add takes one SAE ID');
    const saeId = checkSaeId(ctx.words[0], cfg);
    const kme = ctx.opts.kme ?? cfg.kme_id;
    const kmes = [cfg.kme_id, ...cfg.links.map((l) => l.peer_kme_id)];
    if (!kmes.includes(kme)) throw usageError(`--kme ${kme} is neither this KME nor a peer of it`, `use one of: ${kmes.join(', ')}`);
    const allow = ctx.opts.allow === undefined ? ['*'] : list(ctx.opts.allow);
    if (allow.length === 0) throw usageError('--allow needs SAE IDs, or * for any');
    for (const a of allow) if (a !== '*' && !isValidEntityId(a)) throw usageError(`--allow: "${a}" is not a valid SAE ID`);
    if (allow.includes(saeId)) throw usageError(`--allow: ${saeId} cannot request keys for itself`);
    const low = await openRegistry(cfg.registry_file);
    const known = low.data.saes.find((s) => s.sae_id === saeId);
    if (known) {
      throw new KmectlError(`${saeId} is already registered (at ${known.kme_id})`, `to change it: kmectl sae remove ${saeId}, then add it again`, EXIT.ATTENTION, 'EXISTS');
    }
    if (kme !== cfg.kme_id && [ctx.opts.issue, ctx.opts.csr, ctx.opts.cert].some((x) => x !== undefined)) {
      throw usageError(`${saeId} is attached to ${kme}: its certificate is made there (kmectl sae add on ${kme})`);
    }
    const plan = kme === cfg.kme_id ? await planCert(ctx, saeId, cfg, ctx.opts.force === true) : ({ mode: 'none', files: [] } as CertPlan);
    const entry: SaeEntry = { sae_id: saeId, kme_id: kme, allowed_slaves: allow };
    low.data.saes.push(entry);
    await saveRegistry(low, cfg.registry_file);
    const written = writeCert(plan, saeId);
    ctx.ui.line(`${ctx.ui.level('ok', 'added')} ${saeId} at ${kme}${kme === cfg.kme_id ? ' (here)' : ''}, may request keys for ${allow.join(',') === '*' ? 'any SAE' : allow.join(', ')}`);
    if (kme !== cfg.kme_id) ctx.ui.line(`(so ${cfg.kme_id} accepts keys between ${saeId} and its own SAEs; add ${saeId} on ${kme} too, with its certificate)`);
    else reportCert(ctx, written, saeId, ctx.opts['ca-key'] ?? ctx.node.demo?.caKey);
    const reload = await reloadRegistry(ctx.admin());
    reportReload(ctx, reload);
    return { code: EXIT.OK, json: { ok: true, action: 'added', sae: entry, certificate: certJson(written), reload } };
  },
};

export const saeRemove: CommandSpec = {
  usage: ['sae remove <SAE_ID>'],
  options: [],
  async run(ctx) {
    const cfg = ctx.node.config();
    if (ctx.words.length !== 1) throw usageError('sae remove takes one SAE ID');
    const saeId = ctx.words[0]!;
    const low = await openRegistry(cfg.registry_file);
    const entry = low.data.saes.find((s) => s.sae_id === saeId);
    if (!entry) throw new KmectlError(`${saeId} is not registered`, 'kmectl sae list shows the SAEs', EXIT.ATTENTION, 'NOT_FOUND');
    low.data.saes = low.data.saes.filter((s) => s.sae_id !== saeId);
    await saveRegistry(low, cfg.registry_file);
    const referring = low.data.saes.filter((s) => s.allowed_slaves.includes(saeId)).map((s) => s.sae_id);
    ctx.ui.line(`${ctx.ui.level('ok', 'removed')} ${saeId} (was at ${entry.kme_id})`);
    if (entry.kme_id === cfg.kme_id) {
      ctx.ui.line(`its certificate stays valid until it expires, but ${cfg.kme_id} refuses an SAE that is not registered; keys already issued for it expire within ${cfg.key_ttl_seconds} s`);
    }
    if (referring.length > 0) ctx.ui.line(`still named in the allow-list of: ${referring.join(', ')}`);
    const reload = await reloadRegistry(ctx.admin());
    reportReload(ctx, reload);
    return { code: EXIT.OK, json: { ok: true, action: 'removed', sae: entry, still_allowed_by: referring, reload } };
  },
};

export const saeReissue: CommandSpec = {
  usage: ['sae reissue <SAE_ID> [--issue | --csr <file> | --cert <file>] [--ca-key <file>] [--ca-cert <file>] [--out <dir>] [--days N]'],
  options: [...CERT_OPTS],
  async run(ctx) {
    const cfg = ctx.node.config();
    if (ctx.words.length !== 1) throw usageError('sae reissue takes one SAE ID');
    const saeId = ctx.words[0]!;
    const entry = (await openRegistry(cfg.registry_file)).data.saes.find((s) => s.sae_id === saeId);
    if (!entry) throw new KmectlError(`${saeId} is not registered`, `kmectl sae add ${saeId} first`, EXIT.ATTENTION, 'NOT_FOUND');
    if (entry.kme_id !== cfg.kme_id) throw new KmectlError(`${saeId} is attached to ${entry.kme_id}`, `reissue it there (kmectl sae reissue on ${entry.kme_id})`, EXIT.ATTENTION, 'REFUSED');
    const opts = ctx.opts.csr === undefined && ctx.opts.cert === undefined ? { ...ctx.opts, issue: true } : ctx.opts;
    const plan = writeCert(await planCert({ ...ctx, opts }, saeId, cfg, true), saeId);
    reportCert(ctx, plan, saeId, ctx.opts['ca-key'] ?? ctx.node.demo?.caKey);
    if (plan.mode !== 'csr_written') ctx.ui.line('the previous certificate stays valid until it expires (no revocation list): remove it from the SAE');
    return { code: EXIT.OK, json: { ok: true, action: 'reissued', sae: entry, certificate: certJson(plan) } };
  },
};
