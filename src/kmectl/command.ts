/** What every kmectl command gets, and what it gives back. */
import type { Admin, NodeContext } from './node.js';
import { usageError, type Ui } from './output.js';

/** Every option kmectl knows (each command says which it takes). */
export interface Options {
  config?: string;
  node?: string;
  demo?: string;
  json?: boolean;
  help?: boolean;
  allow?: string;
  csr?: string;
  cert?: string;
  issue?: boolean;
  kme?: string;
  'ca-key'?: string;
  'ca-cert'?: string;
  out?: string;
  force?: boolean;
  days?: string;
  'new-key'?: boolean;
  only?: string;
  dns?: string;
  ip?: string;
  since?: string;
  until?: string;
  event?: string;
  anchor?: string;
  seconds?: string;
  link?: string;
  'passphrase-file'?: string;
}

export interface CommandContext {
  ui: Ui;
  /** Positional words after the command (and its sub-command). */
  words: string[];
  opts: Options;
  node: NodeContext;
  /** keypoold's maintenance socket of the node (opened on first use). */
  admin(): Admin;
  cwd: string;
}

export interface CommandResult {
  /** Exit code (see EXIT in output.ts). */
  code: number;
  /** The --json document. */
  json: unknown;
}

export interface CommandSpec {
  /** "sae add <SAE_ID> [--allow ...]": shown in help. */
  usage: string[];
  /** Options it takes besides the node selection and --json. */
  options: Array<keyof Options>;
  run(ctx: CommandContext): Promise<CommandResult>;
}

/** A number option: integer in [min, max]. */
export function intOption(name: string, v: string | undefined, dflt: number, min: number, max: number): number {
  if (v === undefined) return dflt;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) throw usageError(`--${name} must be a whole number from ${min} to ${max}, got "${v}"`);
  return n;
}

/** "a,b, c" -> ["a","b","c"] */
export const list = (v: string | undefined): string[] => (v === undefined ? [] : v.split(',').map((s) => s.trim()).filter((s) => s.length > 0));
