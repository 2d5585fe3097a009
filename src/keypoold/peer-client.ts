/**
 * HTTPS client to the peer keypoold of one link, authenticated with this
 * KME's certificate; the peer's certificate must chain to the configured CA
 * and name the expected peer KME ID (subject CN).
 */
import { Agent, request } from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { checkServerIdentity } from 'node:tls';
import { KmeError } from '../common/errors.js';

export interface PeerClientOptions {
  baseUrl: string;
  linkId: string;
  peerKmeId: string;
  tls: { cert: Buffer; key: Buffer; ca: Buffer };
  timeoutMs: number;
}

export class PeerClient {
  readonly #agent: Agent;
  readonly #url: URL;
  readonly #opts: PeerClientOptions;

  constructor(opts: PeerClientOptions) {
    this.#opts = opts;
    this.#url = new URL(opts.baseUrl);
    this.#agent = new Agent({
      keepAlive: true,
      maxSockets: 4,
      cert: opts.tls.cert,
      key: opts.tls.key,
      ca: opts.tls.ca,
      minVersion: 'TLSv1.2',
      checkServerIdentity: (host: string, cert: PeerCertificate) => {
        const cn = cert.subject?.CN;
        if (cn !== opts.peerKmeId) return new Error(`peer certificate names ${String(cn)}, expected ${opts.peerKmeId}`);
        return checkServerIdentity(host, cert);
      },
    });
  }

  get(path: string): Promise<unknown> {
    return this.#send('GET', path, undefined);
  }

  post(path: string, body: unknown): Promise<unknown> {
    return this.#send('POST', path, JSON.stringify(body));
  }

  #send(method: string, path: string, body: string | undefined): Promise<unknown> {
    const full = `/peer/v1/links/${encodeURIComponent(this.#opts.linkId)}/${path}`;
    return new Promise((resolve, reject) => {
      const fail = (why: string, cause?: unknown) =>
        reject(new KmeError('UNAVAILABLE', `peer KME ${this.#opts.peerKmeId} unreachable: ${why}`, undefined, { cause }));
      const req = request(
        {
          agent: this.#agent,
          protocol: this.#url.protocol,
          hostname: this.#url.hostname,
          port: this.#url.port,
          method,
          path: full,
          timeout: this.#opts.timeoutMs,
          headers: body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', (e) => fail('response aborted', e));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            if (res.statusCode !== 200) return fail(`HTTP ${res.statusCode}: ${text.slice(0, 200)}`);
            try {
              resolve(JSON.parse(text));
            } catch (e) {
              fail('malformed response', e);
            }
          });
        },
      );
      const timer = setTimeout(() => {
        req.destroy(new Error('timeout'));
      }, this.#opts.timeoutMs);
      req.on('close', () => clearTimeout(timer));
      req.on('timeout', () => req.destroy(new Error('timeout')));
      req.on('error', (e) => fail(e.message, e));
      req.end(body);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}
