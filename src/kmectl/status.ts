/**
 * kmectl status: the node on one screen (keypoold, master key, links, pool,
 * certificates, SAEs) and what needs attention, with how to fix it.
 * Exit 0 all fine, 1 something needs attention, 2 keypoold unreachable.
 */
import type { NodeConfig } from '../common/config.js';
import type { DiagResult, HealthResult, RotationStatus } from '../ipc/pool-protocol.js';
import { certInfo, type CertInfo } from './certs.js';
import type { CommandSpec } from './command.js';
import { EXIT, KmectlError, bitRate, fields, percent, table, type Problem, type Ui } from './output.js';
import { openRegistry } from './registry-file.js';

/** A certificate expiring within this many days needs attention. */
export const CERT_WARN_DAYS = 30;

interface LinkView {
  link_id: string;
  peer_kme_id: string;
  peer_url: string;
  peer_reachable: boolean;
  module_state: string;
  link_up: boolean | null;
  qber: number | null;
  key_rate_bps: number | null;
  available_keys: number;
  max_key_count: number;
  fill: number;
  low: boolean;
  low_watermark: number;
}

export function lowWatermark(cfg: NodeConfig): number {
  return cfg.pool.low_watermark_keys ?? Math.floor(cfg.limits.max_key_count / 10);
}

function linkViews(cfg: NodeConfig, health: HealthResult, diag: DiagResult): LinkView[] {
  return health.links.map((h) => {
    const d = diag.links.find((x) => x.link_id === h.link_id);
    const st = (d?.module.status ?? {}) as { up?: boolean; qber?: number; keyRateBps?: number };
    const max = cfg.limits.max_key_count;
    return {
      link_id: h.link_id,
      peer_kme_id: h.peer_kme_id,
      peer_url: cfg.links.find((l) => l.link_id === h.link_id)?.peer_url ?? '?',
      peer_reachable: h.peer_reachable,
      module_state: d?.module.state ?? 'unknown',
      link_up: typeof st.up === 'boolean' ? st.up : null,
      qber: typeof st.qber === 'number' ? st.qber : null,
      key_rate_bps: typeof st.keyRateBps === 'number' ? st.keyRateBps : null,
      available_keys: h.available_keys,
      max_key_count: max,
      fill: max > 0 ? Math.min(1, h.available_keys / max) : 0,
      low: h.low,
      low_watermark: lowWatermark(cfg),
    };
  });
}

function linkProblems(l: LinkView): Problem[] {
  const out: Problem[] = [];
  if (!l.peer_reachable) {
    out.push({
      level: 'warn',
      message: `link ${l.link_id}: peer ${l.peer_kme_id} unreachable`,
      fix: `check the network/firewall to ${l.peer_url} and that kme-keypoold runs on ${l.peer_kme_id}`,
    });
  }
  if (l.module_state !== 'ready') {
    out.push({ level: 'warn', message: `link ${l.link_id}: QKD module ${l.module_state}`, fix: `kmectl diag link ${l.link_id}` });
  } else if (l.link_up === false) {
    out.push({ level: 'warn', message: `link ${l.link_id}: the module reports the QKD link down (no key produced)`, fix: `check the fibre and the module at ${l.peer_kme_id}; kmectl diag link ${l.link_id}` });
  }
  if (l.low) {
    out.push({
      level: 'warn',
      message: `link ${l.link_id}: key pool low (${l.available_keys} keys, below ${l.low_watermark})`,
      fix: `keys are used faster than the link makes them: check the key rate (kmectl diag link ${l.link_id}) and the SAEs' demand`,
    });
  } else if (l.peer_reachable && l.available_keys === 0) {
    out.push({ level: 'warn', message: `link ${l.link_id}: no key available yet`, fix: `wait for the link to deliver key; kmectl diag link ${l.link_id}` });
  }
  return out;
}

export function certProblems(certs: CertInfo[]): Problem[] {
  const out: Problem[] = [];
  for (const c of certs) {
    if (c.error) {
      out.push({ level: 'fail', message: `${c.name} certificate ${c.path} unreadable (${c.error})`, fix: 'restore it (kmectl restore) or issue it again (kmectl pki init --ca-key <CA key>)' });
    } else if (c.days_left! < 0) {
      out.push({ level: 'fail', message: `${c.name} certificate expired on ${c.not_after!.slice(0, 10)}`, fix: 'kmectl pki renew --ca-key <CA key>, then restart the daemons' });
    } else if (c.days_left! <= CERT_WARN_DAYS) {
      out.push({ level: 'warn', message: `${c.name} certificate expires in ${c.days_left} days (${c.not_after!.slice(0, 10)})`, fix: 'kmectl pki renew --ca-key <CA key>, then restart the daemons' });
    }
  }
  return out;
}

