/**
 * kme-audit as a real child process (dist/, built by `npm test`): exit codes and output
 * of verify and export, on a trail written by AuditLog, with --dir and with --config
 * (the anchor read from the node's key store).
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/common/logger.js';
import { AuditLog } from '../../src/keypoold/audit-log.js';

const repo = resolve(import.meta.dirname, '../..');
const CLI = join(repo, 'dist/scripts/kme-audit.js');

let root: string;
let n = 0;
/** A fresh node folder per test: config.json, state/, state/audit/. */
let node: { dir: string; config: string; state: string; audit: string; head: { seq: number; hash: string } };

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function cli(...args: string[]): Promise<Run> {
  return new Promise((res) => {
    execFile(process.execPath, [CLI, ...args], { cwd: root, timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      res({ code, stdout, stderr });
    });
  });
}

const uuid = (i: number) => `00000000-0000-4000-8000-${i.toString(16).padStart(12, '0')}`;
const T0 = Date.UTC(2025, 0, 31, 12, 0, 0);

async function makeNode(segmentBytes = 1 << 20): Promise<void> {
  const dir = join(root, `node-${++n}`);
  const state = join(dir, 'state');
  mkdirSync(state, { recursive: true });
  const config = join(dir, 'config.json');
  const tls = { cert: 'c.crt', key: 'c.key', ca: 'ca.crt' };
  writeFileSync(
    config,
    JSON.stringify({
      kme_id: 'KME_A', state_dir: 'state', registry_file: 'registry.json', keypoold: { socket: 'kp.sock' },
      api: { port: 0, tls }, peer: { port: 0, tls }, master_key: { provider: 'file', path: 'master.key' },
    }),
  );
  const audit = join(state, 'audit');
  let t = T0;
  const log = AuditLog.open(audit, { segmentBytes, clock: { now: () => (t += 60_000) }, logger: silentLogger() });
  // seq 1..6, one minute apart from 12:01.
  log.record({ event: 'started', detail: { version: '0.1.0' } });
  log.record({ event: 'reserved', link: 'L-AB', rid: uuid(100), master: 'SAE_A1', slaves: ['SAE_B1', 'SAE_B2'], key_ids: [uuid(1), uuid(2)], size: 256 });
  log.record({ event: 'delivered', link: 'L-AB', rid: uuid(100), master: 'SAE_A1', slaves: ['SAE_B1', 'SAE_B2'], key_ids: [uuid(1), uuid(2)], size: 256 });
  log.record({ event: 'fetched', link: 'L-AB', sae: 'SAE_B1', key_ids: [uuid(1)] });
  log.record({ event: 'refused', sae: 'SAE_A3', reason: 'SAE not registered at this KME' });
  log.record({ event: 'expired', link: 'L-AB', key_ids: [uuid(2)], reason: 'ttl passed' });
  await log.close();
  node = { dir, config, state, audit, head: log.durableHead };
}

function storeAnchor(anchor: { seq: number; hash: string } | null): string {
  const file = join(node.state, 'keystore.sqlite');
  const db = new Database(file);
  db.pragma('journal_mode = WAL');
  db.exec('CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID');
  if (anchor) db.prepare('INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)').run('audit_anchor', Buffer.from(JSON.stringify(anchor)));
  db.close();
  return file;
}

