import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import {
  CreditMeter,
  CreditsError,
  MemoryStorage,
  StorageError,
  type CreditStorage,
  type GrantRecord,
  type LedgerRowInput,
  type WorkspaceRecord,
} from '../../src/index.js';
import { startRedis } from '../servers/redis-server.js';
import { ledgerRowInput } from '../../src/storage/storage-helpers.js';

const url = inject('redisUrl');
const DAY = 86_400_000;
const T0 = Date.parse('2026-03-01T00:00:00Z');
const opened: RedisStorage[] = [];

function store(options: { batching?: boolean } = {}): RedisStorage {
  const storage = new RedisStorage({ url, keyPrefix: `extra:${randomUUID()}:`, ...options });
  opened.push(storage);
  return storage;
}

afterAll(async () => {
  await Promise.all(opened.map((storage) => storage.close()));
});

function workspace(id: string, at: number, allotment: number, periodEnd = at + 30 * DAY): WorkspaceRecord {
  return {
    workspaceId: id,
    plan: 'enterprise',
    allotment,
    pendingPlan: null,
    pendingAllotment: null,
    anchor: at,
    periodIndex: 0,
    periodStart: at,
    periodEnd,
    usedThisPeriod: 0,
    version: 0,
    createdAt: at,
  };
}

function allotment(index: number, amount: number, expiresAt: number, at: number): GrantRecord {
  return { grantId: `period:${index}`, kind: 'allotment', amount, remaining: amount, expiresAt, createdAt: at };
}

function entry(workspaceId: string, kind: LedgerRowInput['kind'], amount: number, at: number, grantId: string | null): LedgerRowInput {
  return { ...ledgerRowInput(workspaceId, kind, amount, at), grantId, plan: kind === 'grant' ? 'enterprise' : null };
}

async function create(storage: CreditStorage, id: string, at: number, amount: number, periodEnd = at + 30 * DAY): Promise<void> {
  const ws = workspace(id, at, amount, periodEnd);
  const outcome = await storage.createWorkspace({
    workspace: ws,
    grant: allotment(0, amount, periodEnd, at),
    entry: entry(id, 'grant', amount, at, 'period:0'),
  });
  expect(outcome.status).toBe('created');
}

describe('redis - construction and life cycle', () => {
  it('client - accepts an ioredis client and leaves it open on close', async () => {
    const client = new Redis(url);
    const storage = new RedisStorage({ client, keyPrefix: `extra:${randomUUID()}:` });
    await storage.migrate();
    await storage.migrate();
    await create(storage, 'ws', T0, 5_000_000);
    expect((await storage.getWorkspace('ws', T0 + 1))?.available).toBe(5_000_000);
    await storage.close();
    expect(await client.ping()).toBe('PONG');
    await client.quit();
  });

  it('migrate - writes the schema version under the prefix', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const storage = new RedisStorage({ url, keyPrefix: prefix });
    await storage.migrate();
    const client = new Redis(url);
    expect(await client.get(`${prefix}schema`)).toBe('2');
    await client.quit();
    await storage.close();
  });

  it('migrate - refuses a prefix written by the older layout (schema 1)', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const client = new Redis(url);
    await client.set(`${prefix}schema`, '1');
    const storage = new RedisStorage({ url, keyPrefix: prefix });
    await expect(storage.migrate()).rejects.toMatchObject({ code: 'STORAGE_ERROR', message: expect.stringMatching(/older layout/) });
    await expect(storage.getReply('r1')).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect(await client.get(`${prefix}schema`)).toBe('1');
    await client.quit();
    await storage.close();
  });

  it('evalsha - re-sends a script the server lost (NOSCRIPT)', async () => {
    const storage = store();
    await create(storage, 'ws', T0, 5_000_000);
    const client = new Redis(url);
    await client.script('FLUSH');
    await client.quit();
    expect((await storage.getWorkspace('ws', T0 + 1))?.available).toBe(5_000_000);
  });

  it('errors - a failing server surfaces as STORAGE_ERROR with the driver error as cause', async () => {
    const storage = new RedisStorage({ url: 'redis://127.0.0.1:1' });
    const error = await storage.getWorkspace('ws', T0).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect(CreditsError.is(error) && error.code).toBe('STORAGE_ERROR');
    expect((error as StorageError).cause).toBeInstanceOf(Error);
    expect((error as StorageError).message).toContain('[redis]');
    await storage.close();
  });

  it('close - a closed store refuses further calls', async () => {
    const storage = new RedisStorage({ url, keyPrefix: `extra:${randomUUID()}:` });
    await storage.migrate();
    await storage.close();
    await expect(storage.getWorkspace('ws', T0)).rejects.toBeInstanceOf(StorageError);
  });
});

