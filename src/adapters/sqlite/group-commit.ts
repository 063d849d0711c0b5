import { CreditsError, StorageError } from '../../core/errors.js';
import type { SqliteDatabase, SqliteStatement } from './sqlite-driver.js';
import { ReplyIdClash, type BatchHooks } from './sqlite-operations.js';

interface Job {
  operation: string;
  run: () => unknown;
  /** The reply id the operation reads, prefetched with the batch's others. */
  replyId: string | undefined;
  /** The operation creates this reply (a reserve): an optimistic run does not prefetch it. */
  creates: boolean;
  resolve: (value: unknown) => void;
  reject: (reason: unknown) => void;
}

/** What an optimistic fast run returns when a reply id clashed. */
const CLASH: unique symbol = Symbol('clash');

/** Marks an operation that failed in safe mode; its error is kept beside it. */
const FAILED: unique symbol = Symbol('failed');

/**
 * Group commit. One durable commit costs an fsync (0.6–4 ms), which would cap a store that
 * commits each operation alone at a few hundred to ~1.7 k operations per second. Operations
 * submitted in the same event-loop turn are therefore written in one
 * `BEGIN IMMEDIATE … COMMIT`.
 *
 * A batch first runs in fast mode: the reply rows it names (and does not already remember)
 * are read in a few queries, the operations run one after another without savepoints (their
 * logic works on the cached workspace and reply rows and buffers its writes), and the
 * buffered rows are written just before the COMMIT. The first fast run is optimistic: a
 * reserve assumes its reply id is new, and if the insert finds it taken the batch is rolled
 * back and run fast again with every id looked up. If anything else throws in fast mode, an
 * operation or a write, the whole transaction is rolled back and the batch runs again in
 * safe mode: each operation in its own SAVEPOINT, its writes made before the savepoint is
 * released, so an operation that throws rolls back only its own changes and rejects only
 * its own promise. Operations are deterministic given the database (their clock reading is
 * in the command), so the second run decides what the first would have.
 *
 * Every promise settles only after the COMMIT; if the COMMIT fails, every operation of the
 * batch rejects. better-sqlite3 is synchronous, so a batch runs to completion without
 * yielding; whatever arrives meanwhile waits for the next turn and forms the next batch.
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
  /** Batches that ran again because an optimistic reserve met an existing id (diagnostics). */
  clashBatches = 0;
  /** Batches that fell back to safe mode (for tests and diagnostics). */
  safeBatches = 0;

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

  /**
   * Queues `run` for the next batch; resolves with its result once the batch committed.
   * `replyId` names the reply row the operation will read, so the batch can read them together;
   * `creates` says the operation inserts it unless it exists (a reserve).
   */
  submit<T>(operation: string, run: () => T, replyId?: string, creates = false): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.#queue.push({ operation, run, replyId, creates, resolve: resolve as (value: unknown) => void, reject });
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
      // Optimistic first; a clash of reply ids runs the batch fast again with every id looked
      // up; any other failure runs it in safe mode.
      let values = this.#begun(batch, true) && this.#runFast(batch, true);
      if (values === CLASH) values = this.#begun(batch, false) && this.#runFast(batch, false);
      if (Array.isArray(values)) this.#commitBatch(batch, values, undefined);
      else if (values !== false && this.#begun(batch, false)) this.#runSafe(batch);
    } finally {
      this.#hooks.batchEnded();
    }
  }

  /** BEGIN IMMEDIATE; on failure every operation of the batch rejects. */
  #begun(batch: Job[], optimistic: boolean): boolean {
    try {
      this.#begin.run();
    } catch (error) {
      for (const job of batch) job.reject(storageError(job.operation, error));
      return false;
    }
    this.#hooks.batchStarted(optimistic);
    return true;
  }

  /** Reads the batch's reply rows together; an error here is left to the operations. */
  #prefetch(batch: Job[], optimistic: boolean): void {
    const replyIds: string[] = [];
    for (const job of batch) if (job.replyId !== undefined && !(optimistic && job.creates)) replyIds.push(job.replyId);
    try {
      this.#hooks.prefetch(replyIds);
    } catch {
      // Each operation reads its reply itself and meets (and reports) the error there.
    }
  }

  /**
   * Runs the batch without savepoints and writes its buffered rows. The values of the
   * operations; undefined when something threw and the transaction was rolled back (the
   * batch must run again in safe mode).
   */
  #runFast(batch: Job[], optimistic: boolean): unknown[] | typeof CLASH | undefined {
    const values: unknown[] = new Array(batch.length);
    try {
      this.#prefetch(batch, optimistic);
      for (let index = 0; index < batch.length; index++) values[index] = batch[index]!.run();
      this.#hooks.beforeCommit();
      return values;
    } catch (error) {
      try {
        if (this.#db.inTransaction) this.#rollback.run();
      } catch {
        // The next BEGIN reports a connection that cannot go on.
      }
      this.#hooks.batchEnded();
      if (optimistic && error instanceof ReplyIdClash) {
        this.clashBatches++;
        return CLASH;
      }
      this.safeBatches++;
      return undefined;
    }
  }

  /** Runs the batch one operation per savepoint, so a failing operation fails alone. */
  #runSafe(batch: Job[]): void {
    this.#prefetch(batch, false);
    const values: unknown[] = new Array(batch.length);
    const errors: unknown[] = new Array(batch.length);
    for (let index = 0; index < batch.length; index++) {
      const job = batch[index]!;
      try {
        this.#savepoint.run();
        values[index] = job.run();
        this.#hooks.operationDone();
        this.#release.run();
      } catch (error) {
        this.#hooks.operationFailed();
        if (this.#undo()) {
          values[index] = FAILED;
          errors[index] = wrap(job.operation, error);
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
    this.#commitBatch(batch, values, errors);
  }

  /** COMMIT, then settle every promise (all reject if the COMMIT fails). */
  #commitBatch(batch: Job[], values: unknown[], errors: unknown[] | undefined): void {
    try {
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
    this.#hooks.batchCommitted();
    for (let index = 0; index < batch.length; index++) {
      const value = values[index];
      if (errors !== undefined && value === FAILED) batch[index]!.reject(errors[index]);
      else batch[index]!.resolve(value);
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
