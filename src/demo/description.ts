/**
 * The shape of var/demo/demo.json: everything a tool or a test needs to drive
 * the demo network. Paths are relative to the repository root (the `root`
 * given to prepareDemo) when they lie inside it, absolute otherwise; each
 * process argv is meant to be run with the root as working directory.
 */
export interface DemoSae {
  sae_id: string;
  cert: string;
  key: string;
}

/** How to tell that a started process is ready. */
export type DemoReadiness = { unix_socket: string } | { tcp: { host: string; port: number } };

export interface DemoProcess {
  name: 'kme-keypoold' | 'kme-api';
  argv: string[];
  ready: DemoReadiness;
}

export interface DemoNode {
  kme_id: string;
  etsi_url: string;
  processes: DemoProcess[];
  saes: DemoSae[];
  config: string;
  state_dir: string;
  registry_file: string;
  keypoold_socket: string;
  /** keypoold's maintenance socket (diag, rotation; what kmectl talks to). */
  admin_socket: string;
  /** This node's KME-to-KME listener (what its peer dials). */
  peer_url: string;
  /** Each daemon's Prometheus endpoint on its local admin listener (/healthz and /readyz beside it), when configured. */
  metrics_urls?: Partial<Record<DemoProcess['name'], string>>;
  api_cert: string;
  api_key: string;
  kme_cert: string;
  kme_key: string;
}

export interface DemoLink {
  link_id: string;
  kme_ids: [string, string];
  /** Each KME's end of its module (a pty made by the simulator). */
  module_devices: [string, string];
  seed_file: string;
  rate_bps: number;
  epoch_ms: number;
}

export interface DemoJson {
  ca_cert: string;
  ca_key: string;
  nodes: DemoNode[];
  /** CA that SAEs use to verify the ETSI API servers (same as ca_cert in the demo). */
  api_ca_cert: string;
  links: DemoLink[];
  /** The simulated QKD link, a process of its own. */
  qkd_sim: DemoSim;
  /** The field technician's tool against this demo (run from the root); add `--node KME_A` and a command. */
  kmectl: string[];
}

export interface DemoSim {
  name: 'qkd-sim';
  /** Starts the simulator (run from the root). */
  argv: string[];
  ready: DemoReadiness;
  /** Injects a fault: append a fault name and a duration in seconds (`link-down 5`); or `status`. */
  control: string[];
  config: string;
}

/** What prepareDemo returns: demo.json's content plus where it is and what this run did. */
export interface DemoDescription extends DemoJson {
  /** Absolute root the relative paths above are relative to. */
  root: string;
  /** Absolute demo folder and demo.json path. */
  dir: string;
  file: string;
  /** Absolute paths this run created, and those it found and kept. */
  written: string[];
  reused: string[];
  /** Things a person should know (kept configs with other ports, socket fallback...). */
  notes: string[];
}
