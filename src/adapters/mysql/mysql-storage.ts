import * as seam from '../../storage/index.js';

// ─── 1. The driver, typed structurally ──────────────────────────────────────
// The package never imports mysql2's types: these are the few methods the store calls, and a
// mysql2/promise `Pool` (or a wrapper that adds tracing) has them.

/** Something that runs SQL with `?` placeholders: a mysql2/promise pool or connection. */
export interface MySqlQueryable {
  /** Resolves to `[rows, fields]`; for a write, `rows` is a result with `affectedRows`. */
  query(sql: string, values?: unknown): Promise<[unknown, unknown]>;
}

/** A connection checked out of a pool (mysql2's `PoolConnection`). */
export interface MySqlPoolConnection extends MySqlQueryable {
  /** Returns the connection to the pool. */
  release(): void;
  /** Closes the connection instead (used after an error that may have left it unusable). */
  destroy(): void;
}

/** The methods of a mysql2/promise `Pool` the store uses. `mysql.createPool(...)` satisfies it. */
export interface MySqlPool extends MySqlQueryable {
  /** Checks a connection out, for a transaction. */
  getConnection(): Promise<MySqlPoolConnection>;
  /** Closes every connection. Called by `close()` only for a pool the store created. */
  end(): Promise<void>;
}

interface CommonOptions {
  /**
   * Prefix of every table name, e.g. `credits_` gives `credits_ledger`. Lets several stores
   * share one database.
   * @default 'credits_'
   */
  tablePrefix?: string;
}

/** Options of a store that opens its own pool from a URL. */
export interface MySqlUriOptions extends CommonOptions {
  /** A MySQL URL with the database, e.g. `mysql://user:pass@127.0.0.1:3306/app`. */
  uri: string;
  /**
   * Most connections in the pool the store creates. A hot workspace uses one at a time (the
   * meter commits its concurrent changes together); other workspaces share the rest.
   * @default 10
   */
  poolSize?: number;
  pool?: never;
}

/** Options of a store that uses the host's mysql2/promise pool (its charset must be utf8mb4). */
export interface MySqlPoolOptions extends CommonOptions {
  /** An existing pool, e.g. `mysql.createPool(url)` from `mysql2/promise`; `close()` leaves it open. */
  pool: MySqlPool;
  uri?: never;
  poolSize?: never;
}

/** Options of {@link MySqlStorage}: a URL or a pool, plus a table prefix. */
export type MySqlStorageOptions = MySqlUriOptions | MySqlPoolOptions;

/** The number of this layout in `<prefix>migrations`. */
const LAYOUT_VERSION = 1;
/**
 * Errors after which nothing was written and a fresh load may well succeed: a duplicate key
 * (a second creator of one workspace), a deadlock, a lock wait that timed out. A commit that
 * meets one answers `conflict`, and the meter reloads and retries.
 */
const RETRYABLE = new Set([1062, 1213, 1205]);
const conflictOr = (error: unknown): 'conflict' => {
  if (RETRYABLE.has((error as { errno?: number } | null)?.errno ?? 0)) return 'conflict';
  throw error;
};

