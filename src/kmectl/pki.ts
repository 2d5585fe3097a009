/**
 * kmectl pki init|renew: the node's own certificates, the ETSI API server
 * certificate (api.tls) and the KME-to-KME certificate (peer.tls, CN = KME
 * ID), issued from a CA key given by path (the demo's CA with --node).
 * `init` makes new keys and refuses to replace files without --force;
 * `renew` keeps each key (the same names, a new validity) unless --new-key.
 * Keys are written mode 0600. The daemons read them at start.
 */
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { dirname } from 'node:path';
import type { NodeConfig } from '../common/config.js';
import { apiCertCn } from '../demo/pki.js';
import { certInfo, issueLeaf, loadCa, namesOf, publicKeyOf, type Ca } from './certs.js';
import { intOption, list, type CommandContext, type CommandSpec } from './command.js';
import { writeNodeFile } from './files.js';
import { EXIT, KmectlError, table, usageError } from './output.js';

interface Target {
  name: 'api' | 'kme';
  cert: string;
  key: string;
  ca: string;
  cn: string;
  usage: 'server' | 'both';
  host: string;
  daemon: string;
}

function targets(cfg: NodeConfig, only: string | undefined, caCert: string | undefined): Target[] {
  if (only !== undefined && only !== 'api' && only !== 'kme') throw usageError('--only takes api or kme');
  const all: Target[] = [
    { name: 'api', cert: cfg.api.tls.cert, key: cfg.api.tls.key, ca: caCert ?? cfg.api.tls.ca, cn: apiCertCn(cfg.kme_id), usage: 'server', host: cfg.api.host, daemon: 'kme-api' },
    { name: 'kme', cert: cfg.peer.tls.cert, key: cfg.peer.tls.key, ca: caCert ?? cfg.peer.tls.ca, cn: cfg.kme_id, usage: 'both', host: cfg.peer.host, daemon: 'kme-keypoold' },
  ];
  return all.filter((t) => only === undefined || t.name === only);
}

function defaultNames(host: string): { dns: string[]; ips: string[] } {
  const unspecified = host === '0.0.0.0' || host === '::';
  const loopback = host === '127.0.0.1' || host === '::1' || host === 'localhost';
  if (isIP(host) !== 0) return { ips: unspecified ? [] : [host], dns: loopback ? ['localhost'] : [hostname()] };
  return { dns: [host], ips: [] };
}

async function caFor(t: Target, caKey: string, cache: Map<string, Ca>): Promise<Ca> {
  let ca = cache.get(t.ca);
  if (!ca) {
    try {
      ca = await loadCa(t.ca, caKey);
    } catch (e) {
      if (e instanceof KmectlError && /does not belong/.test(e.message)) {
        throw new KmectlError(
          `${e.message} (the ${t.name} certificate is checked against ${t.ca})`,
          `give that CA's key, or do one certificate at a time: --only ${t.name === 'api' ? 'kme' : 'api'}`,
          EXIT.USAGE,
          'CA',
        );
      }
      throw e;
    }
    cache.set(t.ca, ca);
  }
  return ca;
}

function caKeyPath(ctx: CommandContext): string {
  const k = ctx.opts['ca-key'] ?? ctx.node.demo?.caKey;
  if (k === undefined) throw usageError('the node\'s certificates are issued from a CA key: give --ca-key <file>', 'bring the CA key on removable media, run kmectl, then remove it');
  return k;
}

function write(t: Target, cert: string, key: string | undefined): void {
  mkdirSync(dirname(t.cert), { recursive: true, mode: 0o700 });
  mkdirSync(dirname(t.key), { recursive: true, mode: 0o700 });
  if (key !== undefined) writeNodeFile(t.key, key, { mode: 0o600, secret: true });
  writeNodeFile(t.cert, cert, { mode: 0o644 });
}

function report(ctx: CommandContext, done: Array<{ t: Target; key: 'new' | 'kept' }>): unknown[] {
  const rows = [['CERT', 'FILE', 'EXPIRES', 'KEY']];
  const out = done.map(({ t, key }) => {
    const info = certInfo(t.name, t.cert);
    rows.push([t.name, t.cert, info.not_after?.slice(0, 10) ?? '?', key === 'new' ? `new key ${t.key} (0600)` : `kept ${t.key}`]);
    return { name: t.name, cert: t.cert, key_file: t.key, key, subject: info.subject, not_after: info.not_after };
  });
  ctx.ui.lines(table(rows));
  const daemons = [...new Set(done.map((d) => d.t.daemon))];
  ctx.ui.line(`restart ${daemons.join(' and ')} to use ${done.length > 1 ? 'them' : 'it'} (systemctl restart ${daemons.join(' ')})`);
  return out;
}

