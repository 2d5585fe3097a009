/**
 * Demo and test PKI: an ECDSA P-256 CA and the leaf certificates it issues
 * (TLS servers, SAE clients, KME-to-KME peers). PEM everywhere; private keys
 * are PKCS#8 ("BEGIN PRIVATE KEY"); serials are 128 random bits; SHA-256.
 */
import { randomBytes } from 'node:crypto';
import { isIP } from 'node:net';
import { subtle, x509 } from './x509-lib.js';

export interface Pem {
  cert: string;
  key: string;
}

export type CertUsage = 'server' | 'client' | 'both';

export interface IssueOptions {
  cn: string;
  usage: CertUsage;
  dnsNames?: string[];
  ipAddresses?: string[];
  uris?: string[];
  notBefore?: Date;
  notAfter?: Date;
  /** Validity from notBefore when notAfter is not given (default 365). */
  days?: number;
}

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** Back-date notBefore a little so a peer with a slightly slow clock accepts a fresh cert. */
const SKEW_MS = 5 * 60_000;

export async function createCa(opts: { cn: string; days?: number }): Promise<Pem> {
  checkCn(opts.cn);
  const keys = await newKeyPair();
  const { notBefore, notAfter } = validity(undefined, undefined, opts.days ?? 3650);
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: subjectName(opts.cn),
    notBefore,
    notAfter,
    signingAlgorithm: SIGN,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem') + '\n', key: await exportKey(keys.privateKey) };
}

export async function issueCert(ca: Pem, opts: IssueOptions): Promise<Pem> {
  checkCn(opts.cn);
  const caCert = new x509.X509Certificate(ca.cert);
  const bc = caCert.getExtension(x509.BasicConstraintsExtension);
  if (!bc?.ca) throw new Error(`issuer "${caCert.subject}" is not a CA certificate`);
  const caKey = await importKey(ca.key);
  const { notBefore, notAfter } = validity(opts.notBefore, opts.notAfter, opts.days ?? 365);
  const keys = await newKeyPair();

  const eku: string[] = [];
  if (opts.usage === 'server' || opts.usage === 'both') eku.push(x509.ExtendedKeyUsage.serverAuth);
  if (opts.usage === 'client' || opts.usage === 'both') eku.push(x509.ExtendedKeyUsage.clientAuth);
  if (eku.length === 0) throw new Error(`unknown certificate usage "${String(opts.usage)}"`);

  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(eku, false),
    await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(caCert.publicKey),
  ];
  const san = sanNames(opts);
  if (san.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(san, false));

  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: subjectName(opts.cn),
    issuer: caCert.subjectName,
    notBefore,
    notAfter,
    signingAlgorithm: SIGN,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions,
  });
  return { cert: cert.toString('pem') + '\n', key: await exportKey(keys.privateKey) };
}

function sanNames(opts: IssueOptions): x509.JsonGeneralName[] {
  const names: x509.JsonGeneralName[] = [];
  for (const d of opts.dnsNames ?? []) names.push({ type: 'dns', value: d });
  for (const ip of opts.ipAddresses ?? []) {
    if (isIP(ip) === 0) throw new Error(`not an IP address: "${ip}"`);
    names.push({ type: 'ip', value: ip });
  }
  for (const u of opts.uris ?? []) names.push({ type: 'url', value: u });
  return names;
}

function validity(notBefore: Date | undefined, notAfter: Date | undefined, days: number) {
  if (!(days > 0)) throw new Error(`certificate validity must be positive, got ${days} days`);
  const now = Date.now();
  let nb: Date;
  if (notBefore) nb = notBefore;
  else if (notAfter) nb = new Date(Math.min(now - SKEW_MS, notAfter.getTime() - days * DAY_MS));
  else nb = new Date(now - SKEW_MS);
  const na = notAfter ?? new Date(nb.getTime() + days * DAY_MS);
  if (na.getTime() <= nb.getTime()) {
    throw new Error(`notAfter (${na.toISOString()}) must be after notBefore (${nb.toISOString()})`);
  }
  // X.509 times have second precision.
  return { notBefore: wholeSeconds(nb), notAfter: wholeSeconds(na) };
}

const wholeSeconds = (d: Date) => new Date(Math.floor(d.getTime() / 1000) * 1000);

/** 16 random bytes, top bit clear (positive INTEGER) and never a leading zero byte. */
function randomSerial(): string {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x7f) | 0x01;
  return b.toString('hex');
}

function subjectName(cn: string): x509.JsonName {
  return [{ CN: [cn] }];
}

function checkCn(cn: string): void {
  if (typeof cn !== 'string' || cn.length === 0 || cn.length > 64) {
    throw new Error(`certificate CN must be 1..64 characters, got ${JSON.stringify(cn)}`);
  }
}

async function newKeyPair(): Promise<CryptoKeyPair> {
  return (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
}

async function exportKey(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await subtle.exportKey('pkcs8', key));
  return toPem('PRIVATE KEY', der);
}

async function importKey(pem: string): Promise<CryptoKey> {
  const der = fromPem('PRIVATE KEY', pem);
  try {
    return await subtle.importKey('pkcs8', der, EC, false, ['sign']);
  } catch (e) {
    throw new Error(`CA key is not a PKCS#8 ECDSA P-256 private key: ${(e as Error).message}`);
  }
}

function toPem(label: string, der: Buffer): string {
  const b64 = der.toString('base64').replace(/.{1,64}/g, '$&\n');
  return `-----BEGIN ${label}-----\n${b64}-----END ${label}-----\n`;
}

function fromPem(label: string, pem: string): Buffer {
  const m = new RegExp(`-----BEGIN ${label}-----([^-]+)-----END ${label}-----`).exec(pem);
  if (!m) throw new Error(`no "${label}" PEM block found`);
  return Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
}
