/**
 * kme-api's Prometheus metrics and readiness, for the local admin listener
 * (src/common/admin-http.ts).
 *
 * The middleware is the only per-request work: one counter increment and one
 * histogram observation (plus an in-flight count). Requests are labelled by
 * ETSI endpoint (status, enc_keys, dec_keys, other), never by path: the path
 * carries an SAE ID.
 */
import type { MiddlewareHandler } from 'hono';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { certificateNotAfter, DAY_MS, startAdminHttp, withTimeout, type AdminHttp, type Readiness } from '../common/admin-http.js';
import type { MetricsListenerConfig } from '../common/config.js';
import type { Logger } from '../common/logger.js';
import type { PoolClient } from '../ipc/pool-protocol.js';

export type Endpoint = 'status' | 'enc_keys' | 'dec_keys' | 'other';
const ENDPOINTS: readonly Endpoint[] = ['status', 'enc_keys', 'dec_keys', 'other'];

const KEYS_PREFIX = '/api/v1/keys/';

/** The ETSI endpoint a path names (`/api/v1/keys/{SAE_ID}/{endpoint}`), else 'other'. */
export function endpointOf(path: string): Endpoint {
  if (!path.startsWith(KEYS_PREFIX)) return 'other';
  const slash = path.indexOf('/', KEYS_PREFIX.length);
  if (slash === -1 || path.indexOf('/', slash + 1) !== -1) return 'other';
  const last = path.slice(slash + 1);
  return last === 'status' || last === 'enc_keys' || last === 'dec_keys' ? last : 'other';
}

/** Request latency buckets, seconds (the ETSI path is 1-30 ms on the target board). */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** How long readiness and the keypoold gauge wait for keypoold's `health`. */
const KEYPOOLD_PROBE_MS = 1000;

export interface ApiMetricsDeps {
  kmeId: string;
  /** The ETSI server certificate (PEM; the first of a list). */
  serverCertPem: Buffer | string | Array<Buffer | string> | undefined;
  pool: PoolClient;
  now?: () => number;
}

export interface ApiMetrics {
  registry: Registry;
  /** Register first on the ETSI app (before the routes). */
  middleware: MiddlewareHandler;
  scrape(): Promise<{ contentType: string; body: string }>;
}

export function apiMetrics(d: ApiMetricsDeps): ApiMetrics {
  const registry = new Registry();
  registry.setDefaultLabels({ kme_id: d.kmeId });
  collectDefaultMetrics({ register: registry });
  const now = d.now ?? Date.now;
  const certNotAfter = certificateNotAfter(d.serverCertPem);

  const requests = new Counter({
    name: 'kme_api_requests_total',
    help: 'ETSI API requests answered, by endpoint and HTTP status code.',
    labelNames: ['endpoint', 'code'],
    registers: [registry],
  });
  const latency = new Histogram({
    name: 'kme_api_request_duration_seconds',
    help: 'Time from routing to the answer being ready, by endpoint.',
    labelNames: ['endpoint'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  let inFlight = 0;
  new Gauge({
    name: 'kme_api_requests_in_flight',
    help: 'ETSI API requests being handled now.',
    registers: [registry],
    collect() {
      this.set(inFlight);
    },
  });
  const keypooldUp = new Gauge({ name: 'kme_api_keypoold_up', help: '1 while keypoold answers on its socket.', registers: [registry] });
  const certDays = new Gauge({ name: 'kme_certificate_expiry_days', help: 'Days until the certificate expires (negative: expired).', labelNames: ['cert'], registers: [registry] });

  // Children resolved once, so a request costs a map lookup, not a label hash.
  const observe = new Map(ENDPOINTS.map((e) => [e, latency.labels(e)] as const));
  const counted = new Map<string, Counter.Internal>();
  const count = (endpoint: Endpoint, code: number) => {
    const k = `${endpoint} ${code}`;
    let c = counted.get(k);
    if (!c) counted.set(k, (c = requests.labels(endpoint, String(code))));
    c.inc();
  };

  const middleware: MiddlewareHandler = async (c, next) => {
    const start = performance.now();
    const endpoint = endpointOf(c.req.path);
    inFlight++;
    let code = 500;
    try {
      await next();
      code = c.res.status;
    } finally {
      inFlight--;
      count(endpoint, code);
      observe.get(endpoint)!.observe((performance.now() - start) / 1000);
    }
  };

  return {
    registry,
    middleware,
    async scrape() {
      keypooldUp.set((await probeKeypoold(d.pool)).ok ? 1 : 0);
      if (certNotAfter !== undefined) certDays.set({ cert: 'api' }, (certNotAfter - now()) / DAY_MS);
      return { contentType: registry.contentType, body: await registry.metrics() };
    },
  };
}

async function probeKeypoold(pool: PoolClient): Promise<{ ok: true; serving: boolean } | { ok: false; reason: string }> {
  try {
    const h = await withTimeout(pool.call('health', {}), KEYPOOLD_PROBE_MS);
    return { ok: true, serving: h.serving };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}

/** Ready: the ETSI listener is up and keypoold answers on its socket. */
export function apiReadiness(d: { listening: () => boolean; pool: PoolClient }): () => Promise<Readiness> {
  return async () => {
    if (!d.listening()) return { ready: false, reason: 'the ETSI listener is not up' };
    const p = await probeKeypoold(d.pool);
    if (!p.ok) return { ready: false, reason: `keypoold unavailable: ${p.reason}` };
    return { ready: true, detail: { keypoold_serving: p.serving } };
  };
}

/** kme-api's admin listener: readiness and the metrics above. */
export function startApiAdmin(
  listen: MetricsListenerConfig, logger: Logger, metrics: ApiMetrics, readiness: { listening: () => boolean; pool: PoolClient },
): Promise<AdminHttp> {
  return startAdminHttp({ ...listen, logger, readiness: apiReadiness(readiness), metrics: metrics.scrape });
}
