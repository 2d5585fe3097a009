/**
 * One JSON configuration file per node, read by both daemons of that node.
 * Relative paths are resolved against the directory of the configuration file.
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { z } from 'zod';

const entityId = z.string().min(1).max(128);
const tlsFiles = z.object({ cert: z.string(), key: z.string(), ca: z.string() }).strict();

export const identitySchema = z.discriminatedUnion('source', [
  z.object({ source: z.literal('subject_cn') }).strict(),
  /** The first SAN URI starting with `prefix`; the SAE ID is the rest of it. */
  z.object({ source: z.literal('san_uri'), prefix: z.string().default('') }).strict(),
]);

export const limitsSchema = z
  .object({
    default_key_size: z.number().int().positive().default(256),
    min_key_size: z.number().int().positive().default(64),
    max_key_size: z.number().int().positive().default(8192),
    max_key_per_request: z.number().int().positive().default(128),
    max_key_count: z.number().int().positive().default(100000),
    max_SAE_ID_count: z.number().int().min(0).default(4),
  })
  .strict()
  .refine((l) => l.min_key_size <= l.default_key_size && l.default_key_size <= l.max_key_size, {
    message: 'need min_key_size <= default_key_size <= max_key_size',
  })
  .refine((l) => [l.min_key_size, l.default_key_size, l.max_key_size].every((s) => s % 8 === 0), {
    message: 'key sizes must be multiples of 8',
  });

/** How the driver talks to the module: timeouts, credit window, reconnect backoff. */
const driverTuning = {
  /** Blocks the module may send ahead of what is stored (flow-control credit). */
  window: z.number().int().positive().max(4096).default(64),
  /** No answer to a request within this: the driver retries, then reconnects. */
  timeout_ms: z.number().int().positive().default(2000),
  /** How often the link status is polled. */
  status_poll_ms: z.number().int().positive().default(1000),
  reconnect_initial_ms: z.number().int().positive().default(200),
  reconnect_max_ms: z.number().int().positive().default(30_000),
};

/** A module on a serial line (RS-232/USB-serial), speaking drivers/qkd/PROTOCOL.md. */
export const serialQkdSchema = z
  .object({
    driver: z.literal('serial'),
    path: z.string().min(1),
    baud_rate: z.number().int().positive().default(115200),
    /** Hardware (RTS/CTS) flow control. */
    rtscts: z.boolean().default(false),
    ...driverTuning,
  })
  .strict();

/** A module reachable over TCP or a Unix socket (network-attached modules, the simulator). */
export const socketQkdSchema = z
  .object({
    driver: z.literal('socket'),
    path: z.string().min(1).optional(),
    host: z.string().min(1).optional(),
    port: z.number().int().min(1).max(65535).optional(),
    ...driverTuning,
  })
  .strict()
  .refine((s) => (s.path !== undefined) !== (s.host !== undefined && s.port !== undefined), {
    message: 'give either path, or host and port',
  });

/** A module on USB HID. */
export const hidQkdSchema = z
  .object({
    driver: z.literal('hid'),
    vendor_id: z.number().int().min(0).max(0xffff),
    product_id: z.number().int().min(0).max(0xffff),
    /** A hidraw path, to pick one of several identical modules. */
    path: z.string().min(1).optional(),
    report_size: z.number().int().min(8).max(1024).default(64),
    ...driverTuning,
  })
  .strict();

/** The in-process simulator (tests and benchmarks; the demo runs the simulator as its own process). */
/** Every limit at its default (the schema's own field defaults). */
export const DEFAULT_LIMITS = limitsSchema.parse({});

export const simQkdSchema = z
  .object({
    driver: z.literal('sim'),
    /** File holding the hex seed both simulated modules share. */
    seed_file: z.string(),
    /** Secret key rate of the simulated link in bits per second. */
    rate_bps: z.number().positive(),
    /** Bits per key block (multiple of 8). */
    block_bits: z.number().int().positive().multipleOf(8).default(65536),
    /** Unix ms at which block 0 was produced; both ends must agree. */
    epoch_ms: z.number().int().nonnegative(),
  })
  .strict();

/**
 * Where the master key lives. `pkcs11`: an AES-256 token object (sensitive,
 * non-extractable) in an HSM; the PIN comes from a file or a systemd
 * credential, never from the command line. `file`: boards without an HSM.
 */
