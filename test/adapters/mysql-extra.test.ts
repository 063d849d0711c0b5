import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import mysql from 'mysql2/promise';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { MySqlStorage, type MySqlStorageOptions } from '../../src/adapters/mysql/index.js';
import { CreditMeter, CreditsError, InvalidInputError } from '../../src/index.js';
import { type PackedRecord, type ReplyRecord, unpackRecord } from '../../src/storage/index.js';
import { pooledCalls } from '../support.js';

const run = promisify(execFile);
const url = () => inject('mysqlUrl');
const prefix = () => `x${randomUUID().replaceAll('-', '').slice(0, 12)}_`;
const stores: MySqlStorage[] = [];
function store(options: Partial<MySqlStorageOptions> = {}): MySqlStorage {
  const storage = new MySqlStorage({ uri: url(), tablePrefix: prefix(), ...options } as MySqlStorageOptions);
  stores.push(storage);
  return storage;
}

/** Runs SQL on a short-lived connection (for checks the store does not offer). */
async function sql(text: string, values: unknown[] = [], at = url()): Promise<Record<string, unknown>[]> {
  const connection = await mysql.createConnection({ uri: at, multipleStatements: true });
  try {
    return (await connection.query(text, values))[0] as Record<string, unknown>[];
  } finally {
    await connection.end();
  }
}

afterAll(async () => {
  await Promise.allSettled(stores.map((storage) => storage.close()));
  const prefixes = [...new Set(stores.map((storage) => storage.tablePrefix))];
  const tables = prefixes.flatMap((p) => ['workspaces', 'records', 'ledger', 'migrations'].map((t) => `\`${p}${t}\``));
  if (tables.length > 0) await sql(`DROP TABLE IF EXISTS ${tables.join(', ')}`);
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

/**
 * The money invariant of one workspace, read back from the store and its tables: the signed
 * ledger sum equals the grants' remaining credits plus the held ones, the held amount matches
 * the open hold records, every settled reply has one ledger row, and seq runs 1..n.
 */
async function invariants(storage: MySqlStorage, workspaceId: string, at = url()) {
  const { state } = await storage.load({ workspaceId, keys: [], now: 0 });
  const rows = await storage.ledger({ workspaceId, limit: 1_000_000 });
  const values = await sql(`SELECT value FROM \`${storage.tablePrefix}records\` WHERE workspace_id = ?`, [workspaceId], at);
  const replies = values
    .map((row) => unpackRecord(JSON.parse(String(row['value'])) as PackedRecord))
    .filter((value): value is ReplyRecord => value.type === 'reply');
  const settled = replies.filter((reply) => reply.status === 'settled');
  const replyRows = rows.filter((row) => row.kind === 'reply');
  return {
    ledger: rows.reduce((sum, row) => sum + row.amount, 0),
    available: state?.account?.grants.reduce((sum, grant) => sum + grant.remaining, 0) ?? 0,
    held: state?.account?.held ?? 0,
    holds: replies.filter((reply) => reply.status === 'held').reduce((sum, reply) => sum + reply.amount, 0),
    settled: settled.length,
    replyRows: replyRows.length,
    orphans: settled.filter((reply) => replyRows.filter((row) => row.replyId === reply.replyId).length !== 1).length,
    seqGapless: rows.every((row, i) => row.seq === i + 1) && rows.length === state?.ledgerSeq,
  };
}

describe('MySqlStorage - options', () => {
  it('constructor - refuses both or neither connection, a bad prefix, a bad pool size', () => {
    expect(() => new MySqlStorage({} as never)).toThrow(/exactly one of uri or pool/);
    expect(() => new MySqlStorage({ uri: 'mysql://x', pool: {} } as never)).toThrow(InvalidInputError);
    expect(() => new MySqlStorage({ pool: {} } as never)).toThrow(/Invalid pool: must be/);
    expect(() => new MySqlStorage({ uri: '' })).toThrow(/uri/);
    expect(() => new MySqlStorage({ uri: 'mysql://x', tablePrefix: 'x`; DROP TABLE y; --' })).toThrow(/tablePrefix/);
    expect(() => new MySqlStorage({ uri: 'mysql://x', tablePrefix: 'p'.repeat(41) })).toThrow(/tablePrefix/);
    expect(() => new MySqlStorage({ uri: 'mysql://x', poolSize: 0 })).toThrow(/poolSize/);
    expect(new MySqlStorage({ uri: 'mysql://x', tablePrefix: '' }).tablePrefix).toBe('');
  });

  it('import - loading the adapter module does not load mysql2', async () => {
    const adapter = fileURLToPath(new URL('../../src/adapters/mysql/index.ts', import.meta.url));
    const script = `
      import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url);
      await import(${JSON.stringify(adapter)});
      const loaded = Object.keys(require.cache).some((path) => /[\\\\/]node_modules[\\\\/]mysql2[\\\\/]/.test(path));
      process.stdout.write(String(loaded));`;
    const { stdout } = await run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd() });
    expect(stdout).toBe('false');
  });

  it('pool - uses a host pool (BIGINTs as strings there), leaves it open on close', async () => {
    const pool = mysql.createPool({ uri: url(), connectionLimit: 2, supportBigNumbers: true, bigNumberStrings: true });
    const storage = new MySqlStorage({ pool, tablePrefix: prefix() });
    stores.push(storage);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 1_000_000_000 });
    expect(await charge(meter, 'ws')).toBe('charged');
    const check = await invariants(storage, 'ws');
    expect(check.ledger).toBe(check.available + check.held);
    // 2^53 - 1 comes back as the exact number, also from a pool that reads BIGINTs as strings.
    const big = { workspaceId: 'big', seq: 1, kind: 'topup', amount: Number.MAX_SAFE_INTEGER, at: Number.MAX_SAFE_INTEGER - 1 } as const;
    const row = { ...big, replyId: null, agentId: null, conversationId: null, model: null, route: null, priceVersion: null };
    const ledger = [{ ...row, grantId: 'g', plan: null, inputTokens: Number.MAX_SAFE_INTEGER, outputTokens: 0, reason: 'why' }];
    const state = { workspaceId: 'big', account: null, ledgerSeq: 1 };
    expect(await storage.commit([{ workspaceId: 'big', expectedVersion: 0, state, ledger, records: [] }])).toEqual(['committed']);
    expect(await storage.ledger({ workspaceId: 'big', limit: 10 })).toEqual(ledger);
    expect((await storage.load({ workspaceId: 'big', keys: [], now: 0 })).version).toBe(1);
    await storage.close();
    expect((await pool.query('SELECT 1 AS one'))[0]).toEqual([{ one: 1 }]);
    await expect(storage.load({ workspaceId: 'ws', keys: [], now: 0 })).rejects.toThrow(/closed/);
    await pool.end();
  });
});

