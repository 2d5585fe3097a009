/**
 * Where a simulated module is reachable: a socat pseudo-terminal pair (the KME
 * opens one end as a serial port, the simulator speaks on the other), or a
 * Unix/TCP socket it listens on. Each can be unplugged (the device disappears)
 * and plugged back at the same place.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, closeSync, constants, lstatSync, mkdirSync, openSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { basename, delimiter, dirname, join } from 'node:path';
import type { Duplex } from 'node:stream';
import { ReadStream } from 'node:tty';
import type { Logger } from '../../src/common/logger.js';
import type { SimDevice } from './config.js';
import { canConnect } from './control-socket.js';

/** The module side that a device hands its byte stream to. */
export interface StreamSink {
  attach(stream: Duplex): void;
  detach(stream: Duplex): void;
  /** False while the module is powered off: a socket device then refuses connections. */
  acceptsConnections(): boolean;
}

export interface DeviceHost {
  /** Where the KME connects, e.g. "pty /run/kme/qkd0". */
  readonly where: string;
  start(): Promise<void>;
  /** The device disappears (the KME-side path or listener goes away). */
  unplug(): Promise<void>;
  /** The device comes back at the same place. */
  replug(): Promise<void>;
  /** Drops the current connection (a socket peer sees it close); no-op for a pty. */
  dropConnection(): void;
  stop(): Promise<void>;
  status(): Record<string, unknown>;
}

export function createDevice(device: SimDevice, sink: StreamSink, logger: Logger): DeviceHost {
  switch (device.kind) {
    case 'pty':
      return new PtyDevice(device.link, sink, logger);
    case 'unix':
      return new SocketDevice({ path: device.path }, sink, logger);
    case 'tcp':
      return new SocketDevice({ host: device.host, port: device.port }, sink, logger);
  }
}