// ─── 2. The schema ───────────────────────────────────────────────────────────
// Ids use a binary, no-pad collation: 'A' ≠ 'a', 'é' ≠ 'e', 'x' ≠ 'x '. Amounts and instants
// are BIGINT; JSON is kept as text, exactly as given. Ids are at most 255 characters; record
// keys and grant ids add a prefix such as `adjustment:`. Primary-key columns are NOT NULL by rule.
function layout(t: Tables, collation: string): string[] {
  const id = (size: number) => `VARCHAR(${size}) CHARACTER SET utf8mb4 COLLATE ${collation}`;
  const text = (column: string) =>
    ({ kind: 'VARCHAR(32)', route: 'VARCHAR(32)', price_version: 'TEXT', reason: 'TEXT', grant_id: id(300) })[column];
  const ledger = seam.LEDGER_COLUMNS.map(
    (c) => `${c.column} ${c.type === 'integer' ? 'BIGINT' : (text(c.column) ?? id(255))}${c.required ? ' NOT NULL' : ''}`,
  );
  return [
    // A NULL state is an erased workspace: the row stays for its version, which is never reused.
    `CREATE TABLE IF NOT EXISTS ${t.workspaces} (workspace_id ${id(255)} PRIMARY KEY, version BIGINT NOT NULL, state LONGTEXT NULL)`,
    // The (workspace_id, hold_expires_at) index makes finding lapsed holds cost what they are, and
    // finding the earliest hold one lookup.
    `CREATE TABLE IF NOT EXISTS ${t.records} (workspace_id ${id(255)}, record_key ${id(300)}, hold_expires_at BIGINT NULL,
      value LONGTEXT NOT NULL, PRIMARY KEY (workspace_id, record_key), KEY hold_idx (workspace_id, hold_expires_at))`,
    `CREATE TABLE IF NOT EXISTS ${t.ledger} (workspace_id ${id(255)}, ${ledger.join(', ')},
      PRIMARY KEY (workspace_id, seq), KEY at_idx (workspace_id, at), KEY agent_idx (workspace_id, agent_id, seq))`,
  ].map((ddl) => `${ddl} ENGINE=InnoDB DEFAULT CHARSET=utf8mb4`);
}

const LEDGER_NAMES = seam.LEDGER_COLUMNS.map(({ column }) => column).join(', ');
const LEDGER_SELECT = seam.LEDGER_COLUMNS.map(({ column, field }) => `${column} AS ${field}`).join(', ');

type Tables = Record<'workspaces' | 'records' | 'ledger' | 'migrations', string>;
type Row = Record<string, unknown>;

/**
 * The MySQL / MariaDB store: credits, holds and the ledger in your database, safe with many
 * app servers on one database (MySQL 8.0+ or MariaDB 10.3+, InnoDB).
 *
 * It applies no rule. A workspace is one row (its state as JSON and a version), its records
 * (one per reply or top-up) and its ledger rows. A commit is one transaction opened by a
 * guarded `UPDATE … WHERE version = ?` (or an `INSERT` for a new workspace): when another
 * server moved the version first it writes nothing and answers `conflict`, and the meter
 * reloads and retries. The `mysql2` driver is an optional peer dependency, loaded on first use.
 *
 * @example
 * ```ts
 * import { CreditMeter } from '@bookbag/credits';
 * import { MySqlStorage } from '@bookbag/credits/mysql';
 *
 * const storage = new MySqlStorage({ uri: process.env.MYSQL_URL! });
 * const meter = new CreditMeter({ storage });
 * ```
 */
export class MySqlStorage implements seam.CreditStorage {
  /** The prefix of the store's table names. */
  readonly tablePrefix: string;
  readonly #tables: Tables;
  readonly #options: MySqlStorageOptions;
  readonly #pool: Promise<MySqlPool>;
  readonly #migration = seam.once(() => this.#migrate());
  #closed = false;

  constructor(options: MySqlStorageOptions) {
    this.#options = seam.checkOptions<MySqlStorageOptions>(options, CHECKS, ['uri', 'pool']);
    this.tablePrefix = options.tablePrefix ?? 'credits_';
    const table = (name: string) => `\`${this.tablePrefix}${name}\``;
    this.#tables = { workspaces: table('workspaces'), records: table('records'), ledger: table('ledger'), migrations: table('migrations') };
    // Loads mysql2 now, outside module load; the pool connects on first use.
    this.#pool = options.pool ? Promise.resolve(options.pool) : openPool(options);
    this.#pool.catch(() => undefined); // reported by the first call that needs the pool
  }

  // ─── 3. migrate and close ─────────────────────────────────────────────────

