/**
 * sd_notify(3) for the daemons: READY=1, STATUS=, STOPPING=1 and a watchdog
 * that sends WATCHDOG=1 only while the daemon says it is healthy.
 *
 * Transport: the notify socket is a Unix *datagram* socket ($NOTIFY_SOCKET),
 * which Node cannot open. We send through `unix-dgram` (a small native addon,
 * socket/sendto/close and nothing else; no libsystemd needed at build time).
 * Like libsystemd's sd_notify, each message opens a socket, sends one
 * datagram and closes it, so no handle keeps the event loop alive. The
 * datagram comes from our own PID, so the units keep NotifyAccess=main
 * (spawning `systemd-notify` would need NotifyAccess=all and races: systemd
 * may not attribute a message from a child that has already exited).
 *
 * Without $NOTIFY_SOCKET (a developer's shell, the demo, the tests) every
 * call is a no-op. Abstract-namespace sockets ("@...") are not supported by
 * the addon; systemd's system manager uses a path (/run/systemd/notify).
 */
import { createRequire } from 'node:module';
import { constants as osc } from 'node:os';
import { isAbsolute } from 'node:path';
import type { Logger } from './logger.js';

/** Sends one datagram to the Unix socket at `path`; throws on failure. */
export type DatagramSend = (path: string, message: Buffer) => void;

type NotifyLogger = Pick<Logger, 'info' | 'warn'>;

export interface SdNotifier {
  /** True when messages go to a service manager ($NOTIFY_SOCKET set and usable). */
  readonly enabled: boolean;
  /** Send newline-separated assignments (`READY=1\nSTATUS=...`); false if not sent. */
  notify(state: string): boolean;
  /** READY=1 (start-up finished), with a STATUS= line. */
  ready(status?: string): void;
  /** STATUS=: one line of free text shown by `systemctl status`. */
  status(text: string): void;
  /** STOPPING=1 (shutdown has begun), with a STATUS= line. */
  stopping(status?: string): void;
  /** WATCHDOG=1: the keep-alive ping. Prefer startWatchdog, which pings only while healthy. */
  watchdog(): void;
}

export interface SdNotifierOptions {
  env?: NodeJS.ProcessEnv;
  logger?: NotifyLogger;
  /** Injected transport (tests); default: unix-dgram. */
  send?: DatagramSend;
}

/** A STATUS= value is one line. */
function oneLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 1000);
}

export function createSdNotifier(opts: SdNotifierOptions = {}): SdNotifier {
  const env = opts.env ?? process.env;
  const path = env.NOTIFY_SOCKET;
  const logger = opts.logger;
  let send: DatagramSend | undefined;
  if (path !== undefined && path !== '') {
    if (!isAbsolute(path)) {
      logger?.warn({ notify_socket: path }, 'NOTIFY_SOCKET is not a filesystem path (abstract or vsock): sd_notify disabled');
    } else {
      try {
        send = opts.send ?? unixDgramSend();
      } catch (e) {
        logger?.warn({ err: (e as Error).message }, 'cannot load the unix-dgram addon: sd_notify disabled');
      }
    }
  }
  let failing = false;
  const notify = (state: string): boolean => {
    if (!send || path === undefined) return false;
    try {
      send(path, Buffer.from(state, 'utf8'));
      if (failing) logger?.info({ notify_socket: path }, 'sd_notify works again');
      failing = false;
      return true;
    } catch (e) {
      // Logged once per failing spell: a dead manager socket must not flood the journal.
      if (!failing) logger?.warn({ err: (e as Error).message, notify_socket: path }, 'sd_notify failed');
      failing = true;
      return false;
    }
  };
  const withStatus = (line: string, status?: string) => (status === undefined ? line : `${line}\nSTATUS=${oneLine(status)}`);
  return {
    enabled: send !== undefined,
    notify,
    ready: (status) => void notify(withStatus('READY=1', status)),
    status: (text) => void notify(`STATUS=${oneLine(text)}`),
    stopping: (status) => void notify(withStatus('STOPPING=1', status)),
    watchdog: () => void notify('WATCHDOG=1'),
  };
}

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, cb: (err?: Error) => void): void;
  close(): void;
}
interface UnixDgramModule {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

/** The default transport: a fresh datagram socket per message, as libsystemd does. */
function unixDgramSend(): DatagramSend {
  const unix = createRequire(import.meta.url)('unix-dgram') as UnixDgramModule;
  return (path, message) => {
    const sock = unix.createSocket('unix_dgram');
    let failure: Error | undefined;
    try {
      // The callback runs synchronously (the addon's sendto is non-blocking).
      sock.send(message, 0, message.length, path, (err) => {
        failure = err;
      });
    } finally {
      sock.close();
    }
    if (failure) throw new Error(`sendto ${path}: ${errnoName(failure)}`);
  };
}

/** The addon reports `send -2`; say ENOENT. */
function errnoName(e: Error & { errno?: unknown }): string {
  const n = typeof e.errno === 'number' ? -e.errno : NaN;
  const name = Object.entries(osc.errno).find(([, v]) => v === n)?.[0];
  return name ?? e.message;
}

/**
 * The watchdog period systemd expects, in ms ($WATCHDOG_USEC), or undefined
 * when no watchdog is asked of this process ($WATCHDOG_PID names another).
 */
export function watchdogTimeoutMs(env: NodeJS.ProcessEnv = process.env, pid = process.pid): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isSafeInteger(usec) || usec <= 0) return undefined;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return usec / 1000;
}

