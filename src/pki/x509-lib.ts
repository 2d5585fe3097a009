/**
 * The one entry point to @peculiar/x509: loads reflect-metadata first, which
 * its dependency tsyringe needs (ESM evaluates imports in order), and pins the crypto provider to Node's WebCrypto.
 * Import x509 from here, never from '@peculiar/x509' directly.
 */
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto } from 'node:crypto';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

export { x509 };
export const subtle = webcrypto.subtle;
