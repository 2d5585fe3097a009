/**
 * The store's data key: created at the first start, kept in the store only
 * wrapped by the master key, unwrapped into memory at each start.
 */
import { randomBytes } from 'node:crypto';
import type { MasterKeyProvider } from './master-key.js';
import type { Store } from './store.js';

const META = 'wrapped_data_key';

export async function openDataKey(store: Store, master: MasterKeyProvider): Promise<Buffer> {
  const wrapped = store.getMeta(META);
  if (wrapped) return master.unwrap(wrapped);
  const key = randomBytes(32);
  store.putMeta(META, await master.wrap(key));
  return key;
}
