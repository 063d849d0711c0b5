import { randomUUID } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, inject, it } from 'vitest';
import { RedisStorage } from '../../src/adapters/redis/index.js';
import type { LedgerRow } from '../../src/core/state.js';
import { UsageAccumulator } from '../../src/core/usage-aggregate.js';
import { CreditMeter, type CreditStorage, CreditsError, InvalidInputError, StorageError } from '../../src/index.js';
import { type PackedLedgerRow, type PackedRecord, unpackLedgerRow, unpackRecord } from '../../src/storage/index.js';
import { row, stateDoc } from '../../src/testing/fixtures.js';
import { startRedis } from '../servers/redis-server.js';
import { chargeWithoutPause, readsWholeValues } from '../support.js';

const url = inject('redisUrl');
const clusterNodes = inject('redisClusterNodes')
  .split(',')
  .map((node) => ({ host: node.split(':')[0]!, port: Number(node.split(':')[1]) }));
const DAY = 86_400_000;
const T0 = Date.parse('2026-03-01T00:00:00Z');
const opened: { close(): Promise<unknown> }[] = [];
afterAll(async () => {
  await Promise.all(opened.map((item) => item.close()));
});

function store(options: { keyPrefix?: string; url?: string } = {}): RedisStorage {
  const storage = new RedisStorage({ url: options.url ?? url, keyPrefix: options.keyPrefix ?? `extra:${randomUUID()}:` });
  opened.push(storage);
  return storage;
}

function admin(at = url): Redis {
  const client = new Redis(at);
  opened.push({ close: () => client.quit() });
  return client;
}

const ask = (workspaceId: string, i = 0) => ({ workspaceId, agentId: `agent-${i % 3}`, conversationId: `c-${i}`, model: 'gpt-4o-mini' });

/** Every ledger row of a workspace through the meter, and balance + held in micro-credits. */
async function books(meter: CreditMeter, workspaceId: string) {
  const entries = [];
  let cursor: string | undefined;
  do {
    const page = await meter.ledger({ workspaceId, limit: 1000, ...(cursor !== undefined && { cursor }) });
    entries.push(...page.entries);
    cursor = page.nextCursor;
  } while (cursor);
  const summary = await meter.getWorkspace(workspaceId);
  const micros = (value: unknown) => Math.round(Number(value) * 1e6);
  return {
    entries,
    sum: entries.reduce((total, entry) => total + micros(entry.credits), 0),
    booked: micros(summary.balance) + micros(summary.held),
    summary,
  };
}

/** The hash tag Redis Cluster hashes a key by: between the first `{` and the next `}`, if not empty. */
function hashTag(key: string): string {
  const open = key.indexOf('{');
  const close = key.indexOf('}', open + 1);
  return open >= 0 && close > open + 1 ? key.slice(open + 1, close) : key;
}