describe('redis - concurrency', () => {
  it('reserve - 500 concurrent reserves from 5 meters against a balance for 100: exactly 100 win', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const meters = Array.from({ length: 5 }, () => {
      const storage = new RedisStorage({ url, keyPrefix: prefix });
      opened.push(storage);
      return new CreditMeter({ storage });
    });
    const [first] = meters;
    await first!.createWorkspace({ workspaceId: 'race', plan: 'enterprise', allotment: 100 });
    const results = await Promise.allSettled(
      Array.from({ length: 500 }, (_, i) =>
        meters[i % 5]!.reserve({ workspaceId: 'race', agentId: `agent-${i % 3}`, conversationId: `c-${i}`, model: 'gpt-4o-mini' }),
      ),
    );
    const won = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    const lost = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
    expect(won).toHaveLength(100);
    expect(lost.every((error) => CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS')).toBe(true);
    await Promise.all(won.map((hold, i) => meters[i % 5]!.settle({ workspaceId: 'race', replyId: hold.replyId })));
    // Settling twice charges once.
    await Promise.all(won.map((hold, i) => meters[(i + 1) % 5]!.settle({ workspaceId: 'race', replyId: hold.replyId })));
    const summary = await first!.getWorkspace('race');
    expect(Number(summary.balance)).toBe(0);
    expect(Number(summary.held)).toBe(0);
    const { entries } = await first!.ledger({ workspaceId: 'race', limit: 1000 });
    const replies = entries.filter((row) => row.kind === 'reply');
    expect(replies).toHaveLength(100);
    expect(new Set(replies.map((row) => row.replyId)).size).toBe(100);
    expect(entries.reduce((sum, row) => sum + Number(row.credits), 0)).toBe(0);
  });
});

// ─── the Redis store against the memory store, on random operation sequences ───

type Op =
  | { kind: 'reserve'; reply: number; ws: number; amount: number; ttl: number; require: boolean; agent: number; conv: number }
  | { kind: 'settle' | 'release'; reply: number; ws: number }
  | { kind: 'grant'; id: number; ws: number; amount: number; expires: number | null }
  | { kind: 'get'; ws: number }
  | { kind: 'renew'; ws: number; cap: number; stale: boolean }
  | { kind: 'change'; ws: number; increase: number }
  | { kind: 'usage'; ws: number; from: number; span: number; group: 0 | 1 | 2; byDay: boolean }
  | { kind: 'ledger'; ws: number; from: number | null; span: number | null; agent: number | null; after: number | null; limit: number };

const WS = ['w0', 'w1', 'w2'];
const opArb: fc.Arbitrary<{ op: Op; step: number }> = fc.record({
  step: fc.integer({ min: 1, max: 8 * 3_600_000 }),
  op: fc.oneof(
    { weight: 6, arbitrary: fc.record({ kind: fc.constant('reserve' as const), reply: fc.nat(30), ws: fc.nat(2), amount: fc.integer({ min: 0, max: 3_000_000 }), ttl: fc.integer({ min: 1, max: 6 * 3_600_000 }), require: fc.boolean(), agent: fc.nat(2), conv: fc.nat(3) }) },
    { weight: 5, arbitrary: fc.record({ kind: fc.constantFrom('settle' as const, 'release' as const), reply: fc.nat(30), ws: fc.nat(2) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('grant' as const), id: fc.nat(4), ws: fc.nat(2), amount: fc.integer({ min: 1, max: 5_000_000 }), expires: fc.option(fc.integer({ min: 1, max: 3 * DAY })) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('get' as const), ws: fc.nat(2) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('renew' as const), ws: fc.nat(2), cap: fc.integer({ min: 0, max: 4_000_000 }), stale: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('change' as const), ws: fc.nat(2), increase: fc.integer({ min: 0, max: 2_000_000 }) }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('usage' as const), ws: fc.nat(2), from: fc.integer({ min: -DAY, max: 6 * DAY }), span: fc.integer({ min: 0, max: 5 * DAY }), group: fc.constantFrom(0 as const, 1 as const, 2 as const), byDay: fc.boolean() }) },
    { weight: 1, arbitrary: fc.record({ kind: fc.constant('ledger' as const), ws: fc.nat(2), from: fc.option(fc.integer({ min: 0, max: 5 * DAY })), span: fc.option(fc.integer({ min: 0, max: 3 * DAY })), agent: fc.option(fc.nat(2)), after: fc.option(fc.nat(60)), limit: fc.integer({ min: 1, max: 40 }) }) },
  ),
});

