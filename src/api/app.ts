/**
 * The ETSI GS QKD 014 routes of kme-api. Stateless: authenticate (identityOf,
 * the verified client certificate only), validate to the letter, ask keypoold,
 * answer exactly the spec body.
 *
 *   GET       /api/v1/keys/{slave_SAE_ID}/status
 *   GET|POST  /api/v1/keys/{slave_SAE_ID}/enc_keys
 *   GET|POST  /api/v1/keys/{master_SAE_ID}/dec_keys
 */
import { Hono, type Context, type MiddlewareHandler } from 'hono';
import type { Limits } from '../common/config.js';
import { isKmeError, unauthorized } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { KeysResult, PoolClient, PoolOp, PoolOps, StatusResult } from '../ipc/pool-protocol.js';
import { readJsonBody } from './body.js';
import { etsiErrorHandler, etsiNotFound, methodNotAllowed } from './errors.js';
import { decKeysFromBody, decKeysFromQuery, encKeysFromBody, encKeysFromQuery, pathSaeId, type EncKeysRequest } from './validate.js';

export interface EtsiAppDeps {
  pool: PoolClient;
  limits: Limits;
  kmeId: string;
  /** The caller's SAE ID from its verified client certificate, or null (-> 401). */
  identityOf: (c: Context) => string | null;
  logger: Logger;
  maxBodyBytes: number;
  /** Runs first on every request (metrics: src/api/metrics.ts). */
  observe?: MiddlewareHandler;
}

const STATUS = '/api/v1/keys/:id/status';
const ENC = '/api/v1/keys/:id/enc_keys';
const DEC = '/api/v1/keys/:id/dec_keys';

const NO_QUERY: Record<string, string[]> = Object.freeze(Object.create(null) as Record<string, string[]>);

/** Query parameters as a prototype-free map of name -> values. */
function queryOf(url: string): Record<string, string[]> {
  const i = url.indexOf('?');
  if (i === -1 || i === url.length - 1) return NO_QUERY;
  const q = Object.create(null) as Record<string, string[]>;
  for (const [k, v] of new URLSearchParams(url.slice(i + 1))) (q[k] ??= []).push(v);
  return q;
}

function statusBody(r: StatusResult): StatusResult {
  return {
    source_KME_ID: r.source_KME_ID,
    target_KME_ID: r.target_KME_ID,
    master_SAE_ID: r.master_SAE_ID,
    slave_SAE_ID: r.slave_SAE_ID,
    key_size: r.key_size,
    stored_key_count: r.stored_key_count,
    max_key_count: r.max_key_count,
    max_key_per_request: r.max_key_per_request,
    max_key_size: r.max_key_size,
    min_key_size: r.min_key_size,
    max_SAE_ID_count: r.max_SAE_ID_count,
    ...(r.status_extension ? { status_extension: { key_source: r.status_extension.key_source } } : {}),
  };
}

function keysBody(r: KeysResult): KeysResult {
  const keys = new Array<KeysResult['keys'][number]>(r.keys.length);
  for (let i = 0; i < r.keys.length; i++) {
    const k = r.keys[i]!;
    keys[i] = { key_ID: k.key_ID, key: k.key };
  }
  return { keys };
}

export function createEtsiApp(deps: EtsiAppDeps) {
  const { pool, limits, identityOf, maxBodyBytes } = deps;
  const app = new Hono();
  if (deps.observe) app.use('*', deps.observe);

  const callerOf = (c: Context): string => {
    const id = identityOf(c);
    if (id === null) throw unauthorized();
    return id;
  };
  /** HEAD would run the GET handler and throw the keys away: refuse it. */
  const refuseHead = (c: Context) => {
    if (c.req.method === 'HEAD') methodNotAllowed('GET, POST')();
  };

  /** Hono's onError only sees Error instances: normalise anything else a pool might throw. */
  const call = async <O extends PoolOp>(op: O, args: PoolOps[O]['args']): Promise<PoolOps[O]['result']> => {
    try {
      return await pool.call(op, args);
    } catch (e) {
      throw e instanceof Error ? e : new Error('pool call failed with a non-Error value');
    }
  };

  /**
   * Run request validation; an SAE that is not registered here hears 401 rather
   * than what is wrong with its request (the spec's 401 comes before any 400).
   */
  const validated = async <T>(caller: string, f: () => T | Promise<T>): Promise<T> => {
    try {
      return await f();
    } catch (e) {
      if (isKmeError(e) && e.code === 'BAD_REQUEST') {
        const who = await call('whoami', { caller }).catch(() => ({ registered: true }));
        if (!who.registered) throw unauthorized();
      }
      throw e;
    }
  };

  const encKeys = async (c: Context, caller: string, slave: string, req: EncKeysRequest) => {
    const r = await call('enc_keys', { caller, slave, additional: req.additional, number: req.number, size: req.size });
    return c.json(keysBody(r));
  };
  const decKeys = async (c: Context, caller: string, master: string, keyIds: string[]) => {
    const r = await call('dec_keys', { caller, master, key_ids: keyIds });
    return c.json(keysBody(r));
  };

  app.get(STATUS, async (c) => {
    const caller = callerOf(c);
    const slave = await validated(caller, () => pathSaeId(c.req.param('id'), 'slave', caller));
    return c.json(statusBody(await call('status', { caller, slave })));
  });

  app.get(ENC, async (c) => {
    refuseHead(c);
    const caller = callerOf(c);
    const [slave, req] = await validated(caller, () => {
      const slave = pathSaeId(c.req.param('id'), 'slave', caller);
      return [slave, encKeysFromQuery(queryOf(c.req.url), limits)] as const;
    });
    return encKeys(c, caller, slave, req);
  });
  app.post(ENC, async (c) => {
    const caller = callerOf(c);
    const [slave, req] = await validated(caller, async () => {
      const slave = pathSaeId(c.req.param('id'), 'slave', caller);
      const body = await readJsonBody(c, maxBodyBytes);
      return [slave, encKeysFromBody(body, limits, slave, caller)] as const;
    });
    return encKeys(c, caller, slave, req);
  });

  app.get(DEC, async (c) => {
    refuseHead(c);
    const caller = callerOf(c);
    const [master, ids] = await validated(caller, () => {
      const master = pathSaeId(c.req.param('id'), 'master', caller);
      return [master, decKeysFromQuery(queryOf(c.req.url))] as const;
    });
    return decKeys(c, caller, master, ids);
  });
  app.post(DEC, async (c) => {
    const caller = callerOf(c);
    const [master, ids] = await validated(caller, async () => {
      const master = pathSaeId(c.req.param('id'), 'master', caller);
      const body = await readJsonBody(c, maxBodyBytes);
      return [master, decKeysFromBody(body, limits)] as const;
    });
    return decKeys(c, caller, master, ids);
  });

  // An empty path segment (`/api/v1/keys//status`) is a blank SAE ID: 400, not 404.
  const blankId = (role: 'slave' | 'master') => (c: Context) => {
    pathSaeId('', role, callerOf(c));
    throw new Error('unreachable');
  };
  app.get('/api/v1/keys//status', blankId('slave'));
  app.on(['GET', 'POST'], '/api/v1/keys//enc_keys', blankId('slave'));
  app.on(['GET', 'POST'], '/api/v1/keys//dec_keys', blankId('master'));

  app.all(STATUS, methodNotAllowed('GET'));
  app.all(ENC, methodNotAllowed('GET, POST'));
  app.all(DEC, methodNotAllowed('GET, POST'));

  app.notFound(etsiNotFound);
  app.onError(etsiErrorHandler(deps.logger));
  return app;
}
