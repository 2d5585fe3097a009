/**
 * Client side of an NDJSON request/response channel (wire format in
 * ./pool-protocol.ts): one persistent connection, many calls in flight on it,
 * answers matched by id. Used over a Unix socket for the local pool API and
 * over mutual TLS between the keypoolds of a link.
 *
 * Connection policy: the first call connects (and waits for that connect).
 * When the connection drops, every pending call fails with UNAVAILABLE and the
 * client reconnects in the background with capped exponential backoff (one
 * timer at most). Calls made while a reconnect is waiting fail at once with
 * UNAVAILABLE rather than queueing behind a dead daemon.
 */
import { connect, type Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { KmeError, type KmeErrorCode } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import { LineSplitter, writeCoalesced } from './ndjson-lines.js';
import { MAX_IPC_LINE_BYTES, type PoolClient, type PoolOp, type PoolOps, type PoolResponse } from './pool-protocol.js';

export interface BackoffOptions {
  /** First delay after a failed reconnect; default 100 ms. */
  initialMs?: number;
  /** Cap of the delay; default 5000 ms. */
  maxMs?: number;
}

export interface NdjsonClientOptions {
  /** Opens a new connection; the channel is usable once `readyEvent` fires on it. */
  connect: () => Socket | TLSSocket;
  readyEvent: 'connect' | 'secureConnect';
  /** Names the other end in logs. */
  describe: string;
  /** The error calls fail with when the other end cannot be reached. */
  unavailable: () => KmeError;
  logger: Logger;
  /** Per-call deadline; default 10000 ms. */
  timeoutMs?: number;
  backoff?: BackoffOptions;
  maxLineBytes?: number;
  /** Told when the channel comes up (true) or a working channel is lost (false). */
  onConnectionChange?: (up: boolean) => void;
  /**
   * A request made while waiting to reconnect tries to connect at once (and waits for that
   * attempt) instead of failing: for a local socket, where an attempt costs nothing.
   */
  reconnectOnRequest?: boolean;
}

export interface NdjsonPoolClientOptions {
  path: string;
  logger: Logger;
  /** Per-call deadline; default 10000 ms. */
  timeoutMs?: number;
  backoff?: BackoffOptions;
}

interface Pending {
  resolve(v: unknown): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

const CODES: ReadonlySet<string> = new Set<KmeErrorCode>(['BAD_REQUEST', 'UNAUTHORIZED', 'UNAVAILABLE', 'INTERNAL']);

type State = 'idle' | 'connecting' | 'connected' | 'backoff' | 'closed';

export class NdjsonClient {
  private readonly opts: NdjsonClientOptions;
  private readonly logger: Logger;
  private readonly timeoutMs: number;
  private readonly initialDelay: number;
  private readonly maxDelay: number;

  private state: State = 'idle';
  private sock: Socket | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private delay: number;
  private timer: NodeJS.Timeout | null = null;

  constructor(opts: NdjsonClientOptions) {
    this.opts = opts;
    this.logger = opts.logger;
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.initialDelay = opts.backoff?.initialMs ?? 100;
    this.maxDelay = opts.backoff?.maxMs ?? 5_000;
    this.delay = this.initialDelay;
  }

  /** True while a connection is up (or being set up). */
  get connected(): boolean {
    return this.state === 'connected';
  }

  /**
   * Send one request. With `now`, the line goes to the socket at once rather
   * than with the others of this tick (for a caller about to block, e.g. on fsync).
   */
  request(op: string, args: unknown, now = false): Promise<unknown> {
    if (this.state === 'backoff' && this.opts.reconnectOnRequest) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = null;
      this.open();
    }
    if (this.state === 'idle') this.open();
    if (this.state !== 'connected' && this.state !== 'connecting') return Promise.reject(this.opts.unavailable());
    const sock = this.sock!;
    const id = this.nextId++;
    if (this.nextId > Number.MAX_SAFE_INTEGER) this.nextId = 1;
    let line: string;
    try {
      line = JSON.stringify({ id, op, args }) + '\n';
    } catch (e) {
      return Promise.reject(e as Error);
    }
    return new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) reject(this.opts.unavailable());
      }, this.timeoutMs);
      this.pending.set(id, { resolve, reject, timer });
      if (now && sock.writableCorked === 0) sock.write(line);
      else writeCoalesced(sock, line);
    });
  }

  close(): Promise<void> {
    if (this.state === 'closed') return Promise.resolve();
    this.state = 'closed';
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    this.failPending();
    const sock = this.sock;
    this.sock = null;
    if (!sock || sock.destroyed) return Promise.resolve();
    return new Promise((resolve) => {
      sock.once('close', () => resolve());
      sock.destroy();
    });
  }

  private open(): void {
    this.state = 'connecting';
    const sock = this.opts.connect();
    this.sock = sock;
    const splitter = new LineSplitter(this.opts.maxLineBytes ?? MAX_IPC_LINE_BYTES, {
      line: (buf) => this.onLine(buf, sock),
      overflow: () => {
        this.logger.error({ to: this.opts.describe }, 'response line too long; dropping connection');
        sock.destroy();
        return false;
      },
    });
    sock.on(this.opts.readyEvent, () => {
      if (this.sock !== sock) return;
      this.state = 'connected';
      this.delay = this.initialDelay;
      this.logger.info({ to: this.opts.describe }, 'connected');
      this.opts.onConnectionChange?.(true);
    });
    sock.on('data', (chunk: Buffer) => splitter.push(chunk));
    sock.on('error', (err) => {
      if (this.sock === sock) this.logger.debug({ err: err.message, to: this.opts.describe }, 'socket error');
    });
    sock.on('close', () => {
      splitter.stop();
      if (this.sock !== sock) return;
      this.sock = null;
      const wasConnected = this.state === 'connected';
      this.failPending();
      if (this.state === 'closed') return;
      if (wasConnected) this.logger.warn({ to: this.opts.describe }, 'connection lost');
      this.scheduleReconnect(wasConnected);
      if (wasConnected) this.opts.onConnectionChange?.(false);
    });
  }

  private scheduleReconnect(immediate: boolean): void {
    this.state = 'backoff';
    if (this.timer) return;
    const wait = immediate ? 0 : this.delay;
    if (!immediate) this.delay = Math.min(this.delay * 2, this.maxDelay);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.state === 'backoff') this.open();
    }, wait);
    this.timer.unref();
  }

  private onLine(buf: Buffer, sock: Socket): void {
    let msg: PoolResponse;
    try {
      msg = JSON.parse(buf.toString('utf8')) as PoolResponse;
    } catch {
      this.logger.error({ to: this.opts.describe }, 'unparsable response; dropping connection');
      sock.destroy();
      return;
    }
    const p = typeof msg?.id === 'number' ? this.pending.get(msg.id) : undefined;
    if (!p) return; // timed out already, or not ours
    this.pending.delete(msg.id);
    clearTimeout(p.timer);
    if (msg.ok === true) {
      p.resolve(msg.result);
    } else {
      p.reject(toKmeError(msg.error));
    }
  }

  private failPending(): void {
    if (this.pending.size === 0) return;
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const p of all) {
      clearTimeout(p.timer);
      p.reject(this.opts.unavailable());
    }
  }
}

