/** Free loopback TCP ports for isolated demo networks (tests, benchmarks). */
import { createServer, type AddressInfo, type Server } from 'node:net';
import { DEFAULT_API_PORTS, DEFAULT_METRICS_PORTS, DEFAULT_PEER_PORTS } from './topology.js';

/** The demo's own ports: never handed out, so a running `npm start` is left alone. */
const RESERVED = new Set<number>([...DEFAULT_API_PORTS, ...DEFAULT_PEER_PORTS, ...DEFAULT_METRICS_PORTS.flat()]);

/** `n` distinct free loopback ports, all held open at once while choosing. */
export async function freePorts(n: number): Promise<number[]> {
  const servers: Server[] = [];
  const ports: number[] = [];
  try {
    while (ports.length < n) {
      if (servers.length > n + 50) throw new Error('could not find free loopback ports');
      const s = createServer();
      servers.push(s);
      await new Promise<void>((res, rej) => {
        s.once('error', rej);
        s.listen(0, '127.0.0.1', () => res());
      });
      const p = (s.address() as AddressInfo).port;
      if (!RESERVED.has(p) && !ports.includes(p)) ports.push(p);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}
