/**
 * The KME-to-KME listener: NDJSON over mutual TLS on its own port. The client
 * certificate is required and verified against the CA, and its subject CN
 * must be the peer KME of a configured link; anything else (an SAE
 * certificate, this KME's own) is refused and the connection closed. Each
 * request names its link and may only address a link to the certificate's KME.
 */
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { KmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { serveConnection } from '../ipc/ndjson-server.js';
import type { LinkSync } from './link-sync.js';
import { MAX_PEER_LINE_BYTES, type ReservationsRequest } from './peer-protocol.js';

export interface PeerServerOptions {
  host: string;
  port: number;
  tls: { cert: Buffer; key: Buffer; ca: Buffer };
  /** Link syncs by link id. */
  links: Map<string, LinkSync>;
  logger: Logger;
  /** The peer side of the link self-test (selftest.ts), by link id. */
  onSelftest?: (linkId: string, args: Record<string, unknown>) => Promise<unknown>;
}

export interface PeerServer {
  readonly server: Server;
  readonly port: number;
  /** Stop listening and drop every connection. */
  close(): Promise<void>;
}

export function startPeerServer(opts: PeerServerOptions): Promise<PeerServer> {
  const { links, logger } = opts;
  const conns = new Set<TLSSocket>();
  const server = createServer(
    { cert: opts.tls.cert, key: opts.tls.key, ca: opts.tls.ca, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' },
    (sock: TLSSocket) => {
      conns.add(sock);
      sock.on('close', () => conns.delete(sock));
      sock.setNoDelay(true);
      sock.on('error', (err) => logger.debug({ err: err.message }, 'peer connection error'));
      const cn = sock.getPeerCertificate()?.subject?.CN;
      if (typeof cn !== 'string' || ![...links.values()].some((l) => l.peerKmeId === cn)) {
        logger.warn({ cn, remote: sock.remoteAddress }, 'refused a KME-to-KME connection: certificate is not a peer KME');
        sock.end(JSON.stringify({ id: 0, ok: false, error: { code: 'UNAUTHORIZED', message: 'certificate is not a peer KME' } }) + '\n');
        return;
      }
      serveConnection(sock, (op, args) => dispatch(links, cn, op, args, opts.onSelftest), logger, MAX_PEER_LINE_BYTES);
    },
  );
  server.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'KME-to-KME handshake refused'));
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port, opts.host, () => {
      server.off('error', reject);
      resolve({
        server,
        port: (server.address() as { port: number }).port,
        close: () =>
          new Promise<void>((r) => {
            server.close(() => r());
            for (const c of conns) c.destroy();
          }),
      });
    });
  });
}

async function dispatch(
  links: Map<string, LinkSync>, cn: string, op: string, raw: unknown, onSelftest?: PeerServerOptions['onSelftest'],
): Promise<unknown> {
  const args = (raw ?? {}) as Record<string, unknown>;
  const link = typeof args.link === 'string' ? links.get(args.link) : undefined;
  if (!link) throw new KmeError('BAD_REQUEST', 'unknown link');
  if (link.peerKmeId !== cn) throw new KmeError('UNAUTHORIZED', 'certificate is not the peer KME of this link');
  const rids = Array.isArray(args.rids) ? args.rids.filter((r): r is string => typeof r === 'string') : [];
  switch (op) {
    case 'hello':
      return link.onHello(args.erasable_below);
    case 'reservations':
      if (!Array.isArray(args.reservations)) throw new KmeError('BAD_REQUEST', 'reservations must be an array');
      return link.onReservations(args as unknown as ReservationsRequest);
    case 'void':
      return link.onVoid(rids);
    case 'query':
      return link.onQuery(rids);
    case 'alarm':
      if (typeof args.first !== 'number' || typeof args.last !== 'number') throw new KmeError('BAD_REQUEST', 'alarm needs numbers first and last');
      return link.applyAlarm(args.first, args.last, String(args.reason ?? 'peer alarm'), 'peer');
    case 'selftest':
      if (!onSelftest) throw new KmeError('BAD_REQUEST', `unknown operation ${op}`);
      return onSelftest(link.linkId, args);
    default:
      throw new KmeError('BAD_REQUEST', `unknown operation ${op}`);
  }
}