describe('MySqlStorage - migrate', () => {
  it('migrate - idempotent and safe when many stores migrate at once', async () => {
    const tablePrefix = prefix();
    const many = Array.from({ length: 6 }, () => store({ tablePrefix }));
    await Promise.all(many.map((storage) => storage.migrate()));
    await many[0]!.migrate();
    expect(await sql(`SELECT version FROM \`${tablePrefix}migrations\``)).toEqual([{ version: 1 }]);
  });

  it('migrate - prefixes keep two stores in one database apart', async () => {
    const [a, b] = [store(), store()];
    await new CreditMeter({ storage: a }).createWorkspace({ workspaceId: 'same', plan: 'hobby' });
    expect((await b.load({ workspaceId: 'same', keys: [], now: 0 })).version).toBe(0);
    expect(await b.listWorkspaces({ limit: 10 })).toEqual([]);
  });

  it('migrate - refuses tables of its names it did not create, and creates nothing', async () => {
    const storage = store();
    await sql(`CREATE TABLE \`${storage.tablePrefix}ledger\` (id INT PRIMARY KEY)`);
    await expect(storage.migrate()).rejects.toThrow(/did not create.*another tablePrefix/);
    const tables = await sql('SHOW TABLES LIKE ?', [`${storage.tablePrefix.replace(/_/g, '\\_')}%`]);
    expect(tables).toHaveLength(1);
    await expect(new CreditMeter({ storage }).getWorkspace('x')).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
  });

  it('migrate - an unreachable server is a STORAGE_ERROR through the meter', async () => {
    const storage = new MySqlStorage({ uri: 'mysql://root@127.0.0.1:1/credits' });
    await expect(new CreditMeter({ storage }).getWorkspace('x')).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    await storage.close();
  });
});

