import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { type SqliteDatabase, SqliteStorage } from '../../src/adapters/sqlite/index.js';
import { CreditMeter, type CreditStorage, CreditsError, MemoryStorage, StorageError } from '../../src/index.js';
import {
  type LedgerRow,
  type PackedRecord,
  type StoredRecord,
  UsageAccumulator,
  unpackRecord,
  type WorkspaceCommit,
  type WorkspaceState,
} from '../../src/storage/index.js';
import { readsWholeValues, TestClock } from '../support.js';

const dir = mkdtempSync(join(tmpdir(), 'credits-sqlite-extra-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = () => join(dir, `${randomUUID()}.db`);
const T0 = Date.UTC(2026, 0, 15, 12);
const MINUTE = 60_000;
const fixture = fileURLToPath(new URL('./fixtures/sqlite-charger.ts', import.meta.url));

const state = (workspaceId: string, ledgerSeq: number): WorkspaceState => ({ workspaceId, account: null, ledgerSeq });
const row = (workspaceId: string, seq: number, amount: number, at = T0): LedgerRow => ({
  workspaceId,
  seq,
  kind: 'reply',
  amount,
  at,
  replyId: `r${seq}`,
  agentId: 'a',
  conversationId: 'c',
  model: 'm',
  route: 'credits',
  priceVersion: 'v',
  grantId: null,
  plan: null,
  inputTokens: null,
  outputTokens: null,
  reason: null,
});
const commit = (workspaceId: string, expectedVersion: number, rows: LedgerRow[] = []): WorkspaceCommit => ({
  workspaceId,
  expectedVersion,
  state: state(workspaceId, expectedVersion),
  ledger: rows,
  records: [],
});

/** The books of a workspace: balance + held must equal the signed ledger sum. */
async function books(meter: CreditMeter, storage: CreditStorage, workspaceId: string) {
  const summary = await meter.getWorkspace(workspaceId);
  const rows = await storage.ledger({ workspaceId, limit: 1_000_000 });
  const sum = rows.reduce((total, r) => total + r.amount, 0);
  expect(sum).toBe(Math.round((summary.balance.toNumber() + summary.held.toNumber()) * 1e6));
  return { summary, rows };
}

function runCharger(filename: string, count: number, concurrency: number) {
  const child = spawn(process.execPath, ['--import', 'tsx', fixture, filename, 'shared', String(count), String(concurrency)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const done = new Promise<{ charged: number; refused: number }>((resolve, reject) => {
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) =>
      code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`child exited ${code ?? signal}: ${err}`)),
    );
  });
  return { child, done };
}

