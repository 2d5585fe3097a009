/**
 * The SAE registry: which SAE is attached to which KME, and which slaves each
 * master may ask keys for. Kept in lowdb (JSON, edited by technicians' tools)
 * through the fsync adapter; keypoold is its only writer.
 */
import { Low } from 'lowdb';
import { z } from 'zod';
import { FsyncJsonFile } from '../common/fsync-json-file.js';

const entrySchema = z
  .object({
    sae_id: z.string().min(1).max(128),
    kme_id: z.string().min(1).max(128),
    /** SAE IDs this SAE may request keys for as a master; "*" means any. */
    allowed_slaves: z.array(z.string()).default(['*']),
  })
  .strict();
const registrySchema = z.object({ saes: z.array(entrySchema) }).strict();

export type SaeEntry = z.infer<typeof entrySchema>;
export type RegistryData = z.infer<typeof registrySchema>;

export class RegistryError extends Error {
  override readonly name = 'RegistryError';
}

export class Registry {
  #byId = new Map<string, SaeEntry>();
  readonly #low: Low<RegistryData>;

  private constructor(low: Low<RegistryData>) {
    this.#low = low;
    this.#index();
  }

  static async open(path: string): Promise<Registry> {
    const low = new Low<RegistryData>(new FsyncJsonFile<RegistryData>(path), { saes: [] });
    try {
      await low.read();
    } catch (e) {
      throw new RegistryError(`SAE registry ${path} is not valid JSON: ${(e as Error).message}`);
    }
    const parsed = registrySchema.safeParse(low.data);
    if (!parsed.success) {
      const why = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ');
      throw new RegistryError(`SAE registry ${path} is invalid: ${why}`);
    }
    low.data = parsed.data;
    const seen = new Set<string>();
    for (const e of parsed.data.saes) {
      if (seen.has(e.sae_id)) throw new RegistryError(`SAE registry ${path} lists ${e.sae_id} twice`);
      seen.add(e.sae_id);
    }
    return new Registry(low);
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
    const e = entrySchema.parse(entry);
    this.#low.data.saes = [...this.#low.data.saes.filter((x) => x.sae_id !== e.sae_id), e];
    await this.#low.write();
    this.#index();
  }
}
