import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { PostgresStorage } from '../../src/adapters/postgres/index.js';
import { CreditMeter, CreditsError, InvalidInputError, StorageError } from '../../src/index.js';
import type { ReserveCommand } from '../../src/index.js';
import { migrations, schemaNames } from '../../src/adapters/postgres/postgres-schema.js';
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

function reserveCommand(workspaceId: string, replyId: string, amount: number, now: number): ReserveCommand {
  return {
    reply: {
      replyId,
      workspaceId,
      agentId: 'agent',
      conversationId: 'conv',
      model: 'gpt-4o-mini',
      route: 'credits',
      amount,
      priceVersion: 'v1',
      createdAt: now,
      expiresAt: now + 60_000,
    },
    now,
    requireWorkspace: true,
  };
}

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

describe('PostgresStorage - options', () => {
  it('constructor - refuses bad identifiers, both or neither connection, bad tuning', () => {
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', schema: 'a-b' })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', tablePrefix: 'x"; DROP TABLE y; --' })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', tablePrefix: 'p'.repeat(41) })).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({} as never)).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', pool: {} } as never)).toThrow(InvalidInputError);
    expect(() => new PostgresStorage({ connectionString: 'postgres://x', groupCommit: { maxBatch: 0 } })).toThrow(InvalidInputError);
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
    const storage = new PostgresStorage({ pool, schema: freshSchema() });
    stores.push(storage);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    expect(await charge(meter, 'ws')).toBe('charged');
    await storage.close();
    expect((await pool.query('SELECT 1 AS one')).rows[0].one).toBe(1);
    await expect(storage.getReply('x')).rejects.toBeInstanceOf(StorageError);
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
    const versions = await sql(url(), `SELECT version FROM "${schema}"."credits_migrations"`);
    expect(versions).toEqual([{ version: 1 }, { version: 2 }]);
  });

  it('migrate - prefixes keep two stores in one schema apart', async () => {
    const schema = freshSchema();
    const a = track(new PostgresStorage({ connectionString: url(), schema, tablePrefix: 'a_' }));
    const b = track(new PostgresStorage({ connectionString: url(), schema, tablePrefix: 'b_' }));
    const meterA = new CreditMeter({ storage: a });
    const meterB = new CreditMeter({ storage: b });
    await meterA.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await expect(meterB.getWorkspace('ws')).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
    await meterB.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 5 });
    expect((await meterA.getWorkspace('ws')).plan).toBe('hobby');
    expect((await meterB.getWorkspace('ws')).plan).toBe('enterprise');
  });

  it('migrate - an unreachable server is a STORAGE_ERROR naming postgres', async () => {
    const storage = new PostgresStorage({ connectionString: 'postgres://postgres@127.0.0.1:1/credits' });
    const error = await storage.migrate().then(() => undefined, (e: unknown) => e);
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).adapter).toBe('postgres');
    expect((error as StorageError).cause).toBeInstanceOf(Error);
    await storage.close();
  });
});

