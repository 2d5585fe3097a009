/**
 * kme-audit: check and read the audit trail of key events.
 *
 *   node dist/scripts/kme-audit.js verify [--dir <audit dir>] [--config <node config>] [--anchor <seq>:<hash>] [--json]
 *   node dist/scripts/kme-audit.js export [--dir ...] [--config ...] [--anchor ...] [--since <ISO>] [--until <ISO>] [--event <kind>] [--json]
 *
 * With --config the folder is the node's audit.dir and the anchor is read (read-only) from
 * the node's key store, meta 'audit_anchor', unless --anchor is given.
 * `export` prints the verified lines with since <= ts < until: a table, or with --json the
 * lines exactly as stored (JSON Lines, re-hashable).
 * Exit status: 0 intact, 1 broken (the message says where and what), 2 usage or IO error.
 */
import { existsSync, realpathSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { AUDIT_ANCHOR, AUDIT_EVENT_KINDS, type AuditLine } from '../src/common/audit-chain.js';
import { verifyAuditLog, type VerifyResult } from '../src/common/audit-verify.js';
import { loadConfig } from '../src/common/config.js';

const USAGE = `usage:
  kme-audit verify [--dir <audit dir> | --config <node config>] [--anchor <seq>:<hash>] [--json]
  kme-audit export [--dir <audit dir> | --config <node config>] [--anchor <seq>:<hash>]
                   [--since <ISO time>] [--until <ISO time>] [--event <kind>] [--json]`;

class UsageError extends Error {}

export type Anchor = { seq: number; hash: string };

const out = (s: string) => process.stdout.write(s + '\n');
const err = (s: string) => process.stderr.write(s + '\n');

function parseAnchor(s: string): Anchor {
  const m = /^(\d{1,15}):([0-9a-f]{64})$/.exec(s.trim());
  if (!m) throw new UsageError(`--anchor must be <seq>:<64 hex digits>, got "${s}"`);
  return { seq: Number(m[1]), hash: m[2]! };
}

function parseTime(opt: string, s: string | undefined): number | undefined {
  if (s === undefined) return undefined;
  const t = Date.parse(s);
  if (!/^\d{4}-\d{2}-\d{2}/.test(s) || Number.isNaN(t)) throw new UsageError(`${opt} must be an ISO-8601 time, got "${s}"`);
  return t;
}

/**
 * The anchor keypoold keeps in its key store, opened read-only; a note when there is none.
 * (Reading a WAL database read-only may leave SQLite's -wal/-shm side files; SQLite gives
 * them the store's owner when run as root, so keypoold can still open them.)
 */
export function storeAnchor(stateDir: string): { anchor?: Anchor; note: string } {
  const file = join(stateDir, 'keystore.sqlite');
  if (!existsSync(file)) return { note: `no key store at ${file}: verified without an anchor` };
  let db: Database.Database;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true });
  } catch (e) {
    throw new Error(`cannot open the key store ${file} read-only: ${(e as Error).message}`);
  }
  try {
    let row: { v: Buffer | string } | undefined;
    try {
      row = db.prepare<[string], { v: Buffer | string }>('SELECT v FROM meta WHERE k = ?').get(AUDIT_ANCHOR);
    } catch (e) {
      if (/no such table/.test((e as Error).message)) return { note: `the key store ${file} has no meta table: verified without an anchor` };
      throw e;
    }
    if (!row) return { note: `no audit anchor in ${file}: verified without an anchor` };
    const text = Buffer.isBuffer(row.v) ? row.v.toString('utf8') : String(row.v);
    let a: unknown;
    try {
      a = JSON.parse(text);
    } catch {
      throw new Error(`the audit anchor in ${file} is not JSON`);
    }
    const o = a as Record<string, unknown>;
    if (!Number.isSafeInteger(o.seq) || (o.seq as number) < 0 || typeof o.hash !== 'string' || !/^[0-9a-f]{64}$/.test(o.hash)) {
      throw new Error(`the audit anchor in ${file} is not {"seq":n,"hash":"<hex>"}`);
    }
    return { anchor: { seq: o.seq as number, hash: o.hash }, note: `anchor from ${file}` };
  } finally {
    db.close();
  }
}

export function describeBreak(r: VerifyResult, dir: string): string {
  const b = r.break!;
  return `AUDIT TRAIL BROKEN at ${join(dir, b.file)} line ${b.line} (seq ${b.seq}): ${b.problem}: ${b.message}`;
}

function saes(l: AuditLine): string {
  if (l.master !== undefined || l.slaves !== undefined) return `${l.master ?? '?'} -> ${(l.slaves ?? []).join(',')}`;
  return l.sae ?? '';
}