  /**
   * Creates the tables when missing. Idempotent, safe when several servers run it at once
   * (a named lock serializes them), and also run on first use. Refuses tables of these names
   * that it did not create, rather than guessing what they hold.
   */
  async migrate(): Promise<void> {
    await this.#migration();
  }

  /** Ends the pool if this store created it. Calls after this one fail. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (!this.#options.pool) await (await this.#pool.catch(() => undefined))?.end();
  }

  // ─── 4. load: the state, the earliest hold, the records asked for and the lapsed holds, in one query ───

  async load(request: seam.LoadRequest): Promise<seam.LoadedWorkspace> {
    return this.#load(this.#read, request);
  }

  /** The load, its read on a fresh pooled connection or on the one a lock holds. */
  async #load(read: (sql: string, values: unknown[]) => Promise<Row[]>, request: seam.LoadRequest): Promise<seam.LoadedWorkspace> {
    const { workspaces, records } = this.#tables;
    const id = request.workspaceId;
    // One statement reads one snapshot: the records agree with the state's version. The earliest
    // hold rides on the state's row: a MIN over hold_idx for one workspace is a single index dive.
    // `IN (NULL)` matches nothing, for want of a valid `IN ()`.
    const rows = await read(
      `SELECT 0 AS part, version, state AS doc, NULL AS k,
         (SELECT MIN(hold_expires_at) FROM ${records} WHERE workspace_id = ?) AS h FROM ${workspaces} WHERE workspace_id = ?
       UNION ALL SELECT 1, NULL, value, record_key, hold_expires_at FROM ${records} WHERE workspace_id = ? AND record_key IN (?)
       UNION ALL SELECT 2, NULL, value, record_key, hold_expires_at FROM ${records} WHERE workspace_id = ? AND hold_expires_at <= ?`,
      [id, id, id, request.keys.length > 0 ? request.keys : [null], id, request.now],
    );
    const loaded: seam.LoadedWorkspace = { version: 0, state: null, records: [], lapsed: [], nextLapseAt: null };
    for (const { part, version, doc, k, h } of rows) {
      const value = doc == null ? null : JSON.parse(String(doc)); // null: erased, the version kept
      const at = h == null ? null : Number(h);
      if (Number(part) === 0) Object.assign(loaded, { version: Number(version), state: value, nextLapseAt: at });
      else (Number(part) === 1 ? loaded.records : loaded.lapsed).push({ key: `${k}`, holdExpiresAt: at, value: seam.unpackRecord(value) });
    }
    return loaded;
  }

  // ─── 5. commit: one transaction per call, each workspace guarded by its version ───

  async commit(commits: readonly seam.WorkspaceCommit[]): Promise<seam.CommitResult[]> {
    // One transaction for all: a refused workspace wrote nothing, so the others can still commit.
    const results = await this.#transaction(async (connection) => {
      const results: seam.CommitResult[] = [];
      for (const commit of commits) results.push(await this.#commitOne(connection, commit));
      return results;
    }).catch(conflictOr);
    return results === 'conflict' ? commits.map(() => 'conflict') : results;
  }

  async #commitOne(connection: MySqlQueryable, commit: seam.WorkspaceCommit): Promise<seam.CommitResult> {
    const t = this.#tables;
    const id = commit.workspaceId;
    // A new workspace is an INSERT: a second creator waits on the first one's row lock, then
    // meets the duplicate key. An existing one is an UPDATE guarded by the version; its row
    // lock serializes every writer of the workspace until COMMIT. An erased workspace keeps its
    // row (state NULL), so it is created afresh by the UPDATE, at the version it kept.
    const guard =
      commit.expectedVersion === 0
        ? `INSERT INTO ${t.workspaces} (version, state, workspace_id) VALUES (?, ?, ?)`
        : `UPDATE ${t.workspaces} SET version = ?, state = ? WHERE workspace_id = ? AND version = ?`;
    // Keys that must not exist yet, checked before anything is written: a commit that adds one
    // after this read moves the version too, so the guard below then refuses.
    const absent = `SELECT 1 FROM ${t.records} WHERE workspace_id = ? AND record_key IN (?) LIMIT 1`;
    if (commit.absentKeys?.length && ((await connection.query(absent, [id, commit.absentKeys]))[0] as Row[]).length > 0) return 'conflict';
    // A second creator meets the duplicate key, which undoes only that statement: the others go on.
    const duplicate = (error: { errno?: number }) => (error.errno === 1062 ? [{ affectedRows: 0 }] : Promise.reject(error));
    const values = [seam.versionAfter(commit), JSON.stringify(commit.state), id, commit.expectedVersion];
    const [written] = await connection.query(guard, values).catch(duplicate);
    if ((written as { affectedRows: number }).affectedRows !== 1) return 'conflict';
    if (commit.ledger.length > 0) {
      const rows = commit.ledger.map((row) => [id, ...seam.LEDGER_COLUMNS.map(({ field }) => row[field])]);
      await connection.query(`INSERT INTO ${t.ledger} (workspace_id, ${LEDGER_NAMES}) VALUES ?`, [rows]);
    }
    if (commit.records.length > 0) {
      const rows = commit.records.map((record) => [id, record.key, record.holdExpiresAt, JSON.stringify(seam.packRecord(record.value))]);
      const upsert = 'ON DUPLICATE KEY UPDATE hold_expires_at = VALUES(hold_expires_at), value = VALUES(value)';
      await connection.query(`INSERT INTO ${t.records} (workspace_id, record_key, hold_expires_at, value) VALUES ? ${upsert}`, [rows]);
    }
    return 'committed';
  }

  /**
   * Runs `work` in one transaction that first takes the workspace's row lock (`SELECT … FOR
   * UPDATE`): other servers' commits to it wait, and what `work` commits lands at COMMIT.
   */
  async lock<T>(workspaceId: string, work: (workspace: seam.LockedWorkspace) => Promise<T>): Promise<T> {
    return this.#transaction(async (connection) => {
      await connection.query(`SELECT 1 FROM ${this.#tables.workspaces} WHERE workspace_id = ? FOR UPDATE`, [workspaceId]);
      const read = async (sql: string, values: unknown[]) => (await connection.query(sql, values))[0] as Row[];
      const commit = (one: seam.WorkspaceCommit) => this.#commitOne(connection, one).catch(conflictOr);
      return work({ load: (request) => this.#load(read, request), commit });
    });
  }

  // ─── 6. reads: ledger pages, usage, workspace ids ───

  async ledger(query: seam.LedgerQuery): Promise<seam.LedgerRow[]> {
    const filters = seam.ledgerFilters(query);
    // `IN (NULL)` matches nothing, for want of a valid `IN ()`.
    const values = filters.map(({ op, value }) => (op === 'in' && (value as string[]).length === 0 ? [null] : value));
    const where = filters.map(({ column, op }) => (op === 'in' ? ` AND ${column} IN (?)` : ` AND ${column} ${op} ?`)).join('');
    const rows = await this.#read(
      `SELECT ${LEDGER_SELECT} FROM ${this.#tables.ledger} WHERE workspace_id = ?${where} ORDER BY seq LIMIT ?`,
      [query.workspaceId, ...values, Math.max(0, Math.floor(query.limit))],
    );
    return rows.map((row) => {
      for (const { field, type } of seam.LEDGER_COLUMNS) if (type === 'integer' && row[field] != null) row[field] = Number(row[field]);
      return { workspaceId: query.workspaceId, ...row } as unknown as seam.LedgerRow;
    });
  }

  async usage(query: seam.UsageQuery): Promise<seam.UsageAggregate[]> {
    const { column } = seam.USAGE_GROUP_COLUMNS[query.groupBy];
    // The UTC day by integer arithmetic, floored like dayOf (MOD keeps the sign of `at`).
    const day = query.byDay ? `, at - MOD(MOD(at, ${seam.DAY_MS}) + ${seam.DAY_MS}, ${seam.DAY_MS}) AS day` : '';
    const rows = await this.#read(
      `SELECT COALESCE(${column}, '') AS k${day}, -SUM(amount) AS amount, COUNT(*) AS replies FROM ${this.#tables.ledger}
        WHERE workspace_id = ? AND kind = 'reply' AND at >= ? AND at < ? GROUP BY k${query.byDay ? ', day' : ''}`,
      [query.workspaceId, query.from, query.to],
    );
    // `+ 0` turns the -0 of an all-zero group into 0, as the in-memory sum has it.
    const totals = (row: Row) => ({ key: String(row['k']), amount: Number(row['amount']) + 0, replies: Number(row['replies']) });
    return rows.map((row) => ({ ...totals(row), ...(query.byDay && { day: Number(row['day']) }) }));
  }

  /** A keyset page over the primary key, skipping erased workspaces (state NULL, only the version kept). */
  async listWorkspaces(query: seam.ListQuery): Promise<string[]> {
    // No id is empty, so '' comes before every one.
    const rows = await this.#read(
      `SELECT workspace_id FROM ${this.#tables.workspaces} WHERE workspace_id > ? AND state IS NOT NULL ORDER BY workspace_id LIMIT ?`,
      [query.afterId ?? '', query.limit],
    );
    return rows.map((row) => String(row['workspace_id']));
  }

  // ─── 7. erase: one transaction, behind the workspace's row lock ───

  async erase(request: seam.EraseRequest): Promise<void> {
    const t = this.#tables;
    const id = [request.workspaceId];
    await this.#transaction(async (connection) => {
      // The state row first, as a commit takes it: the two never wait on each other crosswise. Its
      // version goes up by one and stays, so no version is ever reused for another state (a
      // workspace never committed has no row, and nothing else to erase either).
      const state = request.keepLedger ? '' : ', state = NULL';
      await connection.query(`UPDATE ${t.workspaces} SET version = version + 1${state} WHERE workspace_id = ?`, id);
      await connection.query(`DELETE FROM ${t.records} WHERE workspace_id = ?`, id);
      const ledger = request.keepLedger ? `UPDATE ${t.ledger} SET agent_id = NULL, conversation_id = NULL` : `DELETE FROM ${t.ledger}`;
      await connection.query(`${ledger} WHERE workspace_id = ?`, id);
      // Not again after a dropped connection: a second erase could remove a workspace created since.
    }, 0);
  }

  // ─── 8. internals: the pool, transactions, the migration ───

  /**
   * A pooled connection and the rows `sql`, its first statement, answered: a read, or the START
   * TRANSACTION of a write, both safe to send twice. One the server dropped while it sat idle in
   * the pool (a restart, a `KILL`, `wait_timeout`) fails at once: it is closed and the statement
   * sent on another, up to 32 times, so one call gets past that many stale connections. Fails
   * after `close()`.
   */
  async #connect(sql: string, values?: unknown[]): Promise<[MySqlPoolConnection, Row[]]> {
    for (let attempt = 1; ; attempt++) {
      if (this.#closed) throw new Error('MySqlStorage: the store is closed');
      await this.migrate();
      const connection = await (await this.#pool).getConnection();
      try {
        return [connection, (await connection.query(sql, values))[0] as Row[]];
      } catch (error) {
        connection.destroy();
        if (attempt > 32 || !(error as { fatal?: boolean }).fatal) throw error;
      }
    }
  }

  /** Rows read on a pooled connection, another one if the first was dropped while idle. */
  readonly #read = async (sql: string, values: unknown[]): Promise<Row[]> => {
    const [connection, rows] = await this.#connect(sql, values);
    connection.release();
    return rows;
  };

  /**
   * Runs `work` in a transaction: COMMIT when it resolves, ROLLBACK when it throws (a deadlock
   * too: nothing was written). When the connection drops on the way (a restart, a `KILL`), all
   * of it runs again on another, `work` too, `again` more times: a commit's version guard and
   * the meter's work inside `lock` find what a first run committed (`erase` passes 0).
   */
  async #transaction<T>(work: (connection: MySqlQueryable) => Promise<T>, again = 32): Promise<T> {
    const [connection] = await this.#connect('START TRANSACTION');
    try {
      const result = await work(connection);
      await connection.query('COMMIT');
      connection.release();
      return result;
    } catch (error) {
      // A connection that cannot even roll back is closed rather than returned to the pool.
      if (await connection.query('ROLLBACK').catch(() => null)) connection.release();
      else connection.destroy();
      if (again > 0 && (error as { fatal?: boolean }).fatal) return this.#transaction(work, again - 1);
      throw error;
    }
  }

  async #migrate(): Promise<void> {
    const connection = await (await this.#pool).getConnection();
    const t = this.#tables;
    const lock = `credits_migrate:${this.tablePrefix}`;
    try {
      await connection.query('SELECT GET_LOCK(CONCAT(DATABASE(), ?), 60)', [lock]);
      const names = Object.values(t).map((name) => name.slice(1, -1));
      const [found] = await connection.query(
        'SELECT TABLE_NAME AS name FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME IN (?)',
        [names],
      );
      const existing = (found as Row[]).map((row) => String(row['name']));
      if (existing.length > 0 && !existing.includes(names[3]!))
        throw new Error(`MySqlStorage: the database holds tables named ${existing.join(', ')} that this store did not create (no migrations \
table). Drop them or give the store another tablePrefix; see docs/adapters/mysql.md`);
      // The binary collations that do not pad: MySQL 8's, else MariaDB's.
      const [collations] = await connection.query(
        "SELECT COLLATION_NAME AS c FROM information_schema.COLLATIONS WHERE COLLATION_NAME IN ('utf8mb4_0900_bin', 'utf8mb4_nopad_bin')",
      );
      await connection.query(`CREATE TABLE IF NOT EXISTS ${t.migrations} (version INT NOT NULL PRIMARY KEY) ENGINE=InnoDB`);
      for (const ddl of layout(t, String((collations as Row[])[0]?.['c'] ?? 'utf8mb4_bin'))) await connection.query(ddl);
      await connection.query(`INSERT IGNORE INTO ${t.migrations} (version) VALUES (?)`, [LAYOUT_VERSION]);
    } finally {
      await connection.query('SELECT RELEASE_LOCK(CONCAT(DATABASE(), ?))', [lock]).catch(() => undefined);
      connection.release();
    }
  }
}

// ─── 9. helpers: loading the driver, checking the options ───

type CreatePool = (config: object) => MySqlPool;

async function openPool(options: MySqlUriOptions): Promise<MySqlPool> {
  const createPool = await seam.importOptionalPeer<CreatePool>('mysql2/promise', 'createPool', 'mysql');
  // BIGINTs come back as numbers (exact up to 2^53 - 1), as strings beyond: Number() reads both.
  return createPool({ uri: options.uri, connectionLimit: options.poolSize ?? 10, charset: 'utf8mb4', supportBigNumbers: true });
}

const CHECKS: seam.OptionChecks<MySqlStorageOptions> = {
  uri: (uri) => (typeof uri === 'string' && uri !== '' ? undefined : 'must be a non-empty string'),
  pool: (pool) => (typeof (pool as MySqlPool).getConnection === 'function' ? undefined : 'must be a mysql2/promise pool'),
  tablePrefix: (prefix) => (/^([A-Za-z_]\w{0,39})?$/.test(String(prefix)) ? undefined : 'must be up to 40 of [A-Za-z0-9_], no digit first'),
  poolSize: (size) => (Number.isSafeInteger(size) && (size as number) > 0 ? undefined : 'must be a positive whole number'),
};