describe('redis - construction and life cycle', () => {
  it('client - accepts an ioredis client and leaves it open on close', async () => {
    const client = admin();
    const storage = new RedisStorage({ client, keyPrefix: `extra:${randomUUID()}:` });
    await storage.migrate();
    await storage.migrate();
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 5 });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(5);
    await storage.close();
    expect(await client.ping()).toBe('PONG');
  });

  it('keyPrefix - a prefix with a brace is refused: the hash tag belongs to the workspace id', () => {
    expect(() => new RedisStorage({ url, keyPrefix: 'app{1}:' })).toThrow(InvalidInputError);
    expect(() => new RedisStorage({ url, keyPrefix: 'app{1}:' })).toThrow(/Invalid keyPrefix: may not contain { or }/);
  });

  it('migrate - writes key layout 3 under the prefix', async () => {
    const prefix = `extra:${randomUUID()}:`;
    await store({ keyPrefix: prefix }).migrate();
    expect(await admin().get(`${prefix}schema`)).toBe('3');
  });

  it('migrate - refuses data of the 0.1.x layouts (1, 2) and of a newer one, naming what to do, and changes nothing', async () => {
    for (const [found, message] of [
      ['2', /layout 2 of @bookbag\/credits 0\.1\.x.*new keyPrefix/],
      ['1', /layout 1 of @bookbag\/credits 0\.1\.x/],
      ['4', /newer @bookbag\/credits/],
    ] as const) {
      const prefix = `extra:${randomUUID()}:`;
      const client = admin();
      await client.set(`${prefix}schema`, found);
      const storage = store({ keyPrefix: prefix });
      await expect(storage.migrate()).rejects.toMatchObject({ code: 'STORAGE_ERROR', message: expect.stringMatching(message) });
      // The meter migrates first, so it refuses every call: it never reads or writes there.
      const meter = new CreditMeter({ storage });
      await expect(meter.createWorkspace({ workspaceId: 'ws', plan: 'free' })).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
      expect(await client.get(`${prefix}schema`)).toBe(found);
      expect(await client.keys(`${prefix}*`)).toEqual([`${prefix}schema`]);
    }
  });

  it('evalsha - re-sends a script the server lost (NOSCRIPT)', async () => {
    const meter = new CreditMeter({ storage: store() });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 5 });
    await admin().script('FLUSH');
    const hold = await meter.reserve(ask('ws'));
    await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(4);
  });

  it('errors - a failing server surfaces as STORAGE_ERROR with the driver error as cause', async () => {
    const storage = store({ url: 'redis://127.0.0.1:1' });
    const error = await storage.load({ workspaceId: 'ws', keys: [], now: T0 }).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(StorageError);
    expect(CreditsError.is(error) && error.code).toBe('STORAGE_ERROR');
    expect((error as StorageError).cause).toBeInstanceOf(Error);
    expect((error as StorageError).message).toContain('[redis]');
  });

  it('close - a closed store refuses further calls', async () => {
    const storage = store();
    await storage.migrate();
    await storage.close();
    await expect(storage.load({ workspaceId: 'ws', keys: [], now: T0 })).rejects.toBeInstanceOf(StorageError);
  });

  it('keys - every key of a workspace has the workspace id as its hash tag, whatever braces the id holds', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const storage = store({ keyPrefix: prefix });
    const meter = new CreditMeter({ storage });
    const ids = ['plain', 'a{b}c', '}x{', '{y}', 'a%7Bb', '%', '{}'];
    for (const id of ids) {
      await meter.createWorkspace({ workspaceId: id, plan: 'enterprise', allotment: 3 });
      const hold = await meter.reserve(ask(id));
      await meter.settle({ workspaceId: id, replyId: hold.replyId });
    }
    const keys = (await admin().keys(`${prefix}*`)).filter((key) => key !== `${prefix}schema`);
    const tags = new Map<string, Set<string>>();
    for (const key of keys) {
      const tag = hashTag(key);
      expect(key.startsWith(`${prefix}{${tag}}:`), key).toBe(true);
      tags.set(tag, (tags.get(tag) ?? new Set()).add(key.slice(prefix.length + tag.length + 3)));
    }
    // One tag per workspace, each with the same set of keys, and no two ids share one.
    expect(tags.size).toBe(ids.length);
    for (const names of tags.values()) expect([...names].sort()).toEqual([...tags.values().next().value!].sort());
    for (const id of ids) expect(Number((await meter.getWorkspace(id)).balance)).toBe(2);
  });
});