describe('MySqlStorage - ids, listing and erasure', () => {
  it('ids - case, accents and trailing spaces make distinct workspaces, listed in binary order', async () => {
    const storage = store();
    const meter = new CreditMeter({ storage });
    const ids = ['a', 'A', 'a ', 'á', 'b', 'ß', 'ss'];
    for (const [i, workspaceId] of ids.entries()) await meter.createWorkspace({ workspaceId, plan: 'enterprise', allotment: i + 1 });
    for (const [i, workspaceId] of ids.entries()) expect((await meter.getWorkspace(workspaceId)).balance.toNumber()).toBe(i + 1);
    const sorted = [...ids].sort((x, y) => (Buffer.from(x) < Buffer.from(y) ? -1 : 1));
    const first = await meter.listWorkspaces({ limit: 4 });
    const second = await meter.listWorkspaces({ limit: 4, cursor: first.nextCursor! });
    expect([...first.workspaces, ...second.workspaces]).toEqual(sorted);
    expect(second.nextCursor).toBeUndefined();
  });

  it('erase - deleteWorkspace removes everything, or keeps an anonymised ledger', async () => {
    const storage = store();
    const meter = new CreditMeter({ storage });
    for (const workspaceId of ['gone', 'kept']) {
      await meter.createWorkspace({ workspaceId, plan: 'enterprise', allotment: 10 });
      expect(await charge(meter, workspaceId)).toBe('charged');
      await meter.reserve({ workspaceId, agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
    }
    const load = (workspaceId: string) => storage.load({ workspaceId, keys: [], now: 0 });
    await meter.deleteWorkspace({ workspaceId: 'gone' });
    await meter.deleteWorkspace({ workspaceId: 'kept', keepLedger: true });
    expect(await meter.deleteWorkspace({ workspaceId: 'gone' })).toMatchObject({ existed: false });
    // Nothing is left but the version, which erase moves up by one and keeps (its row's state is NULL).
    const { version } = await load('gone');
    await storage.erase({ workspaceId: 'gone', keepLedger: false });
    const erased = { version: version + 1, state: null, records: [], lapsed: [], nextLapseAt: null };
    expect(await load('gone')).toEqual(erased);
    expect(await storage.ledger({ workspaceId: 'gone', limit: 10 })).toEqual([]);
    expect(await sql(`SELECT COUNT(*) AS n FROM \`${storage.tablePrefix}records\``)).toEqual([{ n: 0 }]);
    const kept = await storage.ledger({ workspaceId: 'kept', limit: 10 });
    expect(kept.length).toBeGreaterThan(1);
    expect(kept.every((row) => row.agentId === null && row.conversationId === null)).toBe(true);
    expect((await meter.listWorkspaces()).workspaces).toEqual(['kept']);
    expect(await storage.listWorkspaces({ limit: 10 })).toEqual(['kept']);
    // A workspace never committed is left alone: no row appears for it.
    await storage.erase({ workspaceId: 'never', keepLedger: false });
    expect(await load('never')).toEqual({ version: 0, state: null, records: [], lapsed: [], nextLapseAt: null });
    expect(await sql(`SELECT COUNT(*) AS n FROM \`${storage.tablePrefix}workspaces\` WHERE workspace_id = 'never'`)).toEqual([{ n: 0 }]);
    // Created afresh, the id commits on top of the version it kept and is listed again.
    await meter.createWorkspace({ workspaceId: 'gone', plan: 'hobby' });
    expect((await load('gone')).version).toBeGreaterThan(erased.version);
    expect(await storage.listWorkspaces({ limit: 10 })).toEqual(['gone', 'kept']);
  });
});

describe('MySqlStorage - concurrency', () => {
  it('reserve - 500 concurrent charges from 5 meters on their own pools against 100: exactly 100 succeed', async () => {
    const tablePrefix = prefix();
    const meters = Array.from({ length: 5 }, () => new CreditMeter({ storage: store({ tablePrefix, poolSize: 4 }) }));
    await meters[0]!.createWorkspace({ workspaceId: 'race', plan: 'enterprise', allotment: 100 });
    const outcomes = await Promise.all(Array.from({ length: 500 }, (_, i) => charge(meters[i % 5]!, 'race')));
    expect(outcomes.filter((o) => o === 'charged')).toHaveLength(100);
    const check = await invariants(stores[stores.length - 1]!, 'race');
    expect(check).toMatchObject({ ledger: 0, available: 0, held: 0, holds: 0, settled: 100, replyRows: 100, orphans: 0, seqGapless: true });
  });

  it('reserve - child processes charging one database never overspend', async () => {
    const storage = store();
    await new CreditMeter({ storage }).createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 100 });
    const adapter = fileURLToPath(new URL('../../src/adapters/mysql/index.ts', import.meta.url));
    const root = fileURLToPath(new URL('../../src/index.ts', import.meta.url));
    const script = `
      const { MySqlStorage } = await import(${JSON.stringify(adapter)});
      const { CreditMeter, CreditsError } = await import(${JSON.stringify(root)});
      const storage = new MySqlStorage({ uri: ${JSON.stringify(url())}, tablePrefix: ${JSON.stringify(storage.tablePrefix)} });
      const meter = new CreditMeter({ storage });
      const counts = { charged: 0, refused: 0, failed: 0 };
      await Promise.all(Array.from({ length: 60 }, async () => {
        try {
          const hold = await meter.reserve({ workspaceId: 'shared', agentId: 'p' + process.pid, conversationId: 'c', model: 'gpt-4o-mini' });
          await meter.settle({ workspaceId: 'shared', replyId: hold.replyId });
          counts.charged++;
        } catch (error) {
          if (CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS') counts.refused++;
          else counts.failed++;
        }
      }));
      await storage.close();
      process.stdout.write(JSON.stringify(counts));`;
    const children = await Promise.all(
      [0, 1, 2].map(() => run(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { cwd: process.cwd() })),
    );
    const results = children.map(({ stdout }) => JSON.parse(stdout) as { charged: number; refused: number; failed: number });
    expect(results.reduce((sum, r) => sum + r.failed, 0)).toBe(0);
    expect(results.reduce((sum, r) => sum + r.charged, 0)).toBe(100);
    expect(results.reduce((sum, r) => sum + r.refused, 0)).toBe(80);
    expect(await invariants(storage, 'shared')).toMatchObject({
      ledger: 0,
      available: 0,
      settled: 100,
      replyRows: 100,
      orphans: 0,
      seqGapless: true,
    });
  });

  it('commit - a batch of the meter is a load (or a check of its new keys) and a transaction: six statements at most', async () => {
    const real = mysql.createPool({ uri: url(), connectionLimit: 4 });
    let statements = 0;
    const pool = {
      query: (text: string, values?: unknown) => {
        statements++;
        return real.query(text, values as never);
      },
      getConnection: async () => {
        const connection = await real.getConnection();
        const query = (text: string, values?: unknown) => {
          statements++;
          return connection.query(text, values as never);
        };
        return { query, release: () => connection.release(), destroy: () => connection.destroy() };
      },
      end: () => real.end(),
    };
    const storage = new MySqlStorage({ pool, tablePrefix: prefix() });
    stores.push(storage);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'batch', plan: 'enterprise', allotment: 1000 });
    statements = 0;
    const outcomes = await Promise.all(Array.from({ length: 300 }, () => charge(meter, 'batch')));
    expect(outcomes.every((o) => o === 'charged')).toBe(true);
    // 600 commands, gathered by the meter into a few batches: a load and START, UPDATE, INSERT, INSERT, COMMIT each, or,
    // from the state the meter kept, START, UPDATE, SELECT (the absent keys), INSERT, INSERT, COMMIT without a load.
    expect(statements).toBeLessThan(60);
    await storage.close();
    await real.end();
  });
});

