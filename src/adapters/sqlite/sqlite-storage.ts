import { StorageError } from '../../core/errors.js';
import { LEDGER_COLUMNS } from '../../core/ledger-row.js';
import type { LedgerRow, StoredRecord, WorkspaceState } from '../../core/state.js';
import { DAY_MS, USAGE_GROUP_COLUMNS, UsageAccumulator } from '../../core/usage-aggregate.js';
import { ledgerFilters } from '../../storage/ledger-filters.js';
import { type PackedRecord, packRecord, unpackRecord } from '../../storage/packing.js';
import type {
  CommitResult,
  CreditStorage,
  EraseRequest,
  LedgerQuery,
  ListQuery,
  LoadedWorkspace,
  LoadRequest,
  UsageAggregate,
  UsageQuery,
  WorkspaceCommit,
} from '../../storage/storage.js';
import { checkOptions, type OptionChecks } from '../../storage/store-options.js';
import { versionAfter } from '../../storage/version-after.js';
import { openDatabase, type SqliteDatabase, type SqliteStatement } from './sqlite-driver.js';
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
   * `STORAGE_ERROR`, in milliseconds. The store waits on timers, so this process keeps serving
   * meanwhile; it is also the connection's `busy_timeout` for everything else.
   * @default 5000
   */
  busyTimeoutMs?: number;
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

const CHECKS: OptionChecks<SqliteStorageOptions> = {
  filename: (filename) => (typeof filename === 'string' && filename !== '' ? undefined : 'must be a non-empty string'),
  database: (database) =>
    typeof (database as SqliteDatabase).prepare === 'function' ? undefined : 'must be an open better-sqlite3 Database',
  tablePrefix: (prefix) =>
    typeof prefix === 'string' && /^[a-z_][a-z0-9_]{0,63}$/.test(prefix)
      ? undefined
      : 'must match [a-z_][a-z0-9_]* (at most 64 characters)',
  synchronous: (mode) => (mode === 'FULL' || mode === 'NORMAL' ? undefined : "must be 'FULL' or 'NORMAL'"),
  busyTimeoutMs: (ms) =>
    Number.isSafeInteger(ms) && (ms as number) >= 0 ? undefined : 'must be a whole number of milliseconds, at least 0',
};

/** Ledger rows per slice of {@link SqliteStorage.usage}: about 10 ms of SQLite's time. */
const USAGE_SLICE = 10_000;

/** The ledger's columns as {@link LedgerRow} fields, the workspace's first. */
const ENTRY_SELECT = [
  'workspace_id AS workspaceId',
  ...LEDGER_COLUMNS.map(({ column, field }) => (column === field ? column : `${column} AS ${field}`)),
].join(', ');

interface RecordRow {
  key: string;
  holdExpiresAt: number | null;
  value: string;
}

/** The open connection and its prepared statements. */
class Runtime {
  readonly state: SqliteStatement;
  readonly records: SqliteStatement;
  readonly lapsed: SqliteStatement;
  readonly insertState: SqliteStatement;
  readonly updateState: SqliteStatement;
  readonly insertEntries: (count: number) => SqliteStatement;
  readonly upsertRecords: (count: number) => SqliteStatement;
  readonly #queries = new Map<string, SqliteStatement>();

  constructor(
    readonly db: SqliteDatabase,
    readonly prefix: string,
  ) {
    const p = prefix;
    // The earliest hold rides along with the state: one step down the partial index (MIN on
    // its second column), whatever the number of holds.
    this.state = this.query(
      `SELECT version, state, (SELECT MIN(hold_expires_at) FROM ${p}records WHERE workspace_id = s.workspace_id AND hold_expires_at IS NOT NULL)
       AS nextLapseAt FROM ${p}states s WHERE workspace_id = ?`,
    );
    this.records = this.query(
      `SELECT key, hold_expires_at AS holdExpiresAt, value FROM ${p}records WHERE workspace_id = ? AND key IN (SELECT value FROM json_each(?))`,
    );
    // Walks the partial index from the oldest hold and stops at `now`: open holds that have
    // not lapsed cost nothing.
    this.lapsed = this.query(
      `SELECT key, hold_expires_at AS holdExpiresAt, value FROM ${p}records
       WHERE workspace_id = ? AND hold_expires_at IS NOT NULL AND hold_expires_at <= ?`,
    );
    this.insertState = db.prepare(`INSERT INTO ${p}states (workspace_id, version, state) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`);
    this.updateState = db.prepare(`UPDATE ${p}states SET version = ?, state = ? WHERE workspace_id = ? AND version = ?`);
    this.insertEntries = byCount(db, (rows) => `INSERT INTO ${p}entries VALUES ${rows(LEDGER_COLUMNS.length + 1)}`);
    this.upsertRecords = byCount(
      db,
      (rows) => `INSERT INTO ${p}records (workspace_id, key, hold_expires_at, value) VALUES ${rows(4)}
       ON CONFLICT (workspace_id, key) DO UPDATE SET hold_expires_at = excluded.hold_expires_at, value = excluded.value`,
    );
  }

