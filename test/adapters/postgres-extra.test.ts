import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { loadSql, schemaNames } from '../../src/adapters/postgres/postgres-schema.js';
import { CreditMeter, CreditsError, InvalidInputError, StorageError } from '../../src/index.js';
import {
  type LedgerRow,
  type PackedRecord,
  type StoredRecord,
  UsageAccumulator,
  unpackRecord,
  type WorkspaceState,
} from '../../src/storage/index.js';
import { pooledCalls, readsWholeValues } from '../support.js';
import { checkInvariants, dropPostgresSchema, freshSchema, freshStore, sql } from './fixtures/postgres-schemas.js';

const run = promisify(execFile);
const url = () => inject('postgresUrl');
const stores: PostgresStorage[] = [];
function track(storage: PostgresStorage): PostgresStorage {
  stores.push(storage);
  return storage;
}
afterAll(async () => {
  const schemas = [...new Set(stores.map((storage) => storage.schema))];
  await Promise.allSettled(stores.map((storage) => storage.close()));
  for (const schema of schemas) await sql(url(), `DROP SCHEMA IF EXISTS "${schema}" CASCADE`);
});

async function charge(meter: CreditMeter, workspaceId: string): Promise<'charged' | 'refused'> {
  try {
    const hold = await meter.reserve({ workspaceId, agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
    await meter.settle({ workspaceId, replyId: hold.replyId });
    return 'charged';
  } catch (error) {
    if (CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS') return 'refused';
    throw error;
  }
}

function state(workspaceId: string, ledgerSeq: number): WorkspaceState {
  return { workspaceId, account: null, ledgerSeq };
}

function row(workspaceId: string, seq: number, patch: Partial<LedgerRow> = {}): LedgerRow {
  return {
    workspaceId,
    seq,
    kind: 'reply',
    amount: -1_000_000,
    at: 1_000 * seq,
    replyId: `r${seq}`,
    agentId: `agent_${seq % 2}`,
    conversationId: null,
    model: 'm',
    route: 'credits',
    priceVersion: 'v',
    grantId: null,
    plan: null,
    inputTokens: seq % 2 ? 10 : null,
    outputTokens: null,
    reason: null,
    ...patch,
  };
}

function record(key: string, holdExpiresAt: number | null): StoredRecord {
  return { key, holdExpiresAt, value: { type: 'topup', grantId: key, amount: 1, expiresAt: holdExpiresAt, createdAt: 0 } };
}

describe('PostgresStorage - options', () => {
  it('constructor - refuses bad identifiers, both or neither connection, a bad pool size', () => {
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', schema: 'a-b' })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', schema: 'pg_x' })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', tablePrefix: 'x"; DROP TABLE y; --' })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', tablePrefix: 'p'.repeat(41) })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({} as never)).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', pool: {} } as never)).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', poolSize: 0 })).toThrow(InvalidInputError);
    expect(new PostgresStorage({ connectionString: 'postgres://x', schema: 'Billing_2', tablePrefix: '' }).schema).toBe('Billing_2');
  });

  it('import - loading the adapter module does not load pg', async () => {
    const adapter = fileURLToPath(new URL('../../src/adapters/postgres/index.ts', import.meta.url));
    const script = `
      import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url);
      const { PostgresStorage } = await import(${JSON.stringify(adapter)});
      new PostgresStorage({ connectionString: 'postgres://nowhere' });
      const loaded = Object.keys(require.cache).some((path) => /[\\\\/]node_modules[\\\\/]pg[\\\\/]/.test(path));
      process.stdout.write(String(loaded));`;
    const { stdout } = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd() });
    expect(stdout).toBe('false');
  });

  it('pool - uses a host pool and leaves it open on close', async () => {
    const pool = new pg.Pool({ connectionString: url(), max: 2 });
    const storage = track(new PostgresStorage({ pool, schema: freshSchema() }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    expect(await charge(meter, 'ws')).toBe('charged');
    await storage.close();
    expect((await pool.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await expect(storage.load({ workspaceId: 'ws', keys: [], now: 0 })).rejects.toBeInstanceOf(StorageError);
    await pool.end();
  });
});

describe('PostgresStorage - migrate', () => {
  it('migrate - idempotent and safe when many stores migrate at once', async () => {
    const schema = freshSchema();
    const many = Array.from({ length: 6 }, () => track(new PostgresStorage({ connectionString: url(), schema })));
    await Promise.all(many.map((storage) => storage.migrate()));
    await many[0]!.migrate();
    await track(new PostgresStorage({ connectionString: url(), schema })).migrate();
    expect(await sql(url(), `SELECT version FROM "${schema}"."credits_migrations"`)).toEqual([{ version: 3 }]);
  });

  it('migrate - prefixes keep two stores in one schema apart', async () => {
    const schema = freshSchema();
    const meterA = new CreditMeter({ storage: track(new PostgresStorage({ connectionString: url(), schema, tablePrefix: 'a_' })) });
    const meterB = new CreditMeter({ storage: track(new PostgresStorage({ connectionString: url(), schema, tablePrefix: 'b_' })) });
    await meterA.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await expect(meterB.getWorkspace('ws')).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
    await meterB.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 5 });
    expect((await meterA.getWorkspace('ws')).plan).toBe('hobby');
    expect((await meterB.getWorkspace('ws')).plan).toBe('enterprise');
  });

  it('migrate - an unreachable server is a STORAGE_ERROR naming postgres', async () => {
    const storage = new PostgresStorage({ connectionString: 'postgres://postgres@127.0.0.1:1/credits' });
    const error = await storage.migrate().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).adapter).toBe('postgres');
    expect((error as StorageError).cause).toBeInstanceOf(Error);
    await storage.close();
  });

  it('migrate - refuses the tables of release 0.1 with what to do, and changes nothing', async () => {
    const schema = freshSchema();
    // What 0.1 left: its migration steps 1 and 2 and a workspaces table of its own columns.
    await sql(url(), `CREATE SCHEMA "${schema}"`);
    await sql(
      url(),
      `CREATE TABLE "${schema}".credits_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`,
    );
    await sql(url(), `INSERT INTO "${schema}".credits_migrations (version) VALUES (1), (2)`);
    await sql(
      url(),
      `CREATE TABLE "${schema}".credits_workspaces (workspace_id text PRIMARY KEY, plan text NOT NULL, available bigint NOT NULL)`,
    );
    await sql(url(), `INSERT INTO "${schema}".credits_workspaces VALUES ('old', 'hobby', 2000000000)`);
    const storage = track(new PostgresStorage({ connectionString: url(), schema }));
    const error = await storage.migrate().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(StorageError);
    expect(String((error as Error).message)).toMatch(/0\.1.*another schema or tablePrefix.*drop/s);
    await expect(new CreditMeter({ storage }).getWorkspace('old')).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect(await sql(url(), `SELECT version FROM "${schema}".credits_migrations ORDER BY 1`)).toEqual([{ version: 1 }, { version: 2 }]);
    expect(await sql(url(), `SELECT to_regclass('"${schema}".credits_records') AS t`)).toEqual([{ t: null }]);
    // The advice works: on another prefix the release starts clean beside the old tables.
    const beside = track(new PostgresStorage({ connectionString: url(), schema, tablePrefix: 'credits2_' }));
    await new CreditMeter({ storage: beside }).createWorkspace({ workspaceId: 'new', plan: 'hobby' });
  });
});