describe('PostgresStorage - concurrency', () => {
  it('reserve - 500 concurrent charges from 5 meters on their own pools against 100: exactly 100 succeed', async () => {
    const schema = freshSchema();
    const meters = Array.from({ length: 5 }, () => new CreditMeter({ storage: track(new PostgresStorage({ connectionString: url(), schema, poolSize: 4 })) }));
    await meters[0]!.createWorkspace({ workspaceId: 'race', plan: 'enterprise', allotment: 100 });
    const outcomes = await Promise.all(Array.from({ length: 500 }, (_, i) => charge(meters[i % 5]!, 'race')));
    expect(outcomes.filter((o) => o === 'charged')).toHaveLength(100);
    const summary = await meters[1]!.getWorkspace('race');
    expect(summary.balance.toNumber()).toBe(0);
    expect(summary.held.toNumber()).toBe(0);
    const check = await checkInvariants(url(), schema, 'race');
    expect(check).toMatchObject({ ledger: 0, available: 0, held: 0, settled: 100, replyRows: 100, orphans: 0 });
  });

  it('reserve - child processes charging one database never overspend', async () => {
    const storage = track(freshStore(url()));
    await new CreditMeter({ storage }).createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 100 });
    const fixture = fileURLToPath(new URL('./fixtures/postgres-charger.ts', import.meta.url));
    const children = await Promise.all(
      [0, 1, 2].map(() => run(process.execPath, ['--import', 'tsx', fixture, url(), storage.schema, 'shared', '60'], { cwd: process.cwd() })),
    );
    const results = children.map(({ stdout }) => JSON.parse(stdout) as { charged: number; refused: number; failed: number; replyIds: string[] });
    expect(results.reduce((sum, r) => sum + r.failed, 0)).toBe(0);
    expect(results.reduce((sum, r) => sum + r.charged, 0)).toBe(100);
    expect(results.reduce((sum, r) => sum + r.refused, 0)).toBe(80);
    expect(new Set(results.flatMap((r) => r.replyIds)).size).toBe(100);
    expect(await checkInvariants(url(), storage.schema, 'shared')).toMatchObject({ ledger: 0, available: 0, held: 0, settled: 100, replyRows: 100, orphans: 0 });
  });

  it('group commit - concurrent operations share transactions and each resolves on its own', async () => {
    const real = new pg.Pool({ connectionString: url(), max: 4 });
    let statements = 0;
    const pool = {
      query: (query: { text: string; values?: unknown[]; name?: string }) => {
        if (query.name) statements++;
        return real.query(query);
      },
      connect: () => real.connect(),
      end: () => real.end(),
    };
    const storage = new PostgresStorage({ pool, schema: freshSchema() });
    stores.push(storage);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'batch', plan: 'enterprise', allotment: 1000 });
    statements = 0;
    const outcomes = await Promise.all(Array.from({ length: 300 }, () => charge(meter, 'batch')));
    expect(outcomes.every((o) => o === 'charged')).toBe(true);
    // 600 operations gathered into batches (up to 128 each, two in flight).
    expect(statements).toBeLessThan(100);
    await storage.close();
    await real.end();
  });

  it('set-based batch - reserves past the balance, duplicate ids and duplicate settles in one batch', async () => {
    const schema = freshSchema();
    const storage = track(new PostgresStorage({ connectionString: url(), schema }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'sb', plan: 'enterprise', allotment: 5 });
    const now = Date.now();
    // One batch: 8 reserves of 1 credit against 5, one id twice.
    const commands = Array.from({ length: 8 }, (_, i) => reserveCommand('sb', `sb-${i}`, 1_000_000, now));
    commands.push(reserveCommand('sb', 'sb-0', 1_000_000, now));
    const reserved = await Promise.all(commands.map((command) => storage.reserve(command)));
    const statuses = reserved.map((outcome) => outcome.status);
    expect(statuses.filter((status) => status === 'reserved')).toHaveLength(5);
    expect(statuses.filter((status) => status === 'insufficient')).toHaveLength(3);
    expect(statuses.filter((status) => status === 'exists')).toHaveLength(1);
    const held = commands.slice(0, 8).filter((_, i) => statuses[i] === 'reserved').map((command) => command.reply.replyId);
    // One batch: every hold settled twice.
    const settled = await Promise.all(
      [...held, ...held].map((replyId) => storage.settle({ workspaceId: 'sb', replyId, now: now + 1 })),
    );
    expect(settled.every((outcome) => outcome.status === 'settled')).toBe(true);
    const fresh = settled.filter((outcome) => outcome.status === 'settled' && !outcome.replayed);
    expect(fresh).toHaveLength(5);
    const entries = new Set(settled.map((outcome) => (outcome.status === 'settled' ? outcome.entry.id : '')));
    expect(entries.size).toBe(5);
    const check = await checkInvariants(url(), schema, 'sb');
    expect(check.ledger).toBe(check.available + check.held);
    expect(check.held).toBe(0);
    expect(check.available).toBe(0);
  });

  it('migrate - upgrades a schema of the previous version in place', async () => {
    const schema = freshSchema();
    const names = schemaNames(schema, 'credits_');
    await sql(url(), `CREATE SCHEMA "${schema}"`);
    await sql(url(), `CREATE TABLE ${names.migrations} (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())`);
    await sql(url(), migrations(names)[0]!);
    await sql(url(), `INSERT INTO ${names.migrations} (version) VALUES (1)`);
    const storage = track(new PostgresStorage({ connectionString: url(), schema }));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'up', plan: 'enterprise', allotment: 10 });
    const outcomes = await Promise.all(Array.from({ length: 20 }, () => charge(meter, 'up')));
    expect(outcomes.filter((o) => o === 'charged')).toHaveLength(10);
    const versions = await sql(url(), `SELECT version FROM ${names.migrations} ORDER BY version`);
    expect(versions).toEqual([{ version: 1 }, { version: 2 }]);
  });

  it('group commit - an operation failing inside a batch does not affect its neighbours', async () => {
    const storage = track(freshStore(url()));
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'mixed', plan: 'enterprise', allotment: 1000 });
    const now = Date.now();
    const good = Array.from({ length: 20 }, (_, i) => storage.reserve(reserveCommand('mixed', `good_${i}`, 1_000_000, now)));
    // Fails inside its own savepoint: 1.5 is no bigint.
    const badAmount = storage.reserve(reserveCommand('mixed', 'bad_amount', 1.5, now));
    // Fails the whole statement (PostgreSQL text cannot hold NUL): the batch is split.
    const badText = storage.reserve(reserveCommand('mixed', 'bad\u0000text', 1_000_000, now));
    const settled = await Promise.allSettled([...good, badAmount, badText]);
    const failures = settled.slice(20);
    for (const failure of failures) {
      expect(failure.status).toBe('rejected');
      const reason = (failure as PromiseRejectedResult).reason as StorageError;
      expect(reason).toBeInstanceOf(StorageError);
      expect(reason.code).toBe('STORAGE_ERROR');
      expect(reason.operation).toBe('reserve');
    }
    for (const outcome of settled.slice(0, 20)) {
      expect(outcome.status).toBe('fulfilled');
      expect((outcome as PromiseFulfilledResult<{ status: string }>).value.status).toBe('reserved');
    }
    expect(await storage.getReply('bad_amount')).toBeUndefined();
    const state = await storage.getWorkspace('mixed', now);
    expect(state?.held).toBe(20_000_000);
    expect(state?.available).toBe(980_000_000);
    expect(await checkInvariants(url(), storage.schema, 'mixed')).toMatchObject({ ledger: 1_000_000_000, held: 20_000_000, holds: 20_000_000 });
  });
});

