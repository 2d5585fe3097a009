/**
 * Small secrets (an HSM PIN) read from a file only the daemon's user may read,
 * or from a systemd credential (`LoadCredential=name:/etc/kme/hsm.pin` puts it
 * in `$CREDENTIALS_DIRECTORY/name`). The secret comes back as a Buffer the
 * caller zeroes (`fill(0)`) once used; messages name the file, never its content.
 */
import { closeSync, fstatSync, openSync, readSync, constants as fsc } from 'node:fs';
import { join } from 'node:path';

export type SecretFileErrorCode =
  /** The file is readable (or writable) by group or others. */
  | 'PERMISSIONS'
  /** The file, the credential or its folder is missing, unreadable, empty or not a regular file. */
  | 'UNREADABLE';

export class SecretFileError extends Error {
  override readonly name = 'SecretFileError';
  constructor(
    readonly code: SecretFileErrorCode,
    message: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
  }
}

/** Largest secret read; a PIN is far shorter. */
const MAX_BYTES = 4096;

/**
 * Reads a secret file (`what` names it in messages, e.g. "PIN file"): it must be
 * a regular file that group and others cannot access (mode 0600 or stricter),
 * unless `checkMode` is false. One trailing newline (`\n` or `\r\n`) is dropped.
 */
export function readSecretFile(path: string, what: string, checkMode = true): Buffer {
  let fd: number;
  try {
    fd = openSync(path, fsc.O_RDONLY | fsc.O_NOFOLLOW);
  } catch (e) {
    throw new SecretFileError('UNREADABLE', `cannot read the ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'}): create it (mode 0600) or fix the path`, { cause: e });
  }
  const buf = Buffer.alloc(MAX_BYTES + 1);
  let n = 0;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new SecretFileError('UNREADABLE', `the ${what} ${path} is not a regular file`);
    if (checkMode && (st.mode & 0o077) !== 0) {
      throw new SecretFileError(
        'PERMISSIONS',
        `the ${what} ${path} is accessible to group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); run: chmod 600 ${path}`,
      );
    }
    for (let r: number; n < buf.length && (r = readSync(fd, buf, n, buf.length - n, null)) > 0; ) n += r;
  } catch (e) {
    buf.fill(0);
    if (e instanceof SecretFileError) throw e;
    throw new SecretFileError('UNREADABLE', `cannot read the ${what} ${path} (${(e as NodeJS.ErrnoException).code ?? 'error'})`, { cause: e });
  } finally {
    closeSync(fd);
  }
  if (n > MAX_BYTES) {
    buf.fill(0);
    throw new SecretFileError('UNREADABLE', `the ${what} ${path} is larger than ${MAX_BYTES} bytes: it does not hold a PIN`);
  }
  let end = n;
  if (end > 0 && buf[end - 1] === 0x0a) end--;
  if (end > 0 && end < n && buf[end - 1] === 0x0d) end--;
  const secret = Buffer.from(buf.subarray(0, end));
  buf.fill(0);
  if (secret.length === 0) throw new SecretFileError('UNREADABLE', `the ${what} ${path} is empty: write the secret into it`);
  return secret;
}

/**
 * Reads the systemd credential `name` from `$CREDENTIALS_DIRECTORY`. systemd
 * owns that folder's permissions, so the file mode is not checked.
 */
export function readCredential(name: string, what: string, env: NodeJS.ProcessEnv = process.env): Buffer {
  if (name === '' || name.includes('/') || name === '.' || name === '..') {
    throw new SecretFileError('UNREADABLE', `credential name '${name}' is not a plain file name: fix it in the configuration`);
  }
  const dir = env.CREDENTIALS_DIRECTORY;
  if (!dir) {
    throw new SecretFileError(
      'UNREADABLE',
      `the ${what} comes from the systemd credential '${name}', but CREDENTIALS_DIRECTORY is not set: ` +
        `add LoadCredential=${name}:<file> to the service unit, or give a pin_file instead`,
    );
  }
  try {
    return readSecretFile(join(dir, name), `${what} (credential '${name}')`, false);
  } catch (e) {
    if (e instanceof SecretFileError && (e.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
      throw new SecretFileError(
        'UNREADABLE',
        `the systemd credential '${name}' is missing from ${dir}: check LoadCredential=${name}:<file> in the service unit and that the file exists`,
        { cause: e },
      );
    }
    throw e;
  }
}