describe('PostgresStorage - seam', () => {
  it('commit - guarded by the version: a stale or duplicate commit writes nothing', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const first = { workspaceId: 'w', expectedVersion: 0, state: state('w', 1), ledger: [row('w', 1)], records: [record('a', 5)] };
    expect(await storage.commit([first])).toEqual(['committed']);
    expect(await storage.commit([first])).toEqual(['conflict']);
    const stale = { workspaceId: 'w', expectedVersion: 7, state: state('w', 2), ledger: [row('w', 2)], records: [record('b', null)] };
    expect(await storage.commit([stale])).toEqual(['conflict']);
    const loaded = await storage.load({ workspaceId: 'w', keys: ['a', 'b', 'zz'], now: 5 });
    expect(loaded).toEqual({
      version: 1,
      state: state('w', 1),
      records: [record('a', 5)],
      lapsed: [record('a', 5)],
      nextLapseAt: 5,
    });
    expect(await storage.ledger({ workspaceId: 'w', limit: 10 })).toEqual([row('w', 1)]);
    expect(await storage.load({ workspaceId: 'none', keys: ['a'], now: 99 })).toEqual({
      version: 0,
      state: null,
      records: [],
      lapsed: [],
      nextLapseAt: null,
    });
  });

  it('commit - workspaces of one call commit independently, in order; records upsert by key', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const results = await storage.commit([
      { workspaceId: 'x', expectedVersion: 0, state: state('x', 0), ledger: [], records: [record('k', 10), record('j', 20)] },
      { workspaceId: 'y', expectedVersion: 3, state: state('y', 0), ledger: [], records: [record('k', 1)] },
      { workspaceId: 'x', expectedVersion: 1, state: state('x', 1), ledger: [row('x', 1)], records: [record('k', null)] },
      { workspaceId: 'x', expectedVersion: 1, state: state('x', 9), ledger: [], records: [] },
    ]);
    expect(results).toEqual(['committed', 'conflict', 'committed', 'conflict']);
    const x = await storage.load({ workspaceId: 'x', keys: ['k'], now: 15 });
    expect(x.version).toBe(2);
    expect(x.state).toEqual(state('x', 1));
    expect(x.records).toEqual([record('k', null)]);
    // 'k' is no longer a hold; 'j' lapses at 20, not yet at 15.
    expect(x.lapsed).toEqual([]);
    expect((await storage.load({ workspaceId: 'x', keys: [], now: 20 })).lapsed).toEqual([record('j', 20)]);
    expect((await storage.load({ workspaceId: 'y', keys: ['k'], now: 99 })).version).toBe(0);
  });

  it('commit - a call PostgreSQL aborts as a deadlock answers conflict for each workspace and writes nothing', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const create = (w: string) => ({ workspaceId: w, expectedVersion: 0, state: state(w, 0), ledger: [], records: [] });
    expect(await storage.commit([create('a'), create('b')])).toEqual(['committed', 'committed']);
    const table = `"${storage.schema}".credits_workspaces`;
    // Another session holds b, and then asks for a while the store's call holds a and waits for b.
    const other = new pg.Client({ connectionString: url() });
    await other.connect();
    try {
      await other.query("BEGIN; SET LOCAL deadlock_timeout = '30s'");
      await other.query(`SELECT 1 FROM ${table} WHERE workspace_id = 'b' FOR UPDATE`);
      const next = (w: string) => ({
        workspaceId: w,
        expectedVersion: 1,
        state: state(w, 1),
        ledger: [row(w, 1)],
        records: [record('k', 5)],
      });
      const call = storage.commit([next('a'), next('b')]);
      for (let waiting = 0; waiting === 0; ) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        const [found] = await sql<{ n: number }>(
          url(),
          "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%json_to_recordset%'",
        );
        waiting = found!.n;
      }
      const crosswise = other.query(`SELECT 1 FROM ${table} WHERE workspace_id = 'a' FOR UPDATE`);
      // The store's session waited first, so its (shorter) deadlock timeout fires and PostgreSQL aborts its statement.
      expect(await call).toEqual(['conflict', 'conflict']);
      await crosswise;
    } finally {
      await other.query('ROLLBACK');
      await other.end();
    }
    for (const w of ['a', 'b']) {
      const loaded = await storage.load({ workspaceId: w, keys: ['k'], now: 0 });
      expect([loaded.version, loaded.state, loaded.records]).toEqual([1, state(w, 0), []]);
      expect(await storage.ledger({ workspaceId: w, limit: 10 })).toEqual([]);
    }
  });

  it('ledger and usage - filters, paging, 2⁵³ − 1 amounts, and usage equal to the in-memory sum', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const day = 86_400_000;
    const rows = Array.from({ length: 40 }, (_, i) =>
      row('w', i + 1, {
        at: -2 * day + i * 7_200_000,
        kind: i % 5 === 0 ? 'grant' : 'reply',
        model: i % 3 ? 'm1' : null,
        amount: i === 3 ? -(2 ** 53 - 1) : -(i + 1) * 1000,
      }),
    );
    await storage.commit([{ workspaceId: 'w', expectedVersion: 0, state: state('w', 40), ledger: rows, records: [] }]);
    const all: LedgerRow[] = [];
    for (let afterSeq = 0; ; ) {
      const page = await storage.ledger({ workspaceId: 'w', afterSeq, limit: 7 });
      if (page.length === 0) break;
      all.push(...page);
      afterSeq = page[page.length - 1]!.seq;
    }
    expect(all).toEqual(rows);
    const filtered = await storage.ledger({
      workspaceId: 'w',
      from: rows[10]!.at,
      to: rows[30]!.at,
      agentId: 'agent_1',
      kinds: ['reply'],
      limit: 100,
    });
    expect(filtered).toEqual(rows.filter((r, i) => i >= 10 && i < 30 && r.agentId === 'agent_1' && r.kind === 'reply'));
    for (const groupBy of ['agent', 'model', 'conversation'] as const) {
      for (const byDay of [false, true]) {
        const query = { workspaceId: 'w', from: rows[2]!.at, to: rows[37]!.at, groupBy, byDay };
        const sum = new UsageAccumulator(groupBy, byDay);
        for (const r of rows) if (r.at >= query.from && r.at < query.to) sum.add(r);
        const order = (a: { key: string; day?: number }, b: { key: string; day?: number }) =>
          `${a.day}${a.key}`.localeCompare(`${b.day}${b.key}`);
        expect((await storage.usage(query)).sort(order)).toEqual(sum.totals().sort(order));
      }
    }
  });

  it('load - nextLapseAt is the first entry of the holds index, however many holds there are', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const holds = Array.from({ length: 3000 }, (_, i) => record(`h${i}`, 10_000 + i));
    await storage.commit([{ workspaceId: 'w', expectedVersion: 0, state: state('w', 0), ledger: [], records: holds }]);
    await storage.commit([{ workspaceId: 'v', expectedVersion: 0, state: state('v', 0), ledger: [], records: [record('x', 1)] }]);
    expect((await storage.load({ workspaceId: 'w', keys: [], now: 0 })).nextLapseAt).toBe(10_000);
    const client = new pg.Client({ connectionString: url() });
    await client.connect();
    try {
      await client.query(`ANALYZE "${storage.schema}".credits_records`);
      // The store's own load statement, planned as the prepared statement it is (generic plan).
      await client.query('SET plan_cache_mode = force_generic_plan');
      await client.query(`PREPARE load_plan AS ${loadSql(schemaNames(storage.schema, 'credits_'))}`);
      const { rows } = await client.query(`EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) EXECUTE load_plan('w', '{}', 0)`);
      const plan = rows.map((r: Record<string, string>) => r['QUERY PLAN']).join('\n');
      expect(plan).toMatch(/Limit \(actual rows=1(\.00)? loops=1\)\n\s*->\s*Index Only Scan using credits_records_hold_idx/);
      expect(plan).not.toMatch(/Seq Scan/);
    } finally {
      await client.end();
    }
  });

  it('erase - keeps the row with its version plus one, so a later create commits at that version', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const create = (expectedVersion: number) => ({
      workspaceId: 'w',
      expectedVersion,
      state: state('w', 1),
      ledger: [row('w', 1)],
      records: [record('a', 5)],
    });
    expect(await storage.commit([create(0)])).toEqual(['committed']);
    await storage.erase({ workspaceId: 'w', keepLedger: false });
    await storage.erase({ workspaceId: 'never', keepLedger: false });
    const table = `"${storage.schema}".credits_workspaces`;
    expect(await sql(url(), `SELECT workspace_id, version::int, state FROM ${table}`)).toEqual([
      { workspace_id: 'w', version: 2, state: null },
    ]);
    expect(await storage.load({ workspaceId: 'w', keys: ['a'], now: 99 })).toEqual({
      version: 2,
      state: null,
      records: [],
      lapsed: [],
      nextLapseAt: null,
    });
    expect(await storage.listWorkspaces({ limit: 10 })).toEqual([]);
    expect(await storage.commit([create(0), create(1), create(2)])).toEqual(['conflict', 'conflict', 'committed']);
    expect((await storage.load({ workspaceId: 'w', keys: [], now: 0 })).version).toBe(3);
    expect(await storage.listWorkspaces({ limit: 10 })).toEqual(['w']);
    await storage.erase({ workspaceId: 'w', keepLedger: true });
    const kept = await storage.load({ workspaceId: 'w', keys: ['a'], now: 99 });
    expect(kept).toEqual({ version: 4, state: state('w', 1), records: [], lapsed: [], nextLapseAt: null });
    expect(await storage.ledger({ workspaceId: 'w', limit: 10 })).toEqual([row('w', 1, { agentId: null })]);
  });

  it('commit - a commit the server refuses is a STORAGE_ERROR, writes nothing, and the store goes on', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    // PostgreSQL text cannot hold NUL.
    const bad = { workspaceId: 'w', expectedVersion: 0, state: state('w', 1), ledger: [row('w', 1, { model: 'a\u0000b' })], records: [] };
    await expect(storage.commit([bad])).rejects.toMatchObject({ code: 'STORAGE_ERROR', adapter: 'postgres', operation: 'commit' });
    expect((await storage.load({ workspaceId: 'w', keys: [], now: 0 })).version).toBe(0);
    expect(await storage.commit([{ ...bad, ledger: [row('w', 1)] }])).toEqual(['committed']);
  });
});