async function apply(storage: CreditStorage, op: Op, now: number): Promise<unknown> {
  const ws = WS[op.ws]!;
  switch (op.kind) {
    case 'reserve':
      return storage.reserve({
        reply: {
          replyId: `r${op.reply}`,
          workspaceId: ws,
          agentId: `agent${op.agent}`,
          conversationId: `conv${op.conv}`,
          model: op.amount % 2 ? 'gpt-4o' : 'gpt-4o-mini',
          route: op.amount === 0 ? 'byo' : 'credits',
          amount: op.amount,
          priceVersion: 'v1',
          createdAt: now,
          // One TTL per reply id keeps hold expiry in reserve order, as the memory store's queue assumes.
          expiresAt: now + 2 * 3_600_000,
        },
        now,
        requireWorkspace: op.require,
      });
    case 'settle':
      return storage.settle({ replyId: `r${op.reply}`, workspaceId: ws, now });
    case 'release':
      return storage.release({ replyId: `r${op.reply}`, workspaceId: ws, now });
    case 'grant':
      return storage.grant({
        workspaceId: ws,
        grant: { grantId: `topup:g${op.id}`, kind: 'topup', amount: op.amount, remaining: op.amount, expiresAt: op.expires === null ? null : now + op.expires, createdAt: now },
        entry: entry(ws, 'topup', op.amount, now, `topup:g${op.id}`),
        now,
      });
    case 'get':
      return storage.getWorkspace(ws, now);
    case 'renew': {
      const state = await storage.getWorkspace(ws, now);
      if (!state) return storage.renew({ workspaceId: ws, expectedVersion: 0, workspace: workspace(ws, now, 1), rolloverCap: 0, grant: allotment(1, 1, now + DAY, now), entry: entry(ws, 'grant', 1, now, 'period:1'), now });
      const current = state.workspace;
      const index = current.periodIndex + 1;
      const next: WorkspaceRecord = { ...current, periodIndex: index, periodStart: current.periodEnd, periodEnd: current.periodEnd + DAY, usedThisPeriod: 0, version: current.version + 1 };
      return storage.renew({
        workspaceId: ws,
        expectedVersion: op.stale ? current.version - 1 : current.version,
        workspace: next,
        rolloverCap: op.cap,
        grant: allotment(index, current.allotment, next.periodEnd, now),
        entry: entry(ws, 'grant', current.allotment, now, `period:${index}`),
        now,
      });
    }
    case 'change': {
      const state = await storage.getWorkspace(ws, now);
      const current = state?.workspace ?? workspace(ws, now, 0);
      return storage.changePlan({
        workspaceId: ws,
        expectedVersion: current.version,
        workspace: { ...current, allotment: current.allotment + op.increase, plan: `plan${op.increase % 3}`, version: current.version + 1 },
        allotmentIncrease: op.increase,
        entry: { ...entry(ws, 'plan_change', op.increase, now, null), plan: `plan${op.increase % 3}` },
        now,
      });
    }
    case 'usage':
      return storage.usage({ workspaceId: ws, from: T0 + op.from, to: T0 + op.from + op.span, groupBy: (['agent', 'model', 'conversation'] as const)[op.group], byDay: op.byDay });
    case 'ledger':
      return storage.ledger({
        workspaceId: ws,
        limit: op.limit,
        ...(op.from === null ? {} : { from: T0 + op.from }),
        ...(op.span === null ? {} : { to: T0 + (op.from ?? 0) + op.span }),
        ...(op.agent === null ? {} : { agentId: `agent${op.agent}` }),
        ...(op.after === null ? {} : { afterId: String(op.after) }),
      });
  }
}