export const pkcs11MasterKeySchema = z
  .object({
    provider: z.literal('pkcs11'),
    /** Path of the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so). */
    module: z.string().min(1),
    token_label: z.string().min(1).max(32),
    key_label: z.string().min(1).max(64).default('kme-master'),
    /** File holding the user PIN (mode 0600 or stricter). */
    pin_file: z.string().min(1).optional(),
    /** Name of a systemd credential (LoadCredential=) holding the PIN, read from $CREDENTIALS_DIRECTORY. */
    pin_credential: z.string().min(1).optional(),
  })
  .strict()
  .refine((m) => (m.pin_file === undefined) !== (m.pin_credential === undefined), {
    message: 'give exactly one of pin_file and pin_credential',
  });

export const fileMasterKeySchema = z.object({ provider: z.literal('file'), path: z.string() }).strict();

export const masterKeySchema = z.discriminatedUnion('provider', [fileMasterKeySchema, pkcs11MasterKeySchema]);
export type MasterKeyConfig = z.infer<typeof masterKeySchema>;

export const linkSchema = z
  .object({
    link_id: entityId,
    peer_kme_id: entityId,
    /** Base URL of the peer keypoold's KME-to-KME listener. */
    peer_url: z.string().url(),
    qkd: z.union([simQkdSchema, serialQkdSchema, socketQkdSchema, hidQkdSchema]),
  })
  .strict();

/**
 * A daemon's local-only admin listener (plain HTTP: /healthz, /readyz, /metrics).
 * Loopback only: it has no TLS and no authentication. Port 0 takes any free port (tests).
 */
export const metricsListenerSchema = z
  .object({
    host: z
      .string()
      .default('127.0.0.1')
      .refine((h) => h === '127.0.0.1' || h === '::1', {
        error: (iss) =>
          `the metrics listener is plain HTTP without authentication, so its host must be 127.0.0.1 or ::1 (loopback), not ${JSON.stringify(iss.input)}; ` +
          'to scrape it from another machine, put an authenticating TLS proxy in front',
      }),
    port: z.number().int().min(0).max(65535),
  })
  .strict();
export type MetricsListenerConfig = z.infer<typeof metricsListenerSchema>;

export const nodeConfigSchema = z
  .object({
    kme_id: entityId,
    state_dir: z.string(),
    /** lowdb JSON file: the SAE registry (which SAE sits at which KME, and its allow-list). */
    registry_file: z.string(),
    keypoold: z
      .object({
        /** Unix socket of keypoold's pool API for kme-api (status, enc_keys, dec_keys, whoami, health). */
        socket: z.string(),
        /**
         * Unix socket of the maintenance tools (every pool op plus diag and
         * rotation); kme-api never gets it. Default: keypoold-admin.sock beside `socket`.
         */
        admin_socket: z.string().optional(),
        /** keypoold's admin HTTP listener (health, readiness, metrics); absent: none. */
        metrics: metricsListenerSchema.optional(),
      })
      .strict(),
    api: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535),
        tls: tlsFiles,
        identity: identitySchema.default({ source: 'subject_cn' }),
        max_body_bytes: z.number().int().positive().default(65536),
        /** kme-api's admin HTTP listener (health, readiness, metrics); absent: none. */
        metrics: metricsListenerSchema.optional(),
      })
      .strict(),
    peer: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.number().int().min(0).max(65535),
        tls: tlsFiles,
        /** How long to wait for the peer to confirm a reservation before failing closed. */
        timeout_ms: z.number().int().positive().default(2000),
      })
      .strict(),
    limits: limitsSchema.default(() => DEFAULT_LIMITS),
    /** Keys delivered to a master but not fetched by every slave are erased after this. */
    key_ttl_seconds: z.number().int().positive().default(300),
    /** The slave's KME keeps an unfetched key this much past the master KME's expiry (clock skew). */
    expiry_grace_seconds: z.number().int().nonnegative().default(5),
    master_key: masterKeySchema,
    /** Pool policy per link. */
    pool: z
      .object({
        /** A low-watermark event is raised when a link's available keys (default size) fall below this; default max_key_count / 10. */
        low_watermark_keys: z.number().int().nonnegative().optional(),
        /** Optional quota per (master, slave) SAE pair, so one SAE cannot drain a link: at most `keys` keys per `per_seconds`. */
        sae_pair_quota: z
          .object({ keys: z.number().int().positive(), per_seconds: z.number().int().positive() })
          .strict()
          .optional(),
      })
      .strict()
      .default(() => ({})),
    /** The hash-chained audit trail of key events (never key material). */
    audit: z
      .object({
        /** Folder of the audit log segments; default: <state_dir>/audit. */
        dir: z.string().optional(),
        /** A segment is closed and a new one begun past this size. */
        segment_bytes: z.number().int().min(4096).default(64 * 1024 * 1024),
      })
      .strict()
      .default(() => ({ segment_bytes: 64 * 1024 * 1024 })),
    links: z.array(linkSchema).default([]),
    log_level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .strict()
  .superRefine((c, ctx) => {
    const seen = new Set<string>();
    c.links.forEach((l, i) => {
      // Block ownership is decided by comparing the two KME IDs: they must differ.
      if (l.peer_kme_id === c.kme_id) ctx.addIssue({ code: 'custom', path: ['links', i, 'peer_kme_id'], message: 'a link must lead to another KME' });
      if (seen.has(l.peer_kme_id)) ctx.addIssue({ code: 'custom', path: ['links', i, 'peer_kme_id'], message: `a second link to ${l.peer_kme_id}` });
      if (seen.has(`#${l.link_id}`)) ctx.addIssue({ code: 'custom', path: ['links', i, 'link_id'], message: `link_id ${l.link_id} used twice` });
      seen.add(l.peer_kme_id).add(`#${l.link_id}`);
    });
  });

