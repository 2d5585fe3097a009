/**
 * kmectl selftest [--link <id>]: keypoold carves one test key on the link,
 * its peer confirms it holds the same bits (an HMAC over a fresh nonce; no
 * key material crosses), and both erase it (src/keypoold/selftest.ts).
 * Exit 0 every link OK, 1 a link failed, 2 keypoold unreachable.
 */
import type { CommandSpec } from './command.js';
import { EXIT, table, usageError } from './output.js';

function nextStep(reason: string, peer: string): string {
  if (/unreachable/.test(reason)) return `check the network/firewall to ${peer} and that its kme-keypoold runs; kmectl status`;
  if (/no .*key available/.test(reason)) return 'wait for the link to deliver key (kmectl diag link), then run the self-test again';
  if (/not serving/.test(reason)) return 'check the HSM: kmectl hsm check';
  if (/different key material/.test(reason)) return 'the two modules disagree: stop using the link, check both modules, and tell the security officer';
  return 'kmectl diag link; journalctl -u kme-keypoold on both nodes';
}

export const selftest: CommandSpec = {
  usage: ['selftest [--link <link_id>]   (a test key round trip through both KMEs of each link; never delivered)'],
  options: ['link'],
  async run({ ui, words, opts, admin, node }) {
    if (words.length > 0) throw usageError('selftest takes no arguments (a link is given with --link)');
    const links = node.config().links.map((l) => l.link_id);
    if (opts.link !== undefined && !links.includes(opts.link)) throw usageError(`no link ${opts.link} at ${node.config().kme_id}`, `links here: ${links.join(', ') || 'none'}`);
    const r = await admin().call('selftest', opts.link !== undefined ? { link: opts.link } : {}, 60_000);
    if (r.links.length === 0) ui.line(`${r.kme_id} has no QKD links to test`);
    const rows = [['LINK', 'PEER', 'RESULT', 'TIME', 'DETAIL']];
    for (const l of r.links) {
      rows.push([
        l.link_id,
        l.peer_kme_id,
        ui.level(l.ok ? 'ok' : 'fail'),
        `${l.elapsed_ms.toFixed(1)} ms`,
        l.ok
          ? `${l.key_size}-bit test key agreed (carve ${l.carve_ms?.toFixed(1)} ms, peer ${l.peer_ms?.toFixed(1)} ms); erased on both sides`
          : l.reason ?? '?',
      ]);
    }
    ui.lines(table(rows, [3]));
    for (const l of r.links.filter((x) => !x.ok)) ui.line(`  ${ui.c.dim('->')} ${l.link_id}: ${nextStep(l.reason ?? '', l.peer_kme_id)}`);
    const ok = r.links.every((l) => l.ok);
    return { code: ok ? EXIT.OK : EXIT.ATTENTION, json: { ok, ...r } };
  },
};
