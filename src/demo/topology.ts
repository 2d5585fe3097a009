/** The fixed shape of the demo network: two KMEs on one simulated link, three SAEs each. */
export interface DemoNodeSpec {
  kme_id: string;
  sae_ids: string[];
}

export const DEMO_NODES: readonly DemoNodeSpec[] = [
  { kme_id: 'KME_A', sae_ids: ['SAE_A1', 'SAE_A2', 'SAE_A3'] },
  { kme_id: 'KME_B', sae_ids: ['SAE_B1', 'SAE_B2', 'SAE_B3'] },
];

export const DEFAULT_API_PORTS: [number, number] = [8443, 9443];
export const DEFAULT_PEER_PORTS: [number, number] = [8444, 9444];
/** Admin (health, readiness, metrics) listeners of KME_A and KME_B: [keypoold, kme-api] each. */
export const DEFAULT_METRICS_PORTS: MetricsPorts = [[8445, 8446], [9445, 9446]];
export type MetricsPorts = [[number, number], [number, number]];
export const DEFAULT_RATE_BPS = 1_000_000;
export const DEMO_HOST = '127.0.0.1';
/** Names the loopback server certificates answer to. */
export const LOOPBACK_DNS = ['localhost'];
export const LOOPBACK_IPS = ['127.0.0.1'];

export const linkId = (a: string, b: string) => `${a}-${b}`;
