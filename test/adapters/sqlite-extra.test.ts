import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteStorage } from '../../src/adapters/sqlite/index.js';
import { CreditMeter, CreditsError, MemoryStorage, StorageError, type CreditStorage, type LedgerRow } from '../../src/index.js';
import { ledgerRowInput } from '../../src/storage/storage-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'credits-sqlite-extra-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const file = () => join(dir, `${randomUUID()}.db`);
const T0 = Date.UTC(2026, 0, 15, 12);
const fixture = fileURLToPath(new URL('./fixtures/sqlite-charger.ts', import.meta.url));

function workspace(workspaceId: string, amount: number) {
  return {
    workspace: {
      workspaceId,
      plan: 'custom',
      allotment: amount,
      pendingPlan: null,
      pendingAllotment: null,
      anchor: T0,
      periodIndex: 0,
      periodStart: T0,
      periodEnd: T0 + 30 * 86_400_000,
      usedThisPeriod: 0,
      version: 0,
      createdAt: T0,
    },
    grant: { grantId: 'period:0', kind: 'allotment' as const, amount, remaining: amount, expiresAt: T0 + 30 * 86_400_000, createdAt: T0 },
    entry: { ...ledgerRowInput(workspaceId, 'grant', amount, T0), grantId: 'period:0', plan: 'custom' },
  };
}

function reserve(replyId: string, workspaceId: string, amount: number, now = T0, ttl = 60_000) {
  return {
    reply: { replyId, workspaceId, agentId: 'a', conversationId: 'c', model: 'm', route: 'credits' as const, amount, priceVersion: 'v1', createdAt: now, expiresAt: now + ttl },
    now,
    requireWorkspace: true,
  };
}

const sumLedger = (rows: LedgerRow[]) => rows.reduce((sum, row) => sum + row.amount, 0);

describe('SqliteStorage options and life cycle', () => {
  it('options - refuses a bad table prefix, both or neither of filename and database', () => {
    expect(() => new SqliteStorage({ filename: file(), tablePrefix: 'Bad-Prefix' })).toThrow(/tablePrefix/);
    expect(() => new SqliteStorage({ filename: file(), tablePrefix: '1x' })).toThrow(/tablePrefix/);
    expect(() => new SqliteStorage({} as never)).toThrow(/filename/);
    expect(() => new SqliteStorage({ filename: file(), synchronous: 'OFF' as never })).toThrow(/synchronous/);
  });

  it('migrate - is idempotent, versioned, and sets WAL and synchronous', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await storage.migrate();
    await storage.migrate();
    await storage.close();
    const again = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await again.migrate();
    await again.close();
    const db = new Database(filename);
    expect(db.prepare("SELECT value FROM bb_meta WHERE key = 'schema_version'").get()).toEqual({ value: '1' });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    const tables = db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all();
    expect(tables).toEqual([{ name: 'bb_alerts' }, { name: 'bb_grants' }, { name: 'bb_ledger' }, { name: 'bb_meta' }, { name: 'bb_replies' }, { name: 'bb_workspaces' }]);
    db.prepare("UPDATE bb_meta SET value = '99' WHERE key = 'schema_version'").run();
    db.close();
    const newer = new SqliteStorage({ filename, tablePrefix: 'bb_' });
    await expect(newer.migrate()).rejects.toThrow(/newer/);
    await newer.close();
  });

  it('close - closes only a database it opened; later calls fail with STORAGE_ERROR', async () => {
    const db = new Database(file());
    const storage = new SqliteStorage({ database: db });
    await storage.createWorkspace(workspace('w', 10));
    await storage.close();
    expect(db.open).toBe(true);
    expect(db.prepare('SELECT COUNT(*) AS n FROM credits_workspaces').get()).toEqual({ n: 1 });
    db.close();
    const error = await storage.getReply('x').catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
  });

  it('close - writes what was queued before closing', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename });
    await storage.createWorkspace(workspace('w', 1_000));
    const pending = Array.from({ length: 50 }, (_, i) => storage.reserve(reserve(`r${i}`, 'w', 10)));
    await storage.close();
    expect((await Promise.all(pending)).every((outcome) => outcome.status === 'reserved')).toBe(true);
    const reopened = new SqliteStorage({ filename });
    expect((await reopened.getWorkspace('w', T0))?.held).toBe(500);
    await reopened.close();
  });

  it('driver errors - become STORAGE_ERROR with the driver error as cause', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, busyTimeoutMs: 0 });
    await storage.migrate();
    const locker = new Database(filename);
    locker.exec('BEGIN IMMEDIATE');
    const error = await storage.createWorkspace(workspace('w', 10)).catch((caught: unknown) => caught);
    locker.exec('ROLLBACK');
    locker.close();
    expect(error).toBeInstanceOf(StorageError);
    expect((error as StorageError).adapter).toBe('sqlite');
    expect((error as Error).cause).toMatchObject({ code: 'SQLITE_BUSY' });
    expect((await storage.createWorkspace(workspace('w', 10))).status).toBe('created');
    await storage.close();
  });
});