export const status: CommandSpec = {
  usage: ['status'],
  options: [],
  async run({ ui, node, admin }) {
    const cfg = node.config();
    const problems: Problem[] = [];
    let unreachable: KmectlError | undefined;
    let health: HealthResult | undefined;
    let diag: DiagResult | undefined;
    let rot: RotationStatus | undefined;
    try {
      [health, diag, rot] = await Promise.all([admin().call('health', {}), admin().call('diag', {}), admin().call('rotation_status', {})]);
    } catch (e) {
      if (!(e instanceof KmectlError) || e.exitCode !== EXIT.UNREACHABLE) throw e;
      unreachable = e;
      problems.push({ level: 'fail', message: e.message, fix: e.hint });
    }
    if (health && !health.serving) {
      problems.push({
        level: 'fail',
        message: `not serving keys: ${health.stop_reason ?? 'no reason given'}`,
        fix: 'check the HSM (kmectl hsm check); once it answers, restart kme-keypoold',
      });
    }
    const links = health && diag ? linkViews(cfg, health, diag) : [];
    for (const l of links) problems.push(...linkProblems(l));
    if (rot?.data_key.state === 'failed') {
      problems.push({ level: 'warn', message: `data key re-encryption failed: ${rot.data_key.error ?? '?'}`, fix: 'kmectl hsm rotate again; see journalctl -u kme-keypoold' });
    }
    const certs = [certInfo('api', cfg.api.tls.cert), certInfo('kme', cfg.peer.tls.cert)];
    problems.push(...certProblems(certs));
    let saes: { here: number; total: number; registry_file: string; error?: string };
    try {
      const reg = (await openRegistry(cfg.registry_file)).data.saes;
      saes = { here: reg.filter((s) => s.kme_id === cfg.kme_id).length, total: reg.length, registry_file: cfg.registry_file };
    } catch (e) {
      saes = { here: 0, total: 0, registry_file: cfg.registry_file, error: (e as Error).message };
      problems.push({ level: 'warn', message: (e as Error).message, fix: (e as KmectlError).hint });
    }
    const code = unreachable ? EXIT.UNREACHABLE : problems.length > 0 ? EXIT.ATTENTION : EXIT.OK;
    printStatus(ui, cfg, node.configPath, { health, rot, links, certs, saes, problems, admin: admin().path });
    return {
      code,
      json: {
        ok: code === EXIT.OK,
        node: { kme_id: cfg.kme_id, config: node.configPath },
        keypoold: {
          reachable: !unreachable,
          admin_socket: admin().path,
          ...(health ? { serving: health.serving, ...(health.stop_reason ? { stop_reason: health.stop_reason } : {}) } : {}),
        },
        ...(rot ? { master_key: rot.master_key, data_key: rot.data_key } : {}),
        links,
        certificates: certs,
        saes,
        problems,
      },
    };
  },
};

function printStatus(
  ui: Ui, cfg: NodeConfig, configPath: string,
  s: { health?: HealthResult; rot?: RotationStatus; links: LinkView[]; certs: CertInfo[]; saes: { here: number; total: number; registry_file: string; error?: string }; problems: Problem[]; admin: string },
): void {
  const { c } = ui;
  const worst = s.problems.some((p) => p.level === 'fail') ? 'fail' : s.problems.length > 0 ? 'warn' : 'ok';
  ui.line(`${c.bold(cfg.kme_id)}  ${ui.level(worst, worst === 'ok' ? 'all OK' : 'needs attention')}`);
  const keypoold = !s.health
    ? ui.level('fail', 'not reachable')
    : s.health.serving
      ? ui.level('ok', 'serving keys')
      : ui.level('fail', 'NOT serving keys');
  ui.lines(
    fields([
      ['config', configPath],
      ['keypoold', `${keypoold}  ${c.dim(`(${s.admin})`)}`],
      ...(s.rot
        ? ([
            ['master key', `${s.rot.master_key.provider}, key ${s.rot.master_key.key_id}`],
            ['data key', `generation ${s.rot.data_key.generation} (${s.rot.data_key.state})`],
          ] as Array<[string, string]>)
        : []),
      ['SAEs', s.saes.error ? ui.level('warn', 'registry unreadable') : `${s.saes.here} at ${cfg.kme_id}, ${s.saes.total} in the registry  ${c.dim(`(${s.saes.registry_file})`)}`],
    ]),
  );
  if (s.links.length > 0) {
    ui.line();
    const rows = [['LINK', 'PEER', 'PEER LINK', 'MODULE', 'QKD', 'QBER', 'KEY RATE', `POOL (${cfg.limits.default_key_size}-bit keys)`, 'LOW']];
    for (const l of s.links) {
      rows.push([
        l.link_id,
        l.peer_kme_id,
        l.peer_reachable ? ui.level('ok', 'reachable') : ui.level('warn', 'UNREACHABLE'),
        l.module_state === 'ready' ? ui.level('ok', l.module_state) : ui.level('warn', l.module_state),
        l.link_up === null ? '?' : l.link_up ? 'up' : ui.level('warn', 'DOWN'),
        l.qber === null ? '?' : percent(l.qber, 2),
        l.key_rate_bps === null ? '?' : bitRate(l.key_rate_bps),
        `${l.available_keys} / ${l.max_key_count} (${percent(l.fill)})`,
        l.low ? ui.level('warn', `YES (< ${l.low_watermark})`) : `no (< ${l.low_watermark})`,
      ]);
    }
    ui.lines(table(rows));
  } else if (s.health) {
    ui.line();
    ui.line('no QKD links configured');
  }
  ui.line();
  const rows = [['CERT', 'EXPIRES', 'DAYS', 'SUBJECT', 'FILE']];
  for (const ct of s.certs) {
    if (ct.error) rows.push([ct.name, ui.level('fail', 'unreadable'), '', ct.error, ct.path]);
    else {
      const d = ct.days_left!;
      const days = d < 0 ? ui.level('fail', String(d)) : d <= CERT_WARN_DAYS ? ui.level('warn', String(d)) : String(d);
      rows.push([ct.name, ct.not_after!.slice(0, 10), days, ct.subject ?? '', c.dim(ct.path)]);
    }
  }
  ui.lines(table(rows, [2]));
  if (s.problems.length > 0) {
    ui.line();
    ui.line(c.bold('needs attention:'));
    ui.problems(s.problems);
  }
}
