/**
 * Group commit. Work items queued in the same turn of the event loop run in
 * one SQLite transaction, each inside its own savepoint (a failing item rolls
 * back alone). A promise settles only once its commit is durable.
 *
 * Durability: the store runs WAL with synchronous=NORMAL, so a commit only
 * writes its frames to the WAL file; this batcher then fsyncs the WAL file on
 * libuv's thread pool and settles the commit's promises when that fsync
 * returns. The event loop never blocks on the disk; work that arrives while an
 * fsync runs is committed in one transaction when it ends, and covered by the
 * next one. Any answer built on some
 * state is released only after a later fsync, which covers that state too.
 * (Checkpoints under NORMAL fsync the database file before the WAL is reused.)
 */
import { closeSync, fsync, openSync, constants as fsc } from 'node:fs';
import { KmeError } from '../common/errors.js';
import type { Logger } from '../common/logger.js';
import type { Db } from './store.js';

interface Item {
  work: () => unknown;
  /** Settle once committed, without waiting for the fsync. */
  volatile: boolean;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  ok: boolean;
  value: unknown;
}

const NOOP: Item = { work: () => undefined, volatile: false, resolve: () => {}, reject: () => {}, ok: true, value: undefined };

export class TxBatcher {
  #queue: Item[] = [];
  #scheduled = false;
  /** Committed, waiting for an fsync to start. */
  #unsynced: Item[] = [];
  #syncing = false;
  #walFd: number | undefined;
  readonly #walPath: string;
  readonly #db: Db;
  readonly #logger: Logger;
  readonly #runOne: (w: () => unknown) => unknown;
  readonly #runAll: (items: Item[]) => void;

  readonly #onFsyncError: (e: unknown) => void;
  readonly #alsoDurable: (() => Promise<void>) | undefined;

  /**
   * `onFsyncError`: a failed fsync may have dropped pages that a later fsync
   * would not report, so nothing committed afterwards could be trusted: the
   * daemon should stop (and be restarted) rather than go on.
   */
  /**
   * `alsoDurable`: made durable alongside each WAL fsync (the audit trail):
   * a commit settles only once both are on disk.
   */
  constructor(db: Db, logger: Logger, onFsyncError: (e: unknown) => void = () => {}, alsoDurable?: () => Promise<void>) {
    this.#db = db;
    this.#logger = logger;
    this.#onFsyncError = onFsyncError;
    this.#alsoDurable = alsoDurable;
    this.#walPath = `${db.name}-wal`;
    this.#runOne = db.transaction((w: () => unknown) => w());
    this.#runAll = db.transaction((items: Item[]) => {
      for (const it of items) {
        try {
          it.value = this.#runOne(it.work);
          it.ok = true;
        } catch (e) {
          it.value = e;
        }
      }
    });
  }

  /** Run `work` in the next group commit; settle once the commit is durable. */
  run<T>(work: () => T): Promise<T> {
    return this.#enqueue(work, false);
  }

  /**
   * Run `work` in the next group commit; settle as soon as it is committed
   * (visible to every later transaction, and safe from a crash of this
   * process), without waiting for the fsync that makes it survive power loss.
   * Only for writes whose loss in a power cut is harmless (see link-sync.ts).
   */
  runVolatile<T>(work: () => T): Promise<T> {
    return this.#enqueue(work, true);
  }

  #enqueue<T>(work: () => T, volatile: boolean): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ work, volatile, resolve: resolve as (v: unknown) => void, reject, ok: false, value: undefined });
      // While an fsync runs, durable work waits for it to end: whatever it commits
      // now could only be released by the next fsync anyway, so one commit then
      // takes everything that arrived meanwhile.
      if (!this.#scheduled && (volatile || !this.#syncing)) this.#schedule();
    });
  }

  #schedule(): void {
    this.#scheduled = true;
    setImmediate(() => this.#flush());
  }

  #flush(): void {
    this.#scheduled = false;
    const items = this.#queue;
    this.#queue = [];
    if (items.length === 0) return;
    try {
      this.#runAll(items);
    } catch (e) {
      this.#logger.error({ err: (e as Error).message }, 'store commit failed');
      const err = new KmeError('UNAVAILABLE', 'key store unavailable', undefined, { cause: e });
      for (const it of items) it.reject(err);
      return;
    }
    let volatile = false;
    for (const it of items) {
      if (it.volatile) {
        volatile = true;
        (it.ok ? it.resolve : it.reject)(it.value);
      } else this.#unsynced.push(it);
    }
    // Volatile commits are fsynced soon too; nobody waits for it.
    if (volatile && this.#unsynced.length === 0) this.#unsynced.push(NOOP);
    this.#sync();
  }

  /** One fsync of the WAL at a time; it settles everything committed before it started. */
  #sync(): void {
    if (this.#syncing || this.#unsynced.length === 0) return;
    const cohort = this.#unsynced;
    this.#unsynced = [];
    let fd: number;
    try {
      fd = this.#walFd ??= openSync(this.#walPath, fsc.O_RDONLY);
    } catch (e) {
      this.#failed(cohort, e);
      return this.#onFsyncError(e);
    }
    this.#syncing = true;
    const wal = new Promise<void>((resolve, reject) => fsync(fd, (err) => (err ? reject(err) : resolve())));
    const also = this.#alsoDurable?.();
    (also ? Promise.all([wal, also]) : wal).then(
      () => {
        this.#syncing = false;
        for (const it of cohort) (it.ok ? it.resolve : it.reject)(it.value);
        if (this.#queue.length > 0 && !this.#scheduled) this.#flush();
        else this.#sync();
      },
      (err: unknown) => {
        this.#syncing = false;
        this.#failed(cohort, err);
        this.#onFsyncError(err);
      },
    );
  }

  #failed(cohort: Item[], e: unknown): void {
    this.#logger.error({ err: (e as Error).message }, 'store fsync failed');
    const err = new KmeError('UNAVAILABLE', 'key store unavailable', undefined, { cause: e });
    for (const it of cohort) {
      if (it.ok) zeroBuffers(it.value);
      it.reject(err);
    }
  }

  /** Wait for everything committed so far to be durable. */
  drain(): Promise<void> {
    return this.run(() => undefined);
  }

  close(): void {
    if (this.#walFd !== undefined) closeSync(this.#walFd);
    this.#walFd = undefined;
  }

  get db(): Db {
    return this.#db;
  }
}

/** Best effort: key material computed by work whose commit never became durable is not handed out; zero it. */
function zeroBuffers(v: unknown): void {
  if (Buffer.isBuffer(v)) v.fill(0);
  else if (Array.isArray(v)) v.forEach(zeroBuffers);
  else if (v && typeof v === 'object') for (const x of Object.values(v)) zeroBuffers(x);
}
