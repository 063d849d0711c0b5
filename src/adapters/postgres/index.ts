/**
 * The PostgreSQL store, at `@bookbag/credits/postgres`. Importing it does not load `pg`:
 * the driver (an optional peer dependency) is loaded on first use.
 *
 * @packageDocumentation
 */

export type {
  PostgresConnectionOptions,
  PostgresPool,
  PostgresPoolClient,
  PostgresPoolOptions,
  PostgresQuery,
  PostgresQueryResult,
  PostgresStorageOptions,
} from './postgres-storage.js';
export { PostgresStorage } from './postgres-storage.js';
