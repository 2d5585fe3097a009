/** Copy-paste commands for the demo network: curl lines for a first key round trip, and a fault injection. */
import type { DemoJson, DemoNode } from './description.js';

export function curlExamples(demo: DemoJson, master = 'SAE_A1', slave = 'SAE_B1'): string[] {
  const at = (sae: string) => {
    const node = demo.nodes.find((n) => n.saes.some((s) => s.sae_id === sae));
    if (!node) throw new Error(`no demo node hosts ${sae}`);
    return { node, sae: node.saes.find((s) => s.sae_id === sae)! };
  };
  const m = at(master);
  const s = at(slave);
  /** `who` calls `node`'s ETSI API: /api/v1/keys/{other SAE}/{call}. */
  const curl = (who: ReturnType<typeof at>, node: DemoNode, other: string, call: string) =>
    [
      'curl -sS',
      `--cacert ${sh(demo.api_ca_cert || demo.ca_cert)}`,
      `--cert ${sh(who.sae.cert)}`,
      `--key ${sh(who.sae.key)}`,
      sh(`${node.etsi_url}/api/v1/keys/${encodeURIComponent(other)}/${call}`),
    ].join(' ');
  return [
    `# status of ${master} -> ${slave}, asked at ${m.node.kme_id} by ${master}:`,
    curl(m, m.node, slave, 'status'),
    `# one 256-bit key for ${slave}, asked at ${m.node.kme_id} by ${master} (note its key_ID):`,
    curl(m, m.node, slave, 'enc_keys?number=1&size=256'),
    `# the same key at ${s.node.kme_id}, fetched by ${slave} (replace KEY_ID with the key_ID above):`,
    curl(s, s.node, master, 'dec_keys?key_ID=KEY_ID'),
  ];
}

/**
 * One copy-paste line that injects a fault into the running simulated QKD
 * link: demo.json's control argv, the fault and its duration, then a comment.
 */
export function faultExample(demo: DemoJson, fault = 'link-down', seconds = 5): string {
  const what = fault === 'link-down' ? `the QKD link goes down for ${seconds} s` : `${fault} for ${seconds} s`;
  return `${[...demo.qkd_sim.control, fault, String(seconds)].map(sh).join(' ')}  # inject a fault: ${what}`;
}

/** Single-quote for POSIX shells unless the word is plainly safe. */
export function sh(word: string): string {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'\\''`)}'`;
}
