/**
 * The SAE registry file (lowdb JSON through the fsync adapter, validated as
 * keypoold validates it), and asking keypoold to reload it.
 */
import { Low } from 'lowdb';
import { FsyncJsonFile } from '../common/fsync-json-file.js';
import { RegistryError, parseRegistry, type RegistryData } from '../keypoold/registry.js';
import { writeNodeFile } from './files.js';
import { EXIT, KmectlError } from './output.js';
import type { Admin } from './node.js';

/** The fsync adapter, writing as writeNodeFile does (the file stays readable by keypoold's user). */
class NodeJsonFile<T> extends FsyncJsonFile<T> {
  override async write(data: T): Promise<void> {
    writeNodeFile(this.path, JSON.stringify(data, null, 2) + '\n', { mode: 0o640 });
  }
}

export async function openRegistry(path: string): Promise<Low<RegistryData>> {
  const low = new Low<RegistryData>(new NodeJsonFile<RegistryData>(path), { saes: [] });
  try {
    await low.read();
    low.data = parseRegistry(low.data, path);
  } catch (e) {
    const why = e instanceof RegistryError ? e.message : `cannot read the SAE registry ${path}: ${(e as Error).message}`;
    throw new KmectlError(why, 'fix the file by hand (it is JSON), or restore it: kmectl restore <backup>', EXIT.USAGE, 'REGISTRY');
  }
  return low;
}

/** Validate and write durably (temp file, fsync, rename, fsync of the folder). */
export async function saveRegistry(low: Low<RegistryData>, path: string): Promise<void> {
  low.data = parseRegistry(low.data, path);
  await low.write();
}

export type ReloadOutcome = { reloaded: true; saes: number } | { reloaded: false; why: string };

/** Ask keypoold to read the registry again; when it is not running, the edit takes effect at its next start. */
export async function reloadRegistry(admin: Admin): Promise<ReloadOutcome> {
  try {
    await admin.probe();
  } catch (e) {
    return { reloaded: false, why: `${(e as Error).message}; the change takes effect when it starts` };
  }
  const r = await admin.call('reload', {});
  return { reloaded: true, saes: r.saes };
}
