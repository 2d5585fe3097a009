/**
 * Client of the KME-to-KME channel of one link: one persistent mutual-TLS
 * connection to the peer keypoold carrying NDJSON requests in order (see
 * peer-protocol.ts). This KME authenticates with its KME certificate; the
 * peer's must chain to the configured CA and name the expected peer KME ID.
 */
import { connect, checkServerIdentity, type PeerCertificate } from 'node:tls';
import { KmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { NdjsonClient } from '../ipc/ndjson-client.js';
import { MAX_PEER_LINE_BYTES, type PeerOp } from './peer-protocol.js';

export interface PeerClientOptions {
  /** `kme://host:port` or `https://host:port` of the peer's KME-to-KME listener. */
  baseUrl: string;
  linkId: string;
  peerKmeId: string;
  tls: { cert: Buffer; key: Buffer; ca: Buffer };
  timeoutMs: number;
  logger: Logger;
}

export class PeerClient {
  readonly #c: NdjsonClient;
  readonly #linkId: string;
  #onConnection: ((up: boolean) => void) | undefined;

  constructor(opts: PeerClientOptions) {
    const url = new URL(opts.baseUrl);
    this.#linkId = opts.linkId;
    const unavailable = () => new KmeError('UNAVAILABLE', `peer KME ${opts.peerKmeId} unreachable`);
    this.#c = new NdjsonClient({
      connect: () =>
        connect({
          host: url.hostname,
          port: Number(url.port),
          servername: url.hostname === '127.0.0.1' || url.hostname.includes(':') ? undefined : url.hostname,
          cert: opts.tls.cert,
          key: opts.tls.key,
          ca: opts.tls.ca,
          minVersion: 'TLSv1.2',
          checkServerIdentity: (host: string, cert: PeerCertificate) => {
            const cn = cert.subject?.CN;
            if (cn !== opts.peerKmeId) return new Error(`peer certificate names ${String(cn)}, expected ${opts.peerKmeId}`);
            return checkServerIdentity(host, cert);
          },
        }).setNoDelay(true),
      readyEvent: 'secureConnect',
      describe: `peer ${opts.peerKmeId} at ${url.host}`,
      unavailable,
      logger: opts.logger,
      timeoutMs: opts.timeoutMs,
      backoff: { initialMs: 200, maxMs: 5000 },
      maxLineBytes: MAX_PEER_LINE_BYTES,
      onConnectionChange: (up) => this.#onConnection?.(up),
    });
  }

  /** Be told at once when the channel to the peer comes up or is lost. */
  onConnectionChange(cb: (up: boolean) => void): void {
    this.#onConnection = cb;
  }

  /** One request on the link's channel; requests reach the peer in the order they are made. */
  call(op: PeerOp, args: Record<string, unknown>, now = false): Promise<unknown> {
    return this.#c.request(op, { link: this.#linkId, ...args }, now);
  }

  close(): Promise<void> {
    return this.#c.close();
  }
}
