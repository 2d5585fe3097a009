/**
 * kmectl's output, all in one place: exit codes, errors that say what to do,
 * colour (only on a terminal, never with NO_COLOR), aligned tables, progress
 * bars (terminal only), and the single JSON document of --json.
 */

/** Exit codes of every kmectl command. */
export const EXIT = {
  /** Done; everything looked at is fine. */
  OK: 0,
  /** Done, but something needs attention (a check failed, a warning, a refusal). */
  ATTENTION: 1,
  /** Could not do it at all: keypoold unreachable, bad usage, unreadable configuration. */
  UNREACHABLE: 2,
  USAGE: 2,
} as const;

/** An error for the technician: what is wrong, what to do, and the exit code. */
export class KmectlError extends Error {
  override readonly name = 'KmectlError';
  constructor(
    message: string,
    readonly hint?: string,
    readonly exitCode: number = EXIT.ATTENTION,
    /** Machine-readable reason in --json. */
    readonly code: string = 'FAILED',
  ) {
    super(message);
  }
}

export const usageError = (message: string, hint = 'kmectl --help lists the commands') => new KmectlError(message, hint, EXIT.USAGE, 'USAGE');

export interface Streams {
  stdout: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  stderr: NodeJS.WritableStream;
  env: NodeJS.ProcessEnv;
}

type Paint = (s: string) => string;

export interface Palette {
  red: Paint;
  yellow: Paint;
  green: Paint;
  bold: Paint;
  dim: Paint;
}

const ANSI = /\x1b\[[0-9;]*m/g;
export const visibleLength = (s: string) => s.replace(ANSI, '').length;

function palette(on: boolean): Palette {
  const wrap = (open: number, close: number): Paint => (on ? (s) => `\x1b[${open}m${s}\x1b[${close}m` : (s) => s);
  return { red: wrap(31, 39), yellow: wrap(33, 39), green: wrap(32, 39), bold: wrap(1, 22), dim: wrap(2, 22) };
}

export type Level = 'ok' | 'warn' | 'fail';

/** One finding for the technician: what is wrong and how to fix it. */
export interface Problem {
  level: Exclude<Level, 'ok'>;
  message: string;
  fix?: string;
}

export class Ui {
  readonly json: boolean;
  readonly tty: boolean;
  readonly c: Palette;
  readonly #s: Streams;

  constructor(s: Streams, json: boolean) {
    this.#s = s;
    this.json = json;
    this.tty = s.stdout.isTTY === true && !json;
    const noColor = s.env.NO_COLOR !== undefined && s.env.NO_COLOR !== '';
    this.c = palette(this.tty && !noColor && s.env.TERM !== 'dumb');
  }

  /** A line of human output (nothing under --json). */
  line(text = ''): void {
    if (!this.json) this.#s.stdout.write(text + '\n');
  }

  lines(texts: string[]): void {
    for (const t of texts) this.line(t);
  }

  /** The one JSON document of --json. */
  document(value: unknown): void {
    this.#s.stdout.write(JSON.stringify(value, null, 2) + '\n');
  }

  /** Diagnostics that are not the command's output (stderr, also under --json). */
  note(text: string): void {
    this.#s.stderr.write(text + '\n');
  }

  level(l: Level, text = l === 'ok' ? 'OK' : l === 'warn' ? 'WARN' : 'FAIL'): string {
    return l === 'ok' ? this.c.green(text) : l === 'warn' ? this.c.yellow(text) : this.c.red(this.c.bold(text));
  }

  /** Problems as "! message" with "  -> fix" under each. */
  problems(list: Problem[]): void {
    for (const p of list) {
      this.line(`${this.level(p.level, p.level === 'fail' ? '✗' : '!')} ${p.message}`);
      if (p.fix) this.line(`  ${this.c.dim('->')} ${p.fix}`);
    }
  }

  error(e: KmectlError): void {
    if (this.json) {
      this.document({ ok: false, error: { code: e.code, message: e.message, ...(e.hint ? { hint: e.hint } : {}) } });
      return;
    }
    this.#s.stderr.write(`kmectl: ${e.message}\n`);
    if (e.hint) this.#s.stderr.write(`  what to do: ${e.hint}\n`);
  }

  /**
   * A progress bar on a terminal (redrawn in place); elsewhere nothing until
   * `end`, which prints one final line in human mode.
   */
  progress(label: string): Progress {
    const width = 30;
    let last = '';
    const draw = (done: number, total: number, final = false) => {
      const frac = total > 0 ? Math.min(1, done / total) : final ? 1 : 0;
      const n = Math.round(frac * width);
      const text = `${label} [${'#'.repeat(n)}${'.'.repeat(width - n)}] ${String(Math.round(frac * 100)).padStart(3)}%  ${done}/${total}`;
      if (text === last) return;
      last = text;
      this.#s.stdout.write(`\r${text}\x1b[K`);
    };
    return {
      update: (done, total) => {
        if (this.tty) draw(done, total);
      },
      end: (done, total, suffix = '') => {
        if (this.json) return;
        if (this.tty) {
          draw(done, total, true);
          this.#s.stdout.write(`${suffix ? `  ${suffix}` : ''}\n`);
        } else this.line(`${label}: ${done}/${total}${suffix ? `  ${suffix}` : ''}`);
      },
    };
  }
}

export interface Progress {
  update(done: number, total: number): void;
  end(done: number, total: number, suffix?: string): void;
}

/**
 * Rows as aligned columns (two spaces apart; the last column is not padded).
 * `right` lists the columns aligned right (numbers).
 */
export function table(rows: string[][], right: number[] = []): string[] {
  const width: number[] = [];
  for (const r of rows) r.forEach((v, i) => (width[i] = Math.max(width[i] ?? 0, visibleLength(v))));
  return rows.map((r) =>
    r
      .map((v, i) => {
        const pad = ' '.repeat(width[i]! - visibleLength(v));
        if (right.includes(i)) return pad + v;
        return i === r.length - 1 ? v : v + pad;
      })
      .join('  ')
      .trimEnd(),
  );
}

/** "label   value" lines, labels padded to one width. */
export function fields(pairs: Array<[string, string]>, indent = ''): string[] {
  const w = Math.max(0, ...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${indent}${k.padEnd(w)}  ${v}`);
}

export function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`;
}

/** 4000000 -> "4.00 Mbit/s". */
export function bitRate(bps: number): string {
  if (!(bps > 0)) return '0 bit/s';
  const units = ['bit/s', 'kbit/s', 'Mbit/s', 'Gbit/s'];
  let v = bps;
  let u = 0;
  while (v >= 1000 && u < units.length - 1) (v /= 1000), u++;
  return `${u === 0 ? v.toFixed(0) : v.toFixed(2)} ${units[u]}`;
}

export function percent(frac: number, digits = 1): string {
  return `${(frac * 100).toFixed(digits)}%`;
}
