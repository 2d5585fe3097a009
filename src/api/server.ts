/**
 * The HTTPS listener of kme-api: @hono/node-server over node:https with the
 * mutual-TLS options of etsiServerOptions. Shared by main.ts and the tests.
 */
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { TLSSocket } from 'node:tls';
import { createAdaptorServer } from '@hono/node-server';
import type { Hono } from 'hono';
import type { Logger } from '../common/logger.js';
import { etsiServerOptions, type TlsMaterial } from './mtls.js';

const KEEP_ALIVE_MS = 60_000;

export function createEtsiServer(app: Hono, tls: TlsMaterial, logger: Logger): HttpsServer {
  const server = createAdaptorServer({
    fetch: app.fetch,
    createServer: createHttpsServer,
    serverOptions: { ...etsiServerOptions(tls), keepAlive: true },
  }) as HttpsServer;
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  server.headersTimeout = KEEP_ALIVE_MS + 5_000;
  // identityFromSocket caches the SAE ID per connection: forbid renegotiation,
  // which could otherwise swap the client certificate mid-connection.
  server.on('secureConnection', (s: TLSSocket) => s.disableRenegotiation());
  server.on('tlsClientError', (err) => logger.debug({ err: err.message }, 'tls handshake refused'));
  return server;
}

/** Listen and resolve with the bound port. */
export function listen(server: HttpsServer, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const addr = server.address();
      resolve(typeof addr === 'object' && addr ? addr.port : port);
    });
  });
}
