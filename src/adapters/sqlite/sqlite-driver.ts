import { StorageError } from '../../core/errors.js';
import { importOptionalPeer } from '../../storage/optional-peer.js';

/** What `run()` reports: the shape better-sqlite3 returns. */
export interface SqliteRunResult {
  changes: number;
  lastInsertRowid: number | bigint;
}

/**
 * The few prepared-statement methods the SQLite store calls. A better-sqlite3 `Statement`
 * satisfies it; the package never depends on better-sqlite3's types.
 */
export interface SqliteStatement {
  /** Runs a statement that writes. */
  run(...params: unknown[]): SqliteRunResult;
  /** The first row, or undefined. */
  get(...params: unknown[]): unknown;
  /** Every row. */
  all(...params: unknown[]): unknown[];
  /** The store turns safe integers off on its own statements: amounts are JS numbers. */
  safeIntegers(toggle?: boolean): unknown;
}

/**
 * The few database methods the SQLite store calls, typed structurally (as Kysely does) so
 * an existing better-sqlite3 `Database` can be passed in without this package depending on
 * better-sqlite3 at runtime or in its types.
 */
export interface SqliteDatabase {
  /** Compiles a statement. */
  prepare(source: string): SqliteStatement;
  /** Runs SQL text without results (schema, pragmas, transaction control). */
  exec(source: string): unknown;
  /** Closes the connection. */
  close(): unknown;
  /** True while a transaction is open on this connection. */
  readonly inTransaction: boolean;
}

type DatabaseConstructor = new (filename: string) => SqliteDatabase;

/**
 * Loads better-sqlite3 on first use, so importing the adapter never loads the native
 * driver, and turns a missing package into an error that says what to install.
 */
export async function openDatabase(filename: string): Promise<SqliteDatabase> {
  const Database = await importOptionalPeer<DatabaseConstructor>('better-sqlite3', 'default', 'sqlite');
  try {
    return new Database(filename);
  } catch (error) {
    throw new StorageError('open', error, 'sqlite');
  }
}
