import { createHash } from 'node:crypto';
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
  LedgerKind,
  LedgerQuery,
  LedgerRow,
  ReleaseCommand,
  ReleaseOutcome,
  RenewCommand,
  RenewOutcome,
  ReplyRecord,
  ReplyStatus,
  ReserveCommand,
  ReserveOutcome,
  Route,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceState,
} from '../../storage/storage.js';
import { GroupCommit, type QueuedOperation } from './group-commit.js';
import { identifierProblem, migrations, schemaNames, type SchemaNames } from './postgres-schema.js';

// ─── the driver, typed structurally ─────────────────────────────────────────

/** A query as the adapter sends it (pg's `QueryConfig`). */
export interface PostgresQuery {
  /** SQL text with `$1`-style placeholders. */
  text: string;
  /** Parameter values. */
  values?: unknown[];
  /** Prepared-statement name: pg parses the text once per connection. */
  name?: string;
}

/** What the adapter reads from a query result. */
export interface PostgresQueryResult {
  /** Result rows, one object per row keyed by column name. */
  rows: Record<string, unknown>[];
}

/** A connection checked out of a pool (pg's `PoolClient`). */
export interface PostgresPoolClient {
  /** Runs one query on this connection. */
  query(query: PostgresQuery): Promise<PostgresQueryResult>;
  /** Returns the connection to the pool; pass an error to destroy it instead. */
  release(error?: Error | boolean): void;
}

/**
 * The methods of a pg `Pool` the adapter uses, so the package never needs pg's types. A
 * `new pg.Pool(...)` satisfies it.
 */
export interface PostgresPool {
  /** Runs one query on any free connection. */
  query(query: PostgresQuery): Promise<PostgresQueryResult>;
  /** Checks a connection out (used by `migrate`, which needs one transaction). */
  connect(): Promise<PostgresPoolClient>;
  /** Closes every connection. Called by `close()` only for a pool the store created. */
  end(): Promise<void>;
}

/** Group-commit tuning. */
export interface PostgresGroupCommitOptions {
  /**
   * Most operations in one transaction. Larger batches spread the commit's WAL flush over
   * more operations; each operation runs in its own subtransaction, and past 64 of them
   * other sessions consult `pg_subtrans` for this batch's rows while it runs, so very large
   * batches stop paying off.
   * @default 128
   */
  maxBatch?: number;
  /**
   * Most batches in flight at once (each on its own connection). Two keep one batch
   * executing while the previous one waits for its WAL flush.
   * @default 2
   */
  maxInFlight?: number;
}

interface CommonOptions {
  /**
   * Schema holding the tables (created by `migrate` when missing).
   * @default 'public'
   */
  schema?: string;
  /**
   * Prefix of every table and function name, e.g. `credits_` gives `credits_ledger`. Lets
   * several stores share a schema.
   * @default 'credits_'
   */
  tablePrefix?: string;
  /**
   * Group commit: concurrent operations share one transaction (each all-or-nothing on its
   * own), which is what makes thousands of charges a second on one workspace possible.
   * `false` commits every operation alone.
   * @default { maxBatch: 128, maxInFlight: 2 }
   */
  groupCommit?: PostgresGroupCommitOptions | false;
}

/** Options of a store that opens its own pool from a connection string. */
export interface PostgresConnectionOptions extends CommonOptions {
  /** A PostgreSQL URL, e.g. `postgres://user:pass@host:5432/db`. */
  connectionString: string;
  /**
   * Most connections in the pool the store creates.
   * @default 10
   */
  poolSize?: number;
  pool?: never;
}

/** Options of a store that uses the host's own pg `Pool`. */
export interface PostgresPoolOptions extends CommonOptions {
  /**
   * An existing pool (e.g. `new pg.Pool()`); `close()` leaves it open. Give it an `'error'`
   * listener: pg emits one when an idle connection drops.
   */
  pool: PostgresPool;
  connectionString?: never;
  poolSize?: never;
}

