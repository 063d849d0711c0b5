import { CreditsError, StorageError } from '../../core/errors.js';
import type { SqliteDatabase, SqliteStatement } from './sqlite-driver.js';
import type { BatchHooks } from './sqlite-operations.js';

interface Job {
  operation: string;
  run: () => unknown;
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

type Result = { ok: true; value: unknown } | { ok: false; error: unknown };

/**
 * Group commit. One durable commit costs an fsync (about 0.6 ms), which would cap a store
 * that commits each operation alone near 1.7 k operations per second. Operations submitted
 * in the same event-loop turn are therefore written in one `BEGIN IMMEDIATE … COMMIT`, each
 * inside its own SAVEPOINT: an operation that throws rolls back only its own changes and
 * rejects only its own promise. Every promise settles only after the COMMIT; if the COMMIT
 * fails, every operation of the batch rejects.
 *
 * better-sqlite3 is synchronous, so a batch runs to completion without yielding; whatever
 * arrives meanwhile waits for the next turn and forms the next batch.
 */
export class GroupCommit {
  readonly #db: SqliteDatabase;
  readonly #maxBatch: number;
  readonly #hooks: BatchHooks;
  readonly #begin: SqliteStatement;
  readonly #commit: SqliteStatement;
  readonly #rollback: SqliteStatement;
  readonly #savepoint: SqliteStatement;
  readonly #release: SqliteStatement;
  readonly #rollbackTo: SqliteStatement;
  #queue: Job[] = [];
  #scheduled = false;
  #idle: (() => void)[] = [];

  constructor(db: SqliteDatabase, maxBatch: number, hooks: BatchHooks) {
    this.#db = db;
    this.#maxBatch = maxBatch;
    this.#hooks = hooks;
    this.#begin = db.prepare('BEGIN IMMEDIATE');
    this.#commit = db.prepare('COMMIT');
    this.#rollback = db.prepare('ROLLBACK');
    this.#savepoint = db.prepare('SAVEPOINT credits_op');
    this.#release = db.prepare('RELEASE credits_op');
    this.#rollbackTo = db.prepare('ROLLBACK TO credits_op');
  }

  /** Queues `run` for the next batch; resolves with its result once the batch committed. */
  submit<T>(operation: string, run: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ operation, run, resolve: resolve as (value: unknown) => void, reject });
      this.#schedule();
    });
  }

  /** Resolves once every queued operation has been written (or failed). */
  drain(): Promise<void> {
    if (this.#queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.#idle.push(resolve));
  }

  #schedule(): void {
    if (this.#scheduled) return;
    this.#scheduled = true;
    setImmediate(() => {
      this.#scheduled = false;
      this.#flush();
    });
  }

  #flush(): void {
    const batch = this.#queue.splice(0, this.#maxBatch);
    if (this.#queue.length > 0) this.#schedule();
    if (batch.length > 0) this.#write(batch);
    if (this.#queue.length === 0) {
      const idle = this.#idle;
      this.#idle = [];
      for (const resolve of idle) resolve();
    }
  }

  #write(batch: Job[]): void {
    try {
      this.#writeBatch(batch);
    } finally {
      this.#hooks.batchEnded();
    }
  }

  #writeBatch(batch: Job[]): void {
    try {
      this.#begin.run();
    } catch (error) {
      for (const job of batch) job.reject(storageError(job.operation, error));
      return;
    }
    this.#hooks.batchStarted();
    const results: Result[] = [];
    for (let index = 0; index < batch.length; index++) {
      const job = batch[index]!;
      try {
        this.#hooks.operationStarted();
        this.#savepoint.run();
        const value = job.run();
        this.#release.run();
        results.push({ ok: true, value });
      } catch (error) {
        this.#hooks.operationFailed();
        if (this.#undo()) {
          results.push({ ok: false, error: wrap(job.operation, error) });
          continue;
        }
        // SQLite rolled the whole transaction back (an I/O error, a full disk): the earlier
        // operations of this batch are gone with it. They fail; the later ones get a fresh batch.
        for (let done = 0; done < index; done++) batch[done]!.reject(storageError(batch[done]!.operation, error));
        job.reject(wrap(job.operation, error));
        this.#queue.unshift(...batch.slice(index + 1));
        if (this.#queue.length > 0) this.#schedule();
        return;
      }
    }
    try {
      this.#hooks.beforeCommit();
      this.#commit.run();
    } catch (error) {
      try {
        if (this.#db.inTransaction) this.#rollback.run();
      } catch {
        // The connection is unusable; the commit error is the one to report.
      }
      for (const job of batch) job.reject(storageError(job.operation, error));
      return;
    }
    for (let index = 0; index < batch.length; index++) {
      const result = results[index]!;
      if (result.ok) batch[index]!.resolve(result.value);
      else batch[index]!.reject(result.error);
    }
  }

  /** Rolls back the current savepoint. False when the whole transaction is gone. */
  #undo(): boolean {
    if (!this.#db.inTransaction) return false;
    try {
      this.#rollbackTo.run();
      this.#release.run();
      return true;
    } catch {
      try {
        if (this.#db.inTransaction) this.#rollback.run();
      } catch {
        // Nothing more can be done with this transaction.
      }
      return false;
    }
  }
}

function wrap(operation: string, error: unknown): unknown {
  return CreditsError.is(error) ? error : storageError(operation, error);
}

function storageError(operation: string, error: unknown): StorageError {
  return error instanceof StorageError ? error : new StorageError(operation, error, 'sqlite');
}
