/**
 * Real processes again, with a short key lifetime: unfetched keys expire and
 * are erased on both nodes; the KME-to-KME port takes only the peer KME's
 * certificate and the SAE port takes no KME certificate.
 */
import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { issueCert } from '../../src/pki/x509.js';
import { httpsCall, useDemoNet } from '../helpers/demo-net.js';

const demoNet = useDemoNet({
  patchConfig: (cfg) => {
    cfg.key_ttl_seconds = 2;
    cfg.expiry_grace_seconds = 0;
  },
}, 10);

function keyRows(kmeId: string): number {
  const db = new Database(join(demoNet().path(demoNet().node(kmeId).state_dir), 'keystore.sqlite'), { readonly: true, fileMustExist: true });
  try {
    return (db.prepare('SELECT count(*) AS n FROM keys').get() as { n: number }).n;
  } finally {
    db.close();
  }
}

describe('key expiry', () => {
  it('erases unfetched keys on both nodes once they expire, and then refuses them', async () => {
    const remote = await demoNet().sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', { number: 3 });
    const local = await demoNet().sae('SAE_A1').post('/api/v1/keys/SAE_A2/enc_keys', { number: 2 });
    expect(remote.status).toBe(200);
    expect(local.status).toBe(200);
    expect(keyRows('KME_B')).toBeGreaterThanOrEqual(3);
    expect(keyRows('KME_A')).toBeGreaterThanOrEqual(2);
    await new Promise((r) => setTimeout(r, 4000));
    expect(keyRows('KME_A')).toBe(0);
    expect(keyRows('KME_B')).toBe(0);
    const late = await demoNet().sae('SAE_B1').post('/api/v1/keys/SAE_A1/dec_keys', {
      key_IDs: remote.body.keys.map((k: { key_ID: string }) => ({ key_ID: k.key_ID })),
    });
    expect(late.status).toBe(400);
    expect(late.body.message).toBe('one or more keys specified are not found on KME');
    const lateLocal = await demoNet().sae('SAE_A2').get(`/api/v1/keys/SAE_A1/dec_keys?key_ID=${local.body.keys[0].key_ID}`);
    expect(lateLocal.status).toBe(400);
  });
});

/** One NDJSON request on a fresh TLS connection to a KME-to-KME listener; the first line that comes back. */
function peerCall(url: string, tlsFiles: { cert?: Buffer; key?: Buffer; ca: Buffer }, op: string, args: object): Promise<any> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = tlsConnect({ host: u.hostname, port: Number(u.port), ...tlsFiles, checkServerIdentity: () => undefined }, () => {
      sock.write(JSON.stringify({ id: 1, op, args }) + '\n');
    });
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      const nl = buf.indexOf('\n');
      if (nl >= 0) {
        sock.destroy();
        resolve(JSON.parse(buf.slice(0, nl)));
      }
    });
    sock.on('error', reject);
    sock.on('close', () => reject(new Error('closed without an answer')));
  });
}

