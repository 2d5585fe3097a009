/**
 * ETSI GS QKD 014 request validation, to the letter of the shared spec notes
 * (/work/shared/etsi-gs-qkd-014.md). Pure functions: each either returns the
 * validated arguments for the pool or throws KmeError BAD_REQUEST (-> 400).
 * Messages never echo key material; the fixed ETSI strings come from EtsiMessage.
 */
import { badRequest, EtsiMessage } from '../common/errors.js';
import type { Limits } from '../common/config.js';
import { isCanonicalUuid, isValidEntityId } from '../common/ids.js';

export interface EncKeysRequest {
  number: number;
  size: number;
  additional: string[];
}

type Query = Record<string, string[]>;
type Obj = Record<string, unknown>;

const INT_MAX = 2 ** 31;
const DIGITS = /^[0-9]{1,10}$/;
const ENC_FIELDS: ReadonlySet<string> = new Set(['number', 'size', 'additional_slave_SAE_IDs', 'extension_mandatory', 'extension_optional']);
const DEC_FIELDS: ReadonlySet<string> = new Set(['key_IDs', 'key_IDs_extension']);
const KEY_ID_FIELDS: ReadonlySet<string> = new Set(['key_ID', 'key_ID_extension']);
const hasOwn = Object.prototype.hasOwnProperty;

export const Msg = {
  slaveId: 'slave_SAE_ID is not a valid SAE ID',
  masterId: 'master_SAE_ID is not a valid SAE ID',
  slaveIsCaller: 'slave_SAE_ID must not be the caller itself',
  masterIsCaller: 'master_SAE_ID must not be the caller itself',
  notObject: 'request body must be a JSON object',
  number: (max: number) => `number must be an integer between 1 and ${max}`,
  size: (min: number, max: number) => `size must be an integer between ${min} and ${max}`,
  additionalShape: 'additional_slave_SAE_IDs must be an array of SAE IDs',
  multicastOff: 'additional_slave_SAE_IDs is not supported (max_SAE_ID_count is 0)',
  additionalTooMany: (max: number) => `additional_slave_SAE_IDs has more than ${max} entries`,
  additionalDuplicate: 'additional_slave_SAE_IDs contains duplicates',
  additionalHasSlave: 'additional_slave_SAE_IDs must not repeat slave_SAE_ID',
  additionalHasCaller: 'additional_slave_SAE_IDs must not contain the caller itself',
  extMandatoryShape: 'extension_mandatory must be an array of objects',
  extOptionalShape: 'extension_optional must be an array of objects',
  encQuery: 'only number and size may be given as query parameters; use POST for other fields',
  repeatedQuery: (name: string) => `${name} must be given at most once`,
  decQuery: 'GET dec_keys takes exactly one key_ID query parameter; use POST otherwise',
  keyIdsRequired: 'key_IDs is required',
  keyIdsShape: 'key_IDs must be a non-empty array of objects with a key_ID',
  keyIdsTooMany: (max: number) => `key_IDs has more than ${max} entries`,
  keyId: 'key_ID must be a canonical lowercase UUID',
  keyIdsDuplicate: 'key_IDs contains duplicates',
  keyIdsExtShape: 'key_IDs_extension must be an object',
  keyIdExtShape: 'key_ID_extension must be an object',
  unknownField: (name: string) => `unknown field ${JSON.stringify(name.slice(0, 64))}`,
} as const;

const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function rejectUnknown(o: Obj, allowed: ReadonlySet<string>): void {
  for (const k in o) if (hasOwn.call(o, k) && !allowed.has(k)) throw badRequest(Msg.unknownField(k));
}

/** The decoded path SAE ID; `role` names it in the message. */
export function pathSaeId(raw: string | undefined, role: 'slave' | 'master', caller: string): string {
  if (!isValidEntityId(raw)) throw badRequest(role === 'slave' ? Msg.slaveId : Msg.masterId);
  if (raw === caller) throw badRequest(role === 'slave' ? Msg.slaveIsCaller : Msg.masterIsCaller);
  return raw;
}

function checkNumber(v: unknown, limits: Limits): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1 || v > limits.max_key_per_request || v > INT_MAX) {
    throw badRequest(Msg.number(limits.max_key_per_request));
  }
  return v;
}

function checkSize(v: unknown, limits: Limits): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v > INT_MAX) {
    throw badRequest(Msg.size(limits.min_key_size, limits.max_key_size));
  }
  if (v % 8 !== 0) throw badRequest(EtsiMessage.sizeNotMultipleOf8);
  if (v < limits.min_key_size || v > limits.max_key_size) throw badRequest(Msg.size(limits.min_key_size, limits.max_key_size));
  return v;
}

function checkAdditional(v: unknown, limits: Limits, slave: string, caller: string): string[] {
  if (!Array.isArray(v)) throw badRequest(Msg.additionalShape);
  if (v.length === 0) return [];
  if (limits.max_SAE_ID_count === 0) throw badRequest(Msg.multicastOff);
  if (v.length > limits.max_SAE_ID_count) throw badRequest(Msg.additionalTooMany(limits.max_SAE_ID_count));
  const seen = new Set<string>();
  for (const id of v) {
    if (!isValidEntityId(id)) throw badRequest(Msg.additionalShape);
    if (id === slave) throw badRequest(Msg.additionalHasSlave);
    if (id === caller) throw badRequest(Msg.additionalHasCaller);
    if (seen.has(id)) throw badRequest(Msg.additionalDuplicate);
    seen.add(id);
  }
  return v as string[];
}

