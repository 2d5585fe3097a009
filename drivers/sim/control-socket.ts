/**
 * The simulator's control socket: NDJSON over a Unix socket, one request per
 * line, one answer per line, in order.
 *
 *   {"cmd":"fault","fault":"link-down","seconds":5}             -> {"ok":true,"fault":...,"modules":[],"seconds":5,"until_ms":...}
 *   {"cmd":"fault","fault":"unplug","seconds":1,"module":"A-1"} -> module faults hit one module, or both without "module"
 *   {"cmd":"status"}                                            -> {"ok":true,"status":{...}}
 *   {"cmd":"clear"}                                             -> {"ok":true,"cleared":n}
 *   anything wrong                                              -> {"ok":false,"error":"..."}
 */
import { chmodSync, lstatSync, unlinkSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import type { Logger } from '../../src/common/logger.js';
import type { Simulator } from './simulator.js';

export type ControlRequest =
  | { cmd: 'fault'; fault: string; seconds: number | string; module?: string | number }
  | { cmd: 'status' }
  | { cmd: 'clear' };

export type ControlAnswer = { ok: true; [k: string]: unknown } | { ok: false; error: string };

const MAX_LINE = 64 * 1024;

export interface ControlServer {
  close(): Promise<void>;
}

export function handleControl(sim: Simulator, req: unknown): ControlAnswer {
  if (!req || typeof req !== 'object' || typeof (req as { cmd?: unknown }).cmd !== 'string') {
    return { ok: false, error: 'a request is a JSON object with "cmd": "fault" | "status" | "clear"' };
  }
  const r = req as Record<string, unknown>;
  try {
    switch (r.cmd) {
      case 'status':
        return { ok: true, status: sim.status() };
      case 'clear':
        return { ok: true, cleared: sim.clear() };
      case 'fault': {
        if (typeof r.fault !== 'string') return { ok: false, error: '"fault" must be a string' };
        if (typeof r.seconds !== 'number' && typeof r.seconds !== 'string') return { ok: false, error: '"seconds" must be a number' };
        const module = r.module;
        if (module !== undefined && typeof module !== 'string' && typeof module !== 'number') return { ok: false, error: '"module" must be a module_id or an index' };
        return { ok: true, ...sim.inject(r.fault, r.seconds, module) };
      }
      default:
        return { ok: false, error: `unknown cmd "${String(r.cmd)}"; known: fault, status, clear` };
    }
  } catch (e) {
    return { ok: false, error: (e as Error).message };
  }
}

export async function serveControl(path: string, sim: Simulator, logger: Logger): Promise<ControlServer> {
  if (await canConnect(path)) throw new Error(`control socket ${path} is in use: is another simulator running?`);
  removeSocketFile(path, true);
  const conns = new Set<Socket>();
  const server = createServer((sock) => {
    conns.add(sock);
    sock.on('close', () => conns.delete(sock));
    sock.on('error', () => undefined);
    let buf = '';
    sock.setEncoding('utf8');
    sock.on('data', (chunk: string) => {
      buf += chunk;
      if (buf.length > MAX_LINE && !buf.includes('\n')) {
        sock.end(JSON.stringify({ ok: false, error: 'request line too long' }) + '\n');
        return;
      }
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        let answer: ControlAnswer;
        try {
          answer = handleControl(sim, JSON.parse(line));
        } catch {
          answer = { ok: false, error: 'request is not JSON' };
        }
        if (!answer.ok) logger.info({ error: answer.error }, 'control request refused');
        sock.write(JSON.stringify(answer) + '\n');
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  chmodSync(path, 0o660);
  server.on('error', (e) => logger.error({ err: e.message }, 'control socket failed'));
  return {
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of conns) s.destroy();
        server.close(() => {
          removeSocketFile(path, false);
          resolve();
        });
      }),
  };
}

/** One request, one answer. Rejects with a readable Error when no simulator listens at `path`. */
export function controlRequest(path: string, req: ControlRequest, timeoutMs = 5000): Promise<ControlAnswer> {
  return new Promise((resolve, reject) => {
    const sock = connect({ path });
    let buf = '';
    const timer = setTimeout(() => fail(new Error(`the simulator at ${path} did not answer within ${timeoutMs} ms`)), timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(e);
    };
    sock.setEncoding('utf8');
    sock.once('connect', () => sock.write(JSON.stringify(req) + '\n'));
    sock.on('error', (e: NodeJS.ErrnoException) =>
      fail(
        e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
          ? new Error(`no simulator is running at ${path} (${e.code})`)
          : new Error(`cannot reach the simulator at ${path}: ${e.message}`),
      ),
    );
    sock.on('data', (d: string) => {
      buf += d;
      const i = buf.indexOf('\n');
      if (i < 0) return;
      clearTimeout(timer);
      sock.end();
      try {
        resolve(JSON.parse(buf.slice(0, i)) as ControlAnswer);
      } catch {
        reject(new Error(`the simulator at ${path} answered something that is not JSON`));
      }
    });
    sock.on('close', () => fail(new Error(`the simulator at ${path} closed the connection without answering`)));
  });
}

/** Does something accept connections on this Unix socket? */
export function canConnect(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect({ path });
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once('connect', () => done(true));
    s.once('error', () => done(false));
  });
}

function removeSocketFile(path: string, strict: boolean): void {
  let st;
  try {
    st = lstatSync(path);
  } catch {
    return;
  }
  if (!st.isSocket()) {
    if (strict) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
    return;
  }
  unlinkSync(path);
}
