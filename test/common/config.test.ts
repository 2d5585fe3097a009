import { describe, expect, it } from 'vitest';
import { ConfigError, parseConfig } from '../../src/common/config.js';

const tls = { cert: 'c.crt', key: 'c.key', ca: 'ca.crt' };
const link = (peer: string, id = `L-${peer}`) => ({
  link_id: id, peer_kme_id: peer, peer_url: 'https://127.0.0.1:9444',
  qkd: { driver: 'sim', seed_file: 's.seed', rate_bps: 1e6, epoch_ms: 0 },
});
const base = () => ({
  kme_id: 'KME_A', state_dir: 'state', registry_file: 'registry.json', keypoold: { socket: 'k.sock' },
  api: { port: 8443, tls }, peer: { port: 8444, tls }, master_key: { provider: 'file', path: 'master.key' },
  links: [link('KME_B')],
});

describe('node configuration', () => {
  it('fills defaults and resolves relative paths against the file folder', () => {
    const c = parseConfig(base(), '/etc/kme');
    expect(c.state_dir).toBe('/etc/kme/state');
    expect(c.api.tls.ca).toBe('/etc/kme/ca.crt');
    expect(c.links[0]!.qkd).toMatchObject({ driver: 'sim', seed_file: '/etc/kme/s.seed' });
    expect(c.limits).toMatchObject({ default_key_size: 256, min_key_size: 64, max_key_size: 8192 });
    expect(c.api.identity).toEqual({ source: 'subject_cn' });
    expect(c.key_ttl_seconds).toBe(300);
  });

  it('refuses a link to itself, two links to one KME, and a repeated link id, naming the field', () => {
    expect(() => parseConfig({ ...base(), links: [link('KME_A')] }, '/')).toThrow(/links\.0\.peer_kme_id: a link must lead to another KME/);
    expect(() => parseConfig({ ...base(), links: [link('KME_B'), link('KME_B', 'other')] }, '/')).toThrow(/second link to KME_B/);
    expect(() => parseConfig({ ...base(), links: [link('KME_B', 'x'), link('KME_C', 'x')] }, '/')).toThrow(/link_id x used twice/);
  });

  it('refuses unknown fields, bad limits and key sizes that are not whole bytes', () => {
    expect(() => parseConfig({ ...base(), typo: 1 }, '/')).toThrow(ConfigError);
    expect(() => parseConfig({ ...base(), limits: { min_key_size: 512, default_key_size: 256 } }, '/')).toThrow(/min_key_size <= default_key_size/);
    expect(() => parseConfig({ ...base(), limits: { min_key_size: 60 } }, '/')).toThrow(/multiples of 8/);
    expect(() => parseConfig({ ...base(), api: { port: 70000, tls } }, '/')).toThrow(/api\.port/);
  });

  it('takes a serial, socket or HID module with defaults, and refuses a half-given socket', () => {
    const withQkd = (qkd: object) => ({ ...base(), links: [{ ...link('KME_B'), qkd }] });
    const serial = parseConfig(withQkd({ driver: 'serial', path: 'qkd0' }), '/var/lib/kme').links[0]!.qkd;
    expect(serial).toMatchObject({ driver: 'serial', path: '/var/lib/kme/qkd0', baud_rate: 115200, rtscts: false, window: 64 });
    const tcp = parseConfig(withQkd({ driver: 'socket', host: '10.0.0.5', port: 7001 }), '/').links[0]!.qkd;
    expect(tcp).toMatchObject({ driver: 'socket', host: '10.0.0.5', port: 7001 });
    const hid = parseConfig(withQkd({ driver: 'hid', vendor_id: 0x1234, product_id: 0x5678 }), '/').links[0]!.qkd;
    expect(hid).toMatchObject({ driver: 'hid', report_size: 64 });
    expect(() => parseConfig(withQkd({ driver: 'socket', host: 'x' }), '/')).toThrow(/either path, or host and port/);
    expect(() => parseConfig(withQkd({ driver: 'usb' }), '/')).toThrow(ConfigError);
  });
});
