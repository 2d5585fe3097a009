/**
 * A fault storm on the real demo network: the simulator process feeds both
 * keypoolds through socat pty pairs (the real serial driver), SAEs do round
 * trips in both directions, and every fault kind is injected in turn.
 * Afterwards: every key a master received was served to its slave with the
 * same bytes, or refused only because an eavesdropping alarm voided it; no key
 * was served twice; and the link recovers by itself.
 */
import { describe, expect, it } from 'vitest';
import { NdjsonPoolClient } from '../../src/ipc/ndjson-client.js';
import { silentLogger } from '../../src/common/logger.js';
import { useDemoNet } from '../helpers/demo-net.js';

const FAULTS = ['link-down', 'corrupt-frames', 'drop-frames', 'stall', 'module-reboot', 'eavesdrop-alarm', 'unplug'];
const FAULT_SECONDS = 2;

const demoNet = useDemoNet({}, 20);

interface Trip {
  master: string;
  slave: string;
  at: number;
  keys: Array<{ key_ID: string; key: string }>;
  dec?: { status: number; keys?: Array<{ key_ID: string; key: string }> };
}

async function roundTripLoop(master: string, slave: string, until: () => boolean, trips: Trip[], refused: number[]): Promise<void> {
  while (!until()) {
    const at = Date.now();
    const r = await demoNet().sae(master).post(`/api/v1/keys/${slave}/enc_keys`, { number: 2 });
    if (r.status !== 200) {
      expect(r.status, r.text).toBe(503); // fail closed, nothing half-done
      refused.push(at);
      await new Promise((res) => setTimeout(res, 50));
      continue;
    }
    const trip: Trip = { master, slave, at, keys: r.body.keys };
    trips.push(trip);
    const d = await demoNet().sae(slave).post(`/api/v1/keys/${master}/dec_keys`, { key_IDs: trip.keys.map((k) => ({ key_ID: k.key_ID })) });
    trip.dec = { status: d.status, keys: d.body?.keys };
  }
}

async function diag() {
  const c = new NdjsonPoolClient({ path: demoNet().path(demoNet().node('KME_A').admin_socket), logger: silentLogger() });
  try {
    return await c.call('diag', {});
  } finally {
    await c.close();
  }
}

describe('fault storm', () => {
  it('keeps every promise through every fault kind and recovers by itself', async () => {
    const trips: Trip[] = [];
    const refused: number[] = [];
    let done = false;
    const loops = [
      roundTripLoop('SAE_A1', 'SAE_B1', () => done, trips, refused),
      roundTripLoop('SAE_B1', 'SAE_A1', () => done, trips, refused),
    ];
    const windows: Record<string, [number, number]> = {};
    try {
      await new Promise((r) => setTimeout(r, 1000));
      for (const f of FAULTS) {
        const start = Date.now();
        await demoNet().fault(f, FAULT_SECONDS);
        await new Promise((r) => setTimeout(r, FAULT_SECONDS * 1000 + 1500));
        windows[f] = [start, Date.now()];
      }
    } finally {
      done = true;
      await Promise.all(loops);
    }

    // Every key handed to a master went to its slave byte for byte, unless an alarm voided it.
    const [eveStart, eveEnd] = windows['eavesdrop-alarm']!;
    let served = 0;
    let voided = 0;
    for (const t of trips) {
      if (t.dec!.status === 200) {
        expect(t.dec!.keys).toEqual(t.keys);
        served++;
      } else {
        expect(t.dec!.status).toBe(400);
        expect(t.at).toBeGreaterThanOrEqual(eveStart - 3000);
        expect(t.at).toBeLessThanOrEqual(eveEnd);
        voided++;
      }
    }
    expect(served).toBeGreaterThan(20);
    expect(voided).toBeLessThanOrEqual(trips.length / 4);
    // No key twice: ids and bytes unique, and a second fetch is refused.
    const all = trips.flatMap((t) => t.keys);
    expect(new Set(all.map((k) => k.key_ID)).size).toBe(all.length);
    expect(new Set(all.map((k) => k.key)).size).toBe(all.length);
    const again = await demoNet().sae('SAE_B1').post('/api/v1/keys/SAE_A1/dec_keys', { key_IDs: [{ key_ID: trips.find((t) => t.master === 'SAE_A1' && t.dec!.status === 200)!.keys[0]!.key_ID }] });
    expect(again.status).toBe(400);

    // The link came back on its own: fresh round trips both ways, and the driver says so.
    await demoNet().waitForStock('SAE_A1', 'SAE_B1', 5, 30_000);
    await demoNet().waitForStock('SAE_B1', 'SAE_A1', 5, 30_000);
    for (const [m, s] of [['SAE_A1', 'SAE_B1'], ['SAE_B1', 'SAE_A1']] as const) {
      const r = await demoNet().sae(m).post(`/api/v1/keys/${s}/enc_keys`, {});
      expect(r.status, r.text).toBe(200);
      const d = await demoNet().sae(s).get(`/api/v1/keys/${m}/dec_keys?key_ID=${r.body.keys[0].key_ID}`);
      expect(d.body.keys).toEqual(r.body.keys);
    }
    const link = (await diag()).links[0]!;
    expect(link.module.state).toBe('ready');
    expect(link.module.counters.reconnects).toBeGreaterThan(0);
    expect(link.module.counters.crcErrors).toBeGreaterThan(0);
    expect(link.module.counters.alarms).toBeGreaterThan(0);
  }, 120_000);

  it('an alarm only one module raises reaches the other KME over the peer channel', async () => {
    const since = Date.now();
    const heardFromPeer = () =>
      demoNet()
        .proc('KME_B', 'kme-keypoold')
        .output('stdout')
        .some((l) => l.includes('"from":"peer"') && (JSON.parse(l) as { time: number }).time >= since);
    // KME_B's module is stalled, so only KME_A's module can report the eavesdropper for now.
    await demoNet().fault('stall', 4, '1');
    await demoNet().fault('eavesdrop-alarm', 1);
    for (let i = 0; i < 30 && !heardFromPeer(); i++) await new Promise((r) => setTimeout(r, 100));
    expect(heardFromPeer()).toBe(true);
    expect(Date.now() - since).toBeLessThan(4000); // before KME_B's own module could speak again
    await demoNet().waitForStock('SAE_A1', 'SAE_B1', 5, 30_000);
  }, 60_000);
});
