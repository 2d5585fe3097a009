/**
 * The local-only admin listener of a daemon: plain HTTP on a loopback address
 * (the config schema refuses any other host), for a monitoring agent on the
 * board (Prometheus, node_exporter's textfile neighbour, a systemd check).
 *
 *   GET /healthz   liveness: 200 while the event loop runs
 *   GET /readyz    readiness: 200 {"ready":true,...} or 503 {"ready":false,"reason":...}
 *   GET /metrics   Prometheus text exposition
 *
 * Anything else: 404 (405 for another method). Requests whose Host header is
 * not a loopback name are refused (403), so a web page cannot reach the
 * listener through DNS rebinding. Nothing served here is secret, and nothing
 * here touches key material.
 */
import { X509Certificate } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Logger } from './logger.js';

export type Readiness =
  | { ready: true; detail?: Record<string, unknown> }
  | { ready: false; reason: string; detail?: Record<string, unknown> };

export interface AdminHttpOptions {
  host: string;
  /** 0: any free port (tests); the bound one is in the result. */
  port: number;
  logger: Logger;
  readiness: () => Readiness | Promise<Readiness>;
  /** The exposition text and its content type. */
  metrics: () => Promise<{ contentType: string; body: string }>;
}

export interface AdminHttp {
  readonly port: number;
  close(): Promise<void>;
}

/** The hosts the admin listener may bind. */
export const ADMIN_HOSTS = ['127.0.0.1', '::1'] as const;

/** Host names a local client may put in its Host header. */
const LOOPBACK_HOST = /^(?:localhost|127(?:\.\d{1,3}){3}|\[::1\])(?::\d{1,5})?$/i;

/** A slow or stuck probe answers 503 after this rather than hanging the scraper. */
const PROBE_TIMEOUT_MS = 2000;

export async function startAdminHttp(o: AdminHttpOptions): Promise<AdminHttp> {
  if (!(ADMIN_HOSTS as readonly string[]).includes(o.host)) throw new Error(`the admin listener binds loopback only (${ADMIN_HOSTS.join(' or ')}), not ${o.host}`);
  const server = createServer((req, res) => {
    handle(o, req, res).catch((e: unknown) => {
      o.logger.warn({ err: (e as Error).message, path: pathOf(req) }, 'admin listener request failed');
      if (!res.headersSent) send(res, 500, 'application/json', JSON.stringify({ error: 'internal error' }));
      else res.destroy();
    });
  });
  server.requestTimeout = 10_000;
  server.headersTimeout = 5_000;
  server.keepAliveTimeout = 5_000;
  const port = await listen(server, o.port, o.host);
  o.logger.info({ host: o.host, port }, 'admin listener (health, readiness, metrics) ready');
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

async function handle(o: AdminHttpOptions, req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (!LOOPBACK_HOST.test(req.headers.host ?? '')) return send(res, 403, 'application/json', JSON.stringify({ error: 'loopback clients only' }));
  const path = pathOf(req);
  if (path !== '/healthz' && path !== '/readyz' && path !== '/metrics') return send(res, 404, 'application/json', JSON.stringify({ error: 'not found' }));
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.setHeader('allow', 'GET, HEAD');
    return send(res, 405, 'application/json', JSON.stringify({ error: 'method not allowed' }));
  }
  if (path === '/healthz') return send(res, 200, 'application/json', JSON.stringify({ alive: true }));
  if (path === '/readyz') {
    const r = await withTimeout(Promise.resolve().then(o.readiness), PROBE_TIMEOUT_MS).catch(
      (e: unknown): Readiness => ({ ready: false, reason: `readiness check failed: ${(e as Error).message}` }),
    );
    return send(res, r.ready ? 200 : 503, 'application/json', JSON.stringify(r.ready ? { ready: true, ...r.detail } : { ready: false, reason: r.reason, ...r.detail }));
  }
  const m = await o.metrics();
  return send(res, 200, m.contentType, m.body);
}

function pathOf(req: IncomingMessage): string {
  const u = req.url ?? '/';
  const q = u.indexOf('?');
  return q === -1 ? u : u.slice(0, q);
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body) });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}

/** Reject after `ms` (the timer does not keep the process alive). */
export function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    t.unref();
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e: unknown) => (clearTimeout(t), reject(e instanceof Error ? e : new Error(String(e)))),
    );
  });
}

function listen(server: Server, port: number, host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const fail = (e: Error) => reject(new Error(`admin listener cannot listen on ${host}:${port}: ${e.message}`));
    server.once('error', fail);
    server.listen(port, host, () => {
      server.off('error', fail);
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

/** When the (first) certificate in `pem` expires, in Unix ms; undefined if it cannot be read. */
export function certificateNotAfter(pem: Buffer | string | Array<Buffer | string> | undefined): number | undefined {
  const first = Array.isArray(pem) ? pem[0] : pem;
  if (first === undefined) return undefined;
  try {
    const t = Date.parse(new X509Certificate(first).validTo);
    return Number.isFinite(t) ? t : undefined;
  } catch {
    return undefined;
  }
}

export const DAY_MS = 86_400_000;
