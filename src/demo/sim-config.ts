/**
 * The demo's simulated QKD link: sim.json for the simulator process
 * (drivers/sim/main.ts), one module per KME, each on a socat pty pair whose
 * KME end the node's keypoold opens as a serial port. Paths are relative to
 * the folder of sim.json.
 */
import { relative } from 'node:path';
import { isInside } from './files.js';

export interface SimConfigInput {
  demoDir: string;
  /** Absolute folder of sim.json. */
  simDir: string;
  linkId: string;
  seedFile: string;
  rateBps: number;
  epochMs: number;
  controlPath: string;
  /** Each module's device: the KME end of a socat pty pair, or a Unix socket when socat is missing. */
  modules: Array<{ kmeId: string; moduleId: string; device: string; kind: 'pty' | 'unix' }>;
}

export const DEMO_BLOCK_BITS = 65536;
/** Blocks a module holds unacknowledged (a minute at the demo's 1 Mbit/s). */
export const DEMO_BUFFER_BLOCKS = 8192;

export function buildSimConfig(c: SimConfigInput): Record<string, unknown> {
  const rel = (p: string) => (isInside(c.demoDir, p) ? relative(c.simDir, p) : p);
  return {
    link_id: c.linkId,
    seed_file: rel(c.seedFile),
    rate_bps: c.rateBps,
    block_bits: DEMO_BLOCK_BITS,
    epoch_ms: c.epochMs,
    buffer_blocks: DEMO_BUFFER_BLOCKS,
    qber: 0.02,
    modules: c.modules.map((m) => ({
      module_id: m.moduleId,
      kme_id: m.kmeId,
      device: m.kind === 'pty' ? { kind: 'pty', link: rel(m.device) } : { kind: 'unix', path: rel(m.device) },
    })),
    control: { path: rel(c.controlPath) },
    log_level: 'info',
  };
}