describe('MySqlStorage - faults', () => {
  it('connection killed mid-operation - the call goes again on a fresh connection or fails with STORAGE_ERROR, no half-written state', async () => {
    const database = `credits_fault_${randomUUID().replaceAll('-', '').slice(0, 8)}`;
    await sql(`CREATE DATABASE ${database}`);
    const at = url().replace(/\/credits$/, `/${database}`);
    const storage = new MySqlStorage({ uri: at });
    try {
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
        const victims = await sql('SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()', [database]);
        for (const { id } of victims)
          killed += await sql(`KILL ${Number(id)}`).then(
            () => 1,
            () => 0,
          );
      }
      stop = true;
      await Promise.all(workers);
      // The connections died under the charges; a transaction that met one went again on another
      // (a commit's version guard answers `conflict` if its first try landed), so few calls, if any, fail.
      expect(killed).toBeGreaterThanOrEqual(5);
      for (const error of errors) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
      expect(charged).toBeGreaterThan(0);
      expect(await charge(meter, 'fault')).toBe('charged');
      const check = await invariants(storage, 'fault', at);
      expect(check.ledger).toBe(check.available + check.held);
      expect(check).toMatchObject({ held: check.holds, orphans: 0, replyRows: check.settled, seqGapless: true });
    } finally {
      await storage.close();
      await sql(`DROP DATABASE ${database}`);
    }
  });

  it('a connection that dies inside lock: the lock runs again, work included, on a fresh one', async () => {
    const database = `credits_held_${randomUUID().replaceAll('-', '').slice(0, 8)}`;
    await sql(`CREATE DATABASE ${database}`);
    const storage = new MySqlStorage({ uri: url().replace(/\/credits$/, `/${database}`) });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'held', plan: 'enterprise', allotment: 1_000 });
      for (const pause of [0, 100]) {
        let runs = 0;
        const loaded = await storage.lock('held', async (workspace) => {
          if (runs++ === 0) {
            const victims = await sql('SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> CONNECTION_ID()', [
              database,
            ]);
            for (const { id } of victims) await sql(`KILL ${Number(id)}`).catch(() => undefined);
            // Without a pause the next query meets the dying connection; after one, a closed one.
            await new Promise((resolve) => setTimeout(resolve, pause));
          }
          return workspace.load({ workspaceId: 'held', keys: [], now: Date.now() });
        });
        expect(runs).toBe(2);
        expect(loaded.version).toBeGreaterThan(0);
      }
      expect(await charge(meter, 'held')).toBe('charged');
    } finally {
      await storage.close();
      await sql(`DROP DATABASE ${database}`);
    }
  });

  it('idle connections the server dropped - reads and writes take fresh ones, nothing fails', async () => {
    const database = `credits_idle_${randomUUID().replaceAll('-', '').slice(0, 8)}`;
    await sql(`CREATE DATABASE ${database}`);
    const at = url().replace(/\/credits$/, `/${database}`);
    const storage = new MySqlStorage({ uri: at, poolSize: 4 });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'idle', plan: 'enterprise', allotment: 1_000 });
      // Four calls at once leave four connections idle in the pool.
      await Promise.all(Array.from({ length: 4 }, () => charge(meter, 'idle')));
      const admin = await mysql.createConnection({ uri: url() });
      try {
        for (const read of pooledCalls(meter, storage, 'idle', () => charge(meter, 'idle'))) {
          // A server restart or a wait_timeout does this to every idle connection at once; the
          // call comes before the pool has noticed, as a busy server's would.
          const [victims] = await admin.query('SELECT ID AS id FROM information_schema.PROCESSLIST WHERE DB = ?', [database]);
          expect((victims as { id: number }[]).length).toBeGreaterThan(0);
          for (const { id } of victims as { id: number }[]) await admin.query(`KILL ${Number(id)}`).catch(() => undefined);
          await expect(read()).resolves.toBeDefined();
        }
      } finally {
        await admin.end();
      }
      const check = await invariants(storage, 'idle', at);
      expect(check).toMatchObject({ settled: 8, replyRows: 8, ledger: check.available + check.held });
    } finally {
      await storage.close();
      await sql(`DROP DATABASE ${database}`);
    }
  });

  it('server restart - every settled charge survives, operations during the outage fail closed', async () => {
    const { startMariaDb } = await import('../servers/mariadb-server.js');
    const server = await startMariaDb();
    const storage = new MySqlStorage({ uri: server.url });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'durable', plan: 'enterprise', allotment: 10_000 });
      const settledIds: string[] = [];
      const once = async () => {
        const hold = await meter.reserve({ workspaceId: 'durable', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
        await meter.settle({ workspaceId: 'durable', replyId: hold.replyId });
        settledIds.push(hold.replyId);
      };
      await Promise.all(Array.from({ length: 200 }, once));
      let stop = false;
      const duringOutage: unknown[] = [];
      const load = (async () => {
        while (!stop) {
          await once().catch(async (error: unknown) => {
            duringOutage.push(error);
            await new Promise((resolve) => setTimeout(resolve, 20));
          });
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
      const check = await invariants(storage, 'durable', server.url);
      expect(check).toMatchObject({ settled: settledIds.length, replyRows: settledIds.length, ledger: check.available + check.held });
    } finally {
      await storage.close();
      await server.stop();
    }
  });
});