describe('redis - several app servers', () => {
  const race = async (stores: CreditStorage[]) => {
    const meters = stores.map((storage) => new CreditMeter({ storage }));
    const [first] = meters;
    await first!.createWorkspace({ workspaceId: 'race', plan: 'enterprise', allotment: 100 });
    const results = await Promise.allSettled(Array.from({ length: 500 }, (_, i) => meters[i % meters.length]!.reserve(ask('race', i))));
    const won = results.flatMap((result) => (result.status === 'fulfilled' ? [result.value] : []));
    const lost = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
    expect(won).toHaveLength(100);
    expect(lost.every((error) => CreditsError.is(error) && error.code === 'INSUFFICIENT_CREDITS')).toBe(true);
    await Promise.all(won.map((hold, i) => meters[i % meters.length]!.settle({ workspaceId: 'race', replyId: hold.replyId })));
    // Settling again, from another server, charges nothing more.
    await Promise.all(won.map((hold, i) => meters[(i + 1) % meters.length]!.settle({ workspaceId: 'race', replyId: hold.replyId })));
    const { entries, sum, booked, summary } = await books(first!, 'race');
    expect(Number(summary.balance)).toBe(0);
    expect(Number(summary.held)).toBe(0);
    const replies = entries.filter((entry) => entry.kind === 'reply');
    expect(new Set(replies.map((entry) => entry.replyId)).size).toBe(100);
    expect(replies).toHaveLength(100);
    expect(sum).toBe(booked);
  };

  it('reserve - 500 concurrent reserves from 5 connections against a balance for 100: exactly 100 win', async () => {
    const prefix = `extra:${randomUUID()}:`;
    await race(Array.from({ length: 5 }, () => store({ keyPrefix: prefix })));
  });

  it('cluster - 500 concurrent reserves from 5 Cluster clients against a balance for 100: exactly 100 win', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const clients = Array.from({ length: 5 }, () => new Cluster(clusterNodes, { enableAutoPipelining: true }));
    for (const client of clients) opened.push({ close: () => client.quit() });
    await race(clients.map((client) => new RedisStorage({ client, keyPrefix: prefix })));
  });

  it('contention - 32 app servers charging one hot workspace without pause: every charge lands, none gives up', async () => {
    // Redis has no `lock`: the servers race on the workspace's version, and the losers back off.
    const prefix = `extra:${randomUUID()}:`;
    const meters = Array.from({ length: 32 }, () => new CreditMeter({ storage: store({ keyPrefix: prefix }) }));
    await meters[0]!.createWorkspace({ workspaceId: 'hot', plan: 'enterprise', allotment: 1_000_000 });
    const charges = 16;
    expect(await chargeWithoutPause(meters, 'hot', 8, charges)).toEqual([]);
    const { entries, sum, booked, summary } = await books(meters[0]!, 'hot');
    expect(entries.filter((entry) => entry.kind === 'reply')).toHaveLength(32 * 8 * charges);
    expect(Number(summary.held)).toBe(0);
    expect(sum).toBe(booked);
  });
});

describe('redis - erase', () => {
  it('erase - leaves only the version; keeping the ledger, whole days from the rollups still equal the rows', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const storage = store({ keyPrefix: prefix });
    let now = T0 + DAY / 2;
    const meter = new CreditMeter({ storage, clock: () => new Date(now) });
    for (const workspaceId of ['gone', 'kept']) {
      await meter.createWorkspace({ workspaceId, plan: 'enterprise', allotment: 100, startsAt: new Date(T0) });
      // Replies over four UTC days, by three agents, two models and six conversations.
      for (let i = 0; i < 6; i++) {
        now += 10 * 3_600_000;
        const hold = await meter.reserve({ ...ask(workspaceId, i), model: i % 2 ? 'gpt-4o' : 'gpt-4o-mini' });
        await meter.settle({ workspaceId, replyId: hold.replyId });
      }
    }
    const client = admin();
    const version = Number(await client.hget(`${prefix}{gone}:state`, 'v'));
    await meter.deleteWorkspace({ workspaceId: 'gone' });
    expect(await client.keys(`${prefix}{gone}:*`)).toEqual([`${prefix}{gone}:state`]);
    const state = await client.hgetall(`${prefix}{gone}:state`);
    expect(Object.keys(state)).toEqual(['v']);
    expect(Number(state.v)).toBeGreaterThan(version);

    await meter.deleteWorkspace({ workspaceId: 'kept', keepLedger: true });
    const rows = await storage.ledger({ workspaceId: 'kept', limit: 1000 });
    const sorted = (groups: { key: string; day?: number }[]) =>
      [...groups].sort((a, b) => (a.day ?? 0) - (b.day ?? 0) || a.key.localeCompare(b.key));
    // Part days at both edges, two whole days between them.
    const [from, to] = [T0 + DAY / 3, now + 1];
    for (const groupBy of ['agent', 'model', 'conversation'] as const) {
      for (const byDay of [false, true]) {
        const expected = new UsageAccumulator(groupBy, byDay);
        for (const found of rows) if (found.at >= from && found.at < to) expected.add(found);
        const usage = await storage.usage({ workspaceId: 'kept', from, to, groupBy, byDay });
        expect(sorted(usage), `${groupBy} byDay=${byDay}`).toEqual(sorted(expected.totals()));
        if (groupBy !== 'model') expect(new Set(usage.map((group) => group.key))).toEqual(new Set(['']));
      }
    }
  });
});