describe('PostgresStorage - through the meter', () => {
  it('records stored whole, before packing, read back beside packed ones', async () => {
    const storage = track(freshStore(url()));
    await readsWholeValues(storage, async (workspaceId) => {
      const records = `"${storage.schema}"."credits_records"`;
      const rows = await sql<{ key: string; value: PackedRecord }>(url(), `SELECT key, value FROM ${records} WHERE workspace_id = $1`, [
        workspaceId,
      ]);
      const packed = rows.filter((row) => Array.isArray(row.value));
      for (const { key, value } of packed) {
        await sql(url(), `UPDATE ${records} SET value = $1::json WHERE workspace_id = $2 AND key = $3`, [
          JSON.stringify(unpackRecord(value)),
          workspaceId,
          key,
        ]);
      }
      return packed.length;
    });
  });

  it('lifecycle - reserve, settle, release, top-up, lapse and renewal keep balance + held = ledger', async () => {
    const storage = track(freshStore(url()));
    let now = Date.UTC(2026, 0, 31, 12);
    const meter = new CreditMeter({ storage, clock: () => new Date(now), holdTtlMs: 60_000 });
    const rival = new CreditMeter({ storage, clock: () => new Date(now), holdTtlMs: 60_000 });
    await meter.createWorkspace({ workspaceId: 'life', plan: 'enterprise', allotment: 10 });
    const settled = await meter.reserve({ workspaceId: 'life', agentId: 'a', conversationId: 'c', model: 'gpt-4o' });
    await meter.settle({ workspaceId: 'life', replyId: settled.replyId });
    const released = await meter.reserve({ workspaceId: 'life', agentId: 'a', conversationId: 'c', model: 'gpt-4o' });
    await meter.release({ workspaceId: 'life', replyId: released.replyId });
    await meter.addCredits({ workspaceId: 'life', credits: 3, grantId: 'pack' });
    await meter.addCredits({ workspaceId: 'life', credits: 3, grantId: 'pack' });
    await meter.reserve({ workspaceId: 'life', agentId: 'b', conversationId: 'c', model: 'claude-sonnet-4-6' });
    expect((await meter.getWorkspace('life')).held.toNumber()).toBe(4);
    now += 61_000;
    expect((await rival.getWorkspace('life')).held.toNumber()).toBe(0);
    expect(await checkInvariants(url(), storage.schema, 'life')).toMatchObject({
      held: 0,
      holds: 0,
      available: 8_000_000,
      ledger: 8_000_000,
      seqGapless: true,
    });
    // The period ends Feb 28: two meters race the renewal, which happens once.
    now = Date.UTC(2026, 1, 28, 13);
    const [a, b] = await Promise.all([meter.getWorkspace('life'), rival.getWorkspace('life')]);
    expect(a.balance.toNumber()).toBe(13);
    expect(b.periodStart.getTime()).toBe(Date.UTC(2026, 1, 28, 12));
    const kinds = (await meter.ledger({ workspaceId: 'life', limit: 1000 })).entries.map((entry) => entry.kind);
    expect(kinds.filter((kind) => kind === 'grant')).toHaveLength(2);
    const check = await checkInvariants(url(), storage.schema, 'life');
    expect(check.ledger).toBe(check.available + check.held);
    expect(check).toMatchObject({ settled: 1, replyRows: 1, orphans: 0, seqGapless: true });
  });
});