/** The local pool API client: kme-api (and tools) to keypoold over its Unix socket. */
export class NdjsonPoolClient implements PoolClient {
  readonly #c: NdjsonClient;

  constructor(opts: NdjsonPoolClientOptions) {
    this.#c = new NdjsonClient({
      connect: () => connect(opts.path),
      readyEvent: 'connect',
      describe: `keypoold at ${opts.path}`,
      unavailable: () => new KmeError('UNAVAILABLE', 'key pool daemon unavailable'),
      logger: opts.logger,
      timeoutMs: opts.timeoutMs,
      backoff: opts.backoff,
      // keypoold restarted: the first request after it is back reconnects at once.
      reconnectOnRequest: true,
    });
  }

  call<O extends PoolOp>(op: O, args: PoolOps[O]['args']): Promise<PoolOps[O]['result']> {
    return this.#c.request(op, args) as Promise<PoolOps[O]['result']>;
  }

  close(): Promise<void> {
    return this.#c.close();
  }
}

function toKmeError(e: unknown): KmeError {
  const err = e as { code?: unknown; message?: unknown; details?: unknown } | null | undefined;
  if (!err || typeof err.code !== 'string' || !CODES.has(err.code) || typeof err.message !== 'string') {
    return new KmeError('INTERNAL', 'internal error');
  }
  const details = Array.isArray(err.details) ? (err.details as Array<Record<string, unknown>>) : undefined;
  return new KmeError(err.code as KmeErrorCode, err.message, details);
}
