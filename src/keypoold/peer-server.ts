/**
 * The KME-to-KME listener: HTTPS on its own port, client certificate required,
 * verified against the CA, and its subject CN must be the peer KME of the link
 * named in the path. SAE certificates are refused here.
 */
import { createServer, type Server } from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import { isKmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { LinkSync } from './link-sync.js';
import { MAX_PEER_BODY_BYTES, type ReservationsRequest } from './peer-protocol.js';

export interface PeerServerOptions {
  host: string;
  port: number;
  tls: { cert: Buffer; key: Buffer; ca: Buffer };
  links: Map<string, LinkSync>;
  logger: Logger;
}

const ROUTE = /^\/peer\/v1\/links\/([^/]+)\/(hello|reservations|void|query)$/;

export function startPeerServer(opts: PeerServerOptions): Promise<Server> {
  const server = createServer(
    { cert: opts.tls.cert, key: opts.tls.key, ca: opts.tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
    (req, res) => {
      handle(req, res, opts).catch((e) => {
        opts.logger.error({ err: (e as Error).message }, 'peer request failed');
        send(res, 503, { message: 'internal error' });
      });
    },
  );
  server.keepAliveTimeout = 60_000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve(server);
    });
  });
}

async function handle(req: IncomingMessage, res: ServerResponse, opts: PeerServerOptions): Promise<void> {
  const m = ROUTE.exec(req.url ?? '');
  const link = m ? opts.links.get(decodeURIComponent(m[1]!)) : undefined;
  if (!m || !link) return send(res, 404, { message: 'not found' });
  const sock = req.socket as TLSSocket;
  const cn = sock.authorized ? sock.getPeerCertificate()?.subject?.CN : undefined;
  if (cn !== link.peerKmeId) {
    opts.logger.warn({ link: link.linkId, cn }, 'refused KME-to-KME request from a certificate that is not the peer KME');
    return send(res, 403, { message: 'certificate is not the peer KME of this link' });
  }
  const op = m[2]!;
  if (op === 'hello') return req.method === 'GET' ? send(res, 200, link.onHello()) : send(res, 405, { message: 'method not allowed' });
  if (req.method !== 'POST') return send(res, 405, { message: 'method not allowed' });
  let body: unknown;
  try {
    body = JSON.parse(await readBody(req));
  } catch (e) {
    return send(res, 400, { message: (e as Error).message === 'too large' ? 'body too large' : 'malformed JSON' });
  }
  try {
    const b = body as Record<string, unknown>;
    if (op === 'reservations') {
      if (!Array.isArray(b.reservations)) return send(res, 400, { message: 'reservations must be an array' });
      return send(res, 200, await link.onReservations(b as unknown as ReservationsRequest));
    }
    const rids = Array.isArray(b.rids) ? b.rids.filter((r): r is string => typeof r === 'string') : [];
    if (op === 'void') return send(res, 200, await link.onVoid(rids));
    return send(res, 200, link.onQuery(rids));
  } catch (e) {
    if (isKmeError(e)) return send(res, e.code === 'UNAUTHORIZED' ? 403 : e.code === 'BAD_REQUEST' ? 400 : 503, { message: e.message });
    throw e;
  }
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > MAX_PEER_BODY_BYTES) {
        req.destroy();
        reject(new Error('too large'));
      } else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}