describe('SqliteStorage options and life cycle', () => {
  it('options - refuses a bad table prefix, both or neither of filename and database, a bad synchronous', () => {
    expect(() => new SqliteStorage({ filename: file(), tablePrefix: 'Bad-Prefix' })).toThrow(/tablePrefix/);
    expect(() => new SqliteStorage({ filename: file(), tablePrefix: '1x' })).toThrow(/tablePrefix/);
    expect(() => new SqliteStorage({} as never)).toThrow(/filename/);
    expect(() => new SqliteStorage({ filename: file(), database: new Database(':memory:') } as never)).toThrow(/filename/);
    expect(() => new SqliteStorage({ filename: file(), synchronous: 'OFF' as never })).toThrow(/synchronous/);
    expect(() => new SqliteStorage({ filename: file(), busyTimeoutMs: -1 })).toThrow(/busyTimeoutMs/);
  });

  it('migrate - is idempotent, versioned, sets WAL, and refuses a newer schema', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await storage.migrate();
    await storage.migrate();
    await storage.close();
    const again = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await again.migrate();
    await again.close();
    const db = new Database(filename);
    expect(db.prepare("SELECT value FROM bb_meta WHERE key = 'schema_version'").get()).toEqual({ value: '2' });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all();
    expect(tables).toEqual([{ name: 'bb_entries' }, { name: 'bb_meta' }, { name: 'bb_records' }, { name: 'bb_states' }]);
    db.prepare("UPDATE bb_meta SET value = '99' WHERE key = 'schema_version'").run();
    db.close();
    const newer = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await expect(newer.migrate()).rejects.toThrow(/newer/);
    await newer.close();
  });

  it('migrate - refuses data written by 0.1 (schema version 1), changes nothing, and a new prefix works beside it', async () => {
    const filename = file();
    const db = new Database(filename);
    db.exec(`CREATE TABLE credits_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) STRICT;
      INSERT INTO credits_meta VALUES ('schema_version', '1');
      CREATE TABLE credits_workspaces (workspace_id TEXT PRIMARY KEY) STRICT;
      INSERT INTO credits_workspaces VALUES ('old');`);
    const storage = new SqliteStorage({ filename });
    const meter = new CreditMeter({ storage });
    const error = await meter.getWorkspace('old').catch((caught: unknown) => caught);
    expect(CreditsError.is(error) && error.code).toBe('STORAGE_ERROR');
    expect((error as Error).message).toMatch(/0\.1.*schema version 1.*tablePrefix/);
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all();
    expect(tables).toEqual([{ name: 'credits_meta' }, { name: 'credits_workspaces' }]);
    await storage.close();
    const beside = new SqliteStorage({ database: db, tablePrefix: 'credits2_' });
    await new CreditMeter({ storage: beside }).createWorkspace({ workspaceId: 'new', plan: 'hobby' });
    await beside.close();
    db.close();
  });

  it('close - closes only a database it opened; later calls fail with STORAGE_ERROR', async () => {
    const db = new Database(file());
    const storage = new SqliteStorage({ database: db });
    await new CreditMeter({ storage }).createWorkspace({ workspaceId: 'w', plan: 'hobby' });
    await storage.close();
    expect(db.open).toBe(true);
    expect(db.prepare('SELECT COUNT(*) AS n FROM credits_states').get()).toEqual({ n: 1 });
    db.close();
    const error = await storage.load({ workspaceId: 'w', keys: [], now: T0 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    const owned = new SqliteStorage({ filename: file() });
    await owned.migrate();
    await owned.close();
    await expect(owned.commit([commit('w', 0)])).rejects.toBeInstanceOf(StorageError);
  });

  it('records stored whole, before packing, read back beside packed ones', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename });
    await readsWholeValues(storage, async (workspaceId) => {
      const db = new Database(filename);
      try {
        const rows = db.prepare('SELECT key, value FROM credits_records WHERE workspace_id = ?').all(workspaceId) as {
          key: string;
          value: string;
        }[];
        const rewrite = db.prepare('UPDATE credits_records SET value = ? WHERE workspace_id = ? AND key = ?');
        const packed = rows.filter((row) => row.value.startsWith('['));
        for (const row of packed) rewrite.run(JSON.stringify(unpackRecord(JSON.parse(row.value) as PackedRecord)), workspaceId, row.key);
        return packed.length;
      } finally {
        db.close();
      }
    });
    await storage.close();
  });

  it('restart - what a meter committed is there after the file is reopened', async () => {
    const filename = file();
    const clock = new TestClock(T0);
    const first = new SqliteStorage({ filename });
    const meter = new CreditMeter({ storage: first, clock: clock.now });
    await meter.createWorkspace({ workspaceId: 'w', plan: 'hobby' });
    const held = await meter.reserve({ workspaceId: 'w', agentId: 'a', conversationId: 'c', model: 'gpt-4o' });
    const charged = await meter.reserve({ workspaceId: 'w', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
    await meter.settle({ workspaceId: 'w', replyId: charged.replyId });
    await first.close();
    const second = new SqliteStorage({ filename });
    const reopened = new CreditMeter({ storage: second, clock: clock.now });
    const { summary, rows } = await books(reopened, second, 'w');
    expect(summary.balance.toNumber()).toBe(2_000 - 1 - 5);
    expect(summary.held.toNumber()).toBe(5);
    expect(rows.map((r) => r.kind)).toEqual(['grant', 'reply']);
    // The hold taken before the restart is still settled once, and a replay answers the same.
    const settled = await reopened.settle({ workspaceId: 'w', replyId: held.replyId });
    expect((await reopened.settle({ workspaceId: 'w', replyId: held.replyId })).entryId).toBe(settled.entryId);
    expect((await books(reopened, second, 'w')).summary.balance.toNumber()).toBe(2_000 - 6);
    await second.close();
  });

  it('driver errors - a busy database fails with STORAGE_ERROR (SQLITE_BUSY as cause), writes nothing, and the next commit succeeds', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, busyTimeoutMs: 0 });
    await storage.migrate();
    const locker = new Database(filename);
    locker.exec('BEGIN IMMEDIATE');
    const error = await storage.commit([commit('w', 0)]).catch((caught: unknown) => caught);
    locker.exec('ROLLBACK');
    locker.close();
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).adapter).toBe('sqlite');
    expect((error as Error).cause).toMatchObject({ code: 'SQLITE_BUSY' });
    expect((await storage.load({ workspaceId: 'w', keys: [], now: T0 })).version).toBe(0);
    expect(await storage.commit([commit('w', 0)])).toEqual(['committed']);
    await storage.close();
  });
});