/** Options of {@link PostgresStorage}: a connection string or a pool, plus naming and tuning. */
export type PostgresStorageOptions = PostgresConnectionOptions | PostgresPoolOptions;

interface PgModule {
  Pool: new (config: { connectionString: string; max: number }) => PostgresPool & {
    on(event: 'error', listener: (error: Error) => void): unknown;
  };
}

const ADAPTER = 'postgres';
// Advisory-lock class for migrations: 'cred' in ASCII.
const MIGRATION_LOCK_CLASS = 0x63726564;
// Whole-batch failures worth running again: nothing of the batch was committed.
const RETRYABLE = new Set(['40P01', '40001']);
const MAX_BATCH_RETRIES = 5;

/**
 * The PostgreSQL store: credits, holds and the ledger in your database, safe with many app
 * servers on one database.
 *
 * Every operation runs server-side as one PL/pgSQL call inside one transaction, with the
 * workspace row locked (`SELECT … FOR UPDATE`) so no two servers decide on the same balance
 * at once; reply ids, grant ids and alerts are idempotent through unique keys; renewals
 * and plan changes apply only at the expected version. Concurrent operations are group
 * committed: gathered into one transaction that locks their workspaces in sorted order,
 * each in its own savepoint, and resolved only after the COMMIT.
 *
 * The `pg` driver is an optional peer dependency, loaded on first use.
 *
 * @example
 * ```ts
 * import { CreditMeter } from '@bookbag/credits';
 * import { PostgresStorage } from '@bookbag/credits/postgres';
 *
 * const storage = new PostgresStorage({ connectionString: process.env.DATABASE_URL! });
 * await storage.migrate();
 * const meter = new CreditMeter({ storage });
 * ```
 */
export class PostgresStorage implements CreditStorage {
  /** The schema holding the store's tables. */
  readonly schema: string;
  /** The prefix of the store's table and function names. */
  readonly tablePrefix: string;
  readonly #names: SchemaNames;
  readonly #connectionString: string | undefined;
  readonly #poolSize: number;
  readonly #ownsPool: boolean;
  #pool: PostgresPool | undefined;
  #opening: Promise<PostgresPool> | undefined;
  #migrating: Promise<void> | undefined;
  #closed = false;
  readonly #batcher: GroupCommit;
  readonly #runQuery: { name: string; text: string };

