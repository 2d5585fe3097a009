/**
 * Dispatch of local pool API calls (see src/ipc/pool-protocol.ts) to the key
 * service. Arguments are re-checked for shape: the socket is a trust boundary
 * too (maintenance tools speak it).
 */
import { badRequest } from '../common/errors.js';
import type { DecKeysArgs, DiagResult, EncKeysArgs, StatusArgs } from '../ipc/pool-protocol.js';
import type { KeyService } from './key-service.js';

const isStr = (v: unknown): v is string => typeof v === 'string' && v.length > 0;
const isStrArray = (v: unknown): v is string[] => Array.isArray(v) && v.every(isStr);

export interface LocalApiDeps {
  service: KeyService;
  diag: () => Promise<DiagResult>;
}

export async function dispatchPoolOp({ service, diag }: LocalApiDeps, op: string, raw: unknown): Promise<unknown> {
  const a = (raw ?? {}) as Record<string, unknown>;
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
    default:
      throw badRequest(`unknown operation ${op}`);
  }
}