describe('SqliteStorage group commit', () => {
  it('batch - a failing operation rolls back only itself and rejects only its own promise', async () => {
    const storage = new SqliteStorage({ filename: file() });
    await storage.createWorkspace(workspace('base', 1_000));
    const bad = workspace('bad', 100);
    // The workspace and grant rows are written before the ledger row fails (STRICT INTEGER).
    bad.entry.amount = 1.5;
    const results = await Promise.allSettled([
      storage.createWorkspace(workspace('a', 100)),
      storage.reserve(reserve('r1', 'base', 10)),
      storage.createWorkspace(bad),
      storage.reserve(reserve('r2', 'base', 10)),
      storage.reserve(reserve('r3', 'base', 2.5)),
      storage.createWorkspace(workspace('c', 100)),
    ]);
    expect(results.map((result) => result.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'rejected', 'fulfilled']);
    const failure = (results[2] as PromiseRejectedResult).reason as StorageError;
    expect(CreditsError.is(failure) && failure.code).toBe('STORAGE_ERROR');
    expect(await storage.getWorkspace('bad', T0)).toBeUndefined();
    expect(await storage.getReply('r3')).toBeUndefined();
    const base = await storage.getWorkspace('base', T0);
    expect(base).toMatchObject({ available: 980, held: 20 });
    expect((await storage.getWorkspace('a', T0))?.available).toBe(100);
    expect((await storage.getWorkspace('c', T0))?.available).toBe(100);
    expect(await storage.ledger({ workspaceId: 'bad', limit: 10 })).toEqual([]);
    await storage.close();
  });

  it('batch - the same reply id twice in one batch holds once', async () => {
    const storage = new SqliteStorage({ filename: file() });
    await storage.createWorkspace(workspace('w', 100));
    const [first, second] = await Promise.all([storage.reserve(reserve('same', 'w', 30)), storage.reserve(reserve('same', 'w', 30))]);
    expect(first.status).toBe('reserved');
    expect(second.status).toBe('exists');
    expect(await storage.getWorkspace('w', T0)).toMatchObject({ available: 70, held: 30 });
    await storage.close();
  });

  it('batch - a reserve of an existing id in a busy batch answers exists, and its neighbours commit', async () => {
    const storage = new SqliteStorage({ filename: file() });
    await storage.createWorkspace(workspace('w', 1_000));
    expect((await storage.reserve(reserve('old', 'w', 10))).status).toBe('reserved');
    expect((await storage.reserve(reserve('held', 'w', 20))).status).toBe('reserved');
    const results = await Promise.all([
      storage.reserve(reserve('new1', 'w', 30)),
      storage.reserve(reserve('old', 'w', 99)),
      storage.settle({ replyId: 'held', workspaceId: 'w', now: T0 + 1 }),
      storage.reserve(reserve('new2', 'w', 40)),
      storage.settle({ replyId: 'new1', workspaceId: 'w', now: T0 + 1 }),
    ]);
    // Operations of a batch run in order: new1, held in the same batch, settles.
    expect(results.map((result) => result.status)).toEqual(['reserved', 'exists', 'settled', 'reserved', 'settled']);
    expect(results[1]).toMatchObject({ reply: { replyId: 'old', amount: 10, status: 'held' } });
    const settledInBatch = results[4] as Extract<(typeof results)[4], { status: 'settled' }>;
    expect(await storage.getReply('new1')).toMatchObject({ status: 'settled', entryId: settledInBatch.entry.id, finishedAt: T0 + 1 });
    const state = (await storage.getWorkspace('w', T0 + 2))!;
    expect(state).toMatchObject({ available: 900, held: 50 });
    const rows = await storage.ledger({ workspaceId: 'w', limit: 100 });
    expect(rows.map((row) => row.id)).toEqual(rows.map((_, index) => String(index + 1)));
    expect(sumLedger(rows)).toBe(state.available + state.held);
    await storage.close();
  });

  it('batch - an operation that throws mid-way fails alone; the charges around it commit and the books balance', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename });
    await storage.createWorkspace(workspace('w', 1_000));
    for (const id of ['bad', 'r1', 'r2']) expect((await storage.reserve(reserve(id, 'w', 10))).status).toBe('reserved');
    const raw = new Database(filename);
    raw.prepare("UPDATE credits_replies SET allocations = 'not json' WHERE reply_id = 'bad'").run();
    raw.close();
    const results = await Promise.allSettled([
      storage.settle({ replyId: 'r1', workspaceId: 'w', now: T0 + 1 }),
      storage.reserve(reserve('r3', 'w', 50)),
      storage.release({ replyId: 'bad', workspaceId: 'w', now: T0 + 1 }),
      storage.release({ replyId: 'r2', workspaceId: 'w', now: T0 + 1 }),
      storage.settle({ replyId: 'r3', workspaceId: 'w', now: T0 + 1 }),
      storage.reserve(reserve('r4', 'w', 5)),
    ]);
    expect(results.map((result) => result.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'fulfilled', 'fulfilled']);
    expect((results[2] as PromiseRejectedResult).reason).toBeInstanceOf(StorageError);
    expect((results[4] as PromiseFulfilledResult<{ status: string }>).value.status).toBe('settled');
    expect((await storage.getReply('bad'))?.status).toBe('held');
    expect((await storage.getReply('r1'))?.status).toBe('settled');
    expect((await storage.getReply('r2'))?.status).toBe('released');
    const state = (await storage.getWorkspace('w', T0 + 2))!;
    // held: bad 10 + r4 5; charged: r1 10 + r3 50; r2 released.
    expect(state).toMatchObject({ available: 925, held: 15 });
    const rows = await storage.ledger({ workspaceId: 'w', limit: 100 });
    expect(rows.filter((row) => row.kind === 'reply').map((row) => row.replyId)).toEqual(['r1', 'r3']);
    expect(sumLedger(rows)).toBe(state.available + state.held);
    await storage.close();
  });

  it('cache - a hold changed by another connection between batches is read again', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename });
    await storage.createWorkspace(workspace('w', 100));
    expect((await storage.reserve(reserve('r1', 'w', 10))).status).toBe('reserved');
    const raw = new Database(filename);
    raw.prepare("UPDATE credits_replies SET status = 'released', finished_at = ?, allocations = NULL WHERE reply_id = 'r1'").run(T0 + 1);
    raw.close();
    expect((await storage.settle({ replyId: 'r1', workspaceId: 'w', now: T0 + 2 })).status).toBe('released');
    expect(await storage.ledger({ workspaceId: 'w', limit: 10 })).toHaveLength(1);
    await storage.close();
  });

  it('cache - two stores on one connection see each other\'s writes', async () => {
    const db = new Database(file());
    const a = new SqliteStorage({ database: db });
    const b = new SqliteStorage({ database: db });
    await a.createWorkspace(workspace('w', 100));
    expect((await a.reserve(reserve('r1', 'w', 10))).status).toBe('reserved');
    expect((await b.release({ replyId: 'r1', workspaceId: 'w', now: T0 + 1 })).status).toBe('released');
    expect((await a.settle({ replyId: 'r1', workspaceId: 'w', now: T0 + 2 })).status).toBe('released');
    expect((await b.reserve(reserve('r2', 'w', 10))).status).toBe('reserved');
    expect((await a.reserve(reserve('r2', 'w', 10))).status).toBe('exists');
    expect(await a.getWorkspace('w', T0 + 3)).toMatchObject({ available: 90, held: 10 });
    await a.close();
    await b.close();
    db.close();
  });

  it('batch - a busy database rejects every operation of the batch, and the next batch succeeds', async () => {
    const filename = file();
    const storage = new SqliteStorage({ filename, busyTimeoutMs: 0 });
    await storage.createWorkspace(workspace('w', 100));
    const locker = new Database(filename);
    locker.exec('BEGIN IMMEDIATE');
    const results = await Promise.allSettled([storage.reserve(reserve('x1', 'w', 10)), storage.reserve(reserve('x2', 'w', 10))]);
    locker.exec('ROLLBACK');
    locker.close();
    expect(results.map((result) => result.status)).toEqual(['rejected', 'rejected']);
    expect(await storage.getReply('x1')).toBeUndefined();
    expect((await storage.reserve(reserve('x1', 'w', 10))).status).toBe('reserved');
    await storage.close();
  });
});

