/**
 * The SAE registry: which SAE is attached to which KME, and which slaves each
 * master may ask keys for. Kept in lowdb (JSON) through the fsync adapter.
 * keypoold reads it at start and again on the maintenance socket's `reload`
 * (kmectl sae add/remove edit the file, then ask for it); a file that fails
 * validation on reload is refused and the registry in use is kept.
 */
import { Low } from 'lowdb';
import { z } from 'zod';
import { FsyncJsonFile } from '../common/fsync-json-file.js';

export const saeEntrySchema = z
  .object({
    sae_id: z.string().min(1).max(128),
    kme_id: z.string().min(1).max(128),
    /** SAE IDs this SAE may request keys for as a master; "*" means any. */
    allowed_slaves: z.array(z.string()).default(['*']),
  })
  .strict();
export const registrySchema = z.object({ saes: z.array(saeEntrySchema) }).strict();

export type SaeEntry = z.infer<typeof saeEntrySchema>;
export type RegistryData = z.infer<typeof registrySchema>;

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
}

export class Registry {
  #byId = new Map<string, SaeEntry>();
  readonly #low: Low<RegistryData>;
  readonly #path: string;

  private constructor(low: Low<RegistryData>, path: string) {
    this.#low = low;
    this.#path = path;
    this.#index();
  }

  static async open(path: string): Promise<Registry> {
    const low = new Low<RegistryData>(new FsyncJsonFile<RegistryData>(path), { saes: [] });
    low.data = await readRegistry(low, path);
    return new Registry(low, path);
  }

  /**
   * Read the file again and use it from now on (a technician's tool edited it).
   * Throws RegistryError, keeping the registry in use, if the file is invalid.
   */
  async reload(): Promise<{ saes: number }> {
    const fresh = new Low<RegistryData>(new FsyncJsonFile<RegistryData>(this.#path), { saes: [] });
    this.#low.data = await readRegistry(fresh, this.#path);
    this.#index();
    return { saes: this.#low.data.saes.length };
  }

  #index(): void {
    this.#byId = new Map(this.#low.data.saes.map((e) => [e.sae_id, e]));
  }

  get(saeId: string): SaeEntry | undefined {
    return this.#byId.get(saeId);
  }

  /** May `master` request keys for `slave`? */
  mayTarget(master: string, slave: string): boolean {
    const allowed = this.#byId.get(master)?.allowed_slaves ?? [];
    return allowed.includes('*') || allowed.includes(slave);
  }

  list(): SaeEntry[] {
    return [...this.#low.data.saes];
  }

  async put(entry: SaeEntry): Promise<void> {
    const e = saeEntrySchema.parse(entry);
    this.#low.data.saes = [...this.#low.data.saes.filter((x) => x.sae_id !== e.sae_id), e];
    await this.#low.write();
    this.#index();
  }
}

/** Validate registry content (from `path`, named in messages): schema, and no SAE listed twice. */
export function parseRegistry(raw: unknown, path: string): RegistryData {
  const parsed = registrySchema.safeParse(raw ?? { saes: [] });
  if (!parsed.success) {
    const why = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
    throw new RegistryError(`SAE registry ${path} is invalid: ${why}`);
  }
  const seen = new Set<string>();
  for (const e of parsed.data.saes) {
    if (seen.has(e.sae_id)) throw new RegistryError(`SAE registry ${path} lists ${e.sae_id} twice`);
    seen.add(e.sae_id);
  }
  return parsed.data;
}

async function readRegistry(low: Low<RegistryData>, path: string): Promise<RegistryData> {
  try {
    await low.read();
  } catch (e) {
    throw new RegistryError(`SAE registry ${path} is not valid JSON: ${(e as Error).message}`);
  }
  return parseRegistry(low.data, path);
}
