import { createPrivateKey, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import * as tls from 'node:tls';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createCa, issueCert, type Pem } from '../../src/pki/x509.js';

let ca: Pem;
let otherCa: Pem;
let server: Pem;
let client: Pem;

beforeAll(async () => {
  ca = await createCa({ cn: 'Test CA' });
  otherCa = await createCa({ cn: 'Rogue CA' });
  server = await issueCert(ca, {
    cn: 'localhost',
    usage: 'server',
    dnsNames: ['localhost'],
    ipAddresses: ['127.0.0.1'],
  });
  client = await issueCert(ca, { cn: 'SAE_A1', usage: 'client', uris: ['urn:sae:SAE_A1'] });
});

interface Outcome {
  /** The client got the server's greeting: the handshake succeeded on both sides. */
  greeted: boolean;
  clientError?: string;
  serverError?: string;
  /** With `strict: false` the server accepts the handshake and reports why it would not trust the client. */
  serverAuthError?: string;
  peerCn?: string;
}

const servers: tls.Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) s.close();
});

/** A mutual-TLS server that greets authorised clients, and one client connection to it. */
async function roundTrip(
  serverPem: Pem,
  clientPem: Pem,
  connect: { host?: string; servername?: string; strict?: boolean } = {},
): Promise<Outcome> {
  const out: Outcome = { greeted: false };
  const srv = tls.createServer({
    key: serverPem.key,
    cert: serverPem.cert,
    ca: ca.cert,
    requestCert: true,
    rejectUnauthorized: connect.strict ?? true,
  });
  servers.push(srv);
  srv.on('secureConnection', (s) => {
    const peer = s.getPeerCertificate();
    out.peerCn = typeof peer.subject?.CN === 'string' ? peer.subject.CN : undefined;
    if (s.authorizationError) out.serverAuthError = String(s.authorizationError);
    s.end(s.authorized ? 'hello' : 'unauthorised');
  });
  srv.on('tlsClientError', (e) => {
    out.serverError = (e as NodeJS.ErrnoException).code ?? e.message;
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = srv.address() as AddressInfo;

  await new Promise<void>((resolve) => {
    const c = tls.connect({
      host: connect.host ?? '127.0.0.1',
      port,
      ...(connect.servername ? { servername: connect.servername } : {}),
      ca: ca.cert,
      cert: clientPem.cert,
      key: clientPem.key,
    });
    let data = '';
    c.setEncoding('utf8');
    c.on('data', (d: string) => (data += d));
    c.on('error', (e) => {
      out.clientError = (e as NodeJS.ErrnoException).code ?? e.message;
    });
    c.on('close', () => {
      out.greeted = data === 'hello';
      resolve();
    });
  });
  // Let the server-side error event, if any, land.
  await new Promise((r) => setTimeout(r, 20));
  return out;
}

describe('createCa / issueCert', () => {
  it('mutual TLS works both ways, by IP SAN and by DNS SAN', async () => {
    const byIp = await roundTrip(server, client);
    expect(byIp).toMatchObject({ greeted: true, peerCn: 'SAE_A1' });
    expect(byIp.clientError).toBeUndefined();
    expect(byIp.serverError).toBeUndefined();
    expect((await roundTrip(server, client, { strict: false })).serverAuthError).toBeUndefined();

    const byName = await roundTrip(server, client, { servername: 'localhost' });
    expect(byName).toMatchObject({ greeted: true, peerCn: 'SAE_A1' });
  });

  it("a 'both' certificate serves as TLS server and as client", async () => {
    const kme = await issueCert(ca, {
      cn: 'KME_A',
      usage: 'both',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
    });
    expect(await roundTrip(kme, kme)).toMatchObject({ greeted: true, peerCn: 'KME_A' });
  });

  it('the server rejects a client certificate from another CA', async () => {
    const rogue = await issueCert(otherCa, { cn: 'SAE_A1', usage: 'client' });
    const out = await roundTrip(server, rogue);
    expect(out.greeted).toBe(false);
    expect(out.serverError).toBeDefined();
    const why = await roundTrip(server, rogue, { strict: false });
    expect(why.serverAuthError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('the client rejects a server certificate from another CA', async () => {
    const rogue = await issueCert(otherCa, {
      cn: 'localhost',
      usage: 'server',
      dnsNames: ['localhost'],
      ipAddresses: ['127.0.0.1'],
    });
    const out = await roundTrip(rogue, client);
    expect(out.greeted).toBe(false);
    expect(out.clientError).toBe('UNABLE_TO_VERIFY_LEAF_SIGNATURE');
  });

  it('expired certificates are rejected on both sides', async () => {
    const notBefore = new Date(Date.now() - 10 * 86_400_000);
    const notAfter = new Date(Date.now() - 86_400_000);
    const oldClient = await issueCert(ca, { cn: 'SAE_A1', usage: 'client', notBefore, notAfter });
    const c = await roundTrip(server, oldClient);
    expect(c.greeted).toBe(false);
    expect(c.serverError).toBeDefined();
    expect((await roundTrip(server, oldClient, { strict: false })).serverAuthError).toBe('CERT_HAS_EXPIRED');

    const oldServer = await issueCert(ca, {
      cn: 'localhost',
      usage: 'server',
      ipAddresses: ['127.0.0.1'],
      notAfter, // notBefore derived
    });
    const s = await roundTrip(oldServer, client);
    expect(s.greeted).toBe(false);
    expect(s.clientError).toBe('CERT_HAS_EXPIRED');
  });

  it('the client rejects a server certificate for another host or without serverAuth', async () => {
    const wrongHost = await issueCert(ca, { cn: 'elsewhere', usage: 'server', dnsNames: ['elsewhere.example'] });
    const a = await roundTrip(wrongHost, client);
    expect(a.greeted).toBe(false);
    expect(a.clientError).toBe('ERR_TLS_CERT_ALTNAME_INVALID');

    const clientOnly = await issueCert(ca, { cn: 'localhost', usage: 'client', ipAddresses: ['127.0.0.1'] });
    const b = await roundTrip(clientOnly, client);
    expect(b.greeted).toBe(false);
    expect(b.clientError).toBe('INVALID_PURPOSE');
  });

  it('node:crypto X509Certificate reads subject, SANs, CA flag, EKU and the issuer link', async () => {
    const caX = new X509Certificate(ca.cert);
    expect(caX.ca).toBe(true);
    expect(caX.subject).toBe('CN=Test CA');
    expect(caX.checkIssued(caX)).toBe(true);

    const x = new X509Certificate(client.cert);
    expect(x.ca).toBe(false);
    expect(x.subject).toBe('CN=SAE_A1');
    expect(x.issuer).toBe('CN=Test CA');
    expect(x.subjectAltName).toBe('URI:urn:sae:SAE_A1');
    expect(x.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2']);
    expect(x.checkIssued(caX)).toBe(true);
    expect(x.verify(caX.publicKey)).toBe(true);
    expect(x.verify(new X509Certificate(otherCa.cert).publicKey)).toBe(false);

    const s = new X509Certificate(server.cert);
    expect(s.subjectAltName).toBe('DNS:localhost, IP Address:127.0.0.1');
    expect(s.checkHost('localhost')).toBe('localhost');
    expect(s.checkIP('127.0.0.1')).toBe('127.0.0.1');
    expect(s.keyUsage).toEqual(['1.3.6.1.5.5.7.3.1']);
  });

  it('keys are PKCS#8 ECDSA P-256 matching their certificate; serials are random', async () => {
    for (const pem of [ca, server, client]) {
      expect(pem.key.startsWith('-----BEGIN PRIVATE KEY-----\n')).toBe(true);
      const k = createPrivateKey(pem.key);
      expect(k.asymmetricKeyType).toBe('ec');
      expect(k.asymmetricKeyDetails?.namedCurve).toBe('prime256v1');
      expect(new X509Certificate(pem.cert).checkPrivateKey(k)).toBe(true);
    }
    const serials = [ca, otherCa, server, client].map((p) => new X509Certificate(p.cert).serialNumber);
    expect(new Set(serials).size).toBe(4);
    for (const s of serials) expect(s).toMatch(/^[0-9A-F]{32}$/i);
  });

  it('validity follows days / notBefore / notAfter and rejects nonsense', async () => {
    const x = new X509Certificate((await issueCert(ca, { cn: 'a', usage: 'client', days: 2 })).cert);
    const span = Date.parse(x.validTo) - Date.parse(x.validFrom);
    expect(span).toBe(2 * 86_400_000);
    await expect(
      issueCert(ca, { cn: 'a', usage: 'client', notBefore: new Date(2000, 0, 2), notAfter: new Date(2000, 0, 1) }),
    ).rejects.toThrow(/notAfter/);
    await expect(issueCert(server, { cn: 'a', usage: 'client' })).rejects.toThrow(/not a CA/);
    await expect(issueCert(ca, { cn: 'a', usage: 'client', ipAddresses: ['localhost'] })).rejects.toThrow(/IP/);
  });
});
