/**
 * Reading an ETSI JSON request body under a size limit.
 *
 * With a Content-Length the limit is checked before reading and the body is
 * read through @hono/node-server's direct path; chunked bodies are streamed
 * and refused as soon as they pass the limit, so neither form can make the
 * process buffer more than `maxBytes`.
 */
import type { Context } from 'hono';
import { badRequest } from '../common/errors.js';
import { bodyTooLarge } from './errors.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });
const EMPTY = new Uint8Array(0);

export const MALFORMED_JSON = 'Malformed JSON supplied';
export const BAD_CONTENT_TYPE = 'Content-Type must be application/json';

/** The JSON body, or `undefined` when the body is empty (any Content-Type). */
export async function readJsonBody(c: Context, maxBytes: number): Promise<unknown> {
  const bytes = await readBodyLimited(c.req.raw, maxBytes);
  if (bytes.length === 0) return undefined;
  if (!isJsonContentType(c.req.raw.headers.get('content-type'))) throw badRequest(BAD_CONTENT_TYPE);
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    throw badRequest(MALFORMED_JSON);
  }
  if (isBlank(text)) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw badRequest(MALFORMED_JSON);
  }
}

async function readBodyLimited(req: Request, maxBytes: number): Promise<Uint8Array> {
  const cl = req.headers.get('content-length');
  if (cl !== null && !req.headers.has('transfer-encoding')) {
    const n = Number(cl);
    if (n > maxBytes) throw bodyTooLarge();
    if (n === 0) return EMPTY;
    return new Uint8Array(await req.arrayBuffer());
  }
  if (!req.body) return EMPTY;
  const reader = req.body.getReader();
  const parts: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > maxBytes) {
      void reader.cancel().catch(() => {});
      throw bodyTooLarge();
    }
    parts.push(value);
  }
  if (parts.length === 1) return parts[0]!;
  return Buffer.concat(parts, size);
}

function isJsonContentType(ct: string | null): boolean {
  if (ct === null) return false;
  const semi = ct.indexOf(';');
  const type = (semi === -1 ? ct : ct.slice(0, semi)).trim().toLowerCase();
  return type === 'application/json';
}

function isBlank(s: string): boolean {
  for (let i = 0; i < s.length; i++) {
    const ch = s.charCodeAt(i);
    if (ch !== 0x20 && ch !== 0x09 && ch !== 0x0a && ch !== 0x0d) return false;
  }
  return true;
}
