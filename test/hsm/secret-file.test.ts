/**
 * Reading the HSM PIN: a 0600 file or a systemd credential.
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SecretFileError, readCredential, readSecretFile } from '../../src/common/secret-file.js';
import { readPin } from '../../drivers/hsm/pin.js';
import { MasterKeyError } from '../../src/keypoold/master-key.js';

const dir = mkdtempSync(join(tmpdir(), 'kme-secret-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, content: string, mode = 0o600): string {
  const p = join(dir, name);
  writeFileSync(p, content, { mode });
  chmodSync(p, mode);
  return p;
}

function thrown(fn: () => unknown): SecretFileError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SecretFileError);
    return e as SecretFileError;
  }
  throw new Error('did not throw');
}

describe('readSecretFile', () => {
  it('drops exactly one trailing newline (LF or CRLF) and keeps the rest', () => {
    expect(readSecretFile(file('a', '1234\n'), 'PIN file').toString()).toBe('1234');
    expect(readSecretFile(file('b', '1234\r\n'), 'PIN file').toString()).toBe('1234');
    expect(readSecretFile(file('c', '12 34\n\n'), 'PIN file').toString()).toBe('12 34\n');
    expect(readSecretFile(file('d', '1234'), 'PIN file').toString()).toBe('1234');
  });

  it('refuses group- or other-accessible files with a chmod hint, and empty, missing or non-regular ones', () => {
    for (const mode of [0o644, 0o640, 0o604, 0o620]) {
      const p = file(`loose-${mode.toString(8)}`, 'secret-9', mode);
      const e = thrown(() => readSecretFile(p, 'PIN file'));
      expect(e.code).toBe('PERMISSIONS');
      expect(e.message).toBe(`the PIN file ${p} is accessible to group or others (mode ${mode.toString(8).padStart(4, '0')}); run: chmod 600 ${p}`);
    }
    expect(thrown(() => readSecretFile(file('empty', '\n'), 'PIN file')).message).toMatch(/is empty: write the secret into it/);
    expect(thrown(() => readSecretFile(join(dir, 'nope'), 'PIN file')).message).toMatch(/cannot read the PIN file .*nope \(ENOENT\): create it \(mode 0600\)/);
    mkdirSync(join(dir, 'adir'));
    expect(thrown(() => readSecretFile(join(dir, 'adir'), 'PIN file')).code).toBe('UNREADABLE');
    symlinkSync(file('target', '1234'), join(dir, 'link'));
    expect(thrown(() => readSecretFile(join(dir, 'link'), 'PIN file')).code).toBe('UNREADABLE'); // O_NOFOLLOW
  });
});

describe('readCredential', () => {
  it('reads $CREDENTIALS_DIRECTORY/<name> and explains a missing variable, credential or bad name', () => {
    const creds = join(dir, 'creds');
    mkdirSync(creds);
    writeFileSync(join(creds, 'hsm-pin'), '5678\n', { mode: 0o400 });
    expect(readCredential('hsm-pin', 'HSM PIN', { CREDENTIALS_DIRECTORY: creds }).toString()).toBe('5678');
    expect(thrown(() => readCredential('hsm-pin', 'HSM PIN', {})).message).toBe(
      "the HSM PIN comes from the systemd credential 'hsm-pin', but CREDENTIALS_DIRECTORY is not set: " +
        'add LoadCredential=hsm-pin:<file> to the service unit, or give a pin_file instead',
    );
    expect(thrown(() => readCredential('other', 'HSM PIN', { CREDENTIALS_DIRECTORY: creds })).message).toBe(
      `the systemd credential 'other' is missing from ${creds}: check LoadCredential=other:<file> in the service unit and that the file exists`,
    );
    expect(thrown(() => readCredential('../hsm-pin', 'HSM PIN', { CREDENTIALS_DIRECTORY: creds })).code).toBe('UNREADABLE');
  });
});

describe('readPin', () => {
  it('turns secret-file failures into MasterKeyError FILE_PERMISSIONS / PIN_UNREADABLE', () => {
    expect(readPin({ pin_file: file('ok', '1111\n') }).toString()).toBe('1111');
    const codeOf = (fn: () => unknown) => {
      try {
        fn();
      } catch (e) {
        expect(e).toBeInstanceOf(MasterKeyError);
        return (e as MasterKeyError).code;
      }
      return 'none';
    };
    expect(codeOf(() => readPin({ pin_file: file('loose', '1111', 0o644) }))).toBe('FILE_PERMISSIONS');
    expect(codeOf(() => readPin({ pin_credential: 'x' }, {}))).toBe('PIN_UNREADABLE');
    expect(codeOf(() => readPin({}))).toBe('PIN_UNREADABLE');
  });
});