const seg1 = () => join(node.audit, 'audit-000001.jsonl');
function editLines(f: (lines: string[]) => string[]): void {
  const lines = readFileSync(seg1(), 'utf8').split('\n').slice(0, -1);
  writeFileSync(seg1(), f(lines).map((l) => l + '\n').join(''));
}

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npm run build)`);
  root = mkdtempSync(join(tmpdir(), 'kme-audit-cli-'));
});

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

beforeEach(async () => {
  await makeNode();
});

describe('kme-audit verify', () => {
  it('exits 0 on an intact trail and says so (--dir)', async () => {
    const r = await cli('verify', '--dir', node.audit);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`audit trail intact: 6 lines in 1 segment (${node.audit})`);
    expect(r.stdout).toContain(`seq 1..6, last hash ${node.head.hash}`);
    expect(r.stdout).toMatch(/no anchor given/);
  });

  it('--json gives the result object', async () => {
    const r = await cli('verify', '--dir', node.audit, '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: true, lines: 6, segments: 1, first_seq: 1, last_seq: 6, last_hash: node.head.hash, dir: node.audit });
  });

  it('exits 1 on an altered line and names the file, line, seq and problem', async () => {
    editLines((l) => ((l[3] = l[3]!.replace('SAE_B1', 'SAE_B9')), l));
    const r = await cli('verify', '--dir', node.audit);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`AUDIT TRAIL BROKEN at ${seg1()} line 4 (seq 4): altered: altered line: content does not match its hash`);
    expect(r.stdout).toContain('verified before the break: 3 lines (seq 1..3)');
    const j = await cli('verify', '--dir', node.audit, '--json');
    expect(j.code).toBe(1);
    expect(JSON.parse(j.stdout).break).toMatchObject({ file: 'audit-000001.jsonl', line: 4, seq: 4, problem: 'altered' });
  });

  it('--anchor catches a removed last line; a matching anchor passes', async () => {
    const anchor = `${node.head.seq}:${node.head.hash}`;
    expect((await cli('verify', '--dir', node.audit, '--anchor', anchor)).code).toBe(0);
    editLines((l) => l.slice(0, -1));
    expect((await cli('verify', '--dir', node.audit)).code).toBe(0);
    const r = await cli('verify', '--dir', node.audit, '--anchor', anchor);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('line 6 (seq 6): truncated: the anchor is at seq 6 but the trail ends at seq 5');
  });

  it('--config: reads audit.dir and the anchor from the key store read-only', async () => {
    const store = storeAnchor(node.head);
    const before = readFileSync(store);
    const r = await cli('verify', '--config', node.config);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`audit trail intact: 6 lines in 1 segment (${node.audit})`);
    expect(r.stdout).toContain(`anchor from ${store}: seq 6 matches`);
    expect(readFileSync(store).equals(before)).toBe(true);
    // Nothing else written (SQLite may add its WAL side files, owned like the store).
    expect(readdirSync(node.state).filter((f) => !/-(wal|shm)$/.test(f)).sort()).toEqual(['audit', 'keystore.sqlite']);

    editLines((l) => l.slice(0, -1));
    const cut = await cli('verify', '--config', node.config);
    expect(cut.code).toBe(1);
    expect(cut.stdout).toMatch(/truncated: the anchor is at seq 6/);
  });

  it('--config: a stored anchor with another hash shows a rewritten chain', async () => {
    storeAnchor({ seq: 3, hash: 'e'.repeat(64) });
    const r = await cli('verify', '--config', node.config, '--json');
    expect(r.code).toBe(1);
    expect(JSON.parse(r.stdout)).toMatchObject({ ok: false, anchor: { seq: 3 }, break: { line: 3, seq: 3, problem: 'rewritten' } });
  });

  it('--config without a key store, or without the anchor row, verifies without an anchor and says so', async () => {
    const r = await cli('verify', '--config', node.config);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/no key store at .*keystore\.sqlite: verified without an anchor/);
    storeAnchor(null);
    const r2 = await cli('verify', '--config', node.config);
    expect(r2.code).toBe(0);
    expect(r2.stdout).toMatch(/no audit anchor in .*keystore\.sqlite: verified without an anchor/);
  });

  it('exits 2 on usage and IO errors, with a message', async () => {
    const cases: Array<[string[], RegExp]> = [
      [[], /give one command/],
      [['check', '--dir', node.audit], /give one command/],
      [['verify'], /exactly one of --dir and --config/],
      [['verify', '--dir', node.audit, '--config', node.config], /exactly one of --dir and --config/],
      [['verify', '--dir', node.audit, '--anchor', '6:xyz'], /--anchor must be <seq>:<64 hex digits>/],
      [['verify', '--dir', node.audit, '--bogus'], /Unknown option '--bogus'/],
      [['verify', '--dir', join(node.dir, 'nope')], /no audit folder at/],
      [['verify', '--config', join(node.dir, 'nope.json')], /cannot read configuration/],
      [['export', '--dir', node.audit, '--since', 'yesterday'], /--since must be an ISO-8601 time/],
      [['export', '--dir', node.audit, '--event', 'stolen'], /--event must be one of/],
    ];
    for (const [args, msg] of cases) {
      const r = await cli(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.stderr, args.join(' ')).toMatch(msg);
      expect(r.stdout).toBe('');
    }
  });
});

describe('kme-audit export', () => {
  it('prints an aligned table of the verified lines', async () => {
    const r = await cli('export', '--dir', node.audit);
    expect(r.code).toBe(0);
    const rows = r.stdout.trimEnd().split('\n');
    expect(rows).toHaveLength(7);
    expect(rows[0]).toMatch(/^SEQ {2}TIME {22}EVENT {6}LINK {2}SAES {21}KEYS {2}REASON$/);
    expect(rows[2]).toBe('  2  2025-01-31T12:02:00.000Z  reserved   L-AB  SAE_A1 -> SAE_B1,SAE_B2     2');
    expect(rows[4]).toBe('  4  2025-01-31T12:04:00.000Z  fetched    L-AB  SAE_B1                      1');
    expect(rows[5]).toBe('  5  2025-01-31T12:05:00.000Z  refused          SAE_A3                         SAE not registered at this KME');
    // Columns line up: every row has TIME at the same offset.
    for (const row of rows.slice(1)) expect(row.indexOf('2025-')).toBe(rows[0]!.indexOf('TIME'));
  });

  it('filters by --event, --since and --until; --json prints the stored lines exactly', async () => {
    const stored = readFileSync(seg1(), 'utf8').split('\n').slice(0, -1);
    const ev = await cli('export', '--dir', node.audit, '--event', 'fetched', '--json');
    expect(ev.code).toBe(0);
    expect(ev.stdout).toBe(stored[3] + '\n');
    const range = await cli('export', '--dir', node.audit, '--since', '2025-01-31T12:02:00Z', '--until', '2025-01-31T12:05:00.000Z', '--json');
    expect(range.stdout.split('\n').slice(0, -1)).toEqual(stored.slice(1, 4));
    const none = await cli('export', '--dir', node.audit, '--event', 'alarm');
    expect(none).toMatchObject({ code: 0, stdout: '(no lines in range)\n' });
  });

  it('on a broken trail prints only the lines before the break, and exits 1 naming the break', async () => {
    editLines((l) => (l.splice(2, 1), l));
    const r = await cli('export', '--dir', node.audit, '--json');
    expect(r.code).toBe(1);
    expect(r.stdout.split('\n').slice(0, -1).map((l) => JSON.parse(l).seq)).toEqual([1, 2]);
    expect(r.stderr).toContain(`AUDIT TRAIL BROKEN at ${seg1()} line 3 (seq 3): removed`);
    expect(r.stderr).toMatch(/only the lines before the break are shown/);
  });

  it('reads a multi-segment trail in order', async () => {
    // More lines into the same trail with tiny segments.
    const log = AuditLog.open(node.audit, { segmentBytes: 4096, clock: { now: () => T0 + 3_600_000 }, logger: silentLogger() });
    for (let i = 0; i < 60; i++) log.record({ event: 'fetched', link: 'L-AB', sae: 'SAE_B2', key_ids: [uuid(1000 + i)] });
    await log.close();
    expect(readdirSync(node.audit).length).toBeGreaterThan(1);
    expect(statSync(node.audit).isDirectory()).toBe(true);
    const r = await cli('export', '--dir', node.audit, '--json');
    expect(r.code).toBe(0);
    expect(r.stdout.split('\n').slice(0, -1).map((l) => JSON.parse(l).seq)).toEqual(Array.from({ length: 66 }, (_, i) => i + 1));
  });
});
