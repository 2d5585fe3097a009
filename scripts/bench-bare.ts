/**
 * Bare HTTPS baseline for the benchmark: the TLS settings of kme-api (same
 * etsiServerOptions: mutual TLS, client certificate required and verified,
 * TLS 1.2 minimum; keep-alive; renegotiation disabled) and no work at all:
 * every request gets an enc_keys-shaped answer with a fresh UUID and 32
 * random bytes.
 *
 *   node dist/scripts/bench-bare.js '{"host":"127.0.0.1","port":0,"cert":"…","key":"…","ca":"…"}'
 *
 * Prints one line `{"port":N}` once listening; stops on SIGTERM/SIGINT.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { etsiServerOptions } from '../src/api/mtls.js';

interface BareArgs {
  host: string;
  port: number;
  cert: string;
  key: string;
  ca: string;
}

const KEEP_ALIVE_MS = 60_000; // as kme-api

function main(): void {
  const args = JSON.parse(process.argv[2] ?? '') as BareArgs;
  const tls = { cert: readFileSync(args.cert), key: readFileSync(args.key), ca: readFileSync(args.ca) };
  const server = createServer({ ...etsiServerOptions(tls), keepAlive: true }, (req, res) => {
    // Drain any request body, then answer.
    req.resume();
    const body = JSON.stringify({ keys: [{ key_ID: randomUUID(), key: randomBytes(32).toString('base64') }] });
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
    res.end(body);
  });
  server.keepAliveTimeout = KEEP_ALIVE_MS;
  server.headersTimeout = KEEP_ALIVE_MS + 5_000;
  server.on('secureConnection', (s: TLSSocket) => s.disableRenegotiation());
  server.on('tlsClientError', (err) => process.stderr.write(`bench-bare: TLS handshake refused: ${err.message}\n`));
  server.once('error', (err) => {
    process.stderr.write(`bench-bare: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(args.port, args.host, () => {
    process.stdout.write(JSON.stringify({ port: (server.address() as AddressInfo).port }) + '\n');
  });
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 2000).unref();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main();
