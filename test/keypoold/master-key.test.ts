/**
 * The file master-key provider (boards without an HSM), the exit codes and
 * the factory.
 */
import { createCipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import {
  FileMasterKeyProvider, MASTER_KEY_EXIT_CODES, MasterKeyError, fileKeyId, masterKeyExitCode, openMasterKeyProvider,
  type FileRotationStep, type MasterKeyErrorCode,
} from '../../src/keypoold/master-key.js';

const root = mkdtempSync(join(tmpdir(), 'kme-mk-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => {
  const d = join(root, `d${n++}`);
  mkdirSync(d, { mode: 0o700 });
  return d;
};

/** A logger that keeps its lines. */
function capture() {
  const lines: Array<{ level: number; msg: string }> = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(JSON.parse(chunk.toString()));
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, stream), lines };
}

const quiet = () => capture().logger;
const dataKey = Buffer.alloc(32, 0x5a);

function failure(fn: () => unknown): MasterKeyError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(MasterKeyError);
    return e as MasterKeyError;
  }
  throw new Error('did not throw');
}

async function rejected(p: Promise<unknown>): Promise<MasterKeyError> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  expect(e).toBeInstanceOf(MasterKeyError);
  return e as MasterKeyError;
}

describe('file master key: opening', () => {
  it('creates a 0600 file of 32 random bytes when absent, warns it is not an HSM, and reopens the same key', async () => {
    const path = join(freshDir(), 'master.key');
    const { logger, lines } = capture();
    const p = FileMasterKeyProvider.open(path, logger);
    expect(p.kind).toBe('file');
    const st = statSync(path);
    expect(st.mode & 0o777).toBe(0o600);
    expect(st.size).toBe(32);
    expect(lines.some((l) => l.level === 40 && /not an HSM/.test(l.msg))).toBe(true);
    const key = readFileSync(path);
    expect(p.currentKeyId).toBe(fileKeyId(key));
    expect(p.currentKeyId).toMatch(/^[0-9a-f]{16}$/);
    expect(key.toString('hex')).not.toContain(p.currentKeyId);
    const again = FileMasterKeyProvider.open(path, quiet());
    expect(again.currentKeyId).toBe(p.currentKeyId);
    expect(readdirSync(join(path, '..'))).toEqual(['master.key']);
    await p.close();
    await again.close();
  });

  it('refuses a key file group or others can read (FILE_PERMISSIONS), and a damaged one (KEY_MISSING)', () => {
    const path = join(freshDir(), 'master.key');
    writeFileSync(path, randomBytes(32), { mode: 0o644 });
    chmodSync(path, 0o644);
    const e = failure(() => FileMasterKeyProvider.open(path, quiet()));
    expect(e.code).toBe('FILE_PERMISSIONS');
    expect(e.message).toBe(`master key file ${path} is accessible to group or others (mode 0644); run: chmod 600 ${path}`);
    writeFileSync(path, randomBytes(31));
    chmodSync(path, 0o600);
    const d = failure(() => FileMasterKeyProvider.open(path, quiet()));
    expect(d.code).toBe('KEY_MISSING');
    expect(d.message).toContain('holds 31 bytes, not 32: it is damaged; restore it from backup');
  });
});

describe('file master key: wrap and unwrap', () => {
  it('round-trips, still reads the format the earlier provider wrote, and classifies failures', async () => {
    const path = join(freshDir(), 'master.key');
    const p = FileMasterKeyProvider.open(path, quiet());
    const { keyId, wrapped } = await p.wrap(dataKey);
    expect(keyId).toBe(p.currentKeyId);
    expect(await p.unwrap(wrapped, keyId)).toEqual(dataKey);

    // iv | tag | ciphertext with AAD 'kme-data-key-v1': what stores made before rotation hold
    const iv = randomBytes(12);
    const c = createCipheriv('aes-256-gcm', readFileSync(path), iv);
    c.setAAD(Buffer.from('kme-data-key-v1'));
    const ct = Buffer.concat([c.update(dataKey), c.final()]);
    expect(await p.unwrap(Buffer.concat([iv, c.getAuthTag(), ct]), keyId)).toEqual(dataKey);

    const bad = Buffer.from(wrapped);
    bad[40]! ^= 1;
    const e = await rejected(p.unwrap(bad, keyId));
    expect(e.code).toBe('UNWRAP_FAILED');
    expect(e.message).toContain(`does not authenticate under master key ${keyId}`);
    expect((await rejected(p.unwrap(wrapped.subarray(0, 10), keyId))).code).toBe('UNWRAP_FAILED');
    const m = await rejected(p.unwrap(wrapped, '0123456789abcdef'));
    expect(m.code).toBe('KEY_MISSING');
    expect(m.message).toBe(`master key 0123456789abcdef is not there (no ${path}.0123456789abcdef): it was retired or lost; restore it from backup`);
    expect((await rejected(p.unwrap(wrapped, '../../etc/passwd'))).code).toBe('KEY_MISSING');
    await p.close();
    await expect(p.wrap(dataKey)).rejects.toThrow(/closed/);
  });
});