export const pkiInit: CommandSpec = {
  usage: ['pki init --ca-key <file> [--ca-cert <file>] [--only api|kme] [--dns <name,...>] [--ip <addr,...>] [--days N] [--force]'],
  options: ['ca-key', 'ca-cert', 'only', 'dns', 'ip', 'days', 'force'],
  async run(ctx) {
    if (ctx.words.length > 0) throw usageError('pki init takes no arguments');
    const cfg = ctx.node.config();
    const ts = targets(cfg, ctx.opts.only, ctx.opts['ca-cert']);
    const days = intOption('days', ctx.opts.days, 825, 1, 3650);
    const there = ts.flatMap((t) => [t.cert, t.key]).filter((p) => existsSync(p));
    if (there.length > 0 && !ctx.opts.force) {
      throw new KmectlError(`${there.join(', ')} already exist`, 'to renew keep them and run kmectl pki renew; to start over add --force', EXIT.ATTENTION, 'EXISTS');
    }
    const caKey = caKeyPath(ctx);
    const cache = new Map<string, Ca>();
    const issued = [];
    for (const t of ts) {
      const names = ctx.opts.dns !== undefined || ctx.opts.ip !== undefined ? { dns: list(ctx.opts.dns), ips: list(ctx.opts.ip) } : defaultNames(t.host);
      issued.push({ t, pem: await issueLeaf(await caFor(t, caKey, cache), { cn: t.cn, usage: t.usage, days, ...names }) });
    }
    for (const { t, pem } of issued) write(t, pem.cert, pem.key);
    const certs = report(ctx, issued.map(({ t }) => ({ t, key: 'new' as const })));
    return { code: EXIT.OK, json: { ok: true, action: 'init', certificates: certs } };
  },
};

export const pkiRenew: CommandSpec = {
  usage: ['pki renew --ca-key <file> [--ca-cert <file>] [--only api|kme] [--new-key] [--days N]'],
  options: ['ca-key', 'ca-cert', 'only', 'new-key', 'days'],
  async run(ctx) {
    if (ctx.words.length > 0) throw usageError('pki renew takes no arguments');
    const cfg = ctx.node.config();
    const ts = targets(cfg, ctx.opts.only, ctx.opts['ca-cert']);
    const days = intOption('days', ctx.opts.days, 825, 1, 3650);
    const caKey = caKeyPath(ctx);
    const cache = new Map<string, Ca>();
    const renewed = [];
    for (const t of ts) {
      let old: string;
      try {
        old = readFileSync(t.cert, 'utf8');
      } catch (e) {
        throw new KmectlError(`cannot read the ${t.name} certificate ${t.cert} (${(e as NodeJS.ErrnoException).code})`, 'nothing to renew: kmectl pki init', EXIT.ATTENTION, 'NOT_FOUND');
      }
      const names = namesOf(old);
      let publicKey: CryptoKey | undefined;
      if (!ctx.opts['new-key']) {
        try {
          publicKey = await publicKeyOf(readFileSync(t.key));
        } catch (e) {
          throw new KmectlError(`cannot read the ${t.name} key ${t.key} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, 'renew with a new key: add --new-key', EXIT.ATTENTION, 'NOT_FOUND');
        }
      }
      const opts = { cn: names.cn ?? t.cn, usage: t.usage, days, dns: names.dns, ips: names.ips, uris: names.uris };
      renewed.push({ t, pem: await issueLeaf(await caFor(t, caKey, cache), opts, publicKey) });
    }
    for (const { t, pem } of renewed) write(t, pem.cert, pem.key);
    const certs = report(ctx, renewed.map(({ t, pem }) => ({ t, key: pem.key === undefined ? ('kept' as const) : ('new' as const) })));
    return { code: EXIT.OK, json: { ok: true, action: 'renew', certificates: certs } };
  },
};
