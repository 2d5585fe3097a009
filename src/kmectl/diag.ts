/**
 * kmectl diag link [<link_id>]: the QKD module's counters (sampled twice, a
 * few seconds apart, to see what is rising), recent alarms from the audit
 * trail, and a one-line verdict per link with what to check next.
 * Exit 0 healthy, 1 a problem found, 2 keypoold unreachable or no such link.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { LinkConfig, NodeConfig } from '../common/config.js';
import type { AuditLine } from '../common/audit-chain.js';
import { listAuditSegments } from '../common/audit-verify.js';
import { segmentName } from '../common/audit-chain.js';
import type { DiagResult } from '../ipc/pool-protocol.js';
import { intOption, type CommandSpec } from './command.js';
import { EXIT, bitRate, percent, plural, table, usageError, type Problem, type Ui } from './output.js';

type DiagLink = DiagResult['links'][number];

/** QBER above which the link is suspect (BB84's security bound is about 11%). */
const QBER_WARN = 0.11;
/** Alarms this recent are shown as a problem. */
const RECENT_ALARM_MS = 15 * 60_000;

/** Counters shown, in order, with their labels. */
const SHOWN: Array<[string, string]> = [
  ['framesIn', 'frames in'], ['framesOut', 'frames out'], ['blocksIn', 'key blocks in'], ['crcErrors', 'CRC errors'],
  ['resyncs', 'resyncs'], ['discardedBytes', 'discarded bytes'], ['timeouts', 'timeouts'], ['resends', 'resends'],
  ['seqGaps', 'sequence gaps'], ['lostBlocks', 'lost blocks'], ['reconnects', 'reconnects'], ['reconnectFailures', 'failed reconnects'],
  ['alarms', 'alarms'], ['moduleErrors', 'module errors'], ['duplicates', 'duplicate blocks'],
];

export interface LinkVerdict {
  link_id: string;
  ok: boolean;
  verdict: string;
  problems: Problem[];
}

function device(q: LinkConfig['qkd'] | undefined): string {
  if (!q) return 'the module';
  switch (q.driver) {
    case 'serial':
      return `the serial line ${q.path} (${q.baud_rate} baud${q.rtscts ? ', RTS/CTS' : ''})`;
    case 'hid':
      return `USB HID ${q.vendor_id.toString(16).padStart(4, '0')}:${q.product_id.toString(16).padStart(4, '0')}${q.path ? ` at ${q.path}` : ''}`;
    case 'socket':
      return q.path ? `the socket ${q.path}` : `${q.host}:${q.port}`;
    case 'sim':
      return 'the in-process simulator';
  }
}

function unplugHint(q: LinkConfig['qkd'] | undefined): string {
  if (q?.driver === 'serial') return `module unplugged or off: check its power and USB/serial cable, and that ${q.path} exists (ls -l ${q.path})`;
  if (q?.driver === 'hid') return `module unplugged or off: check its power and USB cable (${device(q)} should show in lsusb)`;
  if (q?.driver === 'socket') return `module unreachable: check its power and its connection to ${device(q)}`;
  return 'check the module';
}

