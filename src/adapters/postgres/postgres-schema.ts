/**
 * The tables of the PostgreSQL store: plain storage, no rule. Per workspace, one state
 * document with its version, records by key (open holds indexed by lapse time) and the
 * append-only ledger. Every name is built from a validated schema and table prefix, so
 * several stores can share one database.
 */

import { LEDGER_COLUMNS, type LedgerColumn } from '../../core/ledger-row.js';

/** The qualified, quoted names of everything one store owns. */
export interface SchemaNames {
  /** The schema, quoted. */
  readonly schema: string;
  /** `schema.prefix`: the advisory-lock key text and the seed of prepared-statement names. */
  readonly key: string;
  readonly workspaces: string;
  readonly records: string;
  readonly ledger: string;
  readonly migrations: string;
  /** An unqualified, quoted name for an index. */
  local(name: string): string;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** The longest table prefix: leaves room for the longest suffix within PostgreSQL's 63 bytes. */
export const MAX_PREFIX_LENGTH = 40;

/** Returns why `value` is not a usable schema name or table prefix, or undefined when it is. */
export function identifierProblem(value: unknown, kind: 'schema' | 'tablePrefix'): string | undefined {
  if (typeof value !== 'string') return 'must be a string';
  if (kind === 'tablePrefix' && value === '') return undefined;
  if (!IDENTIFIER.test(value)) return 'must start with a letter or underscore and hold only letters, digits and underscores';
  if (kind === 'schema' && /^pg_/i.test(value)) return 'must not start with pg_ (reserved for system schemas)';
  const max = kind === 'schema' ? 63 : MAX_PREFIX_LENGTH;
  if (value.length > max) return `must be at most ${max} characters`;
  return undefined;
}

/** Builds the names of a store's objects in `schema` with `prefix`. Both must be valid. */
export function schemaNames(schema: string, prefix: string): SchemaNames {
  const quoted = `"${schema}"`;
  const table = (name: string) => `${quoted}."${prefix}${name}"`;
  return {
    schema: quoted,
    key: `${schema}.${prefix}`,
    workspaces: table('workspaces'),
    records: table('records'),
    ledger: table('ledger'),
    migrations: table('migrations'),
    local: (name: string) => `"${prefix}${name}"`,
  };
}

/**
 * The layout's number in `<prefix>migrations`. Numbers 1 and 2 are the 0.1.x release, whose
 * tables (same names, other columns) held the credit rules in PL/pgSQL; `migrate` refuses
 * them rather than reading them as this layout.
 */
export const LAYOUT_VERSION = 3;

/** The DDL of the layout. Amounts and instants are bigint (JS numbers up to 2⁵³ − 1). */
export function layout(n: SchemaNames): string {
  return /* sql */ `
CREATE TABLE IF NOT EXISTS ${n.workspaces} (
  workspace_id text COLLATE "C" PRIMARY KEY,
  version bigint NOT NULL,
  -- NULL once erased: the row keeps the version, so no version is ever reused.
  state json
) WITH (fillfactor = 50);

CREATE TABLE IF NOT EXISTS ${n.records} (
  workspace_id text COLLATE "C" NOT NULL,
  key text COLLATE "C" NOT NULL,
  hold_expires_at bigint,
  value json NOT NULL,
  PRIMARY KEY (workspace_id, key)
);
-- Only open holds are in it: finding the lapsed ones costs what they are, not what is stored.
CREATE INDEX IF NOT EXISTS ${n.local('records_hold_idx')} ON ${n.records} (workspace_id, hold_expires_at)
  WHERE hold_expires_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS ${n.ledger} (
  workspace_id text COLLATE "C" NOT NULL,
  ${LEDGER_COLUMNS.map((c) => `${c.column} ${pgType(c)}${c.required ? ' NOT NULL' : ''}`).join(',\n  ')},
  PRIMARY KEY (workspace_id, seq)
);
CREATE INDEX IF NOT EXISTS ${n.local('ledger_at_idx')} ON ${n.ledger} (workspace_id, at);
CREATE INDEX IF NOT EXISTS ${n.local('ledger_agent_idx')} ON ${n.ledger} (workspace_id, agent_id, seq) WHERE agent_id IS NOT NULL;
`;
}

const pgType = ({ type }: LedgerColumn) => (type === 'integer' ? 'bigint' : 'text');

/**
 * The ledger's columns as `LedgerRow` fields. bigint goes out as float8, which pg reads as a JS
 * number: exact, since every amount and instant is at most 2⁵³ − 1.
 */
export const LEDGER_SELECT = LEDGER_COLUMNS.map((c) => `${c.column}${c.type === 'integer' ? '::float8' : ''} AS "${c.field}"`).join(', ');

/**
 * The commits of one `commit` call, each of a different workspace, as one statement (one
 * implicit transaction, one round trip, one WAL flush). `$1` is a JSON array of
 * `{ w, v, n, s, a }` (workspace, expected and next version, state, absent keys or null); `$2` the ledger
 * rows and `$3` the records (`{ w, key, holdExpiresAt, value }`) of all of them, exactly as the
 * core made them. The guards write a workspace's state row only if its version matched and no
 * record of its absent keys exists, and return it; the rows and records are joined to that
 * output, so a workspace whose guard refused writes nothing while the others land. With
 * `several`, the state rows are locked in id order first, so two servers' statements never lock
 * shared rows crosswise; a statement of one workspace takes its one row lock in the `UPDATE`
 * (the version is checked again on the row it waited for), a tenth faster at one in flight.
 */
export function commitSql(n: SchemaNames, several: boolean): string {
  const columns = LEDGER_COLUMNS.map((c) => c.column).join(', ');
  const fields = LEDGER_COLUMNS.map((c) => `"${c.field}" ${pgType(c)}`).join(', ');
  const picked = LEDGER_COLUMNS.map((c) => `t."${c.field}"`).join(', ');
  return /* sql */ `
WITH c AS (SELECT * FROM json_to_recordset($1::json) AS c(w text, v bigint, n bigint, s json, a text[])),
${several ? `locked AS (SELECT workspace_id FROM ${n.workspaces} WHERE workspace_id IN (SELECT w FROM c) ORDER BY workspace_id FOR UPDATE),` : ''}
updated AS (
  UPDATE ${n.workspaces} ws SET version = c.n, state = c.s FROM c
   WHERE ws.workspace_id = c.w AND c.v > 0 AND ws.version = c.v${several ? ' AND ws.workspace_id IN (SELECT workspace_id FROM locked)' : ''}
     AND (c.a IS NULL OR NOT EXISTS (SELECT 1 FROM ${n.records} r WHERE r.workspace_id = c.w AND r.key = ANY(c.a)))
  RETURNING ws.workspace_id
),
-- A new workspace needs no absent-key check: records are only written with a state row, and
-- erase keeps that row, so a workspace without one has no records.
created AS (
  INSERT INTO ${n.workspaces} (workspace_id, version, state) SELECT c.w, c.n, c.s FROM c WHERE c.v = 0
  ON CONFLICT (workspace_id) DO NOTHING RETURNING workspace_id
),
ws AS (SELECT workspace_id FROM updated UNION ALL SELECT workspace_id FROM created),
rows AS (INSERT INTO ${n.ledger} (workspace_id, ${columns})
  SELECT ws.workspace_id, ${picked} FROM jsonb_to_recordset($2::jsonb) AS t("workspaceId" text, ${fields}) JOIN ws ON ws.workspace_id = t."workspaceId"),
recs AS (INSERT INTO ${n.records} (workspace_id, key, hold_expires_at, value)
  SELECT ws.workspace_id, t.key, t."holdExpiresAt", t.value
    FROM json_to_recordset($3::json) AS t(w text, key text, "holdExpiresAt" bigint, value json) JOIN ws ON ws.workspace_id = t.w
  ON CONFLICT (workspace_id, key) DO UPDATE SET hold_expires_at = excluded.hold_expires_at, value = excluded.value
)
SELECT workspace_id FROM ws`;
}

/**
 * A workspace's version and state, the records of $2, the holds lapsed by $3 and the earliest
 * hold, in one query whose columns are the fields of `LoadedWorkspace` (bigint as float8, which
 * pg reads as a JS number). The earliest hold is the first entry of the holds index.
 */
export function loadSql(n: SchemaNames): string {
  const records = (where: string) =>
    `COALESCE((SELECT json_agg(json_build_object('key', key, 'holdExpiresAt', hold_expires_at, 'value', value))
      FROM ${n.records} WHERE workspace_id = $1 AND ${where}), '[]')`;
  return /* sql */ `
SELECT COALESCE(w.version, 0)::float8 AS version, w.state,
  ${records('key = ANY($2::text[])')} AS records,
  ${records('hold_expires_at IS NOT NULL AND hold_expires_at <= $3')} AS lapsed,
  (SELECT min(hold_expires_at) FROM ${n.records} WHERE workspace_id = $1 AND hold_expires_at IS NOT NULL)::float8 AS "nextLapseAt"
FROM (VALUES (1)) AS one LEFT JOIN ${n.workspaces} w ON w.workspace_id = $1`;
}

/**
 * Erases a workspace in one statement: its records always; then its ledger and state
 * (`$2` false) or, keeping the ledger (`$2` true), only the rows' agent and conversation ids.
 * Either way the state row stays with its version plus one, so no version is ever reused.
 */
export function eraseSql(n: SchemaNames): string {
  return /* sql */ `
WITH recs AS (DELETE FROM ${n.records} WHERE workspace_id = $1),
rows AS (DELETE FROM ${n.ledger} WHERE workspace_id = $1 AND NOT $2::boolean),
anon AS (UPDATE ${n.ledger} SET agent_id = NULL, conversation_id = NULL
          WHERE workspace_id = $1 AND $2::boolean AND (agent_id IS NOT NULL OR conversation_id IS NOT NULL))
UPDATE ${n.workspaces} SET version = version + 1, state = CASE WHEN $2::boolean THEN state END WHERE workspace_id = $1`;
}
