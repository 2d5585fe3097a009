/** createEtsiApp wired to a FakePool, with the caller SAE ID passed as the request env. */
import { DEFAULT_LIMITS, type Limits } from '../../src/common/config.js';
import { silentLogger } from '../../src/common/logger.js';
import { createEtsiApp } from '../../src/api/app.js';
import { FakePool } from './fake-pool.js';

export const LIMITS: Limits = DEFAULT_LIMITS;

export function makeApp(opts: { limits?: Partial<Limits>; maxBodyBytes?: number } = {}) {
  const pool = new FakePool();
  const app = createEtsiApp({
    pool,
    limits: { ...LIMITS, ...opts.limits },
    kmeId: 'KME_A',
    identityOf: (c) => (c.env as { sae?: string } | undefined)?.sae ?? null,
    logger: silentLogger(),
    maxBodyBytes: opts.maxBodyBytes ?? 65536,
  });
  /** Send as SAE `sae` (null: no verified identity). */
  const send = async (path: string, init: RequestInit = {}, sae: string | null = 'SAE_A') => {
    const res = await app.request(path, init, sae === null ? {} : { sae });
    const text = await res.text();
    return { res, status: res.status, text, body: text ? (JSON.parse(text) as Record<string, unknown>) : undefined };
  };
  const postJson = (path: string, body: unknown, sae: string | null = 'SAE_A') =>
    send(path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) }, sae);
  return { app, pool, send, postJson };
}
