/**
 * The demo PKI under <demo>/pki/: one CA; per node an ETSI API server
 * certificate and a KME certificate (CN = KME ID, server + client) for the
 * KME-to-KME channel; per SAE a client certificate (CN = SAE ID).
 * Existing files are never regenerated; missing leaves are issued by the
 * existing CA.
 */
import { existsSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { createCa, issueCert, type IssueOptions, type Pem } from '../pki/x509.js';
import { PUBLIC_MODE, SECRET_MODE, readIfExists, writeFileDurable, type FileLog } from './files.js';
import { LOOPBACK_DNS, LOOPBACK_IPS, type DemoNodeSpec } from './topology.js';

export interface CertFiles {
  cert: string;
  key: string;
}

export interface DemoPki {
  ca: CertFiles;
  /** Per KME ID: the ETSI API server certificate and the KME-to-KME certificate. */
  nodes: Record<string, { api: CertFiles; kme: CertFiles }>;
  /** Per SAE ID: its client certificate. */
  saes: Record<string, CertFiles>;
}

export const CA_CN = 'QKD KME Demo CA';
/** The API certificate's CN differs from the KME ID so it can never pass as the KME's peer identity. */
export const apiCertCn = (kmeId: string) => `${kmeId} ETSI API`;

export function demoPkiPaths(pkiDir: string, nodes: readonly DemoNodeSpec[]): DemoPki {
  const pair = (stem: string): CertFiles => ({ cert: join(pkiDir, `${stem}.crt`), key: join(pkiDir, `${stem}.key`) });
  const out: DemoPki = { ca: pair('ca'), nodes: {}, saes: {} };
  for (const n of nodes) {
    out.nodes[n.kme_id] = { api: pair(`${n.kme_id}.api`), kme: pair(`${n.kme_id}.kme`) };
    for (const s of n.sae_ids) out.saes[s] = pair(s);
  }
  return out;
}

export async function ensureDemoPki(pkiDir: string, nodes: readonly DemoNodeSpec[], log: FileLog): Promise<DemoPki> {
  const paths = demoPkiPaths(pkiDir, nodes);
  const leaves: Array<{ files: CertFiles; opts: IssueOptions }> = [];
  for (const n of nodes) {
    const p = paths.nodes[n.kme_id]!;
    const loopback = { dnsNames: LOOPBACK_DNS, ipAddresses: LOOPBACK_IPS };
    leaves.push({ files: p.api, opts: { cn: apiCertCn(n.kme_id), usage: 'server', ...loopback } });
    leaves.push({ files: p.kme, opts: { cn: n.kme_id, usage: 'both', ...loopback } });
    for (const s of n.sae_ids) leaves.push({ files: paths.saes[s]!, opts: { cn: s, usage: 'client' } });
  }

  let ca = readPair(paths.ca);
  if (ca === 'partial') throw incomplete(pkiDir, paths.ca);
  if (!ca) {
    const orphan = leaves.find((l) => existsSync(l.files.cert) || existsSync(l.files.key));
    if (orphan) throw incomplete(pkiDir, orphan.files, 'the CA is missing but issued certificates remain');
    ca = await createCa({ cn: CA_CN, days: 3650 });
    writePair(paths.ca, ca, log);
  } else {
    reusePair(paths.ca, log);
  }

  for (const leaf of leaves) {
    const have = readPair(leaf.files);
    if (have === 'partial') throw incomplete(pkiDir, leaf.files);
    if (have) reusePair(leaf.files, log);
    else writePair(leaf.files, await issueCert(ca, { ...leaf.opts, days: 825 }), log);
  }
  return paths;
}

function readPair(f: CertFiles): Pem | 'partial' | undefined {
  const cert = readIfExists(f.cert);
  const key = readIfExists(f.key);
  if (cert === undefined && key === undefined) return undefined;
  if (cert === undefined || key === undefined) return 'partial';
  return { cert, key };
}

function writePair(f: CertFiles, pem: Pem, log: FileLog): void {
  writeFileDurable(f.key, pem.key, SECRET_MODE);
  writeFileDurable(f.cert, pem.cert, PUBLIC_MODE);
  log.written.push(f.cert, f.key);
}

function reusePair(f: CertFiles, log: FileLog): void {
  chmodSync(f.key, SECRET_MODE); // keep private keys private even if someone loosened them
  log.reused.push(f.cert, f.key);
}

function incomplete(pkiDir: string, f: CertFiles, why = 'only one of the pair exists'): Error {
  return new Error(
    `demo PKI in ${pkiDir} is incomplete (${f.cert} / ${f.key}: ${why}); ` +
      `remove ${pkiDir} to have the whole demo PKI issued again (configs and key pool are kept)`,
  );
}