describe('SqliteStorage waiting for the write lock', () => {
  it('a commit waits for another connection to let go of the write lock without blocking the event loop, then lands', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, busyTimeoutMs: 5_000 });
    await storage.migrate();
    const locker = new Database(filename);
    locker.exec('BEGIN IMMEDIATE');
    let ticks = 0;
    const ticking = setInterval(() => ticks++, 5);
    const pending = storage.commit([commit('w', 0)]);
    await new Promise((resolve) => setTimeout(resolve, 150));
    // A wait inside SQLite would have held this thread (the locker's too) until the timeout.
    expect(ticks).toBeGreaterThan(5);
    locker.exec('COMMIT');
    expect(await pending).toEqual(['committed']);
    clearInterval(ticking);
    locker.close();
    expect((await storage.load({ workspaceId: 'w', keys: [], now: T0 })).version).toBe(1);
    await storage.close();
  });

  it('a commit that cannot get the write lock within busyTimeoutMs fails with STORAGE_ERROR and writes nothing', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, busyTimeoutMs: 200 });
    await storage.migrate();
    const locker = new Database(filename);
    locker.exec('BEGIN IMMEDIATE');
    const started = Date.now();
    const error = await storage.commit([commit('w', 0)]).catch((caught: unknown) => caught);
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    locker.exec('ROLLBACK');
    locker.close();
    expect((error as Error).cause).toMatchObject({ code: 'SQLITE_BUSY' });
    expect((await storage.load({ workspaceId: 'w', keys: [], now: T0 })).version).toBe(0);
    await storage.close();
  });
});