describe('redis - behaves as the memory store', () => {
  it('random operation sequences - same outcomes, rows, usage and ledger pages', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 60 }), async (steps) => {
        const memory = new MemoryStorage();
        const redis = store();
        for (const [i, id] of [0, 1].entries()) {
          await create(memory, WS[id]!, T0, 4_000_000 + i, T0 + 2 * DAY);
          await create(redis, WS[id]!, T0, 4_000_000 + i, T0 + 2 * DAY);
        }
        let now = T0;
        for (const { op, step } of steps) {
          now += step;
          const expected = await apply(memory, op, now);
          const actual = await apply(redis, op, now);
          expect(actual, `${op.kind} at step ${steps.indexOf(steps.find((s) => s.op === op)!)}`).toEqual(expected);
        }
        for (const ws of WS) {
          expect(await redis.ledger({ workspaceId: ws, limit: 10_000 })).toEqual(await memory.ledger({ workspaceId: ws, limit: 10_000 }));
          for (const groupBy of ['agent', 'model', 'conversation'] as const) {
            const query = { workspaceId: ws, from: T0 - DAY, to: now + DAY, groupBy, byDay: true };
            expect(await redis.usage(query)).toEqual(await memory.usage(query));
          }
        }
        for (let r = 0; r <= 30; r++) expect(await redis.getReply(`r${r}`)).toEqual(await memory.getReply(`r${r}`));
      }),
      { numRuns: 40 },
    );
  });

  it('batched - reserves, settles and releases sent in one tick: the same outcomes as one by one', async () => {
    const isHot = (op: Op) => op.kind === 'reserve' || op.kind === 'settle' || op.kind === 'release';
    // One workspace for the hot calls: calls on different workspaces in one tick are concurrent
    // (separate batches), so their order against each other is not defined.
    const hotArb = opArb.filter(({ op }) => isHot(op)).map(({ op }) => ({ ...op, ws: 0 }) as Op);
    const tickArb = fc.record({
      step: fc.integer({ min: 1, max: 8 * 3_600_000 }),
      hot: fc.array(hotArb, { minLength: 1, maxLength: 16 }),
      other: fc.option(opArb.filter(({ op }) => !isHot(op)).map(({ op }) => op)),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(tickArb, { minLength: 1, maxLength: 12 }), async (ticks) => {
        const memory = new MemoryStorage();
        const redis = store();
        for (const [i, id] of [0, 1].entries()) {
          await create(memory, WS[id]!, T0, 4_000_000 + i, T0 + 2 * DAY);
          await create(redis, WS[id]!, T0, 4_000_000 + i, T0 + 2 * DAY);
        }
        let now = T0;
        for (const [t, tick] of ticks.entries()) {
          now += tick.step;
          // Each call its own instant (one per millisecond), so holds lapse in reserve order in
          // both stores: holds that lapse at the same instant are swept by reply id in Redis, in
          // reserve order in the memory store.
          const expected: unknown[] = [];
          for (const [k, op] of tick.hot.entries()) expected.push(await apply(memory, op, now + k));
          const at = now;
          expect(await Promise.all(tick.hot.map((op, k) => apply(redis, op, at + k))), `tick ${t}`).toEqual(expected);
          now += tick.hot.length;
          if (tick.other !== null) expect(await apply(redis, tick.other, now), `tick ${t} ${tick.other.kind}`).toEqual(await apply(memory, tick.other, now));
        }
        for (const ws of WS) {
          expect(await redis.getWorkspace(ws, now)).toEqual(await memory.getWorkspace(ws, now));
          expect(await redis.ledger({ workspaceId: ws, limit: 10_000 })).toEqual(await memory.ledger({ workspaceId: ws, limit: 10_000 }));
          for (const groupBy of ['agent', 'model', 'conversation'] as const) {
            const query = { workspaceId: ws, from: T0 - DAY, to: now + DAY, groupBy, byDay: true };
            expect(await redis.usage(query)).toEqual(await memory.usage(query));
          }
        }
        for (let r = 0; r <= 30; r++) expect(await redis.getReply(`r${r}`)).toEqual(await memory.getReply(`r${r}`));
      }),
      { numRuns: 40 },
    );
  });

  it('ledger and usage - a clock that went back: same pages and sums as the memory store', async () => {
    const memory = new MemoryStorage();
    const redis = store();
    const times = [5, 3.2, 6.5, 1.5, 4.75, 4.1, 7.9].map((day) => T0 + day * DAY);
    for (const storage of [memory, redis] as CreditStorage[]) {
      await create(storage, 'ws', T0, 50_000_000, T0 + 30 * DAY);
      for (const [i, at] of times.entries()) {
        const reply = { replyId: `o${i}`, workspaceId: 'ws', agentId: `a${i % 2}`, conversationId: `c${i % 3}`, model: 'm', route: 'credits' as const, amount: (i + 1) * 1_000_000, priceVersion: 'v', createdAt: at, expiresAt: at + DAY };
        await storage.reserve({ reply, now: at, requireWorkspace: true });
        await storage.settle({ replyId: `o${i}`, workspaceId: 'ws', now: at });
      }
    }
    const windows = [[0, 10], [1.5, 6.5], [3.5, 5], [4.2, 4.8], [2, 8]] as const;
    for (const [from, to] of windows) {
      for (const byDay of [false, true]) {
        const query = { workspaceId: 'ws', from: T0 + from * DAY, to: T0 + to * DAY, groupBy: 'agent' as const, byDay };
        expect(await redis.usage(query)).toEqual(await memory.usage(query));
      }
      const page = { workspaceId: 'ws', from: T0 + from * DAY, to: T0 + to * DAY, limit: 3 };
      expect(await redis.ledger(page)).toEqual(await memory.ledger(page));
      expect(await redis.ledger({ ...page, afterId: '3', agentId: 'a1' })).toEqual(await memory.ledger({ ...page, afterId: '3', agentId: 'a1' }));
    }
  });

  it('batching off - the same outcomes, one script call per operation', async () => {
    const storage = store({ batching: false });
    await create(storage, 'ws', T0, 3_000_000);
    const holds = await Promise.all(
      [0, 1, 2, 3].map((i) =>
        storage.reserve({
          reply: { replyId: `b${i}`, workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'm', route: 'credits', amount: 1_000_000, priceVersion: 'v', createdAt: T0 + 1, expiresAt: T0 + 1000 },
          now: T0 + 1,
          requireWorkspace: true,
        }),
      ),
    );
    expect(holds.map((hold) => hold.status).sort()).toEqual(['insufficient', 'reserved', 'reserved', 'reserved']);
  });
});

