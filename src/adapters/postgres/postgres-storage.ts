import { createHash } from 'node:crypto';
import { InvalidInputError, StorageError } from '../../core/errors.js';
import type { LedgerRow } from '../../core/state.js';
import { USAGE_GROUP_COLUMNS } from '../../core/usage-aggregate.js';
import { ledgerFilters } from '../../storage/ledger-filters.js';
import { once } from '../../storage/once.js';
import { importOptionalPeer } from '../../storage/optional-peer.js';
import { packRecord, unpackRecord } from '../../storage/packing.js';
import type * as seam from '../../storage/storage.js';
import { checkOptions, type OptionChecks } from '../../storage/store-options.js';
import { versionAfter } from '../../storage/version-after.js';
import * as tables from './postgres-schema.js';

// ─── the driver, typed structurally ─────────────────────────────────────────

/** A query as the store sends it (pg's `QueryConfig`). */
export interface PostgresQuery {
  /** SQL text with `$1`-style placeholders. */
  text: string;
  /** Parameter values. */
  values?: unknown[];
  /** Prepared-statement name: pg parses the text once per connection. */
  name?: string;
}

/** What the store reads from a query result. */
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
  /** pg's `EventEmitter.on`: the store listens for `'error'` on connections it checks out. */
  on?(event: 'error', listener: (error: Error) => void): unknown;
}

/**
 * The methods of a pg `Pool` the store uses, so the package never needs pg's types. A
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

interface CommonOptions {
  /**
   * Schema holding the tables (created by `migrate` when missing).
   * @default 'public'
   */
  schema?: string;
  /**
   * Prefix of every table and index name, e.g. `credits_` gives `credits_ledger`. Lets
   * several stores share a schema.
   * @default 'credits_'
   */
  tablePrefix?: string;
}

/** Options of a store that opens its own pool from a connection string. */
export interface PostgresConnectionOptions extends CommonOptions {
  /** A PostgreSQL URL, e.g. `postgres://user:pass@host:5432/db`. */
  connectionString: string;
  /**
   * Most connections in the pool the store creates. A hot workspace uses one at a time (the
   * meter commits its changes in batches); other workspaces share the rest.
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

/** Options of {@link PostgresStorage}: a connection string or a pool, plus naming. */
export type PostgresStorageOptions = PostgresConnectionOptions | PostgresPoolOptions;

/** A pool the store creates, with the events it listens to. */
type OwnPool = PostgresPool & {
  on(event: 'error' | 'connect', listener: (client: Pick<PostgresPoolClient, 'on'>) => void): unknown;
};

type PgPool = new (config: { connectionString: string; max: number }) => OwnPool;

const ADAPTER = 'postgres';
// Advisory-lock class for migrations: 'cred' in ASCII.
const MIGRATION_LOCK_CLASS = 0x63726564;

/**
 * The PostgreSQL store: credits, holds and the ledger in your database, safe with many app
 * servers on one database.
 *
 * It applies no rule. A workspace is one row (its state as JSON and a version), its records
 * (one per reply or top-up) and its ledger rows. A commit is one statement: an `UPDATE … WHERE
 * version = $expected` (or an `INSERT … ON CONFLICT DO NOTHING` for a new workspace) whose
 * output gates the inserts of ledger rows and the upserts of records, so all of it lands or,
 * when another server moved the version first, none of it does and the meter retries.
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
export class PostgresStorage implements seam.CreditStorage {
  /** The schema holding the store's tables. */
  readonly schema: string;
  /** The prefix of the store's table and index names. */
  readonly tablePrefix: string;
  readonly #names: tables.SchemaNames;
  readonly #connectionString: string | undefined;
  readonly #poolSize: number;
  readonly #ownsPool: boolean;
  #pool: PostgresPool | undefined;
  #opening: Promise<PostgresPool> | undefined;
  // Idempotent, so a migration whose connection dropped goes again on a fresh one.
  readonly #migration = once(() =>
    onLiveConnection(() => this.#migrate().catch((error: unknown) => Promise.reject(asStorageError(error, 'migrate')))),
  );
  #closed = false;
  readonly #statements: Record<'load' | 'commitOne' | 'commit', { name: string; text: string }>;