/** The socat binary on PATH, or undefined. */
export function findSocat(envPath = process.env.PATH ?? ''): string | undefined {
  for (const dir of envPath.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, 'socat');
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

/** Removes `p` if it is a symlink or a socket (what socat or a listener leaves behind); refuses anything else. */
function removeStale(p: string, what: 'symlink' | 'socket'): void {
  let st;
  try {
    st = lstatSync(p);
  } catch {
    return;
  }
  if (what === 'symlink' ? !st.isSymbolicLink() : !st.isSocket()) {
    throw new Error(`${p} exists and is not a ${what}; refusing to replace it`);
  }
  unlinkSync(p);
}

/**
 * The sim end of a pty as one non-blocking stream for reading and writing: a
 * node:tty ReadStream (a net.Socket on a libuv TTY handle; libuv reopens the
 * slave so O_NONBLOCK stays ours). Not serialport: its bindings-cpp Poller
 * passes only the newest event to uv_poll_start (poller.cpp, Poller::poll), so
 * a read poll cancels a pending write poll and a port that writes a lot while
 * it also reads stalls for good. Not tty.WriteStream either: Node makes TTY
 * writes blocking, which would freeze the simulator when nobody reads the KME end.
 */
function openTty(path: string): ReadStream {
  const fd = openSync(path, constants.O_RDWR | constants.O_NOCTTY | constants.O_NONBLOCK);
  try {
    const s = new ReadStream(fd);
    s.setRawMode(true);
    return s;
  } catch (e) {
    closeSync(fd);
    throw new Error(`cannot open ${path} as a tty: ${(e as Error).message}`);
  }
}

/**
 * `socat -d -d pty,raw,echo=0,link=<kme path> pty,raw,echo=0,link=<sim path>`.
 * The simulator speaks on the sim end (openTty). Unplug kills socat (the
 * KME's port sees a hang-up and the path disappears); replug spawns it again.
 * A socat that dies on its own is respawned.
 */
export class PtyDevice implements DeviceHost {
  readonly where: string;
  readonly simPath: string;
  #socat: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #port: ReadStream | undefined;
  #wanted = false;
  #respawnTimer: NodeJS.Timeout | undefined;
  #spawns = 0;

  constructor(
    readonly kmePath: string,
    private readonly sink: StreamSink,
    private readonly logger: Logger,
    private readonly socatBin = findSocat() ?? 'socat',
  ) {
    this.where = `pty ${kmePath}`;
    this.simPath = join(dirname(kmePath), `.${basename(kmePath)}.sim`);
  }

  async start(): Promise<void> {
    this.#wanted = true;
    await this.#up();
  }

  async replug(): Promise<void> {
    await this.start();
  }

  async unplug(): Promise<void> {
    this.#wanted = false;
    await this.#down();
  }

  async stop(): Promise<void> {
    await this.unplug();
  }

  dropConnection(): void {
    /* A serial line has no connection to drop. */
  }

  status() {
    return { kind: 'pty', link: this.kmePath, sim_side: this.simPath, plugged: this.#port !== undefined, socat_pid: this.#socat?.pid ?? null, socat_spawns: this.#spawns };
  }

  async #up(): Promise<void> {
    if (this.#socat) return;
    mkdirSync(dirname(this.kmePath), { recursive: true });
    removeStale(this.kmePath, 'symlink');
    removeStale(this.simPath, 'symlink');
    const args = ['-d', '-d', `pty,raw,echo=0,link=${this.kmePath}`, `pty,raw,echo=0,link=${this.simPath}`];
    const child = spawn(this.socatBin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    this.#socat = child;
    this.#spawns++;
    let stderr = '';
    this.#exited = new Promise<void>((resolve) => {
      child.once('close', (code, signal) => {
        if (this.#socat === child) this.#socat = undefined;
        // socat removes its links on SIGTERM; after a crash or SIGKILL they would dangle.
        for (const p of [this.kmePath, this.simPath]) {
          try {
            removeStale(p, 'symlink');
          } catch {
            /* not ours */
          }
        }
        if (this.#wanted) {
          this.logger.warn({ device: this.where, code, signal }, 'socat exited on its own; respawning');
          this.#closePort();
          this.#respawnTimer = setTimeout(() => {
            this.#respawnTimer = undefined;
            if (this.#wanted) this.#up().catch((e: Error) => this.logger.error({ device: this.where, err: e.message }, 'socat respawn failed'));
          }, 200);
        }
        resolve();
      });
    });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => finish(new Error(`socat did not set up ${this.kmePath} within 5 s: ${stderr.trim()}`)), 5000);
      const finish = (err?: Error) => {
        clearTimeout(timer);
        child.stderr?.removeListener('data', onData);
        child.removeListener('close', onClose);
        child.removeListener('error', onError);
        if (err) reject(err);
        else resolve();
      };
      const onData = (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('starting data transfer loop')) finish();
      };
      const onClose = (code: number | null) => finish(new Error(`socat exited (code ${code}) before setting up ${this.kmePath}: ${stderr.trim()}`));
      const onError = (e: Error) => finish(new Error(`cannot run socat: ${e.message}`));
      child.stderr?.on('data', onData);
      child.once('close', onClose);
      child.once('error', onError);
    }).catch(async (e: Error) => {
      this.#wanted = false;
      child.kill('SIGTERM');
      await this.#exited;
      throw e;
    });
    child.stderr?.resume();
    // Unplugged or stopped while socat was starting: leave it to #down.
    if (!this.#wanted || this.#socat !== child) return;
    let port: ReadStream;
    try {
      port = openTty(this.simPath);
    } catch (e) {
      this.#wanted = false;
      child.kill('SIGTERM');
      await this.#exited;
      throw e;
    }
    port.on('error', (e) => this.logger.debug({ device: this.where, err: e.message }, 'sim side of the pty failed'));
    port.once('close', () => {
      if (this.#port === port) {
        this.#port = undefined;
        this.sink.detach(port);
      }
    });
    this.#port = port;
    this.sink.attach(port);
    this.logger.info({ device: this.where, socat_pid: child.pid }, 'pty device plugged');
  }

  #closePort(): void {
    const port = this.#port;
    if (!port) return;
    this.#port = undefined;
    this.sink.detach(port);
    port.destroy();
  }

  async #down(): Promise<void> {
    clearTimeout(this.#respawnTimer);
    this.#respawnTimer = undefined;
    this.#closePort();
    const child = this.#socat;
    if (!child) return;
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 2000);
    await this.#exited;
    clearTimeout(killer);
    this.logger.info({ device: this.where }, 'pty device unplugged');
  }
}