describe('redis - durability', () => {
  it('restart - settled charges survive a server restart (AOF)', async () => {
    const server = await startRedis();
    try {
      const storage = new RedisStorage({ url: server.url });
      await create(storage, 'ws', T0, 10_000_000);
      for (let i = 0; i < 5; i++) {
        const reply = { replyId: `d${i}`, workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'gpt-4o', route: 'credits' as const, amount: 1_000_000, priceVersion: 'v', createdAt: T0 + i, expiresAt: T0 + 60_000 };
        expect((await storage.reserve({ reply, now: T0 + i, requireWorkspace: true })).status).toBe('reserved');
        expect((await storage.settle({ replyId: `d${i}`, workspaceId: 'ws', now: T0 + i })).status).toBe('settled');
      }
      const before = await storage.ledger({ workspaceId: 'ws', limit: 100 });
      await storage.close();
      await server.restart();
      const after = new RedisStorage({ url: server.url });
      expect(await after.ledger({ workspaceId: 'ws', limit: 100 })).toEqual(before);
      const state = await after.getWorkspace('ws', T0 + 10);
      expect(state?.available).toBe(5_000_000);
      expect(state?.workspace.usedThisPeriod).toBe(5_000_000);
      expect((await after.getReply('d3'))?.status).toBe('settled');
      // Scripts are gone from the restarted server's cache; the next call re-sends them.
      const replay = await after.settle({ replyId: 'd0', workspaceId: 'ws', now: T0 + 20 });
      expect(replay.status === 'settled' && replay.replayed).toBe(true);
      await after.close();
    } finally {
      await server.stop();
    }
  });
});

