/**
 * Writing the node's files as a technician's tool must: durably (temporary
 * file, fsync, rename, fsync of the folder) and without taking them away from
 * the daemons. kmectl runs as root on a board, while the daemons read their
 * files as their own users (see systemd/kme.tmpfiles: registry.json 0640
 * root:kme, the TLS keys owned by the daemon that uses them): a file that
 * exists keeps its owner, group and mode (a secret's mode only if group and
 * others have no access, else 0600); a new one gets `mode` and its folder's group.
 */
import { closeSync, fchmodSync, fchownSync, fsyncSync, openSync, renameSync, statSync, unlinkSync, writeSync, constants as fsc } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export interface WriteOptions {
  /** Mode of a new file. */
  mode: number;
  /** A private key or other secret: never readable by group or others. */
  secret?: boolean;
}

export function writeNodeFile(path: string, data: string | Buffer, opts: WriteOptions): void {
  const dir = dirname(path);
  const old = statSync(path, { throwIfNoEntry: false });
  const dirSt = statSync(dir);
  let mode = old ? old.mode & 0o777 : opts.mode;
  if (opts.secret && (mode & 0o077) !== 0) mode = 0o600;
  const uid = old ? old.uid : (process.getuid?.() ?? -1);
  const gid = old ? old.gid : dirSt.gid;
  const tmp = join(dir, `.${basename(path)}.${randomBytes(4).toString('hex')}.tmp`);
  const fd = openSync(tmp, fsc.O_WRONLY | fsc.O_CREAT | fsc.O_EXCL, opts.secret ? 0o600 : mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let off = 0;
    while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
    try {
      fchownSync(fd, uid, gid);
    } catch (e) {
      // Not root: the file stays ours (what the daemon of a developer's demo runs as too).
      if ((e as NodeJS.ErrnoException).code !== 'EPERM') throw e;
    }
    fchmodSync(fd, mode); // after chown, which may clear set-id bits; also past the umask
    fsyncSync(fd);
  } catch (e) {
    closeSync(fd);
    unlinkSync(tmp);
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, path);
  const dfd = openSync(dir, fsc.O_RDONLY);
  try {
    fsyncSync(dfd);
  } finally {
    closeSync(dfd);
  }
}
