import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KmeError } from '../../src/common/errors.js';
import { silentLogger } from '../../src/common/logger.js';
import { NdjsonPoolClient } from '../../src/ipc/ndjson-client.js';
import { serveNdjson, type NdjsonHandler, type NdjsonServer } from '../../src/ipc/ndjson-server.js';
import type { StatusArgs } from '../../src/ipc/pool-protocol.js';

const logger = silentLogger();
let dir: string;
let path: string;
const servers: NdjsonServer[] = [];
const clients: NdjsonPoolClient[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'kme-ipc-'));
  path = join(dir, 'pool.sock');
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close();
  for (const s of servers.splice(0)) await s.close();
  rmSync(dir, { recursive: true, force: true });
});

async function start(handler: NdjsonHandler, extra: { maxLineBytes?: number; mode?: number } = {}) {
  const s = await serveNdjson({ path, handler, logger, ...extra });
  servers.push(s);
  return s;
}
function client(timeoutMs?: number) {
  const c = new NdjsonPoolClient({ path, logger, timeoutMs, backoff: { initialMs: 10, maxMs: 50 } });
  clients.push(c);
  return c;
}
const statusArgs: StatusArgs = { caller: 'A', slave: 'B' };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const echo: NdjsonHandler = async (op, args) => ({ op, args });

/** A raw connection that collects parsed response lines. */
async function raw(): Promise<{ sock: Socket; lines: unknown[]; closed: Promise<void> }> {
  const sock = connect(path);
  await new Promise<void>((r) => sock.once('connect', () => r()));
  const lines: unknown[] = [];
  let buf = '';
  sock.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  sock.on('error', () => {});
  const closed = new Promise<void>((r) => sock.once('close', () => r()));
  return { sock, lines, closed };
}
async function until(cond: () => boolean, ms = 2000) {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await sleep(5);
  }
}

