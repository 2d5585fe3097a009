import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SocketTransport } from '../../../drivers/transport/socket.js';
import { until } from '../qkd/helpers/clocks.js';

const cleanups: Array<() => void | Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function server(listenOn: string | number): Promise<{ srv: Server; peers: Socket[]; received: Buffer[] }> {
  const peers: Socket[] = [];
  const received: Buffer[] = [];
  const srv = createServer((s) => {
    peers.push(s);
    s.on('data', (d) => received.push(d));
    s.on('error', () => {});
  });
  await new Promise<void>((r) => (typeof listenOn === 'number' ? srv.listen(listenOn, '127.0.0.1', r) : srv.listen(listenOn, r)));
  cleanups.push(() => new Promise<void>((r) => srv.close(() => r())), () => peers.forEach((p) => p.destroy()));
  return { srv, peers, received };
}

describe('SocketTransport', () => {
  it('talks both ways over a real Unix socket; the peer going away fires onClose once, with an error', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kme-sock-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const path = join(dir, 'module.sock');
    const { peers, received } = await server(path);
    const t = new SocketTransport({ target: { path } });
    expect(t.description).toBe(`unix ${path}`);
    const closes: Array<Error | undefined> = [];
    t.onClose((e) => closes.push(e));
    const got: Buffer[] = [];
    t.onData((c) => got.push(Buffer.from(c)));
    await t.open();
    await t.write(Buffer.from('hello module'));
    await until(() => Buffer.concat(received).toString() === 'hello module');
    peers[0]!.write(Buffer.alloc(200_000, 7));
    await until(() => Buffer.concat(got).length === 200_000);
    peers[0]!.destroy();
    await until(() => closes.length === 1);
    expect(closes[0]).toMatchObject({ name: 'TransportError', code: 'CLOSED' });
    await expect(t.write(Buffer.from('x'))).rejects.toMatchObject({ code: 'NOT_OPEN' });
    await t.close(); // idempotent
    expect(closes).toHaveLength(1);
  });

  it('over TCP: a local close fires onClose once without an error, and it can open again', async () => {
    const { srv, received, peers } = await server(0);
    const port = (srv.address() as AddressInfo).port;
    const t = new SocketTransport({ target: { host: '127.0.0.1', port } });
    const closes: Array<Error | undefined> = [];
    t.onClose((e) => closes.push(e));
    await t.open();
    await t.close();
    expect(closes).toEqual([undefined]);
    await t.open();
    await t.write(Buffer.from('again'));
    await until(() => Buffer.concat(received).toString() === 'again');
    await t.close();
    expect(closes).toEqual([undefined, undefined]);
    await t.open();
    await until(() => peers.length === 3);
    peers[2]!.resetAndDestroy(); // TCP RST
    await until(() => closes.length === 3);
    expect(closes[2]).toMatchObject({ code: 'IO', message: expect.stringContaining('ECONNRESET') });
  });

  it('rejects with OPEN_FAILED when nothing listens', async () => {
    const t = new SocketTransport({ target: { path: join(tmpdir(), 'kme-no-such.sock') } });
    await expect(t.open()).rejects.toMatchObject({ code: 'OPEN_FAILED' });
    await expect(new SocketTransport({ target: { path: '/x' } }).open(AbortSignal.abort())).rejects.toMatchObject({ code: 'ABORTED' });
  });
});
