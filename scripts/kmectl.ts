#!/usr/bin/env node
/**
 * kmectl: the field technician's tool (src/kmectl/). `kmectl --help` lists
 * the commands; the README's "kmectl (field technicians)" explains them.
 *
 *   node dist/scripts/kmectl.js <command> [--config <node config> | --node <KME_ID> [--demo <demo.json>]] [--json]
 */
import { runKmectl } from '../src/kmectl/main.js';

// Output piped into `head` and closed early: the rest is dropped, the exit code stays the command's.
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code !== 'EPIPE' && e.code !== 'ERR_STREAM_DESTROYED') throw e;
});

runKmectl(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e: unknown) => {
    process.stderr.write(`kmectl: unexpected failure: ${(e as Error)?.stack ?? String(e)}\n`);
    process.exitCode = 1;
  },
);