  /** A reading statement, prepared once per SQL text, returning JS numbers. */
  query(sql: string): SqliteStatement {
    let statement = this.#queries.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      statement.safeIntegers(false);
      this.#queries.set(sql, statement);
    }
    return statement;
  }
}

/**
 * A durable store in one SQLite file (better-sqlite3), safe to share between the processes
 * of one machine. It keeps what the storage seam asks for in three tables (state documents,
 * records, ledger entries) and applies no rule. Each `commit` is one `BEGIN IMMEDIATE …
 * COMMIT` of prepared statements, guarded by the state's version; the meter's per-workspace
 * batcher hands it many operations at once, so one fsync serves hundreds of charges.
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
  #runtime: Runtime | undefined;
  #starting: Promise<Runtime> | undefined;
  #closed = false;

  constructor(options: SqliteStorageOptions) {
    checkOptions<SqliteStorageOptions>(options, CHECKS, ['filename', 'database']);
    this.#filename = options.filename;
    this.#database = options.database;
    this.#prefix = options.tablePrefix ?? 'credits_';
    this.#synchronous = options.synchronous ?? 'FULL';
    this.#busyTimeoutMs = options.busyTimeoutMs ?? 5000;
  }

  /**
   * Opens the database (loading better-sqlite3), turns on WAL, and creates the schema.
   * Idempotent, safe to call from several processes at once; every other method runs it
   * first. Refuses a database written by release 0.1 (see docs/adapters/sqlite.md).
   */
  async migrate(): Promise<void> {
    await this.#start();
  }

  /** Closes the database if this store opened it (a `database` passed in stays open). Later calls fail with `STORAGE_ERROR`. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const runtime = this.#runtime ?? (await this.#starting?.catch(() => undefined));
    if (runtime && this.#database === undefined) runtime.db.close();
  }

  async load(request: LoadRequest): Promise<LoadedWorkspace> {
    return this.#run('load', (s) => {
      // The state is read first: anything read after it is at least as new, and a commit
      // made from a mix is refused anyway, because the version it expects has moved.
      const row = s.state.get(request.workspaceId) as { version: number; state: string | null; nextLapseAt: number | null } | undefined;
      if (!row) return { version: 0, state: null, records: [], lapsed: [], nextLapseAt: null };
      const records = request.keys.length === 0 ? [] : s.records.all(request.workspaceId, JSON.stringify(request.keys));
      return {
        version: row.version,
        state: row.state === null ? null : (JSON.parse(row.state) as WorkspaceState),
        records: (records as RecordRow[]).map(toRecord),
        lapsed: (s.lapsed.all(request.workspaceId, request.now) as RecordRow[]).map(toRecord),
        nextLapseAt: row.nextLapseAt,
      };
    });
  }

  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    return this.#write('commit', (s) => commits.map((commit) => write(s, commit)));
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    return this.#run('ledger', (s) => {
      let where = 'workspace_id = ?';
      const params: unknown[] = [query.workspaceId];
      // From a known `seq` (a cursor, or the day mark the meter found for `from`), read the key in
      // order: `+at` keeps the planner off the `at` index, which would read every row from `from` on
      // and sort them.
      const at = query.afterSeq === undefined ? 'at' : '+at';
      for (const { column, op, value } of ledgerFilters(query)) {
        where += op === 'in' ? ` AND ${column} IN (SELECT value FROM json_each(?))` : ` AND ${column === 'at' ? at : column} ${op} ?`;
        params.push(op === 'in' ? JSON.stringify(value) : value);
      }
      params.push(query.limit);
      return s.query(`SELECT ${ENTRY_SELECT} FROM ${s.prefix}entries WHERE ${where} ORDER BY seq LIMIT ?`).all(...params) as LedgerRow[];
    });
  }

  /** A keyset page over the `states` primary key, skipping erased workspaces (their row only keeps the version). */
  async listWorkspaces(query: ListQuery): Promise<string[]> {
    return this.#run('listWorkspaces', (s) => {
      const rows = s
        .query(`SELECT workspace_id FROM ${s.prefix}states WHERE workspace_id > ? AND state IS NOT NULL ORDER BY workspace_id LIMIT ?`)
        .all(query.afterId ?? '', query.limit);
      return (rows as { workspace_id: string }[]).map((row) => row.workspace_id);
    });
  }

  async erase(request: EraseRequest): Promise<void> {
    const id = request.workspaceId;
    return this.#write('erase', (s) => {
      s.query(`DELETE FROM ${s.prefix}records WHERE workspace_id = ?`).run(id);
      if (request.keepLedger)
        s.query(`UPDATE ${s.prefix}entries SET agent_id = NULL, conversation_id = NULL WHERE workspace_id = ?`).run(id);
      else s.query(`DELETE FROM ${s.prefix}entries WHERE workspace_id = ?`).run(id);
      // The row stays, one version up, so no version is ever reused for another state.
      s.query(`UPDATE ${s.prefix}states SET version = version + 1${request.keepLedger ? '' : ', state = NULL'} WHERE workspace_id = ?`).run(
        id,
      );
    });
  }

  /**
   * Sums `reply` rows with `GROUP BY` over the `(workspace_id, at)` index; per UTC day, also before
   * 1970. A long window goes in slices of about 10,000 rows, with the event loop
   * free between them: the driver runs on it, so one statement over a million rows would hold
   * every other call of the process for a second.
   */
  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const { workspaceId, groupBy, byDay, to } = query;
    const sums = new UsageAccumulator(groupBy, byDay);
    for (let from = query.from; from < to; ) {
      from = await this.#run('usage', (s) => {
        const t = `${s.prefix}entries`;
        const ahead = s.query(
          `SELECT at FROM ${t} WHERE workspace_id = ? AND at >= ? AND at < ? ORDER BY at LIMIT 1 OFFSET ${USAGE_SLICE}`,
        );
        // Rows of one instant stay in one slice, however many there are.
        const end = Math.max(from + 1, (ahead.get(workspaceId, from, to) as { at: number } | undefined)?.at ?? to);
        const day = byDay ? `, at - ((at % ${DAY_MS}) + ${DAY_MS}) % ${DAY_MS} AS day` : '';
        const sql = `SELECT COALESCE(${USAGE_GROUP_COLUMNS[groupBy].column}, '') AS key${day}, -SUM(amount) AS amount, COUNT(*) AS replies
          FROM ${t} WHERE workspace_id = ? AND kind = 'reply' AND at >= ? AND at < ? GROUP BY key${byDay ? ', day' : ''}`;
        for (const sum of s.query(sql).all(workspaceId, from, end) as UsageAggregate[])
          sums.merge(sum.key, sum.day ?? 0, sum.amount, sum.replies);
        return end;
      });
      if (from < to) await new Promise((resolve) => setImmediate(resolve));
    }
    return sums.totals();
  }

  /**
   * Runs `work` in one `BEGIN IMMEDIATE` transaction. While another process holds the write lock
   * it waits on timers, up to `busyTimeoutMs`: this process's event loop keeps serving meanwhile
   * (and the meter groups the commits that arrive) instead of stalling inside SQLite.
   */
  async #write<T>(operation: string, work: (runtime: Runtime) => T): Promise<T> {
    const deadline = Date.now() + this.#busyTimeoutMs;
    for (let pause = 1; ; pause = Math.min(2 * pause, 16)) {
      try {
        return await this.#run(operation, (s) => immediate(s, () => work(s), this.#busyTimeoutMs));
      } catch (error) {
        if ((error as { cause?: { code?: unknown } }).cause?.code !== 'SQLITE_BUSY' || Date.now() + pause > deadline) throw error;
      }
      await new Promise((resolve) => setTimeout(resolve, pause));
    }
  }

  /** Runs one synchronous step on the open database; driver failures become `STORAGE_ERROR`. */
  async #run<T>(operation: string, step: (runtime: Runtime) => T): Promise<T> {
    const runtime = this.#runtime ?? (await this.#start());
    if (this.#closed) throw closedError(operation);
    try {
      return step(runtime);
    } catch (error) {
      throw new StorageError(operation, error, 'sqlite');
    }
  }

  #start(): Promise<Runtime> {
    if (this.#closed) return Promise.reject(closedError('migrate'));
    if (this.#runtime) return Promise.resolve(this.#runtime);
    this.#starting ??= this.#open().then(
      (runtime) => (this.#runtime = runtime),
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
      if (this.#closed) throw new Error('the store was closed while it opened');
      return new Runtime(db, this.#prefix);
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

/** One workspace's share of a commit, inside the caller's transaction. */
function write(s: Runtime, commit: WorkspaceCommit): CommitResult {
  const id = commit.workspaceId;
  // Keys that must not exist yet: the key lookup of `load`, stopped at the first found.
  if (commit.absentKeys?.length && s.records.get(id, JSON.stringify(commit.absentKeys))) return 'conflict';
  const state = JSON.stringify(commit.state);
  const next = versionAfter(commit);
  const written =
    commit.expectedVersion === 0 ? s.insertState.run(id, next, state) : s.updateState.run(next, state, id, commit.expectedVersion);
  if (written.changes !== 1) return 'conflict';
  inChunks(commit.ledger as unknown as Record<string, unknown>[], s.insertEntries, (row, values) => {
    values.push(id);
    for (const { field } of LEDGER_COLUMNS) values.push(row[field] ?? null);
  });
  inChunks(commit.records, s.upsertRecords, (record, values) =>
    values.push(id, record.key, record.holdExpiresAt, JSON.stringify(packRecord(record.value))),
  );
  return 'committed';
}

// Rows per statement: one statement of 32 rows costs less than 32 of one row (a charge took
// 2 µs less: 42 k → 46 k/s on one hot workspace); the chunk bounds the statements prepared.
const CHUNK = 32;

/** Writes `rows` with statements of at most {@link CHUNK} rows, `add` giving each row's values. */
function inChunks<T>(rows: readonly T[], statement: (count: number) => SqliteStatement, add: (row: T, values: unknown[]) => void): void {
  for (let start = 0; start < rows.length; start += CHUNK) {
    const end = Math.min(rows.length, start + CHUNK);
    const values: unknown[] = [];
    for (let i = start; i < end; i++) add(rows[i]!, values);
    statement(end - start).run(values);
  }
}

/** A statement per row count, prepared at first use; `sql` gets the `(?, ?), (?, ?)` of that many rows. */
function byCount(db: SqliteDatabase, sql: (rows: (columns: number) => string) => string): (count: number) => SqliteStatement {
  const statements: SqliteStatement[] = [];
  const rows = (count: number) => (columns: number) => `, (?${', ?'.repeat(columns - 1)})`.repeat(count).slice(2);
  return (count) => (statements[count] ??= db.prepare(sql(rows(count))));
}

function toRecord(row: RecordRow): StoredRecord {
  return { key: row.key, holdExpiresAt: row.holdExpiresAt, value: unpackRecord(JSON.parse(row.value) as PackedRecord) };
}

function closedError(operation: string): StorageError {
  return new StorageError(operation, new Error('the SQLite store is closed'), 'sqlite');
}

/**
 * Runs `work` in one `BEGIN IMMEDIATE` transaction, rolled back when it throws. The write lock is
 * not waited for here (`SQLITE_BUSY` at once when another connection holds it): the caller waits
 * on timers. The connection's `busy_timeout` is put back for everything else.
 */
function immediate<T>(s: Runtime, work: () => T, busyTimeoutMs: number): T {
  s.db.exec('PRAGMA busy_timeout = 0');
  try {
    s.db.exec('BEGIN IMMEDIATE');
  } finally {
    s.db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`);
  }
  try {
    const result = work();
    s.db.exec('COMMIT');
    return result;
  } catch (error) {
    if (s.db.inTransaction) s.db.exec('ROLLBACK');
    throw error;
  }
}