  constructor(options: PostgresStorageOptions) {
    const issues = validate(options);
    if (issues.length > 0) throw new InvalidInputError(issues);
    this.schema = options.schema ?? 'public';
    this.tablePrefix = options.tablePrefix ?? 'credits_';
    this.#names = schemaNames(this.schema, this.tablePrefix);
    this.#connectionString = options.connectionString;
    this.#poolSize = options.poolSize ?? 10;
    this.#ownsPool = options.pool === undefined;
    this.#pool = options.pool;
    const group = options.groupCommit;
    this.#batcher = new GroupCommit((batch) => this.#runBatch(batch), {
      maxBatch: group === false ? 1 : (group?.maxBatch ?? 128),
      maxInFlight: group === false ? this.#poolSize : (group?.maxInFlight ?? 2),
    });
    this.#runQuery = {
      // Prepared-statement names are cut at 63 bytes: a digest keeps them short and distinct.
      name: `credits_run_${createHash('sha256').update(this.#names.key).digest('hex').slice(0, 24)}`,
      text: `SELECT ${this.#names.fn('run')}($1::jsonb, $2::jsonb, $3::jsonb, $4::text[]) AS r`,
    };
  }

  /**
   * Creates or upgrades the tables and functions. Idempotent and safe when several servers
   * run it at once (an advisory lock serializes them); also runs on first use.
   */
  async migrate(): Promise<void> {
    this.#migrating ??= this.#migrate().catch((error: unknown) => {
      this.#migrating = undefined;
      throw error;
    });
    await this.#migrating;
  }

  /** Waits for queued operations, then ends the pool if this store created it. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#batcher.drained();
    if (this.#ownsPool && this.#opening) {
      const pool = await this.#opening.catch(() => undefined);
      await pool?.end();
    }
  }

  async createWorkspace(command: CreateWorkspaceCommand): Promise<CreateWorkspaceOutcome> {
    return (await this.#submit('createWorkspace', { op: 'createWorkspace', ...command }, command.workspace.workspaceId)) as CreateWorkspaceOutcome;
  }

  async getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined> {
    const outcome = (await this.#submit('getWorkspace', { op: 'getWorkspace', workspaceId, now }, workspaceId)) as
      | { status: 'found'; state: WorkspaceState }
      | { status: 'missing' };
    return outcome.status === 'found' ? outcome.state : undefined;
  }

  async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    const outcome = (await this.#submit('reserve', { op: 'reserve', ...command }, command.reply.workspaceId)) as
      | ReserveOutcome
      | { status: 'reserved'; available: number; reply?: undefined };
    if (outcome.status !== 'reserved' || outcome.reply) return outcome as ReserveOutcome;
    return { status: 'reserved', reply: { ...command.reply, status: 'held', finishedAt: null, entryId: null }, available: outcome.available };
  }

  async settle(command: SettleCommand): Promise<SettleOutcome> {
    return (await this.#submit('settle', { op: 'settle', ...command }, command.workspaceId)) as SettleOutcome;
  }

  async release(command: ReleaseCommand): Promise<ReleaseOutcome> {
    return (await this.#submit('release', { op: 'release', ...command }, command.workspaceId)) as ReleaseOutcome;
  }

  async renew(command: RenewCommand): Promise<RenewOutcome> {
    return (await this.#submit('renew', { op: 'renew', ...command }, command.workspaceId)) as RenewOutcome;
  }

  async changePlan(command: ChangePlanCommand): Promise<ChangePlanOutcome> {
    return (await this.#submit('changePlan', { op: 'changePlan', ...command }, command.workspaceId)) as ChangePlanOutcome;
  }

  async grant(command: GrantCommand): Promise<GrantOutcome> {
    return (await this.#submit('grant', { op: 'grant', ...command }, command.workspaceId)) as GrantOutcome;
  }

  async claimAlert(command: ClaimAlertCommand): Promise<boolean> {
    return (await this.#submit('claimAlert', { op: 'claimAlert', ...command }, null)) === true;
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const values: unknown[] = [query.workspaceId];
    const where = ['workspace_id = $1'];
    const param = (value: unknown) => `$${values.push(value)}`;
    if (query.from !== undefined) where.push(`at >= ${param(query.from)}`);
    if (query.to !== undefined) where.push(`at < ${param(query.to)}`);
    if (query.agentId !== undefined) where.push(`agent_id = ${param(query.agentId)}`);
    if (query.afterId !== undefined && /^\d{1,19}$/.test(query.afterId)) where.push(`l.id > ${param(query.afterId)}::bigint`);
    const limit = param(Math.max(0, Math.floor(query.limit)));
    const rows = await this.#read(
      'ledger',
      `SELECT l.id::text AS id, workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
              price_version, grant_id, plan
         FROM ${this.#names.ledger} l WHERE ${where.join(' AND ')} ORDER BY l.id LIMIT ${limit}`,
      values,
    );
    return rows.map(ledgerRow);
  }

  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const column = query.groupBy === 'agent' ? 'agent_id' : query.groupBy === 'model' ? 'model' : 'conversation_id';
    // Floor to the UTC day, also before 1970 (SQL % truncates toward zero).
    const day = query.byDay ? ', at - (((at % 86400000) + 86400000) % 86400000) AS day' : '';
    const rows = await this.#read(
      'usage',
      `SELECT COALESCE(${column}, '') AS key${day}, -sum(amount) AS amount, count(*) AS replies
         FROM ${this.#names.ledger}
        WHERE workspace_id = $1 AND kind = 'reply' AND at >= $2 AND at < $3
        GROUP BY 1${query.byDay ? ', 2' : ''}
        ORDER BY min(id)`,
      [query.workspaceId, query.from, query.to],
    );
    return rows.map((row) => {
      const amount = Number(row['amount']);
      const replies = Number(row['replies']);
      const key = String(row['key']);
      return query.byDay ? { key, day: Number(row['day']), amount, replies } : { key, amount, replies };
    });
  }

  async getReply(replyId: string): Promise<ReplyRecord | undefined> {
    const rows = await this.#read(
      'getReply',
      `SELECT reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version, status,
              created_at, expires_at, finished_at, entry_id::text AS entry_id
         FROM ${this.#names.replies} WHERE reply_id = $1`,
      [replyId],
    );
    const row = rows[0];
    return row ? replyRecord(row) : undefined;
  }

  // ─── internals ──────────────────────────────────────────────────────────

  async #poolReady(): Promise<PostgresPool> {
    if (this.#pool) return this.#pool;
    this.#opening ??= (async () => {
      const { Pool } = await loadPg();
      const pool = new Pool({ connectionString: this.#connectionString ?? '', max: this.#poolSize });
      // An idle connection that drops (server restart, pg_terminate_backend) emits here; the
      // pool replaces it and the next operation reports any lasting failure.
      pool.on('error', () => undefined);
      // A connection can also die between two of its queries; the failing query rejects with
      // the error, so the client's own 'error' event must not crash the process as well.
      (pool as unknown as ConnectEvents).on('connect', (client) => {
        client.on('error', () => undefined);
      });
      this.#pool = pool;
      return pool;
    })();
    return this.#opening;
  }

  async #migrate(): Promise<void> {
    let client: PostgresPoolClient | undefined;
    try {
      const pool = await this.#poolReady();
      client = await pool.connect();
      const names = this.#names;
      await client.query({ text: 'BEGIN' });
      await client.query({ text: 'SELECT pg_advisory_xact_lock($1::int, hashtext($2))', values: [MIGRATION_LOCK_CLASS, names.schema] });
      const schema = await client.query({ text: 'SELECT 1 FROM pg_namespace WHERE nspname = $1', values: [unquote(names.schema)] });
      if (schema.rows.length === 0) await client.query({ text: `CREATE SCHEMA IF NOT EXISTS ${names.schema}` });
      await client.query({
        text: `CREATE TABLE IF NOT EXISTS ${names.migrations} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
      });
      const { rows } = await client.query({ text: `SELECT COALESCE(max(version), 0) AS version FROM ${names.migrations}` });
      const steps = migrations(names);
      // A newer schema (a newer release migrated first) is left alone: steps only add.
      for (let version = Number(rows[0]?.['version'] ?? 0); version < steps.length; version++) {
        await client.query({ text: steps[version]! });
        await client.query({ text: `INSERT INTO ${names.migrations} (version) VALUES ($1)`, values: [version + 1] });
      }
      await client.query({ text: 'COMMIT' });
      client.release();
    } catch (error) {
      if (client) {
        await client.query({ text: 'ROLLBACK' }).catch(() => undefined);
        client.release(error instanceof Error ? error : true);
      }
      throw asStorageError(error, 'migrate');
    }
  }

  /** Queues one write operation for the next group-commit batch. */
  async #submit(operation: string, command: Record<string, unknown>, lock: string | null): Promise<unknown> {
    if (this.#closed) throw new StorageError(operation, new Error('the store is closed'), ADAPTER);
    try {
      await this.migrate();
    } catch (error) {
      throw asStorageError(error, operation);
    }
    return new Promise((resolve, reject) => this.#batcher.submit({ command, lock, operation, resolve, reject }));
  }

  /**
   * Runs one batch as one statement: its implicit transaction commits before pg resolves the
   * query. The batch goes as three arrays (settles, reserves that need a workspace, the rest),
   * so the database runs the first two set-based; the outcomes come back in that order.
   */
  async #runBatch(queued: QueuedOperation[]): Promise<void> {
    const settles: QueuedOperation[] = [];
    const reserves: QueuedOperation[] = [];
    const others: QueuedOperation[] = [];
    for (const op of queued) {
      const kind = op.command['op'];
      if (kind === 'settle') settles.push(op);
      else if (kind === 'reserve' && op.command['requireWorkspace'] === true) reserves.push(op);
      else others.push(op);
    }
    const batch = [...settles, ...reserves, ...others];
    let pool: PostgresPool;
    try {
      pool = await this.#poolReady();
    } catch (error) {
      for (const op of batch) op.reject(asStorageError(error, op.operation));
      return;
    }
    const locks = [...new Set(batch.map((op) => op.lock).filter((id): id is string => id !== null))].sort();
    let texts: [string, string, string];
    try {
      const json = (ops: QueuedOperation[]) => JSON.stringify(ops.map((op) => op.command));
      texts = [json(settles), json(reserves), json(others)];
    } catch (error) {
      if (batch.length > 1) return this.#runEach(batch);
      throw error;
    }
    for (let attempt = 0; ; attempt++) {
      let outcomes: unknown;
      try {
        const result = await pool.query({ ...this.#runQuery, values: [...texts, locks] });
        outcomes = result.rows[0]?.['r'];
      } catch (error) {
        if (RETRYABLE.has(codeOf(error)) && attempt < MAX_BATCH_RETRIES) continue;
        // The server refused the statement itself (e.g. text PostgreSQL cannot store): run
        // each operation alone so only the offending one fails.
        if (batch.length > 1 && isStatementError(error)) return this.#runEach(batch);
        for (const op of batch) op.reject(new StorageError(op.operation, error, ADAPTER));
        return;
      }
      if (!Array.isArray(outcomes) || outcomes.length !== batch.length) {
        const error = new Error('the batch returned an unexpected result');
        for (const op of batch) op.reject(new StorageError(op.operation, error, ADAPTER));
        return;
      }
      batch.forEach((op, index) => {
        const outcome: unknown = outcomes[index];
        if (isFailure(outcome)) {
          op.reject(new StorageError(op.operation, Object.assign(new Error(outcome.error), { code: outcome.code }), ADAPTER));
        } else {
          op.resolve(outcome);
        }
      });
      return;
    }
  }

  async #runEach(batch: QueuedOperation[]): Promise<void> {
    await Promise.all(batch.map((op) => this.#runBatch([op]).catch((error: unknown) => op.reject(new StorageError(op.operation, error, ADAPTER)))));
  }

  async #read(operation: string, text: string, values: unknown[]): Promise<Record<string, unknown>[]> {
    if (this.#closed) throw new StorageError(operation, new Error('the store is closed'), ADAPTER);
    try {
      await this.migrate();
      const pool = await this.#poolReady();
      return (await pool.query({ text, values })).rows;
    } catch (error) {
      throw asStorageError(error, operation);
    }
  }
}

// ─── helpers ─────────────────────────────────────────────────────────────

async function loadPg(): Promise<PgModule> {
  // A variable specifier keeps bundlers from resolving the optional peer at build time.
  const specifier = 'pg';
  let mod: { default?: PgModule } & Partial<PgModule>;
  try {
    mod = (await import(specifier)) as { default?: PgModule } & Partial<PgModule>;
  } catch (error) {
    throw new StorageError(
      'connect',
      new Error('the "pg" package is not installed; PostgresStorage needs it: run `npm install pg`', { cause: error }),
      ADAPTER,
    );
  }
  const Pool = mod.default?.Pool ?? mod.Pool;
  if (typeof Pool !== 'function') throw new StorageError('connect', new Error('the "pg" package has no Pool export'), ADAPTER);
  return { Pool };
}

/** The pool's `connect` event, as pg emits it for each new client. */
interface ConnectEvents {
  on(event: 'connect', listener: (client: { on(event: 'error', listener: () => void): unknown }) => void): unknown;
}

function validate(options: PostgresStorageOptions): InputIssue[] {
  if (typeof options !== 'object' || options === null) return [{ path: 'options', message: 'must be an object' }];
  const issues: InputIssue[] = [];
  const hasUrl = options.connectionString !== undefined;
  const hasPool = options.pool !== undefined;
  if (hasUrl === hasPool) issues.push({ path: 'connectionString', message: 'give exactly one of connectionString or pool' });
  if (hasUrl && (typeof options.connectionString !== 'string' || options.connectionString.length === 0)) {
    issues.push({ path: 'connectionString', message: 'must be a non-empty string' });
  }
  if (hasPool && (typeof options.pool?.query !== 'function' || typeof options.pool.connect !== 'function')) {
    issues.push({ path: 'pool', message: 'must be a pg Pool (with query and connect)' });
  }
  for (const key of ['schema', 'tablePrefix'] as const) {
    const value = options[key];
    const problem = value === undefined ? undefined : identifierProblem(value, key);
    if (problem) issues.push({ path: key, message: problem });
  }
  if (options.poolSize !== undefined && !(Number.isSafeInteger(options.poolSize) && options.poolSize > 0)) {
    issues.push({ path: 'poolSize', message: 'must be a positive whole number' });
  }
  const group = options.groupCommit;
  if (group !== undefined && group !== false) {
    for (const key of ['maxBatch', 'maxInFlight'] as const) {
      const value = group[key];
      if (value !== undefined && !(Number.isSafeInteger(value) && value > 0)) {
        issues.push({ path: `groupCommit.${key}`, message: 'must be a positive whole number' });
      }
    }
  }
  return issues;
}

function unquote(identifier: string): string {
  return identifier.slice(1, -1);
}

function codeOf(error: unknown): string {
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined;
  return typeof code === 'string' ? code : '';
}

// SQLSTATE classes of errors about the statement, not the connection or the server.
function isStatementError(error: unknown): boolean {
  return /^(22|23|42|54)/.test(codeOf(error));
}

function isFailure(outcome: unknown): outcome is { error: string; code: string } {
  return typeof outcome === 'object' && outcome !== null && typeof (outcome as { error?: unknown }).error === 'string';
}

function asStorageError(error: unknown, operation: string): Error {
  if (error instanceof StorageError || error instanceof InvalidInputError) return error;
  return new StorageError(operation, error, ADAPTER);
}

function nullableNumber(value: unknown): number | null {
  return value === null || value === undefined ? null : Number(value);
}

function nullableString(value: unknown): string | null {
  return value === null || value === undefined ? null : String(value);
}

function ledgerRow(row: Record<string, unknown>): LedgerRow {
  return {
    id: String(row['id']),
    workspaceId: String(row['workspace_id']),
    kind: row['kind'] as LedgerKind,
    amount: Number(row['amount']),
    at: Number(row['at']),
    replyId: nullableString(row['reply_id']),
    agentId: nullableString(row['agent_id']),
    conversationId: nullableString(row['conversation_id']),
    model: nullableString(row['model']),
    route: nullableString(row['route']) as Route | null,
    priceVersion: nullableString(row['price_version']),
    grantId: nullableString(row['grant_id']),
    plan: nullableString(row['plan']),
  };
}

function replyRecord(row: Record<string, unknown>): ReplyRecord {
  return {
    replyId: String(row['reply_id']),
    workspaceId: String(row['workspace_id']),
    agentId: String(row['agent_id']),
    conversationId: String(row['conversation_id']),
    model: String(row['model']),
    route: row['route'] as Route,
    amount: Number(row['amount']),
    priceVersion: String(row['price_version']),
    status: row['status'] as ReplyStatus,
    createdAt: Number(row['created_at']),
    expiresAt: Number(row['expires_at']),
    finishedAt: nullableNumber(row['finished_at']),
    entryId: nullableString(row['entry_id']),
  };
}
