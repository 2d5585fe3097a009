/**
 * SAE identity from the verified TLS client certificate, and nothing else
 * (never the path, the body or a header). The handshake itself refuses
 * missing, untrusted and expired certificates (see etsiServerOptions); this
 * module only maps an accepted certificate to an SAE ID.
 */
import type { Context } from 'hono';
import type { SecureContextOptions, TLSSocket } from 'node:tls';
import type { ServerOptions } from 'node:https';
import type { IdentityConfig } from '../common/config.js';
import { isValidEntityId } from '../common/ids.js';

/** What we need of a TLS socket (a real TLSSocket, or a fake in unit tests). */
export type PeerSocket = Pick<TLSSocket, 'authorized' | 'getPeerCertificate'>;

type PeerCert = ReturnType<TLSSocket['getPeerCertificate']>;

/** The SAE ID named by a certificate under `cfg`, or null. */
export function saeIdFromCert(cert: PeerCert, cfg: IdentityConfig): string | null {
  if (!cert || Object.keys(cert).length === 0) return null;
  if (cfg.source === 'subject_cn') {
    const cn: unknown = cert.subject?.CN;
    return isValidEntityId(cn) ? cn : null; // several CNs arrive as an array: ambiguous, refused
  }
  for (const uri of sanUris(cert.subjectaltname)) {
    if (uri.startsWith(cfg.prefix)) {
      const id = uri.slice(cfg.prefix.length);
      return isValidEntityId(id) ? id : null;
    }
  }
  return null;
}

/**
 * The identity reader for createEtsiApp. The result is cached per TLS socket:
 * the certificate cannot change during a connection because renegotiation is
 * disabled on every accepted socket (see main.ts).
 */
export function identityFromSocket(cfg: IdentityConfig): (c: Context) => string | null {
  const cache = new WeakMap<object, string | null>();
  return function identityOf(c: Context): string | null {
    const sock = (c.env as { incoming?: { socket?: PeerSocket } } | undefined)?.incoming?.socket;
    if (!sock || sock.authorized !== true || typeof sock.getPeerCertificate !== 'function') return null;
    const hit = cache.get(sock);
    if (hit !== undefined) return hit;
    const id = saeIdFromCert(sock.getPeerCertificate(false), cfg);
    cache.set(sock, id);
    return id;
  };
}

/**
 * URI entries of Node's `subjectaltname` string, e.g. `DNS:a, URI:spiffe://x/y`.
 * Node JSON-quotes a value that contains a comma, quote or other special
 * character (`URI:"a,b"`), so entries are split with that rule.
 */
export function sanUris(san: string | undefined): string[] {
  const out: string[] = [];
  if (!san) return out;
  let i = 0;
  while (i < san.length) {
    const colon = san.indexOf(':', i);
    if (colon === -1) break;
    const type = san.slice(i, colon);
    let value: string;
    let next: number;
    if (san[colon + 1] === '"') {
      let j = colon + 2;
      while (j < san.length && san[j] !== '"') j += san[j] === '\\' ? 2 : 1;
      try {
        value = JSON.parse(san.slice(colon + 1, j + 1)) as string;
      } catch {
        return out; // unparsable: stop, never guess
      }
      next = san.indexOf(', ', j + 1);
    } else {
      next = san.indexOf(', ', colon + 1);
      value = san.slice(colon + 1, next === -1 ? san.length : next);
    }
    if (type === 'URI') out.push(value);
    if (next === -1) break;
    i = next + 2;
  }
  return out;
}

export interface TlsMaterial {
  key: SecureContextOptions['key'];
  cert: SecureContextOptions['cert'];
  ca: SecureContextOptions['ca'];
}

/**
 * https.createServer options for the ETSI API: mutual TLS, client certificate
 * required and verified against `ca` during the handshake, TLS 1.2 minimum
 * (1.3 is offered by default).
 */
export function etsiServerOptions(tls: TlsMaterial): ServerOptions {
  return {
    key: tls.key,
    cert: tls.cert,
    ca: tls.ca,
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: 'TLSv1.2',
  };
}
