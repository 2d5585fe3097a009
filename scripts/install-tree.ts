/**
 * Copies the firmware's runtime files into its install folder; used by
 * scripts/install, not by people.
 *
 *   node dist/scripts/install-tree.js <repository root> <destination, e.g. /opt/kme> [--node <path>]
 *
 * Copies dist/, package.json, package-lock.json, README.md, the production
 * packages of node_modules (those package-lock.json does not mark `dev`), and
 * with --node the Node binary as bin/node: the firmware runs on the very
 * runtime its native addons were built for. A file whose size and
 * modification time already match is left alone (times are copied), so a
 * second run changes nothing; files under dist/ and node_modules/ that the
 * source no longer has are removed. Prints one summary line:
 *
 *   tree: 12 added, 3 updated, 1 removed, 4021 unchanged
 */
import {
  chmodSync, copyFileSync, existsSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmdirSync,
  symlinkSync, unlinkSync, utimesSync, type Stats,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

interface Counts {
  added: number;
  updated: number;
  removed: number;
  unchanged: number;
}

/** Top-level names under node_modules of the packages production needs (scoped ones as "@scope/name"). */
export function productionPackages(lock: { packages?: Record<string, { dev?: boolean }> }): string[] {
  const out = new Set<string>();
  for (const [key, entry] of Object.entries(lock.packages ?? {})) {
    if (!key.startsWith('node_modules/') || entry.dev === true) continue;
    const rest = key.slice('node_modules/'.length);
    const parts = rest.split('/');
    // Nested copies (a/node_modules/b) travel with their top-level package.
    out.add(parts[0]!.startsWith('@') ? `${parts[0]}/${parts[1]}` : parts[0]!);
  }
  return [...out].sort();
}

/** Same size and modification time (to the millisecond: utimes may round the sub-millisecond part). */
const sameFile = (a: Stats, b: Stats) => a.size === b.size && Math.abs(a.mtimeMs - b.mtimeMs) < 1;
/** Installed files are never group/other writable. */
const installMode = (s: Stats) => s.mode & 0o755;

function copyOne(src: string, dst: string, counts: Counts, planned: Set<string>): void {
  planned.add(dst);
  const s = lstatSync(src);
  let d: Stats | undefined;
  try {
    d = lstatSync(dst);
  } catch {
    d = undefined;
  }
  if (s.isSymbolicLink()) {
    const target = readlinkSync(src);
    if (d?.isSymbolicLink() && readlinkSync(dst) === target) {
      counts.unchanged++;
      return;
    }
    if (d) unlinkSync(dst);
    mkdirSync(dirname(dst), { recursive: true, mode: 0o755 });
    symlinkSync(target, dst);
    d ? counts.updated++ : counts.added++;
    return;
  }
  if (d?.isFile() && sameFile(s, d) && (d.mode & 0o7777) === installMode(s)) {
    counts.unchanged++;
    return;
  }
  if (d && !d.isFile()) throw new Error(`${dst} is in the way (not a regular file)`);
  mkdirSync(dirname(dst), { recursive: true, mode: 0o755 });
  if (d) unlinkSync(dst); // a running daemon keeps its open copy
  copyFileSync(src, dst);
  chmodSync(dst, installMode(s));
  utimesSync(dst, s.atimeMs / 1000, s.mtimeMs / 1000);
  d ? counts.updated++ : counts.added++;
}

function copyTree(src: string, dst: string, counts: Counts, planned: Set<string>): void {
  for (const e of readdirSync(src, { withFileTypes: true })) {
    const s = join(src, e.name);
    const d = join(dst, e.name);
    if (e.isDirectory()) copyTree(s, d, counts, planned);
    else if (e.isFile() || e.isSymbolicLink()) copyOne(s, d, counts, planned);
  }
}

/** Remove what is under `dir` and not planned; then folders left empty. */
function prune(dir: string, planned: Set<string>, counts: Counts): void {
  if (!existsSync(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      prune(p, planned, counts);
      if (readdirSync(p).length === 0) rmdirSync(p);
    } else if (!planned.has(p)) {
      unlinkSync(p);
      counts.removed++;
    }
  }
}

export function installTree(repo: string, dest: string, node?: string): Counts {
  const counts: Counts = { added: 0, updated: 0, removed: 0, unchanged: 0 };
  const planned = new Set<string>();
  if (!existsSync(join(repo, 'dist', 'src', 'keypoold', 'main.js'))) throw new Error(`${repo}/dist is not built: run npm run build`);
  mkdirSync(dest, { recursive: true, mode: 0o755 });
  for (const f of ['package.json', 'package-lock.json', 'README.md']) copyOne(join(repo, f), join(dest, f), counts, planned);
  copyTree(join(repo, 'dist'), join(dest, 'dist'), counts, planned);
  const lock = JSON.parse(readFileSync(join(repo, 'package-lock.json'), 'utf8')) as Parameters<typeof productionPackages>[0];
  for (const name of productionPackages(lock)) {
    const src = join(repo, 'node_modules', name);
    if (!existsSync(src)) throw new Error(`node_modules/${name} is missing: run npm ci`);
    copyTree(src, join(dest, 'node_modules', name), counts, planned);
  }
  if (node) copyOne(resolve(node), join(dest, 'bin', 'node'), counts, planned);
  prune(join(dest, 'dist'), planned, counts);
  prune(join(dest, 'node_modules'), planned, counts);
  return counts;
}

function main(argv: string[]): void {
  const args = argv.slice(2);
  const i = args.indexOf('--node');
  const node = i >= 0 ? args.splice(i, 2)[1] : undefined;
  const [repo, dest] = args;
  if (!repo || !dest) {
    process.stderr.write('usage: install-tree <repository root> <destination> [--node <path>]\n');
    process.exit(2);
  }
  try {
    const c = installTree(resolve(repo), resolve(dest), node);
    process.stdout.write(`tree: ${c.added} added, ${c.updated} updated, ${c.removed} removed, ${c.unchanged} unchanged\n`);
  } catch (e) {
    process.stderr.write(`install-tree: ${(e as Error).message}\n`);
    process.exit(1);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(resolve(process.argv[1])).href) main(process.argv);
