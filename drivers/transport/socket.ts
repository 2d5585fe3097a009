/**
 * A stream socket transport (node:net): TCP host:port or a Unix socket path.
 * For the simulator and for modules reachable over a network.
 */
import { createConnection, type Socket } from 'node:net';
import { TransportError, TransportEvents, throwIfAborted, type ByteTransport } from './types.js';

export type SocketTarget = { path: string } | { host: string; port: number };

export interface SocketTransportOptions {
  target: SocketTarget;
  /** Give up connecting after this long (default 5000 ms). */
  connectTimeoutMs?: number;
}

export class SocketTransport implements ByteTransport {
  readonly caps = { modemLines: false };
  readonly description: string;
  readonly #events = new TransportEvents();
  readonly #o: Required<SocketTransportOptions>;
  #sock: Socket | undefined;
  #closing = false;

  constructor(opts: SocketTransportOptions) {
    this.#o = { connectTimeoutMs: 5000, ...opts };
    const t = opts.target;
    this.description = 'path' in t ? `unix ${t.path}` : `tcp ${t.host}:${t.port}`;
  }

  async open(signal?: AbortSignal): Promise<void> {
    throwIfAborted(signal, this.description);
    if (this.#sock) return;
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = createConnection(this.#o.target);
      const fail = (err: Error) => {
        cleanup();
        s.destroy();
        reject(err instanceof TransportError ? err : new TransportError('OPEN_FAILED', `${this.description}: ${err.message}`, { cause: err }));
      };
      const onError = (err: Error) => fail(err);
      const onAbort = () => fail(new TransportError('ABORTED', `${this.description}: open aborted`, { cause: signal?.reason }));
      const timer = setTimeout(() => fail(new TransportError('OPEN_FAILED', `${this.description}: connect timed out`)), this.#o.connectTimeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        s.removeListener('error', onError);
        signal?.removeEventListener('abort', onAbort);
      };
      s.once('error', onError);
      signal?.addEventListener('abort', onAbort, { once: true });
      s.once('connect', () => {
        cleanup();
        resolve(s);
      });
    });
    sock.setNoDelay(true);
    this.#sock = sock;
    this.#closing = false;
    this.#events.opened();
    let lastErr: Error | undefined;
    sock.on('data', (chunk: Buffer) => this.#events.data(chunk));
    sock.on('error', (err) => (lastErr = err));
    sock.once('close', () => {
      this.#sock = undefined;
      const err = this.#closing
        ? undefined
        : new TransportError(lastErr ? 'IO' : 'CLOSED', `${this.description}: ${lastErr?.message ?? 'closed by the other end'}`, { cause: lastErr });
      this.#events.closed(err);
    });
  }

  async write(data: Uint8Array): Promise<void> {
    const sock = this.#sock;
    if (!sock || sock.destroyed) throw new TransportError('NOT_OPEN', `${this.description}: not open`);
    await new Promise<void>((resolve, reject) =>
      sock.write(data, (err) => (err ? reject(new TransportError('IO', `${this.description}: ${err.message}`, { cause: err })) : resolve())),
    );
  }

  onData(cb: (chunk: Uint8Array) => void): () => void {
    return this.#events.onData(cb);
  }

  onClose(cb: (err?: Error) => void): () => void {
    return this.#events.onClose(cb);
  }

  async close(): Promise<void> {
    const sock = this.#sock;
    if (!sock) return;
    this.#closing = true;
    await new Promise<void>((resolve) => {
      sock.once('close', () => resolve());
      sock.end();
      setTimeout(() => sock.destroy(), 1000).unref();
    });
  }
}