export interface HealthVerdict {
  healthy: boolean;
  /** Sent as STATUS= whenever it changes. */
  status?: string;
}

export interface WatchdogOptions {
  notifier: SdNotifier;
  /**
   * Is the daemon healthy now? Called every period; WATCHDOG=1 goes out only
   * for a true verdict. A check that throws, or is still running at the next
   * period, counts as unhealthy.
   */
  check: () => boolean | HealthVerdict | Promise<boolean | HealthVerdict>;
  env?: NodeJS.ProcessEnv;
  pid?: number;
  logger?: NotifyLogger;
}

export interface Watchdog {
  /** Ping period in ms (half of $WATCHDOG_USEC); undefined when no watchdog runs. */
  readonly periodMs: number | undefined;
  /** Whether the last check found the daemon healthy. */
  readonly healthy: boolean;
  stop(): void;
}

/**
 * Ping the service manager every half watchdog period while `check` says the
 * daemon is healthy; stop pinging (so systemd restarts the daemon once
 * WatchdogSec passes) while it is not. A no-op without $WATCHDOG_USEC.
 */
export function startWatchdog(opts: WatchdogOptions): Watchdog {
  const timeout = watchdogTimeoutMs(opts.env, opts.pid);
  const { notifier, logger } = opts;
  const state = { healthy: true, status: undefined as string | undefined };
  if (timeout === undefined || !notifier.enabled) {
    return { periodMs: undefined, get healthy() { return state.healthy; }, stop() {} };
  }
  const periodMs = Math.max(1, Math.floor(timeout / 2));
  let inFlight = false;
  let stopped = false;

  const verdict = (healthy: boolean, status: string | undefined) => {
    if (stopped) return;
    if (healthy !== state.healthy) {
      if (healthy) logger?.info({ status }, 'healthy again: watchdog pings resume');
      else logger?.warn({ status, watchdog_ms: timeout }, 'unhealthy: watchdog pings withheld, systemd restarts the daemon if this lasts');
    }
    state.healthy = healthy;
    if (status !== undefined && status !== state.status) {
      state.status = status;
      notifier.status(status);
    }
    if (healthy) notifier.watchdog();
  };

  const tick = () => {
    if (inFlight) {
      verdict(false, 'health check did not finish within the watchdog period');
      return;
    }
    inFlight = true;
    let result: ReturnType<WatchdogOptions['check']>;
    try {
      result = opts.check();
    } catch (e) {
      inFlight = false;
      verdict(false, `health check failed: ${(e as Error).message}`);
      return;
    }
    Promise.resolve(result).then(
      (r) => {
        inFlight = false;
        const v = typeof r === 'boolean' ? { healthy: r } : r;
        verdict(v.healthy, v.status);
      },
      (e: unknown) => {
        inFlight = false;
        verdict(false, `health check failed: ${(e as Error)?.message ?? String(e)}`);
      },
    );
  };

  const timer = setInterval(tick, periodMs);
  timer.unref();
  tick();
  return {
    periodMs,
    get healthy() {
      return state.healthy;
    },
    stop() {
      stopped = true;
      clearInterval(timer);
    },
  };
}
