/**
 * Certificates for kmectl: expiry of the node's own, issuing from a CA key
 * (for a new key pair, a kept key, or an SAE's CSR), CSRs for an offline CA,
 * and checking a certificate signed elsewhere. Leaf keys are ECDSA P-256,
 * PKCS#8 PEM, as the demo PKI's (src/pki/x509.ts); the CA key may be ECDSA
 * P-256/P-384 or RSA.
 */
import { X509Certificate as NodeX509, createPrivateKey, createPublicKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { subtle, x509 } from '../pki/x509-lib.js';
import { EXIT, KmectlError } from './output.js';

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const DAY_MS = 86_400_000;
const SKEW_MS = 5 * 60_000;
const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

export interface CertInfo {
  name: string;
  path: string;
  subject?: string;
  not_after?: string;
  days_left?: number;
  error?: string;
}

/** Expiry of a PEM certificate file (an `error` instead when it cannot be read). */
export function certInfo(name: string, path: string, now = Date.now()): CertInfo {
  try {
    const c = new NodeX509(readFileSync(path));
    const end = new Date(c.validTo);
    return { name, path, subject: c.subject.replace(/\n/g, ', '), not_after: end.toISOString(), days_left: Math.floor((end.getTime() - now) / DAY_MS) };
  } catch (e) {
    return { name, path, error: (e as NodeJS.ErrnoException).code ?? (e as Error).message };
  }
}

export interface Ca {
  cert: x509.X509Certificate;
  certPath: string;
  signingKey: CryptoKey;
  algorithm: Algorithm | EcdsaParams;
}

function signingParams(key: KeyObject): { importAlg: EcKeyImportParams | RsaHashedImportParams; sign: Algorithm | EcdsaParams } {
  if (key.asymmetricKeyType === 'ec') {
    const curve = key.asymmetricKeyDetails?.namedCurve;
    if (curve === 'prime256v1') return { importAlg: { name: 'ECDSA', namedCurve: 'P-256' }, sign: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams };
    if (curve === 'secp384r1') return { importAlg: { name: 'ECDSA', namedCurve: 'P-384' }, sign: { name: 'ECDSA', hash: 'SHA-384' } as EcdsaParams };
    throw new Error(`EC curve ${curve ?? '?'} is not supported (P-256 or P-384)`);
  }
  if (key.asymmetricKeyType === 'rsa') {
    return { importAlg: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, sign: { name: 'RSASSA-PKCS1-v1_5' } };
  }
  throw new Error(`${key.asymmetricKeyType ?? 'unknown'} keys are not supported`);
}

/** The CA certificate and its private key; checks that they belong together and that the certificate is a CA. */
export async function loadCa(certPath: string, keyPath: string): Promise<Ca> {
  let certPem: string;
  let key: KeyObject;
  try {
    certPem = readFileSync(certPath, 'utf8');
  } catch (e) {
    throw new KmectlError(`cannot read the CA certificate ${certPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`, 'give it with --ca-cert <file>', EXIT.USAGE, 'CA');
  }
  try {
    key = createPrivateKey(readFileSync(keyPath));
  } catch (e) {
    throw new KmectlError(
      `cannot read the CA key ${keyPath}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      'give the CA private key with --ca-key <file> (PEM); when the CA is offline use --csr/--cert instead',
      EXIT.USAGE,
      'CA',
    );
  }
  const cert = new NodeX509(certPem);
  if (!cert.ca) throw new KmectlError(`${certPath} is not a CA certificate`, 'give the issuing CA with --ca-cert', EXIT.USAGE, 'CA');
  const spki = (k: KeyObject) => k.export({ type: 'spki', format: 'der' });
  if (!spki(createPublicKey(key)).equals(spki(cert.publicKey))) {
    throw new KmectlError(`the CA key ${keyPath} does not belong to the CA certificate ${certPath}`, 'give the matching pair (--ca-key, --ca-cert)', EXIT.USAGE, 'CA');
  }
  const { importAlg, sign } = signingParams(key);
  const der = key.export({ type: 'pkcs8', format: 'der' });
  const signingKey = await subtle.importKey('pkcs8', der, importAlg, false, ['sign']);
  der.fill(0);
  return { cert: new x509.X509Certificate(certPem), certPath, signingKey, algorithm: sign };
}

export interface LeafOptions {
  cn: string;
  usage: 'server' | 'client' | 'both';
  dns?: string[];
  ips?: string[];
  uris?: string[];
  days: number;
}

export interface Issued {
  cert: string;
  /** PKCS#8 PEM of a new key pair (absent when the public key was given). */
  key?: string;
}

/** Issue a leaf certificate; for `publicKey` (a kept key, a CSR's), else for a new P-256 key pair. */
export async function issueLeaf(ca: Ca, opts: LeafOptions, publicKey?: CryptoKey | x509.PublicKey): Promise<Issued> {
  if (!(opts.days > 0) || opts.days > 3650) throw new KmectlError(`--days must be 1 to 3650, got ${opts.days}`, undefined, EXIT.USAGE, 'USAGE');
  let keys: CryptoKeyPair | undefined;
  if (!publicKey) {
    keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
    publicKey = keys.publicKey;
  }
  const eku: string[] = [];
  if (opts.usage !== 'client') eku.push(x509.ExtendedKeyUsage.serverAuth);
  if (opts.usage !== 'server') eku.push(x509.ExtendedKeyUsage.clientAuth);
  const extensions: x509.Extension[] = [
    new x509.BasicConstraintsExtension(false, undefined, true),
    new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
    new x509.ExtendedKeyUsageExtension(eku, false),
    await x509.SubjectKeyIdentifierExtension.create(publicKey),
    await x509.AuthorityKeyIdentifierExtension.create(ca.cert.publicKey),
  ];
  const san: x509.JsonGeneralName[] = [
    ...(opts.dns ?? []).map((value) => ({ type: 'dns' as const, value })),
    ...(opts.ips ?? []).map((value) => {
      if (isIP(value) === 0) throw new KmectlError(`not an IP address: ${value}`, undefined, EXIT.USAGE, 'USAGE');
      return { type: 'ip' as const, value };
    }),
    ...(opts.uris ?? []).map((value) => ({ type: 'url' as const, value })),
  ];
  if (san.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(san, false));
  const nb = new Date(Math.floor((Date.now() - SKEW_MS) / 1000) * 1000);
  let na = new Date(nb.getTime() + opts.days * DAY_MS);
  if (na > ca.cert.notAfter) na = ca.cert.notAfter; // never outlive the CA
  const serial = randomBytes(16);
  serial[0] = (serial[0]! & 0x7f) | 0x01;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial.toString('hex'),
    subject: [{ CN: [opts.cn] }],
    issuer: ca.cert.subjectName,
    notBefore: nb,
    notAfter: na,
    signingAlgorithm: ca.algorithm,
    publicKey,
    signingKey: ca.signingKey,
    extensions,
  });
  return { cert: cert.toString('pem') + '\n', ...(keys ? { key: await exportPkcs8(keys.privateKey) } : {}) };
}

async function exportPkcs8(key: CryptoKey): Promise<string> {
  const der = Buffer.from(await subtle.exportKey('pkcs8', key));
  const pem = `-----BEGIN PRIVATE KEY-----\n${der.toString('base64').replace(/.{1,64}/g, '$&\n')}-----END PRIVATE KEY-----\n`;
  der.fill(0);
  return pem;
}

/** The public key of a PEM private key file (to renew a certificate and keep its key). */
export async function publicKeyOf(privatePem: string | Buffer): Promise<CryptoKey> {
  const pub = createPublicKey(createPrivateKey(privatePem));
  const der = pub.export({ type: 'spki', format: 'der' });
  if (pub.asymmetricKeyType === 'ec') {
    const curve = pub.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'P-384' : 'P-256';
    return subtle.importKey('spki', der, { name: 'ECDSA', namedCurve: curve }, true, ['verify']);
  }
  return subtle.importKey('spki', der, { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }, true, ['verify']);
}

/** A new P-256 key pair and a CSR for `cn` (to be signed by an offline CA). */
export async function newCsr(cn: string, uris: string[] = []): Promise<{ csr: string; key: string }> {
  const keys = (await subtle.generateKey(EC, true, ['sign', 'verify'])) as CryptoKeyPair;
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({
    name: [{ CN: [cn] }],
    keys,
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } as EcdsaParams,
    extensions: uris.length > 0 ? [new x509.SubjectAlternativeNameExtension(uris.map((value) => ({ type: 'url' as const, value })), false)] : [],
  });
  return { csr: csr.toString('pem') + '\n', key: await exportPkcs8(keys.privateKey) };
}

/** A CSR's subject CN and public key, after checking its self-signature. */
export async function readCsr(pem: string, path: string): Promise<{ cn: string | undefined; publicKey: x509.PublicKey }> {
  let csr: x509.Pkcs10CertificateRequest;
  try {
    csr = new x509.Pkcs10CertificateRequest(pem);
  } catch (e) {
    throw new KmectlError(`${path} is not a PEM certificate request (CSR): ${(e as Error).message}`, 'give the SAE\'s CSR ("BEGIN CERTIFICATE REQUEST")', EXIT.USAGE, 'CSR');
  }
  if (!(await csr.verify())) throw new KmectlError(`the signature of the CSR ${path} does not verify`, 'ask the SAE for a new CSR', EXIT.ATTENTION, 'CSR');
  return { cn: csr.subjectName.getField('CN')[0], publicKey: csr.publicKey };
}

/** The CN and SANs of a certificate, to renew it with the same names. */
export function namesOf(pem: string): { cn: string | undefined; dns: string[]; ips: string[]; uris: string[] } {
  const c = new x509.X509Certificate(pem);
  const san = c.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON() ?? [];
  return {
    cn: c.subjectName.getField('CN')[0],
    dns: san.filter((n) => n.type === 'dns').map((n) => n.value),
    ips: san.filter((n) => n.type === 'ip').map((n) => n.value),
    uris: san.filter((n) => n.type === 'url').map((n) => n.value),
  };
}

/**
 * Why an SAE certificate signed elsewhere will not do (undefined when it will):
 * issued by the API's CA, current, for client authentication, naming the SAE
 * as the API reads identities (`uriPrefix`: SAN URI prefix + SAE ID, else the CN).
 */
export function saeCertProblem(certPem: string, caPem: string, saeId: string, uriPrefix?: string): string | undefined {
  let c: NodeX509;
  try {
    c = new NodeX509(certPem);
  } catch (e) {
    return `not a PEM certificate (${(e as Error).message})`;
  }
  const ca = new NodeX509(caPem);
  if (!c.checkIssued(ca) || !c.verify(ca.publicKey)) return `not issued by the API's CA (${ca.subject.replace(/\n/g, ', ')})`;
  const now = Date.now();
  if (new Date(c.validTo).getTime() < now) return `expired on ${new Date(c.validTo).toISOString()}`;
  if (new Date(c.validFrom).getTime() > now + SKEW_MS) return `not valid before ${new Date(c.validFrom).toISOString()}`;
  if (Array.isArray(c.keyUsage) && !c.keyUsage.includes(CLIENT_AUTH)) return 'not for TLS client authentication (extended key usage lacks clientAuth)';
  if (uriPrefix !== undefined) {
    const uris = (c.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
    if (!uris.includes(uriPrefix + saeId)) return `no SAN URI ${uriPrefix + saeId}`;
  } else {
    const cn = /(?:^|\n)CN=([^\n]*)/.exec(c.subject)?.[1];
    if (cn !== saeId) return `its CN is ${cn ?? '(none)'}, not ${saeId}`;
  }
  return undefined;
}