describe('PostgresStorage - faults', () => {
  it('connection killed mid-operation - STORAGE_ERROR, no half-written state, the store recovers', async () => {
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
    for (let i = 0; i < 5; i++) {
      await new Promise((resolve) => setTimeout(resolve, 150));
      await sql(url(), 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [app]);
    }
    stop = true;
    await Promise.all(workers);
    expect(errors.length).toBeGreaterThan(0);
    for (const error of errors) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
    expect(charged).toBeGreaterThan(0);
    // The store still works after its connections were killed.
    expect(await charge(meter, 'fault')).toBe('charged');
    const check = await checkInvariants(url(), schema, 'fault');
    expect(check.ledger).toBe(check.available + check.held);
    expect(check.held).toBe(check.holds);
    expect(check.available).toBe(check.grants);
    expect(check.orphans).toBe(0);
    expect(check.replyRows).toBe(check.settled);
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
      for (const replyId of settledIds) expect((await storage.getReply(replyId))?.status).toBe('settled');
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
      `INSERT INTO ${ledger} (workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route, price_version)
       SELECT CASE WHEN i % 10 = 0 THEN 'other' ELSE 'big' END, 'reply', -1000000, $1::bigint + (i::bigint * 28800),
              'r' || i, 'agent_' || (i % 3), 'c' || (i % 50), 'm', 'credits', 'v'
         FROM generate_series(0, 299999) AS i`,
      [start],
    );
    await sql(url(), `ANALYZE ${ledger}`);
    const began = performance.now();
    const rows = await storage.usage({ workspaceId: 'big', from: start + 10 * day, to: start + 11 * day, groupBy: 'agent', byDay: true });
    const page = await storage.ledger({ workspaceId: 'big', from: start + 50 * day, limit: 100 });
    const elapsed = performance.now() - began;
    expect(rows.map((r) => r.key).sort()).toEqual(['agent_0', 'agent_1', 'agent_2']);
    expect(rows.every((r) => r.day === start + 10 * day)).toBe(true);
    expect(rows.reduce((sum, r) => sum + r.replies, 0)).toBe(2700);
    expect(rows.reduce((sum, r) => sum + r.amount, 0)).toBe(2_700_000_000);
    expect(page).toHaveLength(100);
    expect(page[0]!.at).toBeGreaterThanOrEqual(start + 50 * day);
    // The plan check below is the real test; this bound only catches a pathological scan.
    expect(elapsed).toBeLessThan(10_000);
    const plan = await sql<{ 'QUERY PLAN': string }>(
      url(),
      `EXPLAIN SELECT agent_id, count(*) FROM ${ledger} WHERE workspace_id = 'big' AND kind = 'reply' AND at >= ${start + 10 * day} AND at < ${start + 11 * day} GROUP BY 1`,
    );
    expect(plan.map((r) => r['QUERY PLAN']).join('\n')).toMatch(/Index/);
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