describe('redis - faults', () => {
  it('connection killed mid-load - re-sent calls never charge twice, failures are STORAGE_ERROR, the store recovers', async () => {
    const client = new Redis(url, { maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    let reconnects = 0;
    client.on('reconnecting', () => reconnects++);
    const admin = new Redis(url);
    const storage = new RedisStorage({ client, keyPrefix: `fault:${randomUUID()}:` });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'fault', plan: 'enterprise', allotment: 1_000_000 });
      let stop = false;
      let charged = 0;
      const errors: unknown[] = [];
      const workers = Array.from({ length: 20 }, async () => {
        while (!stop) {
          try {
            const hold = await meter.reserve({ workspaceId: 'fault', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
            await meter.settle({ workspaceId: 'fault', replyId: hold.replyId });
            charged++;
          } catch (error) {
            errors.push(error);
          }
        }
      });
      for (let i = 0; i < 5; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        // Only this store's connection: other test files share the server.
        const id = await client.client('ID').catch(() => undefined);
        if (id !== undefined) await admin.client('KILL', 'ID', String(id)).catch(() => undefined);
      }
      stop = true;
      await Promise.all(workers);
      // ioredis reconnects and re-sends what was in flight: a re-sent script is a replay.
      expect(reconnects).toBeGreaterThan(0);
      for (const error of errors) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
      expect(charged).toBeGreaterThan(0);
      // The store still works, and the money adds up: ledger = balance + held, one row per charge.
      const hold = await meter.reserve({ workspaceId: 'fault', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' });
      await meter.settle({ workspaceId: 'fault', replyId: hold.replyId });
      const rows = [];
      let cursor: string | undefined;
      do {
        const page = await meter.ledger({ workspaceId: 'fault', limit: 1000, ...(cursor !== undefined && { cursor }) });
        rows.push(...page.entries);
        cursor = page.nextCursor;
      } while (cursor);
      const ws = await meter.getWorkspace('fault');
      const sum = rows.reduce((total, row) => total + Math.round(Number(row.credits) * 1e6), 0);
      expect(sum).toBe(Math.round(Number(ws.balance) * 1e6) + Math.round(Number(ws.held) * 1e6));
      const replyRows = rows.filter((row) => row.kind === 'reply');
      // A charge whose answer was lost with the connection is still one row, never two.
      expect(new Set(replyRows.map((row) => row.replyId)).size).toBe(replyRows.length);
      expect(replyRows.length).toBeGreaterThanOrEqual(charged + 1);
      expect(Number(ws.balance)).toBeGreaterThanOrEqual(0);
    } finally {
      await storage.close();
      client.disconnect();
      admin.disconnect();
    }
  });
});

describe('redis - usage on a large ledger', () => {
  it('usage - a million-row ledger answers a many-day window from rollups, quickly', async () => {
    const server = await startRedis();
    const client = new Redis(server.url);
    try {
      const storage = new RedisStorage({ client, keyPrefix: 'big:' });
      await storage.migrate();
      const days = 100;
      const perDay = 10_000;
      // Writes exactly what the settle script writes for each reply row (ledger row, time
      // index, per-day rollups), generated on the server so the test does not ship 1M rows.
      const loader = `
        local base, seq, day0, days, per_day = ARGV[1], KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
        local function fmt(n) return string.format('%.0f', n) end
        local id = tonumber(redis.call('GET', seq) or '0')
        for d = 0, days - 1 do
          local day = day0 + d * 86400000
          local rows, index, roll = {}, {}, { p = {}, c = {} }
          for k = 0, per_day - 1 do
            id = id + 1
            local at = day + math.floor(k * 86400000 / per_day)
            local agent, model, conv = 'agent' .. (k % 7), 'model' .. (k % 3), 'conv' .. (k % 50)
            local amount = 1000000 * (1 + k % 3)
            rows[#rows + 1] = fmt(id)
            rows[#rows + 1] = cjson.encode({ fmt(id), 'big', 'reply', fmt(-amount), fmt(at), 'r' .. id, agent, conv, model, 'credits', 'v1', cjson.null, cjson.null })
            index[#index + 1] = fmt(at)
            index[#index + 1] = string.format('%016.0f', id)
            for g, key in pairs({ p = #agent .. ':' .. agent .. model, c = conv }) do
              local e = roll[g][key] or { s = 0, n = 0, f = id }
              e.s = e.s + amount; e.n = e.n + 1
              roll[g][key] = e
            end
          end
          for i = 1, #rows, 2000 do redis.call('ZADD', base .. 'r', unpack(rows, i, math.min(i + 1999, #rows))) end
          for i = 1, #index, 2000 do redis.call('ZADD', base .. 't', unpack(index, i, math.min(i + 1999, #index))) end
          for g, keys in pairs(roll) do
            local fields = {}
            for key, e in pairs(keys) do
              fields[#fields + 1] = 's:' .. key; fields[#fields + 1] = fmt(e.s)
              fields[#fields + 1] = 'n:' .. key; fields[#fields + 1] = fmt(e.n)
              fields[#fields + 1] = 'f:' .. key; fields[#fields + 1] = fmt(e.f)
            end
            redis.call('HSET', base .. 'd:' .. fmt(day) .. ':' .. g, unpack(fields))
          end
          redis.call('ZADD', base .. 'd', fmt(day), fmt(day))
        end
        redis.call('SET', seq, fmt(id))
        return id
      `;
      for (let d = 0; d < days; d += 10) {
        await client.eval(loader, 1, 'big:seq', 'big:{big}:', String(T0 + d * DAY), '10', String(perDay));
      }
      // A settled reply through the real script lands in the same structures.
      await storage.reserve({
        reply: { replyId: 'live', workspaceId: 'big', agentId: 'agent0', conversationId: 'conv0', model: 'model0', route: 'credits', amount: 5, priceVersion: 'v1', createdAt: T0 + 50 * DAY + 1, expiresAt: T0 + 51 * DAY },
        now: T0 + 50 * DAY + 1,
        requireWorkspace: false,
      });
      await storage.settle({ replyId: 'live', workspaceId: 'big', now: T0 + 50 * DAY + 1 });

      const from = T0 + 3 * DAY + DAY / 2; // mid-day edges on both sides
      const to = T0 + 90 * DAY + DAY / 4;
      const expected = new Map<string, { amount: number; replies: number }>();
      for (let d = 0; d < days; d++) {
        for (let k = 0; k < perDay; k++) {
          const at = T0 + d * DAY + Math.floor((k * DAY) / perDay);
          if (at < from || at >= to) continue;
          const key = `agent${k % 7}`;
          const group = expected.get(key) ?? { amount: 0, replies: 0 };
          group.amount += 1_000_000 * (1 + (k % 3));
          group.replies += 1;
          expected.set(key, group);
        }
      }
      expected.get('agent0')!.amount += 5;
      expected.get('agent0')!.replies += 1;

      const started = performance.now();
      const usage = await storage.usage({ workspaceId: 'big', from, to, groupBy: 'agent', byDay: false });
      const elapsed = performance.now() - started;
      expect(new Map(usage.map((row) => [row.key, { amount: row.amount, replies: row.replies }]))).toEqual(expected);
      // A guard against scanning the whole ledger (seconds to minutes here), not a benchmark:
      // bench/ measures usage latency; this bound leaves room for a loaded machine.
      expect(elapsed).toBeLessThan(10_000);

      const byDay = await storage.usage({ workspaceId: 'big', from, to, groupBy: 'model', byDay: true });
      expect(byDay.reduce((sum, row) => sum + row.replies, 0)).toBe([...expected.values()].reduce((sum, row) => sum + row.replies, 0));
      expect(new Set(byDay.map((row) => row.day)).size).toBe(88);

      const page = await storage.ledger({ workspaceId: 'big', from: T0 + 70 * DAY, agentId: 'agent3', limit: 5 });
      expect(page).toHaveLength(5);
      expect(page.every((row) => row.agentId === 'agent3' && row.at >= T0 + 70 * DAY)).toBe(true);
    } finally {
      await client.quit();
      await server.stop();
    }
  }, 300_000);
});