describe('file master key: rotation', () => {
  it('rotate archives the old key as <path>.<id> (0600), old blobs unwrap, retire removes it', async () => {
    const dir = freshDir();
    const path = join(dir, 'master.key');
    const p = FileMasterKeyProvider.open(path, quiet());
    const old = await p.wrap(dataKey);
    const newId = await p.rotate();
    expect(newId).not.toBe(old.keyId);
    expect(p.currentKeyId).toBe(newId);
    expect(fileKeyId(readFileSync(path))).toBe(newId);
    expect(statSync(`${path}.${old.keyId}`).mode & 0o777).toBe(0o600);
    expect(readdirSync(dir).sort()).toEqual(['master.key', `master.key.${old.keyId}`]);
    expect((await p.wrap(dataKey)).keyId).toBe(newId);
    expect(await p.unwrap(old.wrapped, old.keyId)).toEqual(dataKey);

    const reopened = FileMasterKeyProvider.open(path, quiet());
    expect(reopened.currentKeyId).toBe(newId);
    expect(await reopened.unwrap(old.wrapped, old.keyId)).toEqual(dataKey);

    await expect(p.retire(newId)).rejects.toThrow(RangeError);
    await p.retire(old.keyId);
    expect(existsSync(`${path}.${old.keyId}`)).toBe(false);
    expect((await rejected(p.unwrap(old.wrapped, old.keyId))).code).toBe('KEY_MISSING');
    expect((await rejected(p.retire(old.keyId))).code).toBe('KEY_MISSING');
    await p.close();
    await reopened.close();
  });

  it('an archived key file others can read, or one holding another key, is refused', async () => {
    const path = join(freshDir(), 'master.key');
    const p = FileMasterKeyProvider.open(path, quiet());
    const old = await p.wrap(dataKey);
    await p.rotate();
    chmodSync(`${path}.${old.keyId}`, 0o640);
    expect((await rejected(p.unwrap(old.wrapped, old.keyId))).code).toBe('FILE_PERMISSIONS');
    writeFileSync(`${path}.${old.keyId}`, randomBytes(32));
    chmodSync(`${path}.${old.keyId}`, 0o600);
    const e = await rejected(p.unwrap(old.wrapped, old.keyId));
    expect(e.code).toBe('KEY_MISSING');
    expect(e.message).toMatch(new RegExp(`holds master key [0-9a-f]{16}, not ${old.keyId}`));
    await p.close();
  });

  const steps: FileRotationStep[] = ['old-key-archived', 'new-key-written', 'current-replaced'];
  for (const step of steps) {
    it(`a crash after '${step}' leaves every key a blob may name on disk, and the next open cleans up`, async () => {
      const dir = freshDir();
      const path = join(dir, 'master.key');
      const p = FileMasterKeyProvider.open(path, quiet(), {
        afterStep: (s) => {
          if (s === step) throw new Error(`crash at ${s}`);
        },
      });
      const old = await p.wrap(dataKey);
      await expect(p.rotate()).rejects.toThrow(`crash at ${step}`);
      if (step === 'new-key-written') expect(readdirSync(dir).some((f) => f.endsWith('.tmp'))).toBe(true);

      const after = FileMasterKeyProvider.open(path, quiet()); // the restart
      expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
      expect(await after.unwrap(old.wrapped, old.keyId)).toEqual(dataKey);
      if (step === 'current-replaced') expect(after.currentKeyId).not.toBe(old.keyId);
      else expect(after.currentKeyId).toBe(old.keyId);
      // the interrupted rotation can simply be run again
      const id = await after.rotate();
      expect(await after.unwrap(old.wrapped, old.keyId)).toEqual(dataKey);
      const w = await after.wrap(dataKey);
      expect(w.keyId).toBe(id);
      expect(await after.unwrap(w.wrapped, id)).toEqual(dataKey);
      await after.close();
      await p.close();
    });
  }
});

describe('file master key: health', () => {
  it('is ok while the file holds the current key; not when it is gone, replaced or opened up', async () => {
    const path = join(freshDir(), 'master.key');
    const p = FileMasterKeyProvider.open(path, quiet());
    expect(await p.health()).toEqual({ ok: true });
    const key = readFileSync(path);
    chmodSync(path, 0o644);
    expect(await p.health()).toMatchObject({ ok: false, reason: expect.stringContaining('chmod 600') });
    unlinkSync(path);
    expect(await p.health()).toEqual({ ok: false, reason: `master key file ${path} is gone: restore it from backup before keypoold restarts` });
    writeFileSync(path, randomBytes(32), { mode: 0o600 });
    expect(await p.health()).toMatchObject({ ok: false, reason: expect.stringContaining(`not the current key ${p.currentKeyId}`) });
    writeFileSync(path, key, { mode: 0o600 });
    expect(await p.health()).toEqual({ ok: true });
    await p.close();
    expect(await p.health()).toEqual({ ok: false, reason: 'the master key provider is closed' });
  });
});

describe('exit codes and the factory', () => {
  it('gives each error class its own documented non-zero exit code', () => {
    const codes: MasterKeyErrorCode[] = [
      'LIBRARY_NOT_FOUND', 'TOKEN_NOT_FOUND', 'WRONG_PIN', 'PIN_LOCKED', 'KEY_MISSING', 'UNWRAP_FAILED', 'PIN_UNREADABLE', 'FILE_PERMISSIONS', 'HSM_ERROR',
    ];
    expect(codes.map(masterKeyExitCode)).toEqual([20, 21, 22, 23, 24, 25, 26, 27, 28]);
    expect(Object.keys(MASTER_KEY_EXIT_CODES).sort()).toEqual([...codes].sort());
    const e = new MasterKeyError('WRONG_PIN', 'x');
    expect(e.name).toBe('MasterKeyError');
    expect(e.code).toBe('WRONG_PIN');
  });

  it('openMasterKeyProvider opens the file provider from its configuration', async () => {
    const path = join(freshDir(), 'master.key');
    const p = await openMasterKeyProvider({ provider: 'file', path }, quiet());
    expect(p.kind).toBe('file');
    expect(p.currentKeyId).toBe(fileKeyId(readFileSync(path)));
    await p.close();
  });
});
