/**
 * sim.json: the simulated QKD link run as its own process (drivers/sim/main.ts).
 * Relative paths are relative to the config file's folder.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { MAX_BLOCK_BITS } from '../qkd/messages.js';

const id = z.string().min(1).max(128).regex(/^[A-Za-z0-9._:/@-]+$/, 'letters, digits and . _ : / @ - only');
const path = z.string().min(1);

export const simDeviceSchema = z.discriminatedUnion('kind', [
  /** A socat pty pair: the KME opens `link` as a serial port. */
  z.object({ kind: z.literal('pty'), link: path }).strict(),
  /** A Unix stream socket the simulator listens on. */
  z.object({ kind: z.literal('unix'), path }).strict(),
  /** A TCP listener (port 0: any free port, shown by `status`). */
  z.object({ kind: z.literal('tcp'), host: z.string().min(1).default('127.0.0.1'), port: z.number().int().min(0).max(65535) }).strict(),
]);
export type SimDevice = z.infer<typeof simDeviceSchema>;

export const simModuleSchema = z
  .object({
    /** The module's serial, sent in IDENTIFY. */
    module_id: id,
    /** The KME this module is attached to (shown in status; the HELLO's host id is checked against it and a mismatch logged). */
    kme_id: id,
    device: simDeviceSchema,
  })
  .strict();

const fraction = z.number().min(0).max(0.5);

export const simConfigSchema = z
  .object({
    link_id: id,
    /** File holding the 32-byte seed both modules share, as 64 hex characters. */
    seed_file: path,
    /** Secret key rate, bits per second. */
    rate_bps: z.number().positive().max(1e10),
    /** Bits per key block: a multiple of 8, at most what one frame carries. */
    block_bits: z.number().int().positive().multipleOf(8).max(MAX_BLOCK_BITS),
    /** Unix ms at which block 0 was due; ids follow wall time from there. */
    epoch_ms: z.number().int().nonnegative(),
    /** Each module's buffer of produced, unacknowledged blocks; production pauses when one is full. */
    buffer_blocks: z.number().int().min(1).max(1_000_000),
    /** A baseline QBER, or the whole model. */
    qber: z
      .union([
        fraction,
        z
          .object({
            baseline: fraction,
            noise: fraction.default(0.005),
            eavesdrop: fraction.default(0.25),
            link_down: fraction.default(0.5),
          })
          .strict(),
      ])
      .default(0.02)
      .transform((q) => (typeof q === 'number' ? { baseline: q, noise: Math.min(0.005, q), eavesdrop: 0.25, link_down: 0.5 } : q)),
    /** How often a fault flips or drops an outgoing frame, per frame. */
    fault_rates: z
      .object({ corrupt: z.number().min(0).max(1).default(0.2), drop: z.number().min(0).max(1).default(0.2) })
      .strict()
      .default({ corrupt: 0.2, drop: 0.2 }),
    /** Blocks produced before an eavesdropping detection that its alarm also names. */
    alarm_span_blocks: z.number().int().min(0).max(1_000_000).default(4),
    /** An alarm its host has not ALARM_ACKed is sent again this often (ms). */
    alarm_repeat_ms: z.number().int().min(10).max(60_000).default(1000),
    /** Production and sending happen at most this often (ms). */
    tick_ms: z.number().int().min(1).max(1000).default(10),
    modules: z.array(simModuleSchema).length(2),
    control: z.object({ path }).strict(),
    log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .strict()
  .superRefine((c, ctx) => {
    const [a, b] = c.modules;
    if (a && b && a.module_id === b.module_id) ctx.addIssue({ code: 'custom', path: ['modules'], message: 'the two modules need different module_id' });
    const places = c.modules
      .map((m) => (m.device.kind === 'pty' ? m.device.link : m.device.kind === 'unix' ? m.device.path : m.device.port === 0 ? '' : `${m.device.host}:${m.device.port}`))
      .filter(Boolean);
    if (new Set(places).size !== places.length) {
      ctx.addIssue({ code: 'custom', path: ['modules'], message: 'the two modules need different devices' });
    }
  });

export type SimConfig = z.infer<typeof simConfigSchema>;

/** Reads, validates and resolves relative paths; throws one readable Error. */
export function loadSimConfig(file: string): SimConfig {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, 'utf8'));
  } catch (e) {
    throw new Error(`cannot read simulator config ${file}: ${(e as Error).message}`);
  }
  return parseSimConfig(raw, dirname(resolve(file)), file);
}

export function parseSimConfig(raw: unknown, baseDir: string, name = 'simulator config'): SimConfig {
  const r = simConfigSchema.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`).join('\n');
    throw new Error(`invalid ${name}:\n${issues}`);
  }
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  const c = r.data;
  return {
    ...c,
    seed_file: abs(c.seed_file),
    control: { path: abs(c.control.path) },
    modules: c.modules.map((m) => ({
      ...m,
      device:
        m.device.kind === 'pty' ? { kind: 'pty', link: abs(m.device.link) } : m.device.kind === 'unix' ? { kind: 'unix', path: abs(m.device.path) } : m.device,
    })),
  };
}

/** The seed file: 64 hex characters (surrounding whitespace allowed). The caller zeroes the buffer. */
export function readSeedFile(file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new Error(`cannot read seed file ${file}: ${(e as Error).message}`);
  }
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new Error(`seed file ${file} does not hold 64 hex characters`);
  return Buffer.from(text, 'hex');
}
