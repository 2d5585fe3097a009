/** The user PIN, from `pin_file` or the systemd credential `pin_credential`, as a Buffer to zero after C_Login. */
import { readCredential, readSecretFile, SecretFileError } from '../../src/common/secret-file.js';
import { MasterKeyError } from '../../src/keypoold/master-key.js';

export interface PinSource {
  pin_file?: string | undefined;
  pin_credential?: string | undefined;
}

/** Where the PIN comes from, for messages ("PIN file /etc/kme/hsm.pin"); never the PIN. */
export function pinSourceName(src: PinSource): string {
  return src.pin_file !== undefined ? `PIN file ${src.pin_file}` : `systemd credential '${src.pin_credential}'`;
}

export function readPin(src: PinSource, env: NodeJS.ProcessEnv = process.env): Buffer {
  try {
    if (src.pin_file !== undefined) return readSecretFile(src.pin_file, 'HSM PIN file');
    if (src.pin_credential !== undefined) return readCredential(src.pin_credential, 'HSM PIN', env);
  } catch (e) {
    if (e instanceof SecretFileError) {
      throw new MasterKeyError(e.code === 'PERMISSIONS' ? 'FILE_PERMISSIONS' : 'PIN_UNREADABLE', e.message, { cause: e });
    }
    throw e;
  }
  throw new MasterKeyError('PIN_UNREADABLE', 'no HSM PIN configured: give master_key.pin_file or master_key.pin_credential');
}
