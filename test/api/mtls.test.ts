import { describe, expect, it } from 'vitest';
import { Hono } from 'hono';
import { etsiServerOptions, identityFromSocket, sanUris, saeIdFromCert, type PeerSocket } from '../../src/api/mtls.js';

type Cert = ReturnType<PeerSocket['getPeerCertificate']>;
const cert = (c: Partial<{ subject: Record<string, unknown>; subjectaltname: string }>) => c as unknown as Cert;

describe('saeIdFromCert', () => {
  it('subject_cn: the CN, if it is a valid entity ID', () => {
    const cfg = { source: 'subject_cn' } as const;
    expect(saeIdFromCert(cert({ subject: { CN: 'SAE_A', O: 'x' } }), cfg)).toBe('SAE_A');
    expect(saeIdFromCert(cert({ subject: { CN: ['SAE_A', 'SAE_B'] } }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({ subject: { CN: ' SAE_A' } }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({ subject: { O: 'x' } }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({}), cfg)).toBeNull();
  });

  it('san_uri: the rest of the first URI with the prefix', () => {
    const cfg = { source: 'san_uri', prefix: 'urn:kme:sae:' } as const;
    const c = cert({ subject: { CN: 'ignored' }, subjectaltname: 'DNS:sae.example, URI:https://x/y, URI:urn:kme:sae:SAE_7, URI:urn:kme:sae:SAE_8' });
    expect(saeIdFromCert(c, cfg)).toBe('SAE_7');
    expect(saeIdFromCert(cert({ subjectaltname: 'DNS:urn:kme:sae:SAE_7' }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({ subjectaltname: 'URI:urn:kme:sae:' }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({ subject: { CN: 'SAE_A' } }), cfg)).toBeNull();
    expect(saeIdFromCert(cert({ subjectaltname: 'URI:spiffe://a/b' }), { source: 'san_uri', prefix: '' })).toBe('spiffe://a/b');
  });
});

describe('sanUris', () => {
  it('splits Node subjectaltname strings, including JSON-quoted values', () => {
    expect(sanUris('URI:a, DNS:b, URI:c')).toEqual(['a', 'c']);
    expect(sanUris('URI:"urn:x,DNS:evil", URI:urn:y')).toEqual(['urn:x,DNS:evil', 'urn:y']);
    expect(sanUris('DNS:"a\\"b", URI:z')).toEqual(['z']);
    expect(sanUris(undefined)).toEqual([]);
    expect(sanUris('')).toEqual([]);
  });
});

describe('identityFromSocket', () => {
  const read = identityFromSocket({ source: 'subject_cn' });
  const app = new Hono();
  app.get('/', (c) => c.json({ id: read(c) }));
  const ask = async (socket: unknown) => ((await (await app.request('/', {}, { incoming: { socket } })).json()) as { id: unknown }).id;

  it('needs an authorized TLS socket', async () => {
    let calls = 0;
    const sock = (authorized: boolean) => ({
      authorized,
      getPeerCertificate: () => {
        calls++;
        return { subject: { CN: 'SAE_A' } };
      },
    });
    expect(await ask(sock(true))).toBe('SAE_A');
    expect(await ask(sock(false))).toBeNull();
    expect(await ask(undefined)).toBeNull();
    expect(await ask({ authorized: true })).toBeNull();
    expect(calls).toBe(1);
  });

  it('reads the certificate once per connection', async () => {
    let calls = 0;
    const s = { authorized: true, getPeerCertificate: () => (calls++, { subject: { CN: 'SAE_B' } }) };
    expect(await ask(s)).toBe('SAE_B');
    expect(await ask(s)).toBe('SAE_B');
    expect(calls).toBe(1);
  });
});

describe('etsiServerOptions', () => {
  it('requires and verifies client certificates, TLS 1.2 minimum', () => {
    expect(etsiServerOptions({ key: 'k', cert: 'c', ca: 'a' })).toEqual({
      key: 'k',
      cert: 'c',
      ca: 'a',
      requestCert: true,
      rejectUnauthorized: true,
      minVersion: 'TLSv1.2',
    });
  });
});
