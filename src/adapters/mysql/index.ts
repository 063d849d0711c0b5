/**
 * The MySQL / MariaDB store, at `@bookbag/credits/mysql`: {@link MySqlStorage} and the
 * structural types of the driver and the options. Importing it does not load `mysql2`: the
 * driver (an optional peer dependency) is loaded on first use.
 *
 * @packageDocumentation
 */
export * from './mysql-storage.js';
