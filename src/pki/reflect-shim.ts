/**
 * Minimal Reflect metadata API for tsyringe, which @peculiar/x509 uses
 * internally and which refuses to load without `Reflect.getMetadata`.
 * Import this module before '@peculiar/x509' (see ./x509-lib.ts). It only
 * fills the gap: if a full polyfill (reflect-metadata) is present, it is kept.
 *
 * Only the four functions tsyringe calls are provided; property keys are
 * honoured, metadata is looked up along the prototype chain for getMetadata.
 */
type MetaMap = Map<unknown, unknown>;
const store = new WeakMap<object, Map<PropertyKey | undefined, MetaMap>>();

function own(target: object, prop: PropertyKey | undefined, create: boolean): MetaMap | undefined {
  let byProp = store.get(target);
  if (!byProp) {
    if (!create) return undefined;
    byProp = new Map();
    store.set(target, byProp);
  }
  let m = byProp.get(prop);
  if (!m && create) {
    m = new Map();
    byProp.set(prop, m);
  }
  return m;
}

const R = Reflect as unknown as Record<string, unknown>;
if (typeof R.getMetadata !== 'function') {
  R.defineMetadata = (key: unknown, value: unknown, target: object, prop?: PropertyKey) => {
    own(target, prop, true)!.set(key, value);
  };
  R.getOwnMetadata = (key: unknown, target: object, prop?: PropertyKey) => own(target, prop, false)?.get(key);
  R.hasOwnMetadata = (key: unknown, target: object, prop?: PropertyKey) =>
    own(target, prop, false)?.has(key) ?? false;
  R.getMetadata = (key: unknown, target: object, prop?: PropertyKey) => {
    for (let t: object | null = target; t; t = Object.getPrototypeOf(t)) {
      const m = own(t, prop, false);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
  R.metadata = (key: unknown, value: unknown) => (target: object, prop?: PropertyKey) => {
    own(target, prop, true)!.set(key, value);
  };
}

export {};
