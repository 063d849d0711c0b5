import { InvalidInputError, StorageError, type InputIssue } from '../../core/errors.js';
import type {
  ChangePlanCommand,
  ChangePlanOutcome,
  ClaimAlertCommand,
  CreateWorkspaceCommand,
  CreateWorkspaceOutcome,
  CreditStorage,
  GrantCommand,
  GrantOutcome,
  LedgerQuery,
  LedgerRow,
  ReleaseCommand,
  ReleaseOutcome,
  RenewCommand,
  RenewOutcome,
  ReplyRecord,
  ReserveCommand,
  ReserveOutcome,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceState,
} from '../../storage/storage.js';
import { GroupCommit } from './group-commit.js';
import { openDatabase, type SqliteDatabase } from './sqlite-driver.js';
import { SqliteOperations } from './sqlite-operations.js';
import { migrateSchema } from './sqlite-schema.js';

/** Options shared by both ways of giving {@link SqliteStorage} a database. */
export interface SqliteStorageBaseOptions {
  /**
   * Prepended to every table and index name, so the store can share a database with your
   * own tables. Lowercase letters, digits and underscores, not starting with a digit.
   * @default 'credits_'
   */
  tablePrefix?: string;
  /**
   * `FULL` fsyncs the WAL on every commit, so a committed charge survives a power cut;
   * `NORMAL` survives a crash of the process but may lose the last commits on power loss,
   * in exchange for fewer fsyncs.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL';
  /**
   * How long a transaction waits for another process's write lock before failing with a
   * `STORAGE_ERROR`, in milliseconds. The wait blocks this process's event loop.
   * @default 5000
   */
  busyTimeoutMs?: number;
  /**
   * The most operations written in one transaction by the group commit. Larger batches
   * mean fewer fsyncs; smaller ones hold the write lock for less time.
   * @default 1000
   */
  maxBatchSize?: number;
}

/** Open (and later close) a SQLite file, loading better-sqlite3 on first use. */
export interface SqliteStorageFileOptions extends SqliteStorageBaseOptions {
  /** Path of the database file, created if missing (`:memory:` for a private in-memory database). */
  filename: string;
  database?: never;
}

/** Use a better-sqlite3 `Database` you opened; {@link SqliteStorage.close} leaves it open. */
export interface SqliteStorageDatabaseOptions extends SqliteStorageBaseOptions {
  /** An open better-sqlite3 database (any object with the methods of {@link SqliteDatabase}). */
  database: SqliteDatabase;
  filename?: never;
}

/** Options of {@link SqliteStorage}: a `filename` to open, or an open `database`. */
export type SqliteStorageOptions = SqliteStorageFileOptions | SqliteStorageDatabaseOptions;

const PREFIX = /^[a-z_][a-z0-9_]*$/;

interface Runtime {
  db: SqliteDatabase;
  operations: SqliteOperations;
  commits: GroupCommit;
}

/**
 * A durable store in one SQLite file (better-sqlite3), safe to share between the processes
 * of one machine. Each operation is one transaction; operations issued concurrently are
 * group-committed (one fsync for many, each still all-or-nothing on its own), which is what
 * lets one hot workspace take tens of thousands of charges per second.
 *
 * better-sqlite3 is an optional peer dependency, loaded on first use: `npm install better-sqlite3`.
 *
 * @example
 * ```ts
 * import { CreditMeter } from '@bookbag/credits';
 * import { SqliteStorage } from '@bookbag/credits/sqlite';
 *
 * const storage = new SqliteStorage({ filename: './credits.db' });
 * const meter = new CreditMeter({ storage });
 * await meter.createWorkspace({ workspaceId: 'ws_1', plan: 'hobby' });
 * // ... on shutdown:
 * await storage.close();
 * ```
 */
export class SqliteStorage implements CreditStorage {
  readonly #filename: string | undefined;
  readonly #database: SqliteDatabase | undefined;
  readonly #prefix: string;
  readonly #synchronous: 'FULL' | 'NORMAL';
  readonly #busyTimeoutMs: number;
  readonly #maxBatchSize: number;
  #runtime: Runtime | undefined;
  #starting: Promise<Runtime> | undefined;
  #closed = false;

  constructor(options: SqliteStorageOptions) {
    const issues: InputIssue[] = [];
    if (typeof options !== 'object' || options === null) {
      throw new InvalidInputError([{ path: 'options', message: 'must be an object' }]);
    }
    const hasFile = options.filename !== undefined;
    const hasDatabase = options.database !== undefined;
    if (hasFile === hasDatabase) issues.push({ path: 'filename', message: 'give exactly one of filename and database' });
    if (hasFile && (typeof options.filename !== 'string' || options.filename.length === 0)) {
      issues.push({ path: 'filename', message: 'must be a non-empty string' });
    }
    if (hasDatabase && typeof options.database?.prepare !== 'function') {
      issues.push({ path: 'database', message: 'must be an open better-sqlite3 Database' });
    }
    const prefix = options.tablePrefix ?? 'credits_';
    if (typeof prefix !== 'string' || !PREFIX.test(prefix) || prefix.length > 64) {
      issues.push({ path: 'tablePrefix', message: 'must match [a-z_][a-z0-9_]* (at most 64 characters)' });
    }
    const synchronous = options.synchronous ?? 'FULL';
    if (synchronous !== 'FULL' && synchronous !== 'NORMAL') issues.push({ path: 'synchronous', message: "must be 'FULL' or 'NORMAL'" });
    const busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    if (!Number.isSafeInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
      issues.push({ path: 'busyTimeoutMs', message: 'must be a whole number of milliseconds, at least 0' });
    }
    const maxBatchSize = options.maxBatchSize ?? 1000;
    if (!Number.isSafeInteger(maxBatchSize) || maxBatchSize < 1) issues.push({ path: 'maxBatchSize', message: 'must be a whole number, at least 1' });
    if (issues.length > 0) throw new InvalidInputError(issues);
    this.#filename = options.filename;
    this.#database = options.database;
    this.#prefix = prefix;
    this.#synchronous = synchronous;
    this.#busyTimeoutMs = busyTimeoutMs;
    this.#maxBatchSize = maxBatchSize;
  }

