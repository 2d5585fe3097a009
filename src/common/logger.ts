/**
 * Structured JSON-lines logging (pino) to stdout, for journald. Loggers are
 * created once in a composition root and injected. Never pass key material,
 * PINs or whole request bodies to a logger: the redact list below is a last
 * line of defence, not the policy.
 */
import { pino, type Logger } from 'pino';

export type { Logger };

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';

export function createLogger(name: string, level: LogLevel = 'info'): Logger {
  return pino({
    name,
    level,
    base: { pid: process.pid },
    redact: { paths: ['key', '*.key', 'keys', '*.keys', 'material', '*.material', 'pin', '*.pin'], censor: '[redacted]' },
  });
}

/** A logger that drops everything; for unit tests. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
