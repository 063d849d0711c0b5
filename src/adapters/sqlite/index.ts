/**
 * The SQLite store: `import { SqliteStorage } from '@bookbag/credits/sqlite'`.
 * Needs the optional peer dependency better-sqlite3, loaded on first use.
 *
 * @packageDocumentation
 */

export type { SqliteDatabase, SqliteRunResult, SqliteStatement } from './sqlite-driver.js';
export type {
  SqliteStorageBaseOptions,
  SqliteStorageDatabaseOptions,
  SqliteStorageFileOptions,
  SqliteStorageOptions,
} from './sqlite-storage.js';
export { SqliteStorage } from './sqlite-storage.js';