  /**
   * Opens the database (loading better-sqlite3), turns on WAL, and creates or upgrades the
   * schema. Idempotent, safe to call from several processes at once; every other method
   * runs it first.
   */
  async migrate(): Promise<void> {
    await this.#start();
  }

  /**
   * Writes what is queued, then closes the database if this store opened it (a `database`
   * passed in stays open). Later calls fail with `STORAGE_ERROR`.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const runtime = this.#runtime ?? (await this.#starting?.catch(() => undefined));
    if (!runtime) return;
    await runtime.commits.drain();
    if (this.#database === undefined) runtime.db.close();
  }

  async createWorkspace(command: CreateWorkspaceCommand): Promise<CreateWorkspaceOutcome> {
    return this.#write('createWorkspace', (o) => o.createWorkspace(command));
  }

  async getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined> {
    return this.#write('getWorkspace', (o) => o.getWorkspace(workspaceId, now));
  }

  async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    return this.#write('reserve', (o) => o.reserve(command), command.reply?.replyId, true);
  }

  async settle(command: SettleCommand): Promise<SettleOutcome> {
    return this.#write('settle', (o) => o.settle(command), command.replyId);
  }

  async release(command: ReleaseCommand): Promise<ReleaseOutcome> {
    return this.#write('release', (o) => o.release(command), command.replyId);
  }

  async renew(command: RenewCommand): Promise<RenewOutcome> {
    return this.#write('renew', (o) => o.renew(command));
  }

  async changePlan(command: ChangePlanCommand): Promise<ChangePlanOutcome> {
    return this.#write('changePlan', (o) => o.changePlan(command));
  }

  async grant(command: GrantCommand): Promise<GrantOutcome> {
    return this.#write('grant', (o) => o.grant(command));
  }

  async claimAlert(command: ClaimAlertCommand): Promise<boolean> {
    return this.#write('claimAlert', (o) => o.claimAlert(command));
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    return this.#read('ledger', (o) => o.ledger(query));
  }

  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    return this.#read('usage', (o) => o.usage(query));
  }

  async getReply(replyId: string): Promise<ReplyRecord | undefined> {
    return this.#read('getReply', (o) => o.getReply(replyId));
  }

  // ─── plumbing ──────────────────────────────────────────────────────────

  /** Runs a writing operation in the next group-commit batch. */
  async #write<T>(operation: string, run: (operations: SqliteOperations) => T, replyId?: string, creates = false): Promise<T> {
    const runtime = this.#runtime ?? (await this.#start());
    if (this.#closed) throw closedError(operation);
    return runtime.commits.submit(operation, () => run(runtime.operations), typeof replyId === 'string' ? replyId : undefined, creates);
  }

  /** Runs a read on its own: WAL readers see the last commit and never wait for writers. */
  async #read<T>(operation: string, run: (operations: SqliteOperations) => T): Promise<T> {
    const runtime = this.#runtime ?? (await this.#start());
    if (this.#closed) throw closedError(operation);
    try {
      return run(runtime.operations);
    } catch (error) {
      throw new StorageError(operation, error, 'sqlite');
    }
  }

  #start(): Promise<Runtime> {
    if (this.#closed) return Promise.reject(closedError('migrate'));
    if (this.#runtime) return Promise.resolve(this.#runtime);
    this.#starting ??= this.#open().then(
      (runtime) => {
        this.#runtime = runtime;
        return runtime;
      },
      (error: unknown) => {
        // A failed start (driver missing, file locked) is retried by the next call.
        this.#starting = undefined;
        throw error;
      },
    );
    return this.#starting;
  }

  async #open(): Promise<Runtime> {
    const owned = this.#database === undefined;
    const db = this.#database ?? (await openDatabase(this.#filename!));
    try {
      db.exec(`PRAGMA busy_timeout = ${this.#busyTimeoutMs}`);
      db.exec('PRAGMA journal_mode = WAL');
      db.exec(`PRAGMA synchronous = ${this.#synchronous}`);
      migrateSchema(db, this.#prefix);
      const operations = new SqliteOperations(db, this.#prefix);
      const runtime = { db, operations, commits: new GroupCommit(db, this.#maxBatchSize, operations) };
      if (this.#closed) throw new Error('the store was closed while it opened');
      return runtime;
    } catch (error) {
      if (owned) {
        try {
          db.close();
        } catch {
          // Reporting the first error matters more.
        }
      }
      throw error instanceof StorageError ? error : new StorageError('migrate', error, 'sqlite');
    }
  }
}

function closedError(operation: string): StorageError {
  return new StorageError(operation, new Error('the SQLite store is closed'), 'sqlite');
}
