/**
 * kmectl audit verify|export: the node's audit trail (audit.dir), checked
 * against the anchor keypoold keeps in its store; kme-audit's functions
 * (scripts/kme-audit.ts, src/common/audit-verify.ts). Exit 0 intact, 1 broken.
 */
import { existsSync, statSync } from 'node:fs';
import { AUDIT_EVENT_KINDS, type AuditLine } from '../common/audit-chain.js';
import { verifyAuditLog } from '../common/audit-verify.js';
import { auditTable, describeBreak, storeAnchor, type Anchor } from '../../scripts/kme-audit.js';
import type { CommandContext, CommandSpec } from './command.js';
import { EXIT, KmectlError, plural, usageError } from './output.js';

function where(ctx: CommandContext): { dir: string; anchor?: Anchor; note: string } {
  const cfg = ctx.node.config();
  const dir = cfg.audit.dir!;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) {
    throw new KmectlError(`no audit folder at ${dir}`, 'kme-keypoold creates it at its first start; check audit.dir in the config', EXIT.USAGE, 'NOT_FOUND');
  }
  if (ctx.opts.anchor !== undefined) {
    const m = /^(\d{1,15}):([0-9a-f]{64})$/.exec(ctx.opts.anchor.trim());
    if (!m) throw usageError(`--anchor must be <seq>:<64 hex digits>, got "${ctx.opts.anchor}"`);
    return { dir, anchor: { seq: Number(m[1]), hash: m[2]! }, note: 'anchor from --anchor' };
  }
  try {
    return { dir, ...storeAnchor(cfg.state_dir) };
  } catch (e) {
    throw new KmectlError((e as Error).message, 'verify without the store: give --anchor <seq>:<hash> from a trusted record', EXIT.USAGE, 'STORE');
  }
}

function time(opt: string, s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const t = Date.parse(s);
  if (!/^\d{4}-\d{2}-\d{2}/.test(s) || Number.isNaN(t)) throw usageError(`${opt} must be an ISO-8601 time, got "${s}"`);
  return t;
}

export const auditVerify: CommandSpec = {
  usage: ['audit verify [--anchor <seq>:<hash>]'],
  options: ['anchor'],
  async run(ctx) {
    if (ctx.words.length > 0) throw usageError('audit verify takes no arguments');
    const { dir, anchor, note } = where(ctx);
    const r = verifyAuditLog(dir, anchor);
    const { ui } = ctx;
    if (r.ok) {
      ui.line(`${ui.level('ok')} audit trail intact: ${plural(r.lines, 'line')} in ${plural(r.segments, 'segment')} (${dir})`);
      if (r.lines > 0) ui.line(`seq ${r.first_seq}..${r.last_seq}, last hash ${r.last_hash}`);
      ui.line(anchor ? `${note}: seq ${anchor.seq} ${anchor.seq === 0 ? 'is the start' : 'matches'}` : note);
    } else {
      ui.line(ui.level('fail', describeBreak(r, dir)));
      ui.line(`verified before the break: ${plural(r.lines, 'line')}; ${note}`);
      ui.line('  -> keep the trail as it is (evidence), report it to the security officer, and compare with an exported copy');
    }
    return { code: r.ok ? EXIT.OK : EXIT.ATTENTION, json: { dir, anchor_source: note, ...r } };
  },
};

export const auditExport: CommandSpec = {
  usage: ['audit export [--since <ISO>] [--until <ISO>] [--event <kind>] [--anchor <seq>:<hash>]'],
  options: ['since', 'until', 'event', 'anchor'],
  async run(ctx) {
    if (ctx.words.length > 0) throw usageError('audit export takes no arguments');
    const since = time('--since', ctx.opts.since);
    const until = time('--until', ctx.opts.until);
    const kind = ctx.opts.event;
    if (kind !== undefined && !(AUDIT_EVENT_KINDS as readonly string[]).includes(kind)) throw usageError(`--event must be one of ${AUDIT_EVENT_KINDS.join(', ')}`);
    const { dir, anchor, note } = where(ctx);
    const picked: AuditLine[] = [];
    const r = verifyAuditLog(dir, anchor, {
      onLine: (line) => {
        const t = Date.parse(line.ts);
        if ((since === undefined || t >= since) && (until === undefined || t < until) && (kind === undefined || line.event === kind)) picked.push(line);
      },
    });
    const { ui } = ctx;
    if (picked.length === 0) ui.line('(no lines in range)');
    else ui.lines(auditTable(picked));
    if (!r.ok) {
      ui.note(`kmectl: ${describeBreak(r, dir)}`);
      ui.note(r.break!.problem === 'truncated' || r.break!.problem === 'rewritten' ? 'the lines above chain, but do not match the anchor' : 'only the lines before the break are shown');
    }
    return { code: r.ok ? EXIT.OK : EXIT.ATTENTION, json: { ok: r.ok, dir, anchor_source: note, verify: r, lines: picked } };
  },
};