describe('KME-to-KME channel', () => {
  const ca = () => readFileSync(demoNet().path(demoNet().demo.ca_cert));
  const files = (cert: string, key: string) => ({ cert: readFileSync(demoNet().path(cert)), key: readFileSync(demoNet().path(key)), ca: ca() });
  const urlOf = (kmeId: string) => demoNet().node(kmeId).peer_url;

  it('answers the peer KME certificate', async () => {
    const b = demoNet().node('KME_B');
    const r = await peerCall(urlOf('KME_A'), files(b.kme_cert, b.kme_key), 'hello', { link: 'KME_A-KME_B' });
    expect(r).toMatchObject({ id: 1, ok: true, result: { kme_id: 'KME_A', link: 'KME_A-KME_B' } });
  });

  it('refuses an SAE certificate and its own KME certificate', async () => {
    const sae = demoNet().node('KME_B').saes[0]!;
    const r = await peerCall(urlOf('KME_A'), files(sae.cert, sae.key), 'hello', { link: 'KME_A-KME_B' });
    expect(r).toMatchObject({ ok: false, error: { code: 'UNAUTHORIZED' } });
    const a = demoNet().node('KME_A');
    const self = await peerCall(urlOf('KME_A'), files(a.kme_cert, a.kme_key), 'hello', { link: 'KME_A-KME_B' });
    expect(self).toMatchObject({ ok: false, error: { code: 'UNAUTHORIZED' } });
  });

  it('refuses a client without a certificate at the handshake', async () => {
    await expect(peerCall(urlOf('KME_A'), { ca: ca() }, 'hello', { link: 'KME_A-KME_B' })).rejects.toThrow();
  });

  it('answers garbage and unknown links with an error, and keeps serving', async () => {
    const b = demoNet().node('KME_B');
    const bad = await peerCall(urlOf('KME_A'), files(b.kme_cert, b.kme_key), 'reservations', { link: 'nope' });
    expect(bad).toMatchObject({ ok: false, error: { code: 'BAD_REQUEST' } });
    const junk = await peerCall(urlOf('KME_A'), files(b.kme_cert, b.kme_key), 'reservations', { link: 'KME_A-KME_B', reservations: [{ rid: 1 }, null] });
    expect(junk.ok).toBe(false);
    const ok = await peerCall(urlOf('KME_A'), files(b.kme_cert, b.kme_key), 'hello', { link: 'KME_A-KME_B' });
    expect(ok.ok).toBe(true);
  });

  it('the SAE port answers a KME certificate with 401', async () => {
    const b = demoNet().node('KME_B');
    const r = await httpsCall(`${demoNet().node('KME_A').etsi_url}/api/v1/keys/SAE_B1/status`, 'GET', files(b.kme_cert, b.kme_key));
    expect(r.status).toBe(401);
    expect(typeof r.body.message).toBe('string');
  });
});

describe('SAE registration', () => {
  const statusAtA = (tls: { cert: Buffer | string; key: Buffer | string }) =>
    httpsCall(`${demoNet().node('KME_A').etsi_url}/api/v1/keys/SAE_B2/status`, 'GET', {
      cert: Buffer.from(tls.cert), key: Buffer.from(tls.key), ca: readFileSync(demoNet().path(demoNet().demo.ca_cert)),
    });

  it('accepts a certificate reissued by the CA for a registered SAE', async () => {
    const ca = { cert: readFileSync(demoNet().path(demoNet().demo.ca_cert), 'utf8'), key: readFileSync(demoNet().path(demoNet().demo.ca_key), 'utf8') };
    const r = await statusAtA(await issueCert(ca, { cn: 'SAE_A3', usage: 'client' }));
    expect(r.status).toBe(200);
    expect(r.body.master_SAE_ID).toBe('SAE_A3');
  });

  it('answers 401 to a valid certificate of an SAE that is not registered, or registered at the other KME', async () => {
    const ca = { cert: readFileSync(demoNet().path(demoNet().demo.ca_cert), 'utf8'), key: readFileSync(demoNet().path(demoNet().demo.ca_key), 'utf8') };
    const strangerPem = await issueCert(ca, { cn: 'SAE_X9', usage: 'client' });
    const stranger = await statusAtA(strangerPem);
    expect(stranger.status).toBe(401);
    // a malformed request from an unregistered SAE still hears 401, not what is wrong with it
    const malformed = await httpsCall(`${demoNet().node('KME_A').etsi_url}/api/v1/keys/SAE_B1/enc_keys?size=7`, 'GET', {
      cert: Buffer.from(strangerPem.cert), key: Buffer.from(strangerPem.key), ca: readFileSync(demoNet().path(demoNet().demo.ca_cert)),
    });
    expect(malformed.status).toBe(401);
    const b1 = demoNet().node('KME_B').saes.find((s) => s.sae_id === 'SAE_B1')!;
    const elsewhere = await statusAtA({ cert: readFileSync(demoNet().path(b1.cert)), key: readFileSync(demoNet().path(b1.key)) });
    expect(elsewhere.status).toBe(401);
  });
});