describe('SqliteStorage against MemoryStorage', () => {
  it('same outcomes and ledger rows over a scripted sequence with lapses, expiries and renewals', async () => {
    const stores: CreditStorage[] = [new MemoryStorage(), new SqliteStorage({ filename: file() })];
    const transcripts: unknown[][] = [[], []];
    for (const [index, storage] of stores.entries()) {
      const log = (value: unknown) => transcripts[index]!.push(value);
      log(await storage.createWorkspace(workspace('w', 100)));
      log(await storage.grant({ workspaceId: 'w', grant: { grantId: 'topup:t1', kind: 'topup', amount: 50, remaining: 50, expiresAt: T0 + 5_000, createdAt: T0 }, entry: { ...workspace('w', 50).entry, kind: 'topup', grantId: 'topup:t1', plan: null }, now: T0 }));
      log(await storage.grant({ workspaceId: 'w', grant: { grantId: 'topup:t2', kind: 'topup', amount: 40, remaining: 40, expiresAt: null, createdAt: T0 }, entry: { ...workspace('w', 40).entry, kind: 'topup', grantId: 'topup:t2', plan: null }, now: T0 }));
      log(await storage.reserve(reserve('r1', 'w', 60, T0, 10_000)));
      log(await storage.reserve(reserve('r2', 'w', 70, T0 + 1, 1_000)));
      log(await storage.reserve(reserve('r3', 'w', 100, T0 + 2)));
      log(await storage.settle({ replyId: 'r1', workspaceId: 'w', now: T0 + 100 }));
      log(await storage.settle({ replyId: 'r1', workspaceId: 'w', now: T0 + 200 }));
      log(await storage.getWorkspace('w', T0 + 2_000));
      log(await storage.settle({ replyId: 'r2', workspaceId: 'w', now: T0 + 2_001 }));
      log(await storage.reserve(reserve('r4', 'w', 20, T0 + 3_000, 100_000)));
      log(await storage.getWorkspace('w', T0 + 6_000));
      log(await storage.release({ replyId: 'r4', workspaceId: 'w', now: T0 + 7_000 }));
      log(await storage.release({ replyId: 'r4', workspaceId: 'w', now: T0 + 7_001 }));
      log(await storage.claimAlert({ workspaceId: 'w', periodIndex: 0, threshold: 0.8 }));
      log(await storage.claimAlert({ workspaceId: 'w', periodIndex: 0, threshold: 0.8 }));
      const state = (await storage.getWorkspace('w', T0 + 8_000))!;
      log(await storage.changePlan({ workspaceId: 'w', expectedVersion: 0, workspace: { ...state.workspace, plan: 'big', allotment: 200, version: 1 }, allotmentIncrease: 100, entry: { ...workspace('w', 100).entry, kind: 'plan_change', grantId: null, plan: 'big', at: T0 + 8_000 }, now: T0 + 8_000 }));
      log(await storage.reserve(reserve('r5', 'w', 30, T0 + 9_000)));
      const end = state.workspace.periodEnd;
      log(await storage.reserve(reserve('r6', 'w', 1, end)));
      const next = { ...state.workspace, plan: 'big', allotment: 200, periodIndex: 1, periodStart: end, periodEnd: end + 30 * 86_400_000, usedThisPeriod: 0, version: 2 };
      log(await storage.renew({ workspaceId: 'w', expectedVersion: 2, workspace: next, rolloverCap: 0, grant: { grantId: 'period:1', kind: 'allotment', amount: 200, remaining: 200, expiresAt: next.periodEnd, createdAt: end }, entry: { ...workspace('w', 200).entry, grantId: 'period:1', at: end }, now: end }));
      log(await storage.renew({ workspaceId: 'w', expectedVersion: 1, workspace: next, rolloverCap: 50, grant: { grantId: 'period:1', kind: 'allotment', amount: 200, remaining: 200, expiresAt: next.periodEnd, createdAt: end }, entry: { ...workspace('w', 200).entry, grantId: 'period:1', at: end }, now: end + 5 }));
      log(await storage.ledger({ workspaceId: 'w', limit: 100 }));
      log(await storage.ledger({ workspaceId: 'w', limit: 2, afterId: '3', from: T0 + 1 }));
      log(await storage.usage({ workspaceId: 'w', from: T0, to: end + 86_400_000, groupBy: 'model', byDay: true }));
      log(await storage.getReply('r5'));
      await storage.close();
    }
    expect(transcripts[1]).toEqual(transcripts[0]);
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
    const won = results.filter((result) => result.status === 'fulfilled').map((result) => (result as PromiseFulfilledResult<{ replyId: string }>).value);
    const lost = results.filter((result) => result.status === 'rejected') as PromiseRejectedResult[];
    expect(won).toHaveLength(100);
    expect(lost.every((result) => CreditsError.is(result.reason) && result.reason.code === 'INSUFFICIENT_CREDITS')).toBe(true);
    await Promise.all(won.map((hold, i) => meters[i % 5]!.settle({ workspaceId: 'hot', replyId: hold.replyId })));
    const summary = await meters[0]!.getWorkspace('hot');
    expect(summary.balance.toNumber()).toBe(0);
    expect(summary.held.toNumber()).toBe(0);
    const rows = await storage.ledger({ workspaceId: 'hot', limit: 1_000 });
    const replyRows = rows.filter((row) => row.kind === 'reply');
    expect(replyRows).toHaveLength(100);
    expect(new Set(replyRows.map((row) => row.replyId)).size).toBe(100);
    expect(sumLedger(rows)).toBe(0);
    await storage.close();
  });

  it('child processes charging one file never overspend', async () => {
    const filename = file();
    const setup = new SqliteStorage({ filename });
    const meter = new CreditMeter({ storage: setup });
    await meter.createWorkspace({ workspaceId: 'shared', plan: 'enterprise', allotment: 300 });
    await setup.close();
    const run = () =>
      new Promise<{ charged: number; refused: number }>((resolve, reject) => {
        const child = spawn(process.execPath, ['--import', 'tsx', fixture, filename, 'shared', '250', '25'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
        child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
        child.on('error', reject);
        child.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out) as { charged: number; refused: number }) : reject(new Error(`child exited ${code}: ${err}`))));
      });
    const children = await Promise.all([run(), run(), run()]);
    const charged = children.reduce((sum, child) => sum + child.charged, 0);
    expect(charged).toBe(300);
    expect(children.reduce((sum, child) => sum + child.refused, 0)).toBe(450);
    const check = new SqliteStorage({ filename });
    const state = (await check.getWorkspace('shared', Date.now()))!;
    expect(state.available).toBe(0);
    expect(state.held).toBe(0);
    const rows = await check.ledger({ workspaceId: 'shared', limit: 10_000 });
    expect(sumLedger(rows)).toBe(state.available + state.held);
    expect(rows.filter((row) => row.kind === 'reply')).toHaveLength(300);
    await check.close();
    expect(existsSync(filename)).toBe(true);
  }, 120_000);
});
