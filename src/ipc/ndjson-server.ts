/**
 * Server side of the local pool API: newline-delimited JSON over a Unix
 * socket (wire format in ./pool-protocol.ts). Requests on one connection run
 * concurrently; each answer goes back as soon as its handler settles, matched
 * to its request by `id`.
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Socket } from 'node:net';
import { isKmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { LineSplitter, recoverId, writeCoalesced } from './ndjson-lines.js';
import { MAX_IPC_LINE_BYTES, type PoolErrorBody } from './pool-protocol.js';

export type NdjsonHandler = (op: string, args: unknown) => Promise<unknown>;

export interface NdjsonServerOptions {
  path: string;
  handler: NdjsonHandler;
  logger: Logger;
  /** File mode of the socket; default 0o660. */
  mode?: number;
  /** Largest accepted request line; default MAX_IPC_LINE_BYTES (tests lower it). */
  maxLineBytes?: number;
}

export interface NdjsonServer {
  close(): Promise<void>;
}

const INTERNAL: PoolErrorBody = { code: 'INTERNAL', message: 'internal error' };
const MALFORMED: PoolErrorBody = { code: 'BAD_REQUEST', message: 'malformed IPC request' };
const TOO_LONG: PoolErrorBody = { code: 'BAD_REQUEST', message: 'IPC request line too long' };
const BUSY: PoolErrorBody = { code: 'UNAVAILABLE', message: 'too many requests in flight on this connection' };
/** Requests one connection may have in flight; beyond it they are refused at once. */
export const MAX_IN_FLIGHT_PER_CONNECTION = 10_000;

export async function serveNdjson(opts: NdjsonServerOptions): Promise<NdjsonServer> {
  const { path, handler, logger } = opts;
  const maxLine = opts.maxLineBytes ?? MAX_IPC_LINE_BYTES;
  await removeStaleSocket(path);

  const conns = new Set<Socket>();
  const server = createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', (err) => logger.debug({ err }, 'ipc connection error'));
    serveConnection(sock, handler, logger, maxLine);
  });
  server.on('error', (err) => logger.error({ err }, 'ipc server error'));

  await new Promise<void>((resolve, reject) => {
    const onError = (err: Error) => reject(err);
    server.once('error', onError);
    server.listen(path, () => {
      server.off('error', onError);
      resolve();
    });
  });
  await chmod(path, opts.mode ?? 0o660);

  let closing: Promise<void> | undefined;
  return {
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const s of conns) s.destroy();
      }).then(() => unlinkIfSocket(path));
      return closing;
    },
  };
}

/**
 * Serve NDJSON requests on one connected socket (Unix or TLS). The handler is
 * called in the order the requests arrive; answers go back as they settle.
 */
export function serveConnection(sock: Socket, handler: NdjsonHandler, logger: Logger, maxLine: number): void {
  const send = (payload: object) => {
    if (sock.destroyed || !sock.writable) return;
    let line: string;
    try {
      line = JSON.stringify(payload);
    } catch (err) {
      logger.error({ err }, 'ipc response not serialisable');
      const id = (payload as { id: number }).id;
      line = JSON.stringify({ id, ok: false, error: INTERNAL });
    }
    writeCoalesced(sock, line + '\n');
  };
  const fail = (id: number, error: PoolErrorBody) => send({ id, ok: false, error });

  let inFlight = 0;
  const dispatch = async (id: number, op: string, args: unknown) => {
    if (inFlight >= MAX_IN_FLIGHT_PER_CONNECTION) return fail(id, BUSY);
    inFlight++;
    try {
      const result = await handler(op, args);
      send({ id, ok: true, result });
    } catch (err) {
      if (isKmeError(err)) {
        const error: PoolErrorBody = { code: err.code, message: err.message };
        if (err.details !== undefined) error.details = err.details;
        fail(id, error);
      } else {
        logger.error({ err, op }, 'ipc handler failed');
        fail(id, INTERNAL);
      }
    } finally {
      inFlight--;
    }
  };

  const splitter = new LineSplitter(maxLine, {
    line(buf) {
      let msg: unknown;
      try {
        msg = JSON.parse(buf.toString('utf8'));
      } catch {
        const id = recoverId(buf);
        if (id === null) return drop('unparsable line without id');
        return fail(id, MALFORMED);
      }
      const req = msg as { id?: unknown; op?: unknown; args?: unknown } | null;
      if (req === null || typeof req !== 'object' || !isWireId(req.id)) return drop('request without a valid id');
      if (typeof req.op !== 'string') return fail(req.id, MALFORMED);
      void dispatch(req.id, req.op, req.args);
    },
    overflow(head) {
      const id = recoverId(head);
      if (id === null) {
        drop('overlong line without id');
        return false;
      }
      fail(id, TOO_LONG);
      return true;
    },
  });

  function drop(why: string): void {
    logger.warn({ why }, 'ipc connection dropped');
    splitter.stop();
    sock.destroy();
  }

  sock.on('data', (chunk: Buffer) => splitter.push(chunk));
}

function isWireId(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Remove a socket file left by a dead server; refuse a live one or a non-socket. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw e;
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket`);
  if (await isListening(path)) throw new Error(`${path} is in use by a running server`);
  await unlinkIfSocket(path);
}

function isListening(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

async function unlinkIfSocket(path: string): Promise<void> {
  try {
    if ((await lstat(path)).isSocket()) await unlink(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}
