/** A minimal HTTPS client for tests against a real kme-api listener. */
import { request, type Agent } from 'node:https';
import type { SecureVersion } from 'node:tls';

export interface TlsRequest {
  port: number;
  path: string;
  method?: string;
  headers?: Record<string, string>;
  body?: string | Buffer;
  /** Trust anchor for the server certificate. */
  ca: string;
  /** Client certificate and key; omit for a client without a certificate. */
  cert?: string;
  key?: string;
  agent?: Agent;
  minVersion?: SecureVersion;
  maxVersion?: SecureVersion;
  ciphers?: string;
}

export interface TlsResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
  json(): unknown;
}

export function httpsRequest(r: TlsRequest): Promise<TlsResponse> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: r.port,
        path: r.path,
        method: r.method ?? 'GET',
        headers: r.headers,
        ca: r.ca,
        cert: r.cert,
        key: r.key,
        agent: r.agent ?? false,
        servername: 'localhost',
        minVersion: r.minVersion,
        maxVersion: r.maxVersion,
        ciphers: r.ciphers,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('error', reject);
        res.on('end', () => {
          const body = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body, json: () => JSON.parse(body) as unknown });
        });
      },
    );
    req.on('error', reject);
    if (r.body !== undefined) req.write(r.body);
    req.end();
  });
}