/** Audit lines as an aligned table (header first). */
export function auditTable(rows: AuditLine[]): string[] {
  const head = ['SEQ', 'TIME', 'EVENT', 'LINK', 'SAES', 'KEYS', 'REASON'];
  const cells = rows.map((l) => [
    String(l.seq), l.ts, l.event, l.link ?? '', saes(l),
    l.key_ids !== undefined ? String(l.key_ids.length) : l.count !== undefined ? String(l.count) : '', l.reason ?? '',
  ]);
  const width = head.map((h) => h.length);
  for (const c of cells) c.forEach((v, i) => (width[i] = Math.max(width[i]!, v.length)));
  const fmt = (c: string[]) =>
    c.map((v, i) => (i === 0 || i === 5 ? v.padStart(width[i]!) : i === c.length - 1 ? v : v.padEnd(width[i]!))).join('  ').trimEnd();
  return [fmt(head), ...cells.map(fmt)];
}

async function main(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      dir: { type: 'string' },
      config: { type: 'string' },
      anchor: { type: 'string' },
      since: { type: 'string' },
      until: { type: 'string' },
      event: { type: 'string' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    out(USAGE);
    return 0;
  }
  const cmd = positionals[0];
  if (positionals.length !== 1 || (cmd !== 'verify' && cmd !== 'export')) throw new UsageError('give one command: verify or export');
  if (cmd === 'verify' && (values.since || values.until || values.event)) throw new UsageError('--since, --until and --event go with export');
  if ((values.dir === undefined) === (values.config === undefined)) throw new UsageError('give exactly one of --dir and --config');

  let dir: string;
  let anchor: Anchor | undefined;
  let note: string;
  if (values.anchor !== undefined) {
    anchor = parseAnchor(values.anchor);
    note = 'anchor from --anchor';
  } else note = 'no anchor given: lines cut from the end would not show';
  if (values.config !== undefined) {
    const cfg = loadConfig(values.config);
    dir = cfg.audit.dir ?? join(cfg.state_dir, 'audit'); // parseConfig always resolves it
    if (anchor === undefined) ({ anchor, note } = storeAnchor(cfg.state_dir));
  } else dir = values.dir!;
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new Error(`no audit folder at ${dir}`);

  const since = parseTime('--since', values.since);
  const until = parseTime('--until', values.until);
  const kind = values.event;
  if (kind !== undefined && !(AUDIT_EVENT_KINDS as readonly string[]).includes(kind)) {
    throw new UsageError(`--event must be one of ${AUDIT_EVENT_KINDS.join(', ')}`);
  }

  const picked: Array<{ line: AuditLine; raw: string }> = [];
  const r = verifyAuditLog(dir, anchor, {
    onLine:
      cmd === 'export'
        ? (line, raw) => {
            const t = Date.parse(line.ts);
            if ((since === undefined || t >= since) && (until === undefined || t < until) && (kind === undefined || line.event === kind)) {
              picked.push({ line, raw });
            }
          }
        : undefined,
  });

  if (cmd === 'verify') {
    if (values.json) out(JSON.stringify({ dir, anchor_source: note, ...r }));
    else if (r.ok) {
      out(`audit trail intact: ${r.lines} line${r.lines === 1 ? '' : 's'} in ${r.segments} segment${r.segments === 1 ? '' : 's'} (${dir})`);
      if (r.lines > 0) out(`seq ${r.first_seq}..${r.last_seq}, last hash ${r.last_hash}`);
      out(anchor ? `${note}: seq ${anchor.seq} ${anchor.seq === 0 ? 'is the start' : 'matches'}` : note);
    } else {
      out(describeBreak(r, dir));
      out(`verified before the break: ${r.lines} line${r.lines === 1 ? '' : 's'}${r.lines > 0 ? ` (seq ${r.first_seq}..${r.last_seq})` : ''}; ${note}`);
    }
    return r.ok ? 0 : 1;
  }

  if (values.json) for (const p of picked) out(p.raw);
  else if (picked.length === 0) out('(no lines in range)');
  else for (const s of auditTable(picked.map((p) => p.line))) out(s);
  if (!r.ok) {
    err(describeBreak(r, dir));
    err(r.break!.problem === 'truncated' || r.break!.problem === 'rewritten' ? 'the lines above chain, but do not match the anchor' : 'only the lines before the break are shown');
    return 1;
  }
  return 0;
}

// Run only as a command (kmectl imports the functions above).
const invoked = process.argv[1];
if (invoked && import.meta.url === pathToFileURL(realpathSync(invoked)).href) {
  main(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      const usage = e instanceof UsageError || (e as NodeJS.ErrnoException).code?.startsWith('ERR_PARSE_ARGS');
      err(`kme-audit: ${(e as Error).message}`);
      if (usage) err(USAGE);
      process.exitCode = 2;
    },
  );
}
