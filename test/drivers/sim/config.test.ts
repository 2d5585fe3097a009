import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSimConfig, readSeedFile } from '../../../drivers/sim/config.js';
import { parseFault, parseSeconds } from '../../../drivers/sim/faults.js';

const example = {
  link_id: 'link-AB',
  seed_file: 'link-AB.seed',
  rate_bps: 1_000_000,
  block_bits: 65536,
  epoch_ms: 1_767_225_600_000,
  buffer_blocks: 256,
  qber: 0.03,
  modules: [
    { module_id: 'QKD-A', kme_id: 'KME_A', device: { kind: 'pty', link: 'dev/qkd-A' } },
    { module_id: 'QKD-B', kme_id: 'KME_B', device: { kind: 'tcp', port: 0 } },
  ],
  control: { path: 'control.sock' },
};

describe('sim.json', () => {
  it('fills defaults and resolves paths against the config folder', () => {
    const c = parseSimConfig(example, '/etc/sim');
    expect(c.seed_file).toBe('/etc/sim/link-AB.seed');
    expect(c.control.path).toBe('/etc/sim/control.sock');
    expect(c.modules[0]!.device).toEqual({ kind: 'pty', link: '/etc/sim/dev/qkd-A' });
    expect(c.modules[1]!.device).toEqual({ kind: 'tcp', host: '127.0.0.1', port: 0 });
    expect(c.qber).toEqual({ baseline: 0.03, noise: 0.005, eavesdrop: 0.25, link_down: 0.5 });
    expect(c).toMatchObject({ fault_rates: { corrupt: 0.2, drop: 0.2 }, alarm_span_blocks: 4, alarm_repeat_ms: 1000, tick_ms: 10, log_level: 'info' });
  });

  it('says everything that is wrong', () => {
    const bad = {
      ...example,
      block_bits: 1001,
      buffer_blocks: 0,
      extra: 1,
      modules: [example.modules[0], { ...example.modules[0], device: { kind: 'serial', path: '/dev/x' } }],
    };
    let msg = '';
    try {
      parseSimConfig(bad, '/');
    } catch (e) {
      msg = (e as Error).message;
    }
    expect(msg).toMatch(/block_bits/);
    expect(msg).toMatch(/buffer_blocks/);
    expect(msg).toMatch(/extra/);
    expect(msg).toMatch(/modules\.1\.device/);
    expect(() => parseSimConfig({ ...example, modules: [example.modules[0], { ...example.modules[0], kme_id: 'KME_B' }] }, '/')).toThrow(/different module_id/);
    expect(() =>
      parseSimConfig({ ...example, modules: [example.modules[0], { ...example.modules[1], module_id: 'X', device: { kind: 'pty', link: 'dev/qkd-A' } }] }, '/'),
    ).toThrow(/different devices/);
    expect(() => parseSimConfig({ ...example, block_bits: 8 * 20_000 }, '/')).toThrow(/block_bits/);
  });

  it('reads a 64-hex-character seed file', () => {
    const dir = mkdtempSync(join(tmpdir(), 'sim-cfg-'));
    try {
      writeFileSync(join(dir, 'ok'), `${'ab'.repeat(32)}\n`);
      writeFileSync(join(dir, 'short'), 'abcd');
      expect(readSeedFile(join(dir, 'ok'))).toEqual(Buffer.alloc(32, 0xab));
      expect(() => readSeedFile(join(dir, 'short'))).toThrow(/64 hex characters/);
      expect(() => readSeedFile(join(dir, 'missing'))).toThrow(/cannot read seed file/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('parses fault names and durations', () => {
    expect(parseFault('unplug')).toBe('unplug');
    expect(parseFault('Unplug')).toBeInstanceOf(Error);
    expect(parseSeconds('2.5')).toBe(2.5);
    for (const bad of ['0', '-1', 'abc', '1e3', '', '86401', 'Infinity']) expect(parseSeconds(bad), bad).toBeInstanceOf(Error);
    expect(parseSeconds(86_400)).toBe(86_400);
  });
});