/**
 * A Unix or TCP listener, one connection at a time: a new connection replaces
 * the current one (a host reconnecting after a half-open socket wins). Unplug
 * closes the listener and the connection and removes the Unix socket file.
 */
export class SocketDevice implements DeviceHost {
  readonly where: string;
  #server: Server | undefined;
  #conn: Socket | undefined;
  #port: number | undefined;
  #connections = 0;

  constructor(
    private readonly addr: { path: string } | { host: string; port: number },
    private readonly sink: StreamSink,
    private readonly logger: Logger,
  ) {
    this.where = 'path' in addr ? `unix ${addr.path}` : `tcp ${addr.host}:${addr.port}`;
  }

  async start(): Promise<void> {
    if (this.#server) return;
    if ('path' in this.addr) {
      mkdirSync(dirname(this.addr.path), { recursive: true });
      if (await canConnect(this.addr.path)) throw new Error(`${this.addr.path} is in use by another process`);
      removeStale(this.addr.path, 'socket');
    }
    const server = createServer((sock) => this.#onConnection(sock));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const onListening = () => {
        server.removeListener('error', reject);
        resolve();
      };
      if ('path' in this.addr) server.listen(this.addr.path, onListening);
      else server.listen(this.#port ?? this.addr.port, this.addr.host, onListening);
    });
    server.on('error', (e) => this.logger.error({ device: this.where, err: e.message }, 'listener failed'));
    const a = server.address();
    if (a && typeof a === 'object') this.#port = a.port;
    this.#server = server;
    this.logger.info({ device: this.where, port: this.#port }, 'socket device listening');
  }

  async replug(): Promise<void> {
    await this.start();
  }

  async unplug(): Promise<void> {
    const server = this.#server;
    this.#server = undefined;
    this.dropConnection();
    if (server) await new Promise<void>((r) => server.close(() => r()));
    if ('path' in this.addr) {
      try {
        removeStale(this.addr.path, 'socket');
      } catch {
        /* not ours any more */
      }
    }
  }

  async stop(): Promise<void> {
    await this.unplug();
  }

  dropConnection(): void {
    const c = this.#conn;
    this.#conn = undefined;
    if (c) {
      this.sink.detach(c);
      c.destroy();
    }
  }

  status() {
    return 'path' in this.addr
      ? { kind: 'unix', path: this.addr.path, plugged: this.#server !== undefined, connected: this.#conn !== undefined, connections: this.#connections }
      : { kind: 'tcp', host: this.addr.host, port: this.#port ?? this.addr.port, plugged: this.#server !== undefined, connected: this.#conn !== undefined, connections: this.#connections };
  }

  #onConnection(sock: Socket): void {
    if (!this.sink.acceptsConnections()) {
      sock.destroy();
      return;
    }
    this.#connections++;
    this.dropConnection();
    this.#conn = sock;
    sock.setNoDelay?.(true);
    sock.on('error', (e) => this.logger.debug({ device: this.where, err: e.message }, 'connection failed'));
    sock.once('close', () => {
      if (this.#conn === sock) {
        this.#conn = undefined;
        this.sink.detach(sock);
      }
    });
    this.sink.attach(sock);
  }
}

