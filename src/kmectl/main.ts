/**
 * kmectl: the field technician's tool. Parses the command line, picks the
 * node, runs one command, prints (human, or one JSON document with --json),
 * and returns the exit code: 0 OK, 1 needs attention, 2 keypoold unreachable
 * or bad usage (hsm init/check also use kme-hsm's 20-28 for HSM faults).
 */
import { parseArgs } from 'node:util';
import type { CommandContext, CommandSpec, Options } from './command.js';
import { Admin, selectNode, type NodeContext } from './node.js';
import { EXIT, KmectlError, Ui, usageError, type Streams } from './output.js';
import { status } from './status.js';
import { diagLink } from './diag.js';
import { saeAdd, saeList, saeReissue, saeRemove } from './sae.js';
import { pkiInit, pkiRenew } from './pki.js';
import { hsmCheckCmd, hsmInitCmd, hsmRotate } from './hsm.js';
import { auditExport, auditVerify } from './audit.js';
import { selftest } from './selftest.js';
import { backup, restore } from './backup.js';

export const COMMANDS: Record<string, CommandSpec> = {
  status,
  'diag link': diagLink,
  'sae list': saeList,
  'sae add': saeAdd,
  'sae remove': saeRemove,
  'sae reissue': saeReissue,
  'pki init': pkiInit,
  'pki renew': pkiRenew,
  'hsm init': hsmInitCmd,
  'hsm check': hsmCheckCmd,
  'hsm rotate': hsmRotate,
  'audit verify': auditVerify,
  'audit export': auditExport,
  selftest,
  backup,
  restore,
};

const GROUPS = new Set(Object.keys(COMMANDS).filter((k) => k.includes(' ')).map((k) => k.split(' ')[0]!));

const OPTION_TYPES: Record<keyof Options, 'string' | 'boolean'> = {
  config: 'string', node: 'string', demo: 'string', json: 'boolean', help: 'boolean',
  allow: 'string', csr: 'string', cert: 'string', issue: 'boolean', kme: 'string', 'ca-key': 'string', 'ca-cert': 'string',
  out: 'string', force: 'boolean', days: 'string', 'new-key': 'boolean', only: 'string', dns: 'string', ip: 'string',
  since: 'string', until: 'string', event: 'string', anchor: 'string', seconds: 'string', link: 'string', 'passphrase-file': 'string',
};
const COMMON: Array<keyof Options> = ['config', 'node', 'demo', 'json', 'help'];

export function helpText(): string {
  const lines = Object.values(COMMANDS).flatMap((c) => c.usage.map((u) => (u.startsWith(' ') ? `         ${u}` : `  kmectl ${u}`)));
  return [
    'kmectl: the field technician\'s tool for a QKD KME node',
    '',
    'usage:',
    ...lines,
    '',
    'node (every command):',
    '  --config <file>          the node configuration (else $KME_CONFIG, else /etc/kme/kme.json)',
    '  --node <KME_ID> [--demo <demo.json>]   a node of the demo network (default var/demo/demo.json)',
    '  --json                   one JSON document on stdout instead of text',
    '',
    'exit codes: 0 OK; 1 something needs attention (a check failed, a refusal);',
    '            2 keypoold unreachable, bad usage or unreadable configuration;',
    '            hsm init/check: 20-28 for HSM faults (see README, "Master key and HSM").',
  ].join('\n');
}

/** Runs kmectl with `argv` (without node and script); returns the exit code. */
export async function runKmectl(argv: string[], streams: Streams = { stdout: process.stdout, stderr: process.stderr, env: process.env }, cwd = process.cwd()): Promise<number> {
  const json = argv.includes('--json');
  const ui = new Ui(streams, json);
  let admin: Admin | undefined;
  try {
    let parsed;
    try {
      parsed = parseArgs({
        args: argv,
        allowPositionals: true,
        strict: true,
        options: Object.fromEntries(Object.entries(OPTION_TYPES).map(([k, type]) => [k, k === 'help' ? { type, short: 'h' } : { type }])),
      });
    } catch (e) {
      throw usageError((e as Error).message);
    }
    const opts = parsed.values as Options;
    const pos = parsed.positionals;
    if (pos.length === 0 || pos[0] === 'help') {
      if (pos.length === 0 && !opts.help) throw usageError('give a command', helpText());
      if (json) ui.document({ ok: true, usage: helpText() });
      else ui.line(helpText());
      return EXIT.OK;
    }
    const [name, words] = GROUPS.has(pos[0]!) ? [`${pos[0]} ${pos[1] ?? ''}`.trim(), pos.slice(2)] : [pos[0]!, pos.slice(1)];
    const spec = COMMANDS[name];
    if (!spec) {
      const subs = Object.keys(COMMANDS).filter((k) => k.startsWith(`${pos[0]} `));
      throw usageError(
        subs.length > 0 ? `${pos[0]} needs one of: ${subs.map((s) => s.split(' ')[1]).join(', ')}` : `unknown command "${pos.join(' ')}"`,
        subs.length > 0 ? `e.g. kmectl ${subs[0]}` : 'kmectl --help lists the commands',
      );
    }
    if (opts.help) {
      ui.line(spec.usage.map((u) => `usage: kmectl ${u}`).join('\n'));
      return EXIT.OK;
    }
    for (const k of Object.keys(opts) as Array<keyof Options>) {
      if (!COMMON.includes(k) && !spec.options.includes(k)) throw usageError(`--${k} does not go with ${name}`, `usage: kmectl ${spec.usage[0]}`);
    }
    const node: NodeContext = selectNode({ config: opts.config, node: opts.node, demo: opts.demo }, streams.env, cwd);
    const ctx: CommandContext = {
      ui, words, opts, node, cwd,
      admin: () => (admin ??= new Admin(node.config().keypoold.admin_socket!, node.config().kme_id, node.demo !== undefined)),
    };
    const r = await spec.run(ctx);
    if (json) ui.document(r.json);
    return r.code;
  } catch (e) {
    if (e instanceof KmectlError) {
      ui.error(e);
      return e.exitCode;
    }
    ui.error(new KmectlError(`unexpected failure: ${(e as Error)?.stack ?? String(e)}`, 'please report this with the command line you ran', EXIT.ATTENTION, 'INTERNAL'));
    return EXIT.ATTENTION;
  } finally {
    await admin?.close();
  }
}