  constructor(options: PostgresStorageOptions) {
    checkOptions<PostgresStorageOptions>(options, CHECKS, ['connectionString', 'pool']);
    this.schema = options.schema ?? 'public';
    this.tablePrefix = options.tablePrefix ?? 'credits_';
    this.#names = tables.schemaNames(this.schema, this.tablePrefix);
    this.#connectionString = options.connectionString;
    this.#poolSize = options.poolSize ?? 10;
    this.#ownsPool = options.pool === undefined;
    this.#pool = options.pool;
    // Prepared-statement names are cut at 63 bytes: a digest keeps them short and distinct.
    const id = createHash('sha256').update(`${this.#names.key}:${tables.LAYOUT_VERSION}`).digest('hex').slice(0, 24);
    this.#statements = {
      load: { name: `credits_load_${id}`, text: tables.loadSql(this.#names) },
      commitOne: { name: `credits_commit1_${id}`, text: tables.commitSql(this.#names, false) },
      commit: { name: `credits_commit_${id}`, text: tables.commitSql(this.#names, true) },
    };
  }

  /**
   * Creates the tables when missing. Idempotent and safe when several servers run it at once
   * (an advisory lock serializes them); also runs on first use. Refuses, with an error saying
   * what to do, a schema that holds the tables of release 0.1.x.
   */
  async migrate(): Promise<void> {
    await this.#migration();
  }

  /** Ends the pool if this store created it. Calls after this one fail with `STORAGE_ERROR`. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#ownsPool) await (await this.#opening?.catch(() => undefined))?.end();
  }

  load(request: seam.LoadRequest): Promise<seam.LoadedWorkspace> {
    return this.#load(request);
  }

  async commit(commits: readonly seam.WorkspaceCommit[]): Promise<seam.CommitResult[]> {
    const results: seam.CommitResult[] = [];
    // One statement per run of distinct workspaces, in order: a workspace named twice sees its
    // first commit before its second.
    for (let start = 0, end = 0; start < commits.length; start = end) {
      const seen = new Set<string>();
      while (end < commits.length && !seen.has(commits[end]!.workspaceId)) seen.add(commits[end++]!.workspaceId);
      results.push(...(await this.#commit(commits.slice(start, end))));
    }
    return results;
  }

  /**
   * Runs `work` in one transaction that first takes the workspace's row lock (`SELECT … FOR
   * UPDATE`): other servers' commits to it wait, and what `work` commits lands at `COMMIT`. A
   * workspace without a row yet has nothing to lock; its first commit is guarded by the version.
   * When the connection drops on the way (a restart, a failover, `pg_terminate_backend`), it all
   * runs again on a fresh one, `work` too, up to 32 times: the meter's work finds what a first
   * run committed, and the version guard keeps it from landing twice.
   */
  lock<T>(workspaceId: string, work: (workspace: seam.LockedWorkspace) => Promise<T>): Promise<T> {
    return onLiveConnection(async () => {
      const client = heard(await this.#query('lock', (pool) => pool.connect()));
      let broken = false;
      try {
        await this.#rows('lock', { text: 'BEGIN' }, client);
        const text = `SELECT 1 FROM ${this.#names.workspaces} WHERE workspace_id = $1 FOR UPDATE`;
        await this.#rows('lock', { text, values: [workspaceId] }, client);
        const result = await work({
          load: (request) => this.#load(request, client),
          commit: async (commit) => (await this.#commit([commit], client))[0]!,
        });
        await this.#rows('lock', { text: 'COMMIT' }, client);
        return result;
      } catch (error) {
        // A connection that cannot even roll back is destroyed, not returned to the pool.
        await client.query({ text: 'ROLLBACK' }).catch(() => (broken = true));
        throw error;
      } finally {
        client.release(broken);
      }
    });
  }

  async ledger(query: seam.LedgerQuery): Promise<LedgerRow[]> {
    const values: unknown[] = [query.workspaceId];
    const where = ['workspace_id = $1'];
    const param = (value: unknown) => `$${values.push(value)}`;
    for (const { column, op, value } of ledgerFilters(query)) {
      where.push(op === 'in' ? `${column} = ANY(${param(value)}::text[])` : `${column} ${op} ${param(value)}`);
    }
    const limit = param(Math.max(0, Math.floor(query.limit)));
    // `l.seq`, not `seq`: that name is also the float8 output column, and ordering by it loses the index.
    const text = `SELECT ${tables.LEDGER_SELECT} FROM ${this.#names.ledger} l WHERE ${where.join(' AND ')} ORDER BY l.seq LIMIT ${limit}`;
    const rows = await this.#rows('ledger', { text, values });
    return rows.map((row) => ({ workspaceId: query.workspaceId, ...row }) as unknown as LedgerRow);
  }

  async usage(query: seam.UsageQuery): Promise<seam.UsageAggregate[]> {
    const { column } = USAGE_GROUP_COLUMNS[query.groupBy];
    // Floors to the UTC day like dayOf, also before 1970 (SQL % truncates toward zero).
    const day = query.byDay ? ', at - (((at % 86400000) + 86400000) % 86400000) AS day' : '';
    const text = `SELECT COALESCE(${column}, '') AS key${day}, -sum(amount) AS amount, count(*) AS replies
         FROM ${this.#names.ledger}
        WHERE workspace_id = $1 AND kind = 'reply' AND at >= $2 AND at < $3
        GROUP BY 1${query.byDay ? ', 2' : ''} ORDER BY min(seq)`;
    const rows = await this.#rows('usage', { text, values: [query.workspaceId, query.from, query.to] });
    return rows.map((row) => {
      const totals = { key: String(row['key']), amount: Number(row['amount']), replies: Number(row['replies']) };
      return query.byDay ? { ...totals, day: Number(row['day']) } : totals;
    });
  }

  /** Ids of the workspaces that have a state (not erased), in byte order, after `afterId`. */
  async listWorkspaces(query: seam.ListQuery): Promise<string[]> {
    const text = `SELECT workspace_id FROM ${this.#names.workspaces}
      WHERE state IS NOT NULL AND ($1::text IS NULL OR workspace_id > $1) ORDER BY workspace_id LIMIT $2`;
    const rows = await this.#rows('listWorkspaces', { text, values: [query.afterId ?? null, query.limit] });
    return rows.map((row) => String(row['workspace_id']));
  }

  /**
   * Removes a workspace's records, and its ledger and state or (`keepLedger`) the ledger's agent
   * and conversation ids; either way adds one to the version and keeps it. Atomic.
   */
  async erase(request: seam.EraseRequest): Promise<void> {
    // Not through #rows: sent again after it landed, it could erase a workspace created meanwhile.
    await this.#query('erase', (pool) =>
      pool.query({ text: tables.eraseSql(this.#names), values: [request.workspaceId, request.keepLedger] }),
    );
  }

  // ─── internals ──────────────────────────────────────────────────────────

  async #load(request: seam.LoadRequest, on?: PostgresPoolClient): Promise<seam.LoadedWorkspace> {
    const query = { ...this.#statements.load, values: [request.workspaceId, request.keys, request.now] };
    const [row] = await this.#rows('load', query, on);
    // Always exactly one row, its columns named and typed as the fields (see loadSql).
    const loaded = row as unknown as seam.LoadedWorkspace;
    for (const record of [...loaded.records, ...loaded.lapsed]) record.value = unpackRecord(record.value);
    return loaded;
  }

  /** Commits of distinct workspaces in one statement (see `commitSql`). */
  async #commit(commits: readonly seam.WorkspaceCommit[], on?: PostgresPoolClient): Promise<seam.CommitResult[]> {
    const heads = commits.map((commit) => {
      const { workspaceId: w, expectedVersion: v, state: s, absentKeys: a } = commit;
      return { w, v, n: versionAfter(commit), s, a: a?.length ? a : null };
    });
    const records = commits.flatMap(({ workspaceId: w, records }) => records.map((r) => ({ w, ...r, value: packRecord(r.value) })));
    const values = [JSON.stringify(heads), JSON.stringify(commits.flatMap((commit) => commit.ledger)), JSON.stringify(records)];
    const statement = commits.length === 1 ? this.#statements.commitOne : this.#statements.commit;
    const rows = await this.#rows('commit', { ...statement, values }, on).catch((error: StorageError) => {
      // Two servers' calls that locked shared workspaces crosswise: PostgreSQL undid this one whole.
      if ((error.cause as { code?: string } | undefined)?.code === '40P01') return [];
      throw error;
    });
    const written = new Set(rows.map((row) => row['workspace_id']));
    return commits.map((commit) => (written.has(commit.workspaceId) ? 'committed' : 'conflict'));
  }

  /**
   * Runs one query on `on` (a checked-out connection) or on any free one of the pool. A pooled
   * connection the server dropped while it sat idle (a restart, a failover,
   * `pg_terminate_backend`) fails the first query it is given before the pool has noticed: that
   * query goes again on another, up to 32 times. Safe for every query sent here alone: a read,
   * or a commit, whose version guard answers `conflict` if its first try landed after all.
   */
  async #rows(operation: string, query: PostgresQuery, on?: PostgresPoolClient): Promise<Record<string, unknown>[]> {
    const run = async () => (await this.#query(operation, (pool) => (on ?? pool).query(query))).rows;
    return on ? run() : onLiveConnection(run);
  }

  /** Runs `call` on the pool once migrated; any failure becomes a `StorageError` of `operation`. */
  async #query<T>(operation: string, call: (pool: PostgresPool) => Promise<T>): Promise<T> {
    if (this.#closed) throw new StorageError(operation, new Error('the store is closed'), ADAPTER);
    try {
      if (!this.#migration.done) await this.#migration();
      return await call(await this.#poolReady());
    } catch (error) {
      throw asStorageError(error, operation);
    }
  }

  async #poolReady(): Promise<PostgresPool> {
    if (this.#pool) return this.#pool;
    this.#opening ??= (async () => {
      const Pool = await importOptionalPeer<PgPool>('pg', 'Pool', ADAPTER);
      const pool = new Pool({ connectionString: this.#connectionString ?? '', max: this.#poolSize });
      // An idle connection that drops (server restart, pg_terminate_backend) emits here; the
      // pool replaces it and the next operation reports any lasting failure.
      pool.on('error', () => undefined);
      // A connection can also die between two of its queries; the failing query rejects with
      // the error, so the client's own 'error' event must not crash the process as well.
      pool.on('connect', (client) => heard(client));
      this.#pool = pool;
      return pool;
    })();
    return this.#opening;
  }

  async #migrate(): Promise<void> {
    const pool = await this.#poolReady();
    const client = heard(await pool.connect());
    const names = this.#names;
    try {
      await client.query({ text: 'BEGIN' });
      await client.query({ text: 'SELECT pg_advisory_xact_lock($1::int, hashtext($2))', values: [MIGRATION_LOCK_CLASS, names.schema] });
      // Checked first so that a user without CREATE on the database can use an existing schema.
      const schema = await client.query({ text: 'SELECT 1 FROM pg_namespace WHERE nspname = $1', values: [this.schema] });
      if (schema.rows.length === 0) await client.query({ text: `CREATE SCHEMA IF NOT EXISTS ${names.schema}` });
      await client.query({
        text: `CREATE TABLE IF NOT EXISTS ${names.migrations} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
      });
      const { rows } = await client.query({ text: `SELECT COALESCE(max(version), 0) AS version FROM ${names.migrations}` });
      const version = Number(rows[0]?.['version'] ?? 0);
      if (version > 0 && version < tables.LAYOUT_VERSION) throw oldRelease(this.schema, this.tablePrefix, version);
      // A newer layout (a newer release migrated first) is left as it is.
      if (version === 0) {
        await client.query({ text: tables.layout(names) });
        await client.query({ text: `INSERT INTO ${names.migrations} (version) VALUES ($1)`, values: [tables.LAYOUT_VERSION] });
      }
      await client.query({ text: 'COMMIT' });
      client.release();
    } catch (error) {
      await client.query({ text: 'ROLLBACK' }).catch(() => undefined);
      client.release(error instanceof Error ? error : true);
      throw error;
    }
  }
}

// ─── helpers ─────────────────────────────────────────────────────────────

function oldRelease(schema: string, prefix: string, version: number): Error {
  return new Error(
    `schema "${schema}" holds the tables of @bookbag/credits 0.1 (layout ${version}, prefix "${prefix}"), which this release ` +
      'does not read or convert. Keep 0.1 on that data, or point this release at another schema or tablePrefix, or drop the ' +
      `old tables (${prefix}workspaces, ${prefix}grants, ${prefix}replies, ${prefix}ledger, ${prefix}alerts, ${prefix}migrations ` +
      'with CASCADE, which also drops their functions): see "Migrations and data from 0.1" in docs/adapters/postgres.md',
  );
}

const CHECKS: OptionChecks<PostgresStorageOptions> = {
  connectionString: (url) => (typeof url === 'string' && url !== '' ? undefined : 'must be a non-empty string'),
  pool: (pool) => {
    const { query, connect } = pool as Partial<PostgresPool>;
    return typeof query === 'function' && typeof connect === 'function' ? undefined : 'must be a pg Pool (with query and connect)';
  },
  schema: (schema) => tables.identifierProblem(schema, 'schema'),
  tablePrefix: (prefix) => tables.identifierProblem(prefix, 'tablePrefix'),
  poolSize: (size) => (Number.isSafeInteger(size) && (size as number) > 0 ? undefined : 'must be a positive whole number'),
};

/** Runs `attempt` again while it fails because its connection was gone, up to 32 times. */
async function onLiveConnection<T>(attempt: () => Promise<T>): Promise<T> {
  for (let tries = 1; ; tries++) {
    try {
      return await attempt();
    } catch (error) {
      if (tries > 32 || !connectionLost((error as StorageError).cause)) throw error;
    }
  }
}

/** The query failed because its connection was gone (SQLSTATE 08xxx, a server shutdown, a closed socket), not for what it asked. */
function connectionLost(error: unknown): boolean {
  const { code, message } = (error ?? {}) as { code?: unknown; message?: unknown };
  if (typeof code === 'string' && /^(08|57P0[12])/.test(code)) return true;
  return code === 'ECONNRESET' || code === 'EPIPE' || /^Connection terminated|not queryable/.test(String(message));
}

function asStorageError(error: unknown, operation: string): Error {
  if (error instanceof StorageError || error instanceof InvalidInputError) return error;
  return new StorageError(operation, error, ADAPTER);
}

const listened = new WeakSet<object>();

/**
 * `client`, listening for its `'error'` event (once per connection, which pools reuse). A
 * connection the server drops while the store holds it between two queries (inside `lock`)
 * emits one; the next query fails with the error anyway, and pg leaves a checked-out
 * connection's event to its holder: unheard, it would crash the host's process.
 */
function heard<C extends Pick<PostgresPoolClient, 'on'>>(client: C): C {
  if (!listened.has(client)) client.on?.('error', () => undefined);
  listened.add(client);
  return client;
}
