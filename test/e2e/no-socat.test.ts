/**
 * Without socat the demo's simulated modules are Unix sockets and the
 * keypoolds use the socket transport: the network still gives keys.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { DemoNet, startDemoNet } from '../helpers/demo-net.js';

let net: DemoNet | undefined;
const savedPath = process.env.PATH;

beforeAll(async () => {
  process.env.PATH = '/nonexistent-no-socat-here';
  try {
    net = await startDemoNet();
  } finally {
    process.env.PATH = savedPath;
  }
  await net.waitForStock('SAE_A1', 'SAE_B1', 5);
}, 90_000);

afterAll(async () => {
  process.env.PATH = savedPath;
  await net?.stop();
  net?.destroy();
});

describe('demo without socat', () => {
  it('puts the modules on Unix sockets, says so, and still serves a round trip', async () => {
    const n = net!;
    expect(n.demo.notes.join('\n')).toMatch(/socat not found/);
    const sim = JSON.parse(readFileSync(n.path(n.demo.qkd_sim.config), 'utf8'));
    expect(sim.modules.map((m: { device: { kind: string } }) => m.device.kind)).toEqual(['unix', 'unix']);
    const cfg = JSON.parse(readFileSync(n.path(n.node('KME_A').config), 'utf8'));
    expect(cfg.links[0].qkd.driver).toBe('socket');
    const r = await n.sae('SAE_A1').post('/api/v1/keys/SAE_B1/enc_keys', {});
    expect(r.status, r.text).toBe(200);
    const d = await n.sae('SAE_B1').get(`/api/v1/keys/SAE_A1/dec_keys?key_ID=${r.body.keys[0].key_ID}`);
    expect(d.body.keys).toEqual(r.body.keys);
  });
});