describe('redis - values stored whole, before packing', () => {
  it('records and ledger rows stored whole read back beside packed ones, through the scripts too', async () => {
    const prefix = `extra:${randomUUID()}:`;
    await readsWholeValues(store({ keyPrefix: prefix }), async (workspaceId) => {
      const client = admin();
      const key = (name: string) => `${prefix}{${workspaceId}}:${name}`;
      let rewritten = 0;
      for (const [field, json] of Object.entries(await client.hgetall(key('records')))) {
        const [recordKey, holdExpiresAt, packed] = JSON.parse(json) as [string, number | null, PackedRecord];
        await client.hset(key('records'), field, JSON.stringify({ key: recordKey, holdExpiresAt, value: unpackRecord(packed) }));
        rewritten++;
      }
      for (const [field, json] of Object.entries(await client.hgetall(key('ledger')))) {
        await client.hset(key('ledger'), field, JSON.stringify(unpackLedgerRow(JSON.parse(json) as PackedLedgerRow, workspaceId)));
        rewritten++;
      }
      return rewritten;
    });
  });
});

describe('redis - durability', () => {
  it('restart - settled charges survive a server restart (AOF)', async () => {
    const server = await startRedis();
    try {
      const before = new RedisStorage({ url: server.url });
      const meter = new CreditMeter({ storage: before });
      await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 10 });
      const holds = [];
      for (let i = 0; i < 5; i++) holds.push(await meter.reserve({ ...ask('ws', i), model: 'gpt-4o-mini' }));
      for (const hold of holds.slice(0, 4)) await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
      const expected = await books(meter, 'ws');
      await before.close();
      await server.restart();
      const after = new RedisStorage({ url: server.url });
      const again = new CreditMeter({ storage: after });
      const found = await books(again, 'ws');
      expect(found.entries).toEqual(expected.entries);
      expect(Number(found.summary.balance)).toBe(5);
      expect(Number(found.summary.held)).toBe(1);
      // Scripts are gone from the restarted server's cache; the calls re-send them. A replay charges nothing.
      await again.settle({ workspaceId: 'ws', replyId: holds[0]!.replyId });
      await again.settle({ workspaceId: 'ws', replyId: holds[4]!.replyId });
      expect(Number((await again.getWorkspace('ws')).balance)).toBe(5);
      await after.close();
    } finally {
      await server.stop();
    }
  });
});

