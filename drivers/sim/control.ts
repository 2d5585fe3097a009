/**
 * Drives a running simulator through its control socket:
 *
 *   node dist/drivers/sim/control.js --socket <path> [--module <id|index>] <fault> <seconds>
 *   node dist/drivers/sim/control.js --socket <path> status
 *   node dist/drivers/sim/control.js --socket <path> clear
 *
 * Faults: link-down, eavesdrop-alarm (the link); corrupt-frames, drop-frames,
 * stall, module-reboot, unplug (one module with --module, else both).
 * Prints the simulator's JSON answer on stdout. Exit codes: 0 done, 1 the
 * simulator is not running or refused, 2 bad usage (unknown fault, bad duration).
 */
import { parseArgs } from 'node:util';
import { controlRequest, type ControlRequest } from './control-socket.js';
import { FAULT_KINDS, parseFault, parseSeconds } from './faults.js';

const USAGE = [
  'usage: control.js --socket <path> [--module <module_id|index>] <fault> <seconds>',
  '       control.js --socket <path> status | clear',
  `faults: ${FAULT_KINDS.join(', ')}`,
].join('\n');

function usage(msg: string): number {
  process.stderr.write(`kme-sim-control: ${msg}\n${USAGE}\n`);
  return 2;
}

async function main(): Promise<number> {
  let values: { socket?: string; module?: string; help?: boolean };
  let positionals: string[];
  // A negative duration would read as an unknown option: say what is wrong with it instead.
  const negative = process.argv.slice(2).find((a) => /^-[\d.]/.test(a));
  if (negative !== undefined) return usage((parseSeconds(negative) as Error).message);
  try {
    ({ values, positionals } = parseArgs({
      options: { socket: { type: 'string' }, module: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
      allowPositionals: true,
      strict: true,
    }));
  } catch (e) {
    return usage((e as Error).message);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (!values.socket) return usage('missing --socket <control socket path>');
  let req: ControlRequest;
  const [cmd, ...rest] = positionals;
  if (cmd === undefined) return usage('missing a fault name, status or clear');
  if (cmd === 'status' || cmd === 'clear') {
    if (rest.length > 0 || values.module !== undefined) return usage(`${cmd} takes no arguments`);
    req = { cmd };
  } else {
    const fault = parseFault(cmd);
    if (fault instanceof Error) return usage(fault.message);
    if (rest.length !== 1) return usage(`${fault} needs exactly one duration in seconds`);
    const seconds = parseSeconds(rest[0]!);
    if (seconds instanceof Error) return usage(seconds.message);
    req = { cmd: 'fault', fault, seconds, ...(values.module !== undefined ? { module: values.module } : {}) };
  }
  try {
    const answer = await controlRequest(values.socket, req);
    if (!answer.ok) {
      process.stderr.write(`kme-sim-control: the simulator refused: ${answer.error}\n`);
      return 1;
    }
    process.stdout.write(`${JSON.stringify(cmd === 'status' ? answer.status : answer, null, cmd === 'status' ? 2 : undefined)}\n`);
    return 0;
  } catch (e) {
    process.stderr.write(`kme-sim-control: ${(e as Error).message}\n`);
    return 1;
  }
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (e: Error) => {
    process.stderr.write(`kme-sim-control: ${e.message}\n`);
    process.exitCode = 1;
  },
);