describe('ndjson IPC', () => {
  it('round-trips a call and sets the socket mode', async () => {
    await start(echo, { mode: 0o600 });
    expect(statSync(path).mode & 0o777).toBe(0o600);
    const c = client();
    await expect(c.call('status', statusArgs)).resolves.toEqual({ op: 'status', args: statusArgs });
  });

  it('defaults the socket mode to 0660', async () => {
    await start(echo);
    expect(statSync(path).mode & 0o777).toBe(0o660);
  });

  it('answers out of order, matched by id', async () => {
    const order: number[] = [];
    await start(async (_op, args) => {
      const n = (args as { n: number }).n;
      await sleep(n);
      order.push(n);
      return n;
    });
    const c = client();
    const calls = [60, 1, 30, 10].map((n) => c.call('health', { n } as never));
    await expect(Promise.all(calls)).resolves.toEqual([60, 1, 30, 10]);
    expect(order).toEqual([1, 10, 30, 60]);
  });

  it('handles many concurrent calls on one connection', async () => {
    await start(async (_op, args) => args);
    const c = client();
    const res = await Promise.all(Array.from({ length: 2000 }, (_, i) => c.call('health', { i } as never)));
    expect(res.map((r) => (r as unknown as { i: number }).i)).toEqual(Array.from({ length: 2000 }, (_, i) => i));
  });

  it('carries large results split across many chunks', async () => {
    const big = 'x'.repeat(1_000_000);
    await start(async () => ({ big }));
    const c = client();
    await expect(c.call('health', {})).resolves.toEqual({ big });
  });

  it('propagates KmeError code, message and details', async () => {
    await start(async () => {
      throw new KmeError('BAD_REQUEST', 'not all extension_mandatory parameters are supported', [{ x: 'y' }]);
    });
    const err = await client().call('status', statusArgs).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KmeError);
    expect(err).toMatchObject({ code: 'BAD_REQUEST', message: 'not all extension_mandatory parameters are supported', details: [{ x: 'y' }] });
  });

  it('masks other errors as INTERNAL "internal error"', async () => {
    await start(async () => {
      throw new Error('secret path /var/lib/kme/store.db');
    });
    const err = await client().call('status', statusArgs).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(KmeError);
    expect(err).toMatchObject({ code: 'INTERNAL', message: 'internal error' });
    expect((err as KmeError).details).toBeUndefined();
  });

  it('reconnects after the server restarts', async () => {
    const s1 = await start(async () => 'one');
    const c = client();
    await expect(c.call('health', {})).resolves.toBe('one');
    await s1.close();
    servers.splice(servers.indexOf(s1), 1);
    await expect(c.call('health', {})).rejects.toMatchObject({ code: 'UNAVAILABLE', message: 'key pool daemon unavailable' });
    await sleep(100); // several failed reconnects while the daemon is down
    await start(async () => 'two');
    let got: unknown;
    await until(() => {
      c.call('health', {}).then((v) => (got = v), () => {});
      return got === 'two';
    });
    await expect(c.call('health', {})).resolves.toBe('two');
  });

  it('a call made while waiting to reconnect tries at once: the first call after a restart succeeds', async () => {
    const s1 = await start(async () => 'one');
    // Long backoff: only the call itself can reconnect this quickly.
    const c = new NdjsonPoolClient({ path, logger, backoff: { initialMs: 60_000, maxMs: 60_000 } });
    clients.push(c);
    await expect(c.call('health', {})).resolves.toBe('one');
    await s1.close();
    servers.splice(servers.indexOf(s1), 1);
    await expect(c.call('health', {})).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await expect(c.call('health', {})).rejects.toMatchObject({ code: 'UNAVAILABLE' }); // still down: fails fast
    await start(async () => 'two');
    await expect(c.call('health', {})).resolves.toBe('two');
  });

  it('rejects pending calls with UNAVAILABLE when the server dies', async () => {
    let started = 0;
    const s = await start(() => {
      started++;
      return new Promise(() => {});
    });
    const c = client();
    const p = Promise.allSettled([c.call('health', {}), c.call('status', statusArgs)]);
    await until(() => started === 2);
    await s.close();
    const settled = await p;
    expect(settled.map((x) => x.status)).toEqual(['rejected', 'rejected']);
    for (const x of settled) expect((x as PromiseRejectedResult).reason).toMatchObject({ code: 'UNAVAILABLE', message: 'key pool daemon unavailable' });
  });

  it('rejects with UNAVAILABLE when no daemon is listening', async () => {
    await expect(client().call('health', {})).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('times out a call with UNAVAILABLE and ignores the late answer', async () => {
    await start(async (_op, args) => {
      await sleep((args as { ms: number }).ms);
      return 'late';
    });
    const c = client(50);
    await expect(c.call('health', { ms: 200 } as never)).rejects.toMatchObject({ code: 'UNAVAILABLE' });
    await sleep(200);
    await expect(c.call('health', { ms: 0 } as never)).resolves.toBe('late');
  });

  it('rejects calls after close', async () => {
    await start(echo);
    const c = client();
    await c.call('health', {});
    await c.close();
    await expect(c.call('health', {})).rejects.toMatchObject({ code: 'UNAVAILABLE' });
  });

  it('answers an error to an unparsable line with a recoverable id, and keeps the connection', async () => {
    await start(echo);
    const r = await raw();
    r.sock.write('{"id": 7, "op": "status", "args": {oops}\n{"id":8,"op":"health","args":{}}\n');
    await until(() => r.lines.length === 2);
    expect(r.lines).toContainEqual({ id: 7, ok: false, error: { code: 'BAD_REQUEST', message: 'malformed IPC request' } });
    expect(r.lines).toContainEqual({ id: 8, ok: true, result: { op: 'health', args: {} } });
    r.sock.destroy();
  });

  it('answers an error when op is missing', async () => {
    await start(echo);
    const r = await raw();
    r.sock.write('{"id":3,"args":{}}\n');
    await until(() => r.lines.length === 1);
    expect(r.lines[0]).toEqual({ id: 3, ok: false, error: { code: 'BAD_REQUEST', message: 'malformed IPC request' } });
    r.sock.destroy();
  });

  it('drops a connection sending garbage without an id, and keeps serving others', async () => {
    await start(echo);
    const bad = await raw();
    bad.sock.write('hello there\n');
    await bad.closed;
    const bad2 = await raw();
    bad2.sock.write('[1,2,3]\n');
    await bad2.closed;
    await expect(client().call('health', {})).resolves.toEqual({ op: 'health', args: {} });
  });

  it('answers an over-long line with an error when the id is recoverable, then continues', async () => {
    await start(echo, { maxLineBytes: 1024 });
    const r = await raw();
    const long = `{"id": 11, "op": "status", "args": {"pad": "${'a'.repeat(3000)}"}}\n`;
    r.sock.write(long.slice(0, 500));
    await sleep(10);
    r.sock.write(long.slice(500) + '{"id":12,"op":"health","args":{}}\n');
    await until(() => r.lines.length === 2);
    expect(r.lines[0]).toEqual({ id: 11, ok: false, error: { code: 'BAD_REQUEST', message: 'IPC request line too long' } });
    expect(r.lines[1]).toMatchObject({ id: 12, ok: true });
    r.sock.destroy();
  });

  it('drops a connection sending an over-long line without an id', async () => {
    await start(echo, { maxLineBytes: 1024 });
    const r = await raw();
    r.sock.write('x'.repeat(5000));
    await r.closed;
    expect(r.lines).toEqual([]);
  });

  it('replaces a stale socket file but refuses a live one or a regular file', async () => {
    const s = await start(echo);
    await expect(serveNdjson({ path, handler: echo, logger })).rejects.toThrow(/in use/);
    await s.close();
    servers.splice(0);
    expect(existsSync(path)).toBe(false);
    const other = join(dir, 'plain');
    writeFileSync(other, 'x');
    await expect(serveNdjson({ path: other, handler: echo, logger })).rejects.toThrow(/not a socket/);
  });

  it('removes a stale socket left by a crashed server', async () => {
    const { spawn } = await import('node:child_process');
    const code = `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`;
    const child = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'ignore'] });
    await new Promise((r) => child.stdout.once('data', r));
    child.kill('SIGKILL');
    await new Promise((r) => child.once('exit', r));
    expect(existsSync(path)).toBe(true);
    await start(echo);
    await expect(client().call('health', {})).resolves.toMatchObject({ op: 'health' });
  });

  it('close ends open connections and unlinks the socket', async () => {
    const s = await start(echo);
    const r = await raw();
    await s.close();
    servers.splice(0);
    await r.closed;
    expect(existsSync(path)).toBe(false);
  });
});