export type NodeConfig = z.infer<typeof nodeConfigSchema>;
export type Limits = NodeConfig['limits'];
export type LinkConfig = z.infer<typeof linkSchema>;
export type QkdConfig = LinkConfig['qkd'];
export type IdentityConfig = z.infer<typeof identitySchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Parse and validate a config object; relative paths resolve against `baseDir`. */
export function parseConfig(raw: unknown, baseDir: string): NodeConfig {
  const parsed = nodeConfigSchema.safeParse(raw);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((i) => `  ${i.path.join('.') || '(root)'}: ${i.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const c = parsed.data;
  const abs = (p: string) => (isAbsolute(p) ? p : resolve(baseDir, p));
  return {
    ...c,
    state_dir: abs(c.state_dir),
    registry_file: abs(c.registry_file),
    keypoold: {
      socket: abs(c.keypoold.socket),
      admin_socket: abs(c.keypoold.admin_socket ?? join(dirname(c.keypoold.socket), 'keypoold-admin.sock')),
      ...(c.keypoold.metrics ? { metrics: c.keypoold.metrics } : {}),
    },
    api: { ...c.api, tls: mapTls(c.api.tls, abs) },
    peer: { ...c.peer, tls: mapTls(c.peer.tls, abs) },
    master_key:
      c.master_key.provider === 'file'
        ? { ...c.master_key, path: abs(c.master_key.path) }
        : {
            ...c.master_key,
            ...(c.master_key.pin_file !== undefined ? { pin_file: abs(c.master_key.pin_file) } : {}),
          },
    audit: { ...c.audit, dir: abs(c.audit.dir ?? join(c.state_dir, 'audit')) },
    links: c.links.map((l) => ({ ...l, qkd: resolveQkdPaths(l.qkd, abs) })),
  };
}

function resolveQkdPaths(q: QkdConfig, abs: (p: string) => string): QkdConfig {
  switch (q.driver) {
    case 'sim':
      return { ...q, seed_file: abs(q.seed_file) };
    case 'serial':
      return { ...q, path: abs(q.path) };
    case 'socket':
      return q.path === undefined ? q : { ...q, path: abs(q.path) };
    case 'hid':
      return q;
  }
}

function mapTls(t: z.infer<typeof tlsFiles>, abs: (p: string) => string) {
  return { cert: abs(t.cert), key: abs(t.key), ca: abs(t.ca) };
}

export function loadConfig(path: string): NodeConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ConfigError(`cannot read configuration ${path}: ${(e as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`configuration ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseConfig(raw, dirname(resolve(path)));
}

/** `--config <path>` from argv, else KME_CONFIG, else /etc/kme/kme.json. */
export function configPathFromArgv(argv: string[], env = process.env): string {
  const i = argv.indexOf('--config');
  if (i >= 0 && argv[i + 1]) return argv[i + 1]!;
  return env.KME_CONFIG ?? '/etc/kme/kme.json';
}