describe('PostgresStorage - concurrency', () => {
  it('reserve - 500 concurrent charges from 5 meters on their own pools against 100: exactly 100 succeed', async () => {
    const schema = freshSchema();
    const meters = Array.from(
      { length: 5 },
      () => new CreditMeter({ storage: track(new PostgresStorage({ connectionString: url(), schema, poolSize: 4 })) }),
    );
    await meters[0]!.createWorkspace({ workspaceId: 'race', plan: 'enterprise', allotment: 100 });
    const outcomes = await Promise.all(Array.from({ length: 500 }, (_, i) => charge(meters[i % 5]!, 'race')));
    expect(outcomes.filter((o) => o === 'charged')).toHaveLength(100);
    const summary = await meters[1]!.getWorkspace('race');
    expect(summary.balance.toNumber()).toBe(0);
    expect(summary.held.toNumber()).toBe(0);
    const check = await checkInvariants(url(), schema, 'race');
    expect(check).toMatchObject({ ledger: 0, available: 0, held: 0, settled: 100, replyRows: 100, orphans: 0, seqGapless: true });
  });

  it('reserve - child processes charging one database never overspend', async () => {
    const storage = track(freshStore(url()));
    await new CreditMeter({ storage }).createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 100 });
    const fixture = fileURLToPath(new URL('./fixtures/postgres-charger.ts', import.meta.url));
    const children = await Promise.all(
      [0, 1, 2].map(() =>
        run(process.execPath, ['--import', 'tsx', fixture, url(), storage.schema, 'shared', '60'], { cwd: process.cwd() }),
      ),
    );
    const results = children.map(
      ({ stdout }) => JSON.parse(stdout) as { charged: number; refused: number; failed: number; replyIds: string[] },
    );
    expect(results.reduce((sum, r) => sum + r.failed, 0)).toBe(0);
    expect(results.reduce((sum, r) => sum + r.charged, 0)).toBe(100);
    expect(results.reduce((sum, r) => sum + r.refused, 0)).toBe(80);
    expect(new Set(results.flatMap((r) => r.replyIds)).size).toBe(100);
    expect(await checkInvariants(url(), storage.schema, 'shared')).toMatchObject({
      ledger: 0,
      available: 0,
      held: 0,
      settled: 100,
      replyRows: 100,
      orphans: 0,
      seqGapless: true,
    });
  });

  it('commit - a batch of the meter is one load and one commit statement', async () => {
    const real = new pg.Pool({ connectionString: url(), max: 4 });
    let statements = 0;
    const pool = {
      query: (query: { text: string; values?: unknown[]; name?: string }) => {
        statements++;
        return real.query(query);
      },
      connect: () => real.connect(),
      end: () => real.end(),
    };
    const storage = track(new PostgresStorage({ pool, schema: freshSchema() }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'batch', plan: 'enterprise', allotment: 1000 });
    statements = 0;
    const outcomes = await Promise.all(Array.from({ length: 300 }, () => charge(meter, 'batch')));
    expect(outcomes.every((o) => o === 'charged')).toBe(true);
    // 600 commands, gathered by the meter into a few batches of two statements each.
    expect(statements).toBeLessThan(40);
    await storage.close();
    await real.end();
  });
});