/** The verdict of one link from two samples `seconds` apart (the same sample twice when 0). */
export function judge(link: DiagLink, before: DiagLink, seconds: number, cfg: NodeConfig, alarms: AuditLine[], now = Date.now()): LinkVerdict {
  const lc = cfg.links.find((l) => l.link_id === link.link_id);
  const q = lc?.qkd;
  const c = link.module.counters;
  const d = (k: string) => (c[k] ?? 0) - (before.module.counters[k] ?? 0);
  const st = link.module.status as { up?: boolean; qber?: number; keyRateBps?: number; error?: string };
  const within = seconds > 0 ? ` in ${seconds} s` : '';
  const problems: Problem[] = [];
  const state = link.module.state;
  if (state !== 'ready') {
    const gaveUp = state === 'failed';
    problems.push({
      level: gaveUp ? 'fail' : 'warn',
      message: `QKD module ${state}${d('reconnectFailures') > 0 ? ` (${plural(d('reconnectFailures'), 'failed reconnect')}${within})` : ''}`,
      fix: `${unplugHint(q)}${gaveUp ? '; then restart kme-keypoold' : '; the driver keeps trying'}`,
    });
  } else if (st.up === false) {
    problems.push({ level: 'warn', message: 'QKD link down: the module reports no key production', fix: `check the fibre and the module at ${link.peer_kme_id} (power, alignment)` });
  }
  if (d('crcErrors') > 0) {
    problems.push({
      level: 'warn',
      message: `CRC errors rising (+${d('crcErrors')}${within})`,
      fix: `check the serial cable (seated, shielded, short) and that the module's speed matches ${device(q)}`,
    });
  } else if (d('resyncs') > 0 || d('discardedBytes') > 0) {
    problems.push({ level: 'warn', message: `garbage on the line (+${d('discardedBytes')} bytes discarded${within})`, fix: `check the cable and the speed of ${device(q)}` });
  }
  const lost = d('timeouts') + d('seqGaps') + d('resends');
  if (lost > 0) {
    problems.push({
      level: 'warn',
      message: `frames lost or late (+${d('timeouts')} timeouts, +${d('resends')} resends, +${d('seqGaps')} gaps${within})`,
      fix: `check the cable and flow control (rtscts in the config); a module that stalls needs a power cycle`,
    });
  }
  if (d('reconnects') > 0) {
    problems.push({ level: 'warn', message: `module reconnected ${plural(d('reconnects'), 'time')}${within}`, fix: 'the module reset or the cable is loose: check its power and cable; journalctl -u kme-keypoold' });
  }
  if (typeof st.qber === 'number' && st.qber > QBER_WARN) {
    problems.push({ level: 'warn', message: `QBER high: ${percent(st.qber, 2)}`, fix: 'a fibre fault or an eavesdropper: check connectors and fibre; the module alarms above its threshold' });
  }
  const recent = alarms.filter((a) => now - Date.parse(a.ts) < RECENT_ALARM_MS);
  if (d('alarms') > 0 || recent.length > 0) {
    const last = recent[recent.length - 1];
    problems.push({
      level: 'warn',
      message: `QKD alarm${last?.blocks ? `: blocks ${last.blocks[0]}..${last.blocks[1]} discarded` : ''}${last?.reason ? ` (${last.reason})` : ''}`,
      fix: 'key from the named blocks was discarded on both ends; check the fibre, and tell the security officer if alarms repeat',
    });
  }
  if (!link.peer_reachable) {
    problems.push({
      level: 'warn',
      message: `peer ${link.peer_kme_id} unreachable`,
      fix: `check the network/firewall to ${lc?.peer_url ?? 'the peer'} (TCP), that kme-keypoold runs on ${link.peer_kme_id}, and that both KME certificates come from the same CA`,
    });
  }
  const capacity = 2 * cfg.limits.max_key_count * cfg.limits.default_key_size;
  if (seconds > 0 && state === 'ready' && st.up !== false && d('blocksIn') === 0 && link.stored_bits < capacity * 0.95 && problems.length === 0) {
    problems.push({ level: 'warn', message: `no key blocks arrived${within}`, fix: 'the module is connected but sends no key: check its status display and the fibre' });
  }
  const ok = problems.length === 0;
  const rate = d('blocksIn') > 0 && seconds > 0 ? `, ${(d('blocksIn') / seconds).toFixed(1)} blocks/s in` : '';
  const verdict = ok
    ? `link healthy: module ready, QBER ${typeof st.qber === 'number' ? percent(st.qber, 2) : '?'}${rate}, peer reachable`
    : `${problems[0]!.message}: ${problems[0]!.fix}`;
  return { link_id: link.link_id, ok, verdict, problems };
}

/** Alarm lines of the audit trail for `link` (or the master key), from its last segments; [] when unreadable. */
export function recentAlarms(dir: string, link: string, max = 5): AuditLine[] {
  try {
    const segs = listAuditSegments(dir).slice(-2);
    const out: AuditLine[] = [];
    for (const s of segs) {
      for (const raw of readFileSync(join(dir, segmentName(s)), 'utf8').split('\n')) {
        if (!raw.includes('"event":"alarm"')) continue;
        try {
          const l = JSON.parse(raw) as AuditLine;
          if (l.link === link) out.push(l);
        } catch {
          /* a torn last line */
        }
      }
    }
    return out.slice(-max);
  } catch {
    return [];
  }
}

