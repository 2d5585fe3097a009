/**
 * Dispatch of local pool API calls (see src/ipc/pool-protocol.ts) to the key
 * service. Arguments are re-checked for shape: the socket is a trust boundary
 * too (maintenance tools speak it).
 */
import { badRequest } from '../common/errors.js';
import type { DecKeysArgs, DiagResult, EncKeysArgs, StatusArgs } from '../ipc/pool-protocol.js';
import type { KeyService } from './key-service.js';
import { RegistryError, type Registry } from './registry.js';
import type { Rotation } from './rotation.js';
import type { LinkSelftest } from './selftest.js';

const isStr = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

export interface LocalApiDeps {
  service: KeyService;
  diag: () => Promise<DiagResult>;
  rotation: Rotation;
  registry: Pick<Registry, 'reload'>;
  selftest: Pick<LinkSelftest, 'run'>;
}

/** What kme-api may ask; everything else is for the maintenance tools' socket only. */
const API_OPS = new Set(['status', 'enc_keys', 'dec_keys', 'whoami', 'health']);

/**
 * `admin`: the call came over the maintenance socket (every op); otherwise
 * over kme-api's socket (the SAE-facing ops and health only).
 */
export async function dispatchPoolOp(
  { service, diag, rotation, registry, selftest }: LocalApiDeps, op: string, raw: unknown, admin = false,
): Promise<unknown> {
  const a = (raw ?? {}) as Record<string, unknown>;
  if (!admin && !API_OPS.has(op)) throw badRequest(`operation ${op} is only served on keypoold's maintenance socket`);
  switch (op) {
    case 'status':
      if (!isStr(a.caller) || !isStr(a.slave)) throw badRequest('status needs caller and slave');
      return service.status(a as unknown as StatusArgs);
    case 'enc_keys':
      if (!isStr(a.caller) || !isStr(a.slave) || !isStrArray(a.additional) || typeof a.number !== 'number' || typeof a.size !== 'number') {
        throw badRequest('enc_keys needs caller, slave, additional, number and size');
      }
      return service.encKeys(a as unknown as EncKeysArgs);
    case 'dec_keys':
      if (!isStr(a.caller) || !isStr(a.master) || !isStrArray(a.key_ids)) throw badRequest('dec_keys needs caller, master and key_ids');
      return service.decKeys(a as unknown as DecKeysArgs);
    case 'whoami':
      if (!isStr(a.caller)) throw badRequest('whoami needs caller');
      return { registered: service.isRegisteredHere(a.caller) };
    case 'health':
      return service.health();
    case 'diag':
      return diag();
    case 'rotate':
      if (a.what !== 'master' && a.what !== 'data') throw badRequest("rotate needs what: 'master' or 'data'");
      return rotation.rotate(a.what);
    case 'rotation_status':
      return rotation.status();
    case 'reload':
      try {
        return await registry.reload();
      } catch (e) {
        if (e instanceof RegistryError) throw badRequest(`${e.message}; the registry in use is kept`);
        throw e;
      }
    case 'selftest':
      if (a.link !== undefined && !isStr(a.link)) throw badRequest('selftest takes an optional link (a link id)');
      return selftest.run(a.link);
    default:
      throw badRequest(`unknown operation ${op}`);
  }
}
