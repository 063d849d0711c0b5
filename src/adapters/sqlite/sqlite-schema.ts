import type { SqliteDatabase } from './sqlite-driver.js';

/** The schema version this code writes and reads. */
export const SCHEMA_VERSION = 1;

/**
 * Each entry upgrades the schema from version `index` to `index + 1`. Tables are STRICT, so
 * a non-integer amount is refused by SQLite itself rather than stored as a REAL.
 */
const MIGRATIONS: readonly ((p: string) => string)[] = [
  (p) => `
    CREATE TABLE ${p}workspaces (
      workspace_id TEXT PRIMARY KEY,
      plan TEXT NOT NULL,
      allotment INTEGER NOT NULL,
      pending_plan TEXT,
      pending_allotment INTEGER,
      anchor INTEGER NOT NULL,
      period_index INTEGER NOT NULL,
      period_start INTEGER NOT NULL,
      period_end INTEGER NOT NULL,
      used_this_period INTEGER NOT NULL,
      version INTEGER NOT NULL,
      created_at INTEGER NOT NULL,
      held INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE ${p}grants (
      workspace_id TEXT NOT NULL,
      grant_id TEXT NOT NULL,
      kind TEXT NOT NULL,
      amount INTEGER NOT NULL,
      remaining INTEGER NOT NULL,
      expires_at INTEGER,
      created_at INTEGER NOT NULL,
      live INTEGER NOT NULL,
      PRIMARY KEY (workspace_id, grant_id)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX ${p}grants_live ON ${p}grants (workspace_id) WHERE live = 1;

    CREATE TABLE ${p}replies (
      reply_id TEXT PRIMARY KEY,
      workspace_id TEXT NOT NULL,
      agent_id TEXT NOT NULL,
      conversation_id TEXT NOT NULL,
      model TEXT NOT NULL,
      route TEXT NOT NULL,
      amount INTEGER NOT NULL,
      price_version TEXT NOT NULL,
      status TEXT NOT NULL,
      created_at INTEGER NOT NULL,
      expires_at INTEGER NOT NULL,
      finished_at INTEGER,
      entry_id INTEGER,
      allocations TEXT
    ) STRICT;
    CREATE INDEX ${p}replies_holds ON ${p}replies (workspace_id, status, expires_at) WHERE status = 'held';

    CREATE TABLE ${p}ledger (
      id INTEGER PRIMARY KEY,
      workspace_id TEXT NOT NULL,
      kind TEXT NOT NULL,
      amount INTEGER NOT NULL,
      at INTEGER NOT NULL,
      reply_id TEXT,
      agent_id TEXT,
      conversation_id TEXT,
      model TEXT,
      route TEXT,
      price_version TEXT,
      grant_id TEXT,
      plan TEXT
    ) STRICT;
    CREATE INDEX ${p}ledger_workspace_id ON ${p}ledger (workspace_id, id);
    CREATE INDEX ${p}ledger_workspace_at ON ${p}ledger (workspace_id, at);

    CREATE TABLE ${p}alerts (
      workspace_id TEXT NOT NULL,
      alert_key TEXT NOT NULL,
      PRIMARY KEY (workspace_id, alert_key)
    ) STRICT, WITHOUT ROWID;
  `,
];

/**
 * Brings the schema to {@link SCHEMA_VERSION} inside one `BEGIN IMMEDIATE` transaction, so
 * processes that start together migrate once. Refuses a schema newer than this code.
 */
export function migrateSchema(db: SqliteDatabase, prefix: string): void {
  db.exec('BEGIN IMMEDIATE');
  try {
    db.exec(`CREATE TABLE IF NOT EXISTS ${prefix}meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT`);
    const row = db.prepare(`SELECT value FROM ${prefix}meta WHERE key = 'schema_version'`).get() as { value: string } | undefined;
    const current = row ? Number(row.value) : 0;
    if (!Number.isSafeInteger(current) || current < 0) throw new Error(`unreadable schema version "${String(row?.value)}"`);
    if (current > SCHEMA_VERSION) {
      throw new Error(`the database has schema version ${current}, newer than this library's ${SCHEMA_VERSION}; upgrade @bookbag/credits`);
    }
    for (let version = current; version < SCHEMA_VERSION; version++) db.exec(MIGRATIONS[version]!(prefix));
    if (current !== SCHEMA_VERSION) {
      db.prepare(`INSERT INTO ${prefix}meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value`).run(
        String(SCHEMA_VERSION),
      );
    }
    db.exec('COMMIT');
  } catch (error) {
    if (db.inTransaction) db.exec('ROLLBACK');
    throw error;
  }
}
