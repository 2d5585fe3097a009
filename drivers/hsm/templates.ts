/**
 * Every PKCS#11 template and mechanism the master-key provider uses, in one
 * place. The master key is an AES-256 token object that never leaves the token
 * (sensitive, not extractable), usable only to encrypt and decrypt.
 */
import pkcs11js from 'pkcs11js';
import type { GcmParams, Mechanism, Template } from 'pkcs11js';

export const AES_KEY_BYTES = 32;
export const GCM_IV_BYTES = 12;
export const GCM_TAG_BYTES = 16;
/** Additional authenticated data bound to every wrapped data key. */
export const WRAP_AAD = Buffer.from('kme-data-key-v1');

export const AES_KEY_GEN: Mechanism = { mechanism: pkcs11js.CKM_AES_KEY_GEN };

/** The template of a new master key. */
export function masterKeyTemplate(label: string, id: Buffer): Template {
  return [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_VALUE_LEN, value: AES_KEY_BYTES },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_PRIVATE, value: true },
    { type: pkcs11js.CKA_SENSITIVE, value: true },
    { type: pkcs11js.CKA_EXTRACTABLE, value: false },
    { type: pkcs11js.CKA_MODIFIABLE, value: false },
    { type: pkcs11js.CKA_ENCRYPT, value: true },
    { type: pkcs11js.CKA_DECRYPT, value: true },
    { type: pkcs11js.CKA_WRAP, value: false },
    { type: pkcs11js.CKA_UNWRAP, value: false },
    { type: pkcs11js.CKA_SIGN, value: false },
    { type: pkcs11js.CKA_VERIFY, value: false },
    { type: pkcs11js.CKA_DERIVE, value: false },
    { type: pkcs11js.CKA_LABEL, value: label },
    { type: pkcs11js.CKA_ID, value: id },
  ];
}

/** Finds the AES secret keys labelled `label` (one of them if `id` is given). */
export function masterKeySearch(label: string, id?: Buffer): Template {
  const t: Template = [
    { type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY },
    { type: pkcs11js.CKA_KEY_TYPE, value: pkcs11js.CKK_AES },
    { type: pkcs11js.CKA_TOKEN, value: true },
    { type: pkcs11js.CKA_LABEL, value: label },
  ];
  if (id) t.push({ type: pkcs11js.CKA_ID, value: id });
  return t;
}

/** Attributes read back from each master key found (never CKA_VALUE). */
export const MASTER_KEY_READBACK: Template = [
  { type: pkcs11js.CKA_ID },
  { type: pkcs11js.CKA_SENSITIVE },
  { type: pkcs11js.CKA_EXTRACTABLE },
  { type: pkcs11js.CKA_ENCRYPT },
  { type: pkcs11js.CKA_DECRYPT },
  { type: pkcs11js.CKA_VALUE_LEN },
];

/** AES-GCM with a 96-bit IV, 128-bit tag and the fixed AAD. */
export function gcm(iv: Buffer): Mechanism {
  const parameter: GcmParams = { type: pkcs11js.CK_PARAMS_AES_GCM, iv, ivBits: GCM_IV_BYTES * 8, aad: WRAP_AAD, tagBits: GCM_TAG_BYTES * 8 };
  return { mechanism: pkcs11js.CKM_AES_GCM, parameter };
}
