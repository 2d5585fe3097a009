import { randomUUID } from 'node:crypto';

/** Canonical lowercase 8-4-4-4-12 UUID text, any version (we emit v4). */
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function newKeyId(): string {
  return randomUUID();
}

export function isCanonicalUuid(s: unknown): s is string {
  return typeof s === 'string' && UUID_RE.test(s);
}

/**
 * SAE and KME identifiers: printable, no whitespace at the ends, bounded.
 * They appear in URL paths (percent-encoded) and certificate subjects.
 */
const ID_RE = /^[\x21-\x7e](?:[\x20-\x7e]{0,126}[\x21-\x7e])?$/;
export function isValidEntityId(s: unknown): s is string {
  return typeof s === 'string' && ID_RE.test(s);
}
