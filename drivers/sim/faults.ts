/**
 * The faults a running simulator can be told to inject, each for a duration
 * in seconds. Link faults act on the quantum channel (both modules see them);
 * module faults act on one module's host interface, or on every module when
 * none is named.
 */

export const LINK_FAULTS = ['link-down', 'eavesdrop-alarm'] as const;
export const MODULE_FAULTS = ['corrupt-frames', 'drop-frames', 'stall', 'module-reboot', 'unplug'] as const;
export const FAULT_KINDS = [...LINK_FAULTS, ...MODULE_FAULTS] as const;

export type LinkFault = (typeof LINK_FAULTS)[number];
export type ModuleFault = (typeof MODULE_FAULTS)[number];
export type FaultKind = LinkFault | ModuleFault;

/** Longest fault accepted: one day. */
export const MAX_FAULT_SECONDS = 86_400;

export function isFaultKind(s: string): s is FaultKind {
  return (FAULT_KINDS as readonly string[]).includes(s);
}

export function isLinkFault(f: FaultKind): f is LinkFault {
  return (LINK_FAULTS as readonly string[]).includes(f);
}

/** A fault name, or an Error saying which ones exist. */
export function parseFault(s: string): FaultKind | Error {
  return isFaultKind(s) ? s : new Error(`unknown fault "${s}"; known faults: ${FAULT_KINDS.join(', ')}`);
}

/** A duration in seconds (decimal, > 0, at most a day), or an Error. */
export function parseSeconds(s: string | number): number | Error {
  const n = typeof s === 'number' ? s : /^\s*\d+(\.\d+)?\s*$/.test(s) ? Number(s) : NaN;
  if (!Number.isFinite(n) || n <= 0 || n > MAX_FAULT_SECONDS) {
    return new Error(`bad duration "${s}": a number of seconds greater than 0 and at most ${MAX_FAULT_SECONDS}`);
  }
  return n;
}