export const diagLink: CommandSpec = {
  usage: ['diag link [<link_id>] [--seconds N]   (samples the counters N s apart; default 3, 0 = once)'],
  options: ['seconds'],
  async run({ ui, words, opts, node, admin }) {
    const cfg = node.config();
    const seconds = intOption('seconds', opts.seconds, 3, 0, 60);
    if (words.length > 1) throw usageError('diag link takes at most one link id');
    const want = words[0];
    const first = await admin().call('diag', {});
    const links = first.links.filter((l) => want === undefined || l.link_id === want);
    if (want !== undefined && links.length === 0) {
      throw usageError(`no link ${want} at ${cfg.kme_id}`, `links here: ${first.links.map((l) => l.link_id).join(', ') || 'none'}`);
    }
    if (first.links.length === 0) {
      ui.line(`${cfg.kme_id} has no QKD links configured`);
      return { code: EXIT.OK, json: { ok: true, kme_id: cfg.kme_id, links: [] } };
    }
    if (seconds > 0 && ui.tty) ui.line(ui.c.dim(`sampling the counters for ${seconds} s...`));
    const second = seconds > 0 ? (await new Promise((r) => setTimeout(r, seconds * 1000)), await admin().call('diag', {})) : first;
    const results = links.map((l) => {
      const now = second.links.find((x) => x.link_id === l.link_id) ?? l;
      const alarms = recentAlarms(cfg.audit.dir!, l.link_id);
      return { before: l, now, alarms, verdict: judge(now, l, seconds, cfg, alarms) };
    });
    for (const r of results) printLink(ui, r.now, r.before, r.alarms, r.verdict, seconds);
    const ok = results.every((r) => r.verdict.ok);
    return {
      code: ok ? EXIT.OK : EXIT.ATTENTION,
      json: {
        ok,
        kme_id: cfg.kme_id,
        sampled_seconds: seconds,
        links: results.map((r) => ({
          link_id: r.now.link_id,
          peer_kme_id: r.now.peer_kme_id,
          ok: r.verdict.ok,
          verdict: r.verdict.verdict,
          problems: r.verdict.problems,
          module: r.now.module,
          counter_deltas: Object.fromEntries(Object.keys(r.now.module.counters).map((k) => [k, (r.now.module.counters[k] ?? 0) - (r.before.module.counters[k] ?? 0)])),
          peer_reachable: r.now.peer_reachable,
          high_water: r.now.high_water,
          peer_high_water: r.now.peer_high_water,
          blocks: r.now.blocks,
          stored_bits: r.now.stored_bits,
          recent_alarms: r.alarms,
        })),
      },
    };
  },
};

function printLink(ui: Ui, l: DiagLink, before: DiagLink, alarms: AuditLine[], v: LinkVerdict, seconds: number): void {
  const { c } = ui;
  ui.line(`${c.bold(l.link_id)}  ${ui.level(v.ok ? 'ok' : v.problems.some((p) => p.level === 'fail') ? 'fail' : 'warn')}  ${v.verdict}`);
  const st = l.module.status as { up?: boolean; qber?: number; keyRateBps?: number };
  const stale = l.module.state !== 'ready' ? ' (last report)' : '';
  ui.line(
    `  module ${l.module.state}; link${stale} ${st.up === undefined ? '?' : st.up ? 'up' : 'DOWN'}, QBER ${typeof st.qber === 'number' ? percent(st.qber, 2) : '?'}, ` +
      `key rate ${typeof st.keyRateBps === 'number' ? bitRate(st.keyRateBps) : '?'}; peer ${l.peer_kme_id} ${l.peer_reachable ? 'reachable' : 'UNREACHABLE'}; ` +
      `blocks held ${l.blocks} (ours up to ${l.high_water}, peer's up to ${l.peer_high_water})`,
  );
  const rows = [['  COUNTER', 'TOTAL', seconds > 0 ? `LAST ${seconds} s` : '']];
  for (const [k, label] of SHOWN) {
    if (!(k in l.module.counters)) continue;
    const delta = (l.module.counters[k] ?? 0) - (before.module.counters[k] ?? 0);
    const bad = delta > 0 && !['framesIn', 'framesOut', 'blocksIn'].includes(k);
    rows.push([`  ${label}`, String(l.module.counters[k]), seconds > 0 ? (bad ? ui.level('warn', `+${delta}`) : `+${delta}`) : '']);
  }
  ui.lines(table(rows, [1, 2]));
  if (alarms.length > 0) {
    ui.line('  recent alarms (audit trail):');
    for (const a of alarms) ui.line(`    ${a.ts}  blocks ${a.blocks ? `${a.blocks[0]}..${a.blocks[1]}` : '?'}  ${a.reason ?? ''}`);
  } else ui.line('  recent alarms: none in the audit trail');
  if (v.problems.length > 0) {
    ui.line('  what to check next:');
    for (const p of v.problems) ui.line(`    ${ui.level(p.level, p.level === 'fail' ? '✗' : '!')} ${p.message}\n      ${c.dim('->')} ${p.fix}`);
  }
  ui.line();
}
