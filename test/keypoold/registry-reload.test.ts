import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { KmeError } from '../../src/common/errors.js';
import { dispatchPoolOp, type LocalApiDeps } from '../../src/keypoold/local-api.js';
import { Registry, RegistryError } from '../../src/keypoold/registry.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function file(saes: unknown[]): string {
  const d = mkdtempSync(join(tmpdir(), 'kme-registry-'));
  dirs.push(d);
  const f = join(d, 'registry.json');
  writeFileSync(f, JSON.stringify({ saes }));
  return f;
}

const A1 = { sae_id: 'SAE_A1', kme_id: 'KME_A', allowed_slaves: ['*'] };
const A4 = { sae_id: 'SAE_A4', kme_id: 'KME_A', allowed_slaves: ['SAE_B1'] };

describe('registry reload', () => {
  it('picks up SAEs added and removed in the file', async () => {
    const f = file([A1]);
    const r = await Registry.open(f);
    expect(r.get('SAE_A4')).toBeUndefined();
    writeFileSync(f, JSON.stringify({ saes: [A4] }));
    expect(await r.reload()).toEqual({ saes: 1 });
    expect(r.get('SAE_A1')).toBeUndefined();
    expect(r.get('SAE_A4')).toEqual(A4);
    expect(r.mayTarget('SAE_A4', 'SAE_B1')).toBe(true);
    expect(r.mayTarget('SAE_A4', 'SAE_B2')).toBe(false);
  });

  it('refuses an invalid file and keeps the registry in use', async () => {
    const f = file([A1]);
    const r = await Registry.open(f);
    writeFileSync(f, JSON.stringify({ saes: [A1, A1] }));
    await expect(r.reload()).rejects.toThrow(/lists SAE_A1 twice/);
    writeFileSync(f, '{"saes": [');
    await expect(r.reload()).rejects.toBeInstanceOf(RegistryError);
    writeFileSync(f, JSON.stringify({ saes: [{ sae_id: 'X' }] }));
    await expect(r.reload()).rejects.toThrow(/invalid/);
    expect(r.list()).toEqual([A1]);
    expect(r.get('SAE_A1')).toEqual(A1);
  });

  it('is an admin-socket op: answered there, refused on kme-api\'s socket, a bad file is BAD_REQUEST', async () => {
    const f = file([A1]);
    const registry = await Registry.open(f);
    const deps = { registry } as unknown as LocalApiDeps;
    await expect(dispatchPoolOp(deps, 'reload', {}, false)).rejects.toThrow(/only served on keypoold's maintenance socket/);
    writeFileSync(f, JSON.stringify({ saes: [A1, A4] }));
    await expect(dispatchPoolOp(deps, 'reload', {}, true)).resolves.toEqual({ saes: 2 });
    writeFileSync(f, 'not json');
    const e = await dispatchPoolOp(deps, 'reload', {}, true).catch((x: unknown) => x);
    expect(e).toBeInstanceOf(KmeError);
    expect((e as KmeError).code).toBe('BAD_REQUEST');
    expect((e as KmeError).message).toMatch(/not valid JSON; the registry in use is kept/);
    expect(registry.get('SAE_A4')).toEqual(A4);
  });
});