describe('PostgresStorage - faults', () => {
  it('connection killed mid-operation - the call goes again on a fresh connection or fails with STORAGE_ERROR, no half-written state', async () => {
    const schema = freshSchema();
    const app = `credits_fault_${randomUUID().slice(0, 8)}`;
    const storage = track(new PostgresStorage({ connectionString: `${url()}?application_name=${app}`, schema }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'fault', plan: 'enterprise', allotment: 100_000 });
    let stop = false;
    const errors: unknown[] = [];
    let charged = 0;
    const workers = Array.from({ length: 50 }, async () => {
      while (!stop) {
        try {
          await charge(meter, 'fault');
          charged++;
        } catch (error) {
          errors.push(error);
        }
      }
    });
    let killed = 0;
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 150));
      killed += (await sql(url(), 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app])).length;
    }
    stop = true;
    await Promise.all(workers);
    // The connections died under the charges; a query that met one went again on another (a
    // commit's version guard answers `conflict` if its first try landed), so few calls, if any, fail.
    expect(killed).toBeGreaterThanOrEqual(5);
    for (const error of errors) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
    expect(charged).toBeGreaterThan(0);
    // The store still works after its connections were killed.
    expect(await charge(meter, 'fault')).toBe('charged');
    const check = await checkInvariants(url(), schema, 'fault');
    expect(check.ledger).toBe(check.available + check.held);
    expect(check.held).toBe(check.holds);
    expect(check.orphans).toBe(0);
    expect(check.replyRows).toBe(check.settled);
    expect(check.seqGapless).toBe(true);
  });

  it("a host's pool: a connection that dies while the store holds it (inside lock) crashes nothing; the lock runs again on a fresh one", async () => {
    const schema = freshSchema();
    const app = `credits_held_${randomUUID().slice(0, 8)}`;
    // A host's pool that, as pg's docs ask, listens for idle connections' errors, and no more.
    const pool = new pg.Pool({ connectionString: `${url()}?application_name=${app}`, max: 2 });
    pool.on('error', () => undefined);
    const storage = track(new PostgresStorage({ pool, schema }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'held', plan: 'enterprise', allotment: 1_000 });
    try {
      for (let round = 0; round < 3; round++) {
        let runs = 0;
        const loaded = await storage.lock('held', async (workspace) => {
          if (runs++ === 0) {
            await sql(url(), 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
            // The connection, checked out and idle between two queries, hears of it now.
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          return workspace.load({ workspaceId: 'held', keys: [], now: Date.now() });
        });
        expect(runs).toBe(2);
        expect(loaded.version).toBeGreaterThan(0);
      }
      expect(await charge(meter, 'held')).toBe('charged');
    } finally {
      await pool.end();
    }
  });

  it('idle connections the server dropped - reads and writes take fresh ones, nothing fails', async () => {
    const schema = freshSchema();
    const app = `credits_idle_${randomUUID().slice(0, 8)}`;
    const storage = track(new PostgresStorage({ connectionString: `${url()}?application_name=${app}`, schema, poolSize: 4 }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'idle', plan: 'enterprise', allotment: 1_000 });
    // Four calls at once leave four connections idle in the pool.
    await Promise.all(Array.from({ length: 4 }, () => charge(meter, 'idle')));
    const admin = new pg.Client({ connectionString: url() });
    await admin.connect();
    try {
      for (const read of [
        () => storage.lock('idle', (workspace) => workspace.load({ workspaceId: 'idle', keys: [], now: Date.now() })),
        ...pooledCalls(meter, storage, 'idle', () => charge(meter, 'idle')),
      ]) {
        // A server restart or a failover does this to every idle connection at once; the call
        // comes before the pool has noticed, as a busy server's would.
        const { rows } = await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
        expect(rows.length).toBeGreaterThan(0);
        await expect(read()).resolves.toBeDefined();
      }
    } finally {
      await admin.end();
    }
    const check = await checkInvariants(url(), schema, 'idle');
    expect(check).toMatchObject({ settled: 8, replyRows: 8, ledger: check.available + check.held });
  });

  it('server restart - every settled charge survives, operations during the outage fail closed', async () => {
    const { startPostgres } = await import('../servers/postgres-server.js');
    const server = await startPostgres();
    const storage = new PostgresStorage({ connectionString: server.url, schema: 'restart' });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'durable', plan: 'enterprise', allotment: 10_000 });
      const settledIds: string[] = [];
      await Promise.all(
        Array.from({ length: 200 }, async () => {
          const hold = await meter.reserve({ workspaceId: 'durable', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
          await meter.settle({ workspaceId: 'durable', replyId: hold.replyId });
          settledIds.push(hold.replyId);
        }),
      );
      let stop = false;
      const duringOutage: unknown[] = [];
      const load = (async () => {
        while (!stop) {
          try {
            const hold = await meter.reserve({ workspaceId: 'durable', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
            await meter.settle({ workspaceId: 'durable', replyId: hold.replyId });
            settledIds.push(hold.replyId);
          } catch (error) {
            duringOutage.push(error);
            await new Promise((resolve) => setTimeout(resolve, 20));
          }
        }
      })();
      await server.restart();
      await new Promise((resolve) => setTimeout(resolve, 300));
      stop = true;
      await load;
      for (const error of duringOutage) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
      const { records } = await storage.load({ workspaceId: 'durable', keys: settledIds.map((id) => `reply:${id}`), now: Date.now() });
      expect(records).toHaveLength(settledIds.length);
      for (const { value } of records) expect(value.type === 'reply' && value.status).toBe('settled');
      const check = await checkInvariants(server.url, 'restart', 'durable');
      expect(check.settled).toBe(settledIds.length);
      expect(check.replyRows).toBe(settledIds.length);
      expect(check.ledger).toBe(check.available + check.held);
    } finally {
      await storage.close();
      await server.stop();
    }
  });
});

describe('PostgresStorage - analytics at scale', () => {
  it('usage and ledger - indexed and aggregated in SQL over 300k rows', async () => {
    const storage = track(freshStore(url()));
    await storage.migrate();
    const ledger = `"${storage.schema}"."credits_ledger"`;
    const day = 86_400_000;
    const start = Date.UTC(2026, 0, 1);
    // 300k reply rows over 100 days for one workspace, plus noise in another.
    await sql(
      url(),
      `INSERT INTO ${ledger} (workspace_id, seq, kind, amount, at, reply_id, agent_id, conversation_id, model, route, price_version)
       SELECT CASE WHEN i % 10 = 0 THEN 'other' ELSE 'big' END, i + 1, 'reply', -1000000, $1::bigint + (i::bigint * 28800),
              'r' || i, 'agent_' || (i % 3), 'c' || (i % 50), 'm', 'credits', 'v'
         FROM generate_series(0, 299999) AS i`,
      [start],
    );
    await sql(url(), `ANALYZE ${ledger}`);
    const began = performance.now();
    const rows = await storage.usage({ workspaceId: 'big', from: start + 10 * day, to: start + 11 * day, groupBy: 'agent', byDay: true });
    const page = await storage.ledger({ workspaceId: 'big', from: start + 50 * day, limit: 100 });
    const agentPage = await storage.ledger({ workspaceId: 'big', agentId: 'agent_2', afterSeq: 200_000, limit: 100 });
    const elapsed = performance.now() - began;
    expect(rows.map((r) => r.key).sort()).toEqual(['agent_0', 'agent_1', 'agent_2']);
    expect(rows.every((r) => r.day === start + 10 * day)).toBe(true);
    expect(rows.reduce((sum, r) => sum + r.replies, 0)).toBe(2700);
    expect(rows.reduce((sum, r) => sum + r.amount, 0)).toBe(2_700_000_000);
    expect(page).toHaveLength(100);
    expect(page[0]!.at).toBeGreaterThanOrEqual(start + 50 * day);
    expect(agentPage).toHaveLength(100);
    expect(agentPage.every((r) => r.agentId === 'agent_2' && r.seq > 200_000)).toBe(true);
    // The plan check below is the real test; this bound only catches a pathological scan.
    expect(elapsed).toBeLessThan(10_000);
    const plan = await sql<{ 'QUERY PLAN': string }>(
      url(),
      `EXPLAIN SELECT agent_id, count(*) FROM ${ledger} WHERE workspace_id = 'big' AND kind = 'reply' AND at >= ${start + 10 * day} AND at < ${start + 11 * day} GROUP BY 1`,
    );
    expect(plan.map((r) => r['QUERY PLAN']).join('\n')).toMatch(/Index/);
  });

  it("ledger - a page reads the workspace's rows in seq order from an index, never sorting them all", async () => {
    const pool = new pg.Pool({ connectionString: url(), max: 2 });
    const sent: { text: string; values?: unknown[] }[] = [];
    const schema = freshSchema();
    const storage = new PostgresStorage({
      schema,
      pool: {
        query: (query) => {
          sent.push(query);
          return pool.query(query);
        },
        connect: () => pool.connect(),
        end: () => pool.end(),
      },
    });
    await storage.migrate();
    const ledger = `"${schema}"."credits_ledger"`;
    await sql(
      url(),
      `INSERT INTO ${ledger} (workspace_id, seq, kind, amount, at, agent_id)
       SELECT 'big', i, 'reply', -1000000, 1767225600000 + i, 'agent_' || (i % 3) FROM generate_series(1, 50000) AS i`,
    );
    await sql(url(), `ANALYZE ${ledger}`);
    sent.length = 0;
    expect((await storage.ledger({ workspaceId: 'big', limit: 100 })).map((r) => r.seq)).toEqual(
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    expect(await storage.ledger({ workspaceId: 'big', agentId: 'agent_2', afterSeq: 100, limit: 100 })).toHaveLength(100);
    expect(sent).toHaveLength(2);
    for (const query of sent) {
      const plan = (await pool.query({ text: `EXPLAIN ${query.text}`, values: query.values ?? [] })).rows
        .map((r) => r['QUERY PLAN'])
        .join('\n');
      // A sort of 50k rows for a page of 100 is what ordering by the float8 output column did.
      expect(plan, plan).not.toMatch(/Sort/);
      expect(plan, plan).toMatch(/Index/);
    }
    await dropPostgresSchema(storage, url());
  });
});

describe('PostgresStorage - cleanup helper', () => {
  it('dropPostgresSchema - closes the store and drops its schema', async () => {
    const storage = freshStore(url());
    await storage.migrate();
    await dropPostgresSchema(storage, url());
    expect(await sql(url(), 'SELECT 1 FROM pg_namespace WHERE nspname = $1', [storage.schema])).toEqual([]);
  });
});