describe('SqliteStorage commits', () => {
  it('commit - a write that fails mid-way (a non-integer amount) rolls the whole commit back', async () => {
    const storage = new SqliteStorage({ filename: file() });
    expect(await storage.commit([commit('w', 0, [row('w', 1, -5)])])).toEqual(['committed']);
    const bad = commit('w', 1, [row('w', 2, -5), row('w', 3, -2.5)]);
    const error = await storage
      .commit([commit('other', 0), { ...bad, records: [{ key: 'reply:x', holdExpiresAt: T0, value: {} as never }] }])
      .catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    const loaded = await storage.load({ workspaceId: 'w', keys: ['reply:x'], now: T0 });
    expect(loaded).toMatchObject({ version: 1, records: [], lapsed: [] });
    expect((await storage.load({ workspaceId: 'other', keys: [], now: T0 })).version).toBe(0);
    expect((await storage.ledger({ workspaceId: 'w', limit: 10 })).map((r) => r.seq)).toEqual([1]);
    expect(await storage.commit([commit('w', 1, [row('w', 2, -5)])])).toEqual(['committed']);
    await storage.close();
  });

  it('commit - rows and records past one multi-row statement are all written, in order; a key given twice keeps the last', async () => {
    const storage = new SqliteStorage({ filename: file() });
    // 32 rows go in one statement: 1, 31, 32, 33 and 97 cover a lone row, a short and a full
    // statement, one more than a full one, and several full ones with a remainder.
    const topUp = (key: string, amount: number) => ({
      key,
      holdExpiresAt: amount % 2 === 0 ? T0 + amount : null,
      value: { type: 'topup', grantId: key, amount, expiresAt: null, createdAt: T0 } as const,
    });
    const expected = new Map<string, ReturnType<typeof topUp>>();
    let version = 0;
    let seq = 0;
    for (const count of [1, 31, 32, 33, 97]) {
      const first = seq + 1;
      const rows = Array.from({ length: count }, () => row('w', ++seq, -seq));
      const records = Array.from({ length: count }, (_, i) => topUp(`k${first + i}`, first + i));
      records.push(topUp(`k${first}`, 10_000 + first));
      for (const record of records) expected.set(record.key, record);
      expect(await storage.commit([{ ...commit('w', version, rows), records }])).toEqual(['committed']);
      version = (await storage.load({ workspaceId: 'w', keys: [], now: T0 })).version;
    }
    expect(await storage.ledger({ workspaceId: 'w', limit: 1000 })).toEqual(
      Array.from({ length: seq }, (_, i) => row('w', i + 1, -(i + 1))),
    );
    const loaded = await storage.load({ workspaceId: 'w', keys: [...expected.keys()], now: T0 });
    expect(new Map(loaded.records.map((record) => [record.key, record]))).toEqual(expected);
    await storage.close();
  });

  it("commit - another connection's commit moves the version: a commit from the older load conflicts", async () => {
    const filename = file();
    const a = new SqliteStorage({ filename });
    const b = new SqliteStorage({ filename });
    await a.commit([commit('w', 0)]);
    const loadedByA = await a.load({ workspaceId: 'w', keys: [], now: T0 });
    expect(await b.commit([commit('w', loadedByA.version, [row('w', 1, 7)])])).toEqual(['committed']);
    expect(await a.commit([commit('w', loadedByA.version, [row('w', 1, 9)])])).toEqual(['conflict']);
    expect((await a.ledger({ workspaceId: 'w', limit: 10 })).map((r) => r.amount)).toEqual([7]);
    await a.close();
    await b.close();
  });

  it('records - a lapsed hold is found through the index; holds that have not lapsed and settled records are not', async () => {
    const storage = new SqliteStorage({ filename: file() });
    const reply = (key: string, holdExpiresAt: number | null) => ({
      key,
      holdExpiresAt,
      value: { type: 'topup', grantId: key, amount: 1, expiresAt: null, createdAt: T0 } as const,
    });
    const records = [reply('a', T0 - 1), reply('b', T0), reply('c', T0 + 1), reply('d', null)];
    await storage.commit([
      { ...commit('w', 0), records },
      { ...commit('v', 0), records: [reply('e', T0 - 5)] },
    ]);
    const loaded = await storage.load({ workspaceId: 'w', keys: ['d', 'missing'], now: T0 });
    expect(loaded.records).toEqual([records[3]]);
    expect(loaded.lapsed.map((r) => r.key).sort()).toEqual(['a', 'b']);
    await storage.commit([{ ...commit('w', 1), records: [reply('a', null)] }]);
    expect((await storage.load({ workspaceId: 'w', keys: [], now: T0 })).lapsed.map((r) => r.key)).toEqual(['b']);
    await storage.close();
  });

  it('load - nextLapseAt is the earliest hold, read with the state through one search of the holds index', async () => {
    const db = new Database(file());
    const prepared: string[] = [];
    const spy: SqliteDatabase = {
      prepare: (sql) => {
        prepared.push(sql);
        return db.prepare(sql);
      },
      exec: (sql) => db.exec(sql),
      close: () => db.close(),
      get inTransaction() {
        return db.inTransaction;
      },
    };
    const storage = new SqliteStorage({ database: spy });
    const hold = (key: string, holdExpiresAt: number | null) => ({ key, holdExpiresAt, value: {} as StoredRecord['value'] });
    await storage.commit([{ ...commit('w', 0), records: [hold('a', T0 + 2), hold('b', T0 + 1), hold('c', null)] }, commit('v', 0)]);
    expect((await storage.load({ workspaceId: 'w', keys: [], now: T0 })).nextLapseAt).toBe(T0 + 1);
    expect((await storage.load({ workspaceId: 'v', keys: [], now: T0 })).nextLapseAt).toBeNull();
    expect((await storage.load({ workspaceId: 'none', keys: [], now: T0 })).nextLapseAt).toBeNull();
    const sql = prepared.filter((text) => text.includes('nextLapseAt'));
    expect(sql).toHaveLength(1);
    const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql[0]}`).all('w') as { detail: string }[]).map((step) => step.detail);
    expect(plan).toContainEqual(expect.stringMatching(/^SEARCH \w+ USING COVERING INDEX credits_records_holds \(workspace_id=\?/));
    expect(plan.filter((detail) => detail.startsWith('SCAN'))).toEqual([]);
    await storage.close();
    db.close();
  });

  it("two stores on one connection see each other's writes", async () => {
    const db = new Database(file());
    const clock = new TestClock(T0);
    const a = new CreditMeter({ storage: new SqliteStorage({ database: db }), clock: clock.now });
    const b = new CreditMeter({ storage: new SqliteStorage({ database: db }), clock: clock.now });
    await a.createWorkspace({ workspaceId: 'w', plan: 'free' });
    const hold = await a.reserve({ workspaceId: 'w', agentId: 'x', conversationId: 'c', model: 'gpt-4o' });
    expect((await b.release({ workspaceId: 'w', replyId: hold.replyId })).replayed).toBe(false);
    await expect(a.settle({ workspaceId: 'w', replyId: hold.replyId })).rejects.toThrow();
    expect((await b.getWorkspace('w')).balance.toNumber()).toBe(100);
    db.close();
  });
});

describe('SqliteStorage against MemoryStorage', () => {
  it('same answers, ledger and usage over a scripted month with top-ups, lapses, an upgrade and renewals', async () => {
    const transcripts: unknown[][] = [];
    for (const storage of [new MemoryStorage(), new SqliteStorage({ filename: file() })] as CreditStorage[]) {
      const log: unknown[] = [];
      transcripts.push(log);
      const clock = new TestClock('2026-01-31T10:00:00Z');
      let next = 0;
      const meter = new CreditMeter({ storage, clock: clock.now, holdTtlMs: 10 * MINUTE, generateReplyId: () => `r${++next}` });
      const note = (value: unknown) => log.push(JSON.parse(JSON.stringify(value)));
      const ask = (conversationId: string, model = 'gpt-4o-mini', agentId = 'a1') => ({ workspaceId: 'w', agentId, conversationId, model });
      note(await meter.createWorkspace({ workspaceId: 'w', plan: 'free' }));
      note(await meter.addCredits({ workspaceId: 'w', credits: 5, grantId: 'promo', expiresAt: '2026-02-01T00:00:00Z' }));
      note(await meter.addCredits({ workspaceId: 'w', credits: 40, grantId: 'pack' }));
      note(await meter.addCredits({ workspaceId: 'w', credits: 40, grantId: 'pack' }));
      const lapsing = await meter.reserve(ask('c1', 'gpt-4o'));
      for (let i = 0; i < 12; i++) {
        const hold = await meter.reserve(ask(`c${i % 3}`, i % 2 ? 'claude-haiku-4-5' : 'gpt-4o-mini', `a${i % 2}`));
        note(await meter.settle({ workspaceId: 'w', replyId: hold.replyId, usage: { inputTokens: i, outputTokens: 2 * i } }));
        clock.advance(3 * MINUTE);
      }
      note(await meter.getWorkspace('w'));
      await expect(meter.settle({ workspaceId: 'w', replyId: lapsing.replyId })).rejects.toThrow();
      note(await meter.changePlan({ workspaceId: 'w', plan: 'hobby' }));
      clock.set('2026-02-28T10:00:00Z');
      note(await meter.getWorkspace('w'));
      note(await meter.reply({ ...ask('c9', 'gpt-4o'), input: 'x' }).catch((error: unknown) => String(error)));
      clock.set('2026-04-01T00:00:00Z');
      note(await meter.getWorkspace('w'));
      const page1 = await meter.ledger({ workspaceId: 'w', limit: 5 });
      const page2 = await meter.ledger({ workspaceId: 'w', limit: 5, cursor: page1.nextCursor! });
      note([
        page1,
        page2,
        await meter.ledger({ workspaceId: 'w', agentId: 'a1', from: '2026-01-31T10:10:00Z', to: '2026-02-01T00:00:00Z' }),
      ]);
      for (const groupBy of ['agent', 'model', 'conversation'] as const) {
        note(await meter.usage({ workspaceId: 'w', from: '2026-01-01T00:00:00Z', to: '2026-05-01T00:00:00Z', groupBy, interval: 'day' }));
        note(await meter.usage({ workspaceId: 'w', from: '2026-01-31T10:05:00Z', to: '2026-01-31T10:20:00Z', groupBy }));
      }
      note(await storage.ledger({ workspaceId: 'w', limit: 1_000 }));
      await books(meter, storage, 'w');
      await storage.close();
    }
    expect(transcripts[1]).toEqual(transcripts[0]);
  });

  it('usage - the SQL sums equal the UsageAccumulator over the same rows, also before 1970 and across days', async () => {
    const storage = new SqliteStorage({ filename: file() });
    const DAY = 86_400_000;
    const ats = [-DAY - 1, -DAY, -1, 0, 1, DAY - 1, DAY, T0, T0 + 5, T0 + DAY];
    const rows = ats.map((at, i) => ({
      ...row('w', i + 1, -(i + 1) * 1_000, at),
      agentId: i % 3 ? `a${i % 2}` : null,
      model: `m${i % 4}`,
      kind: i === 4 ? ('grant' as const) : ('reply' as const),
    }));
    await storage.commit([commit('w', 0, rows)]);
    for (const groupBy of ['agent', 'model', 'conversation'] as const) {
      for (const byDay of [false, true]) {
        for (const [from, to] of [
          [-10 * DAY, T0 + 10 * DAY],
          [-DAY, DAY],
          [0, T0 + 1],
        ] as const) {
          const expected = new UsageAccumulator(groupBy, byDay);
          for (const r of rows) if (r.at >= from && r.at < to) expected.add(r);
          const sort = <T extends { key: string; day?: number }>(list: T[]) =>
            list.sort((x, y) => (x.day ?? 0) - (y.day ?? 0) || x.key.localeCompare(y.key));
          expect(sort(await storage.usage({ workspaceId: 'w', from, to, groupBy, byDay }))).toEqual(sort(expected.totals()));
        }
      }
    }
    await storage.close();
  });

  it('usage - a long window is summed in slices with the event loop free between them, to the same totals', async () => {
    const storage = new SqliteStorage({ filename: file() });
    const DAY = 86_400_000;
    // 30,000 rows over three days, then 12,000 at one instant: more than one slice holds.
    const ats = [...Array.from({ length: 30_000 }, (_, i) => T0 + i * 9_000), ...Array.from({ length: 12_000 }, () => T0 + 3 * DAY)];
    const rows = ats.map((at, i) => ({ ...row('w', i + 1, -(i % 7) - 1, at), agentId: `a${i % 5}`, model: `m${i % 3}` }));
    await storage.commit([commit('w', 0, rows)]);
    for (const byDay of [false, true]) {
      const expected = new UsageAccumulator('agent', byDay);
      for (const r of rows) expected.add(r);
      let turns = 0;
      let counting = true;
      const count = () => {
        if (!counting) return;
        turns += 1;
        setImmediate(count);
      };
      setImmediate(count);
      const totals = await storage.usage({ workspaceId: 'w', from: T0 - DAY, to: T0 + 4 * DAY, groupBy: 'agent', byDay });
      counting = false;
      const sort = <T extends { key: string; day?: number }>(list: T[]) =>
        list.sort((x, y) => (x.day ?? 0) - (y.day ?? 0) || x.key.localeCompare(y.key));
      expect(sort(totals)).toEqual(sort(expected.totals()));
      // Other calls of the process got turns while the window was summed.
      expect(turns).toBeGreaterThanOrEqual(3);
    }
    await storage.close();
  });
});

describe('SqliteStorage concurrency', () => {
  it('500 concurrent reserves from 5 meters against a balance for 100: exactly 100 win', async () => {
    const storage = new SqliteStorage({ filename: file() });
    const meters = Array.from({ length: 5 }, () => new CreditMeter({ storage }));
    // gpt-4o-mini costs 1 credit: a custom allotment of 100 credits covers exactly 100 replies.
    await meters[0]!.createWorkspace({ workspaceId: 'hot', plan: 'enterprise', allotment: 100 });
    const results = await Promise.allSettled(
      Array.from({ length: 500 }, (_, i) =>
        meters[i % 5]!.reserve({ workspaceId: 'hot', agentId: 'a', conversationId: `c${i}`, model: 'gpt-4o-mini' }),
      ),
    );
    const won = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    const lost = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
    expect(won).toHaveLength(100);
    expect(lost.every((reason) => CreditsError.is(reason) && reason.code === 'INSUFFICIENT_CREDITS')).toBe(true);
    await Promise.all(won.map((hold, i) => meters[i % 5]!.settle({ workspaceId: 'hot', replyId: hold.replyId })));
    const { summary, rows } = await books(meters[0]!, storage, 'hot');
    expect(summary.balance.toNumber()).toBe(0);
    expect(summary.held.toNumber()).toBe(0);
    const replyRows = rows.filter((r) => r.kind === 'reply');
    expect(new Set(replyRows.map((r) => r.replyId)).size).toBe(100);
    expect(rows.map((r) => r.seq)).toEqual(rows.map((_, i) => i + 1));
    await storage.close();
  });

  it('child processes charging one file never overspend', async () => {
    const filename = file();
    const setup = new SqliteStorage({ filename });
    await new CreditMeter({ storage: setup }).createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 300 });
    await setup.close();
    const children = await Promise.all([1, 2, 3].map(() => runCharger(filename, 250, 25).done));
    expect(children.reduce((sum, child) => sum + child.charged, 0)).toBe(300);
    expect(children.reduce((sum, child) => sum + child.refused, 0)).toBe(450);
    const check = new SqliteStorage({ filename });
    const { summary, rows } = await books(new CreditMeter({ storage: check }), check, 'shared');
    expect(summary.balance.toNumber()).toBe(0);
    expect(summary.held.toNumber()).toBe(0);
    expect(rows.filter((r) => r.kind === 'reply')).toHaveLength(300);
    await check.close();
  }, 120_000);

  it('a process killed mid-run leaves a consistent file, and its holds lapse back into the balance', async () => {
    const filename = file();
    const setup = new SqliteStorage({ filename });
    await new CreditMeter({ storage: setup }).createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 1_000_000 });
    const { child, done } = runCharger(filename, 1_000_000, 50);
    const failed = done.catch((error: unknown) => error);
    // Kill it once it has charged something, with holds in flight.
    for (let i = 0; i < 600 && (await setup.ledger({ workspaceId: 'shared', limit: 200 })).length < 150; i++)
      await new Promise((r) => setTimeout(r, 50));
    child.kill('SIGKILL');
    expect(String(await failed)).toMatch(/SIGKILL/);
    const clock = new TestClock(Date.now());
    const meter = new CreditMeter({ storage: setup, clock: clock.now });
    const before = await books(meter, setup, 'shared');
    expect(before.rows.filter((r) => r.kind === 'reply').length).toBeGreaterThan(100);
    clock.advance(16 * MINUTE); // past the default 15-minute hold TTL
    const after = await books(meter, setup, 'shared');
    expect(after.summary.held.toNumber()).toBe(0);
    expect(after.summary.balance.toNumber()).toBe(1_000_000 - after.rows.filter((r) => r.kind === 'reply').length);
    await setup.close();
  }, 120_000);
});