describe('redis - faults', () => {
  it('connection killed under load - re-sent commits never apply twice, failures are STORAGE_ERROR, the store recovers', async () => {
    const client = new Redis(url, { maxRetriesPerRequest: 1 });
    client.on('error', () => undefined);
    let reconnects = 0;
    client.on('reconnecting', () => reconnects++);
    const killer = admin();
    const storage = new RedisStorage({ client, keyPrefix: `fault:${randomUUID()}:` });
    try {
      const meter = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'fault', plan: 'enterprise', allotment: 1_000_000 });
      let stop = false;
      let charged = 0;
      const errors: unknown[] = [];
      const workers = Array.from({ length: 20 }, async (_, w) => {
        while (!stop) {
          try {
            const hold = await meter.reserve(ask('fault', w));
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
        if (id !== undefined) await killer.client('KILL', 'ID', String(id)).catch(() => undefined);
      }
      stop = true;
      await Promise.all(workers);
      // ioredis reconnects and re-sends what was in flight. A commit that had landed answers
      // `conflict` when re-sent (its version moved), so the batch is re-applied to what is
      // stored: the reserve finds its own record, the settle its own row. Never twice.
      expect(reconnects).toBeGreaterThan(0);
      for (const error of errors) expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
      expect(charged).toBeGreaterThan(0);
      const hold = await meter.reserve(ask('fault'));
      await meter.settle({ workspaceId: 'fault', replyId: hold.replyId });
      const { entries, sum, booked, summary } = await books(meter, 'fault');
      expect(sum).toBe(booked);
      const replies = entries.filter((entry) => entry.kind === 'reply');
      expect(new Set(replies.map((entry) => entry.replyId)).size).toBe(replies.length);
      expect(replies.length).toBeGreaterThanOrEqual(charged + 1);
      expect(Number(summary.balance)).toBeGreaterThanOrEqual(0);
    } finally {
      await storage.close();
      client.disconnect();
    }
  });
});

describe('redis - usage of a window that ends after the last row', () => {
  it('usage - takes the last day from its rollup, reading no row, and pages rows only when the window ends earlier', async () => {
    const client = admin();
    const calls: string[] = [];
    const counted = {
      evalsha: (sha: string, numkeys: number, ...args: string[]) => {
        calls.push(String(args[0]).split(':').pop()!);
        return client.evalsha(sha, numkeys, ...args);
      },
      eval: (source: string, numkeys: number, ...args: string[]) => client.eval(source, numkeys, ...args),
      quit: async () => undefined,
    };
    const storage = new RedisStorage({ client: counted, keyPrefix: `extra:${randomUUID()}:` });
    await storage.migrate();
    const rows = [0, 1, 2].map((i) =>
      row('w', i + 1, 'reply', -(i + 1) * 1_000_000, T0 + DAY + i * 3_600_000, { agentId: `a${i % 2}`, model: 'm', replyId: `r${i}` }),
    );
    expect(await storage.commit([{ workspaceId: 'w', expectedVersion: 0, state: stateDoc('w', 3), ledger: rows, records: [] }])).toEqual([
      'committed',
    ]);
    const expected = (to: number, byDay: boolean) => {
      const sums = new UsageAccumulator('agent', byDay);
      for (const r of rows) if (r.at >= T0 && r.at < to) sums.add(r);
      return sums.totals().sort((a, b) => (a.key < b.key ? -1 : 1));
    };
    const usage = async (to: number, byDay: boolean) => {
      calls.length = 0;
      const found = await storage.usage({ workspaceId: 'w', from: T0, to, groupBy: 'agent', byDay });
      return found.sort((a, b) => (a.key < b.key ? -1 : 1));
    };
    for (const byDay of [false, true]) {
      // Ends after the last row: the whole window comes from the rollups, in one call.
      expect(await usage(T0 + DAY + 5 * 3_600_000, byDay)).toEqual(expected(T0 + DAY + 5 * 3_600_000, byDay));
      expect(calls).toEqual(['days']);
      // Ends between rows of the last day: that day is read row by row.
      expect(await usage(T0 + DAY + 3_600_000 + 1, byDay)).toEqual(expected(T0 + DAY + 3_600_000 + 1, byDay));
      expect(calls).toEqual(['days', 'state']);
    }
  });
});

describe('redis - rollups of many groups', () => {
  it('rollups - a day of 40 agents, models and conversations keeps hash tables; usage and erase read past the marker', async () => {
    const prefix = `extra:${randomUUID()}:`;
    const storage = store({ keyPrefix: prefix });
    const client = admin();
    const day = `${prefix}{w}:day:${T0 + DAY}`;
    // Two commits of 40 replies each, every one with its own agent, model and conversation: 80 fields a hash.
    const rows = Array.from({ length: 80 }, (_, i) =>
      row('w', i + 1, 'reply', -(i + 1) * 1_000, T0 + DAY + i * 60_000, {
        agentId: `a${i % 40}`,
        model: `m${i % 40}`,
        conversationId: `c${i % 40}`,
      }),
    );
    for (const [version, part] of [rows.slice(0, 40), rows.slice(40)].entries()) {
      const commit = { workspaceId: 'w', expectedVersion: version, state: stateDoc('w', 40 * (version + 1)), ledger: part, records: [] };
      expect(await storage.commit([commit])).toEqual(['committed']);
    }
    // The first commit left 80 fields in a listpack (the server keeps up to 128 or 512 so); the second turned each into a hash table.
    const encodings = await Promise.all(['a', 'm', 'c'].map((group) => client.object('ENCODING', `${day}:${group}`)));
    expect(encodings).toEqual(['hashtable', 'hashtable', 'hashtable']);
    expect(await client.hexists(`${day}:c`, '~')).toBe(1);
    const check = async (groupBy: 'agent' | 'model' | 'conversation', found: readonly LedgerRow[]) => {
      const expected = new UsageAccumulator(groupBy, true);
      for (const r of found) expected.add(r);
      const usage = await storage.usage({ workspaceId: 'w', from: T0, to: T0 + 3 * DAY, groupBy, byDay: true });
      const byKey = (a: { key: string }, b: { key: string }) => (a.key < b.key ? -1 : 1);
      expect(usage.sort(byKey), groupBy).toEqual(expected.totals().sort(byKey));
    };
    for (const groupBy of ['agent', 'model', 'conversation'] as const) await check(groupBy, rows);
    await storage.erase({ workspaceId: 'w', keepLedger: true });
    const kept = await storage.ledger({ workspaceId: 'w', limit: 1000 });
    expect(kept).toHaveLength(80);
    for (const groupBy of ['agent', 'model', 'conversation'] as const) await check(groupBy, kept);
  });
});

describe('redis - a large ledger', () => {
  it('usage and ledger - a million rows over 100 days: sums from the rollups, pages from the indexes, quickly', async () => {
    const server = await startRedis();
    const client = new Redis(server.url);
    try {
      const storage = new RedisStorage({ client, keyPrefix: 'big:' });
      await storage.migrate();
      const days = 100;
      const perDay = 10_000;
      // Writes exactly what the commit script writes for reply rows (row, at index, days,
      // rollups, state fields), generated on the server so the test does not ship 1M rows.
      const loader = `
        local base, day0, days, per_day, seq = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
        local function fmt(n) return string.format('%.0f', n) end
        local function pad(n) return string.format('%016.0f', n) end
        local at = 0
        for d = 0, days - 1 do
          local day = day0 + d * 86400000
          local rows, index, roll = {}, {}, { a = {}, m = {}, c = {} }
          for k = 0, per_day - 1 do
            seq = seq + 1
            at = day + math.floor(k * 86400000 / per_day)
            local agent, model, conv = 'agent' .. (k % 7), 'model' .. (k % 3), 'conv' .. (k % 50)
            local amount = 1000000 * (1 + k % 3)
            rows[#rows + 1] = pad(seq)
            rows[#rows + 1] = '{"workspaceId":"big","seq":' .. fmt(seq) .. ',"kind":"reply","amount":' .. fmt(-amount) .. ',"at":' .. fmt(at) ..
              ',"replyId":"r' .. fmt(seq) .. '","agentId":"' .. agent .. '","conversationId":"' .. conv .. '","model":"' .. model ..
              '","route":"credits","priceVersion":"v1","grantId":null,"plan":null,"inputTokens":null,"outputTokens":null}'
            index[#index + 1] = fmt(at)
            index[#index + 1] = pad(seq)
            for g, key in pairs({ a = agent, m = model, c = conv }) do
              roll[g]['s' .. key] = (roll[g]['s' .. key] or 0) + amount
              roll[g]['n' .. key] = (roll[g]['n' .. key] or 0) + 1
            end
          end
          for i = 1, #rows, 2000 do redis.call('HSET', base .. 'ledger', unpack(rows, i, math.min(i + 1999, #rows))) end
          for i = 1, #index, 2000 do redis.call('ZADD', base .. 'at', unpack(index, i, math.min(i + 1999, #index))) end
          for g, fields in pairs(roll) do
            for field, value in pairs(fields) do redis.call('HSET', base .. 'day:' .. fmt(day) .. ':' .. g, field, fmt(value)) end
          end
          redis.call('ZADD', base .. 'days', fmt(day), fmt(day))
        end
        redis.call('HSET', base .. 'state', 'v', '1', 'd', ARGV[6], 'a', fmt(at), 'n', fmt(seq))
        return seq
      `;
      for (let d = 0; d < days; d += 10) {
        const seq = d * perDay;
        const state = JSON.stringify(stateDoc('big', seq + 10 * perDay));
        await client.eval(loader, 1, 'big:{big}:state', 'big:{big}:', String(T0 + d * DAY), '10', String(perDay), String(seq), state);
      }
      // One more reply row through the real commit lands in the same structures.
      const live = row('big', days * perDay + 1, 'reply', -5, T0 + days * DAY, {
        agentId: 'agent0',
        model: 'model0',
        conversationId: 'conv0',
        replyId: 'live',
      });
      const committed = await storage.commit([
        { workspaceId: 'big', expectedVersion: 1, state: stateDoc('big', days * perDay + 1), ledger: [live], records: [] },
      ]);
      expect(committed).toEqual(['committed']);

      const from = T0 + 3 * DAY + DAY / 2; // part days at both edges
      const to = T0 + days * DAY + 1;
      const expected = new Map<string, { amount: number; replies: number }>();
      for (let d = 0; d < days; d++) {
        for (let k = 0; k < perDay; k++) {
          const at = T0 + d * DAY + Math.floor((k * DAY) / perDay);
          if (at < from || at >= to) continue;
          const group = expected.get(`agent${k % 7}`) ?? { amount: 0, replies: 0 };
          group.amount += 1_000_000 * (1 + (k % 3));
          group.replies += 1;
          expected.set(`agent${k % 7}`, group);
        }
      }
      expected.get('agent0')!.amount += 5;
      expected.get('agent0')!.replies += 1;

      let started = performance.now();
      const usage = await storage.usage({ workspaceId: 'big', from, to, groupBy: 'agent', byDay: false });
      const elapsed = performance.now() - started;
      expect(new Map(usage.map((group) => [group.key, { amount: group.amount, replies: group.replies }]))).toEqual(expected);
      // Guards against scanning the whole ledger (tens of seconds here), not a benchmark.
      expect(elapsed).toBeLessThan(10_000);
      const byDay = await storage.usage({ workspaceId: 'big', from, to, groupBy: 'model', byDay: true });
      expect(byDay.reduce((total, group) => total + group.replies, 0)).toBe(
        [...expected.values()].reduce((total, group) => total + group.replies, 0),
      );
      expect(new Set(byDay.map((group) => group.day)).size).toBe(98);

      started = performance.now();
      const page = await storage.ledger({ workspaceId: 'big', from: T0 + 70 * DAY, to: T0 + 71 * DAY, agentId: 'agent3', limit: 5 });
      const late = await storage.ledger({ workspaceId: 'big', afterSeq: 999_990, limit: 100 });
      expect(performance.now() - started).toBeLessThan(5_000);
      expect(page.map((found) => found.seq)).toEqual([700_004, 700_011, 700_018, 700_025, 700_032]);
      expect(late.map((found) => found.seq)).toEqual([...Array.from({ length: 10 }, (_, i) => 999_991 + i), 1_000_001]);
    } finally {
      await client.quit();
      await server.stop();
    }
  }, 300_000);
});
