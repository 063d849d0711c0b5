import { LEDGER_COLUMNS } from '../../core/ledger-row.js';
import type { SqliteDatabase } from './sqlite-driver.js';

/**
 * The schema version this code writes and reads. Version 1 was the layout of release 0.1,
 * which kept balances, grants and replies in rule-specific tables; this release refuses it
 * rather than guess (see {@link migrateSchema}).
 */
export const SCHEMA_VERSION = 2;

/**
 * Three tables, as the storage seam asks: one state document per workspace (NULL once
 * erased: the row stays to keep the version), records by key (with a partial index on open
 * holds' lapse times), and the ledger, clustered by `(workspace_id, seq)`. Tables are
 * STRICT, so a non-integer amount is refused by SQLite itself rather than stored as a REAL.
 */
/**
 * The ledger's columns after `workspace_id`, in table order, with their types. Each holds the
 * `LedgerRow` field of its camel-cased name.
 */
export const ENTRY_COLUMNS = LEDGER_COLUMNS.map(
  ({ column, type, required }) => `${column} ${type === 'integer' ? 'INTEGER' : 'TEXT'}${required ? ' NOT NULL' : ''}`,
);

const CREATE = (p: string) => `
  CREATE TABLE ${p}states (
    workspace_id TEXT PRIMARY KEY,
    version INTEGER NOT NULL,
    state TEXT
  ) STRICT;

  CREATE TABLE ${p}records (
    workspace_id TEXT NOT NULL,
    key TEXT NOT NULL,
    hold_expires_at INTEGER,
    value TEXT NOT NULL,
    PRIMARY KEY (workspace_id, key)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX ${p}records_holds ON ${p}records (workspace_id, hold_expires_at) WHERE hold_expires_at IS NOT NULL;

  CREATE TABLE ${p}entries (
    workspace_id TEXT NOT NULL,
    ${ENTRY_COLUMNS.join(',\n    ')},
    PRIMARY KEY (workspace_id, seq)
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX ${p}entries_at ON ${p}entries (workspace_id, at);
`;

/**
 * Brings the schema to {@link SCHEMA_VERSION} inside one `BEGIN IMMEDIATE` transaction, so
 * processes that start together create it once. Refuses a schema newer than this code, and
 * refuses data written by release 0.1 (schema version 1) with an error that says what to do:
 * nothing is created or changed in that case.
 */
export function migrateSchema(db: SqliteDatabase, prefix: string): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    const meta = `${prefix}meta`;
    const hasMeta = db.prepare("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?").get(meta) !== undefined;
    const row = hasMeta
      ? (db.prepare(`SELECT value FROM ${meta} WHERE key = 'schema_version'`).get() as { value: string } | undefined)
      : undefined;
    const current = row ? Number(row.value) : 0;
    if (!Number.isSafeInteger(current) || current < 0) throw new Error(`unreadable schema version "${String(row?.value)}" in ${meta}`);
    if (current === 1) {
      throw new Error(
        `the tables ${prefix}* hold data written by @bookbag/credits 0.1 (schema version 1), which this release cannot read; ` +
          'keep running 0.1.x on this database, or give this store a new file or another tablePrefix (see docs/adapters/sqlite.md, "Data from 0.1")',
      );
    }
    if (current > SCHEMA_VERSION) {
      throw new Error(`the database has schema version ${current}, newer than this library's ${SCHEMA_VERSION}; upgrade @bookbag/credits`);
    }
    if (current === 0) {
      db.exec(`CREATE TABLE IF NOT EXISTS ${meta} (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;${CREATE(prefix)}`);
      db.prepare(`INSERT INTO ${meta} (key, value) VALUES ('schema_version', ?)`).run(String(SCHEMA_VERSION));
    }
    db.exec('COMMIT');
  } catch (error) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw error;
  }
}