function checkExtensions(v: unknown, message: string): Obj[] {
  if (!Array.isArray(v) || !v.every(isObj)) throw badRequest(message);
  return v;
}

/** We support no mandatory extension: any named one fails with the ETSI message. */
function refuseMandatory(list: Obj[]): void {
  const details: Array<Record<string, unknown>> = [];
  for (const ext of list) {
    for (const name in ext) {
      if (hasOwn.call(ext, name)) details.push({ extension_mandatory_unsupported: `${name} is not supported` });
    }
  }
  if (details.length > 0) throw badRequest(EtsiMessage.extensionMandatoryUnsupported, details);
}

/** POST enc_keys body (`undefined` = empty body = all defaults). */
export function encKeysFromBody(body: unknown, limits: Limits, slave: string, caller: string): EncKeysRequest {
  const req: EncKeysRequest = { number: 1, size: limits.default_key_size, additional: [] };
  if (body === undefined) return req;
  if (!isObj(body)) throw badRequest(Msg.notObject);
  rejectUnknown(body, ENC_FIELDS);
  if (body.number !== undefined) req.number = checkNumber(body.number, limits);
  if (body.size !== undefined) req.size = checkSize(body.size, limits);
  if (body.additional_slave_SAE_IDs !== undefined) req.additional = checkAdditional(body.additional_slave_SAE_IDs, limits, slave, caller);
  if (body.extension_optional !== undefined) checkExtensions(body.extension_optional, Msg.extOptionalShape);
  if (body.extension_mandatory !== undefined) refuseMandatory(checkExtensions(body.extension_mandatory, Msg.extMandatoryShape));
  return req;
}

/** Decimal digits only: no sign, no spaces, no exponent, no hex. */
function queryInt(q: Query, name: string): unknown {
  const vals = q[name];
  if (vals === undefined) return undefined;
  if (vals.length !== 1) throw badRequest(Msg.repeatedQuery(name));
  const s = vals[0]!;
  return DIGITS.test(s) ? Number(s) : NaN;
}

/** GET enc_keys: only `number` and `size`, as decimal strings. */
export function encKeysFromQuery(q: Query, limits: Limits): EncKeysRequest {
  const req: EncKeysRequest = { number: 1, size: limits.default_key_size, additional: [] };
  for (const k in q) if (k !== 'number' && k !== 'size') throw badRequest(Msg.encQuery);
  const number = queryInt(q, 'number');
  const size = queryInt(q, 'size');
  if (number !== undefined) req.number = checkNumber(number, limits);
  if (size !== undefined) req.size = checkSize(size, limits);
  return req;
}

function checkKeyId(v: unknown): string {
  if (!isCanonicalUuid(v)) throw badRequest(Msg.keyId);
  return v;
}

/** POST dec_keys body: `{"key_IDs":[{"key_ID":uuid}, ...], "key_IDs_extension"?: {}}`. */
export function decKeysFromBody(body: unknown, limits: Limits): string[] {
  if (body === undefined) throw badRequest(Msg.keyIdsRequired);
  if (!isObj(body)) throw badRequest(Msg.notObject);
  rejectUnknown(body, DEC_FIELDS);
  if (body.key_IDs_extension !== undefined && !isObj(body.key_IDs_extension)) throw badRequest(Msg.keyIdsExtShape);
  const list = body.key_IDs;
  if (list === undefined) throw badRequest(Msg.keyIdsRequired);
  if (!Array.isArray(list) || list.length === 0) throw badRequest(Msg.keyIdsShape);
  if (list.length > limits.max_key_per_request) throw badRequest(Msg.keyIdsTooMany(limits.max_key_per_request));
  const ids: string[] = [];
  const seen = new Set<string>();
  for (const item of list) {
    if (!isObj(item) || item.key_ID === undefined) throw badRequest(Msg.keyIdsShape);
    rejectUnknown(item, KEY_ID_FIELDS);
    if (item.key_ID_extension !== undefined && !isObj(item.key_ID_extension)) throw badRequest(Msg.keyIdExtShape);
    const id = checkKeyId(item.key_ID);
    if (seen.has(id)) throw badRequest(Msg.keyIdsDuplicate);
    seen.add(id);
    ids.push(id);
  }
  return ids;
}

/** GET dec_keys: exactly one `key_ID` and nothing else. */
export function decKeysFromQuery(q: Query): string[] {
  let n = 0;
  for (const k in q) {
    if (k !== 'key_ID') throw badRequest(Msg.decQuery);
    n++;
  }
  const vals = q.key_ID;
  if (n !== 1 || vals === undefined || vals.length !== 1) throw badRequest(Msg.decQuery);
  return [checkKeyId(vals[0])];
}
