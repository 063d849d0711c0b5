/**
 * Cases that call the seam directly: `load`, `commit`, `lock`, `ledger`, `usage` and `migrate`, with
 * hand-built state documents, ledger rows and records. A store applies no rule, so these
 * check only that it stores, fetches and guards its writes as `CreditStorage` documents.
 */
import { expect } from 'vitest';
import { MAX_MICROS } from '../core/credits.js';
import type { LedgerKind, LedgerRow, StoredRecord, UsageGroupBy } from '../core/state.js';
import { UsageAccumulator } from '../core/usage-aggregate.js';
import type { CommitResult, WorkspaceCommit } from '../storage/storage.js';
import {
  byKey,
  C,
  CONFORMANCE_EPOCH,
  type ConformanceContext,
  DAY,
  defineCases,
  HOUR,
  holdFree,
  MINUTE,
  n,
  replyStored,
  row,
  stateDoc,
  sum,
} from './fixtures.js';

/** A first commit (expectedVersion 0) of a workspace with a grant row; tracked. */
function create(ctx: ConformanceContext, workspaceId = ctx.id('ws'), amount = 10 * C): WorkspaceCommit {
  ctx.track(workspaceId);
  return {
    workspaceId,
    expectedVersion: 0,
    state: stateDoc(workspaceId, 1, amount),
    ledger: [row(workspaceId, 1, 'grant', amount, ctx.now(), { grantId: 'period:0', plan: 'custom' })],
    records: [],
  };
}

async function created(ctx: ConformanceContext, workspaceId?: string, amount?: number): Promise<string> {
  const commit = create(ctx, workspaceId, amount);
  expect(await ctx.storage.commit([commit]), `create ${commit.workspaceId}`).toEqual(['committed']);
  return commit.workspaceId;
}

/**
 * A commit that holds a reply of 1 credit on top of the stored state (keeps the ledger sum
 * equal to available + held): moves one credit from `remaining` to `held`.
 */
async function holdCommit(ctx: ConformanceContext, workspaceId: string, replyId: string, holdExpiresAt: number): Promise<WorkspaceCommit> {
  const loaded = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
  const state = structuredClone(loaded.state!);
  const grant = state.account!.grants[0]!;
  grant.remaining -= C;
  grant.held += C;
  state.account!.held += C;
  const record = replyStored(workspaceId, replyId, ctx.now(), { expiresAt: holdExpiresAt });
  return { workspaceId, expectedVersion: loaded.version, state, ledger: [], records: [record] };
}

/** A commit that settles a held reply of 1 credit with one reply row. */
async function settleCommit(
  ctx: ConformanceContext,
  workspaceId: string,
  replyId: string,
  fields: Partial<LedgerRow> = {},
): Promise<WorkspaceCommit> {
  const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${replyId}`], now: ctx.now() });
  const state = structuredClone(loaded.state!);
  const grant = state.account!.grants[0]!;
  grant.held -= C;
  state.account!.held -= C;
  state.account!.usedThisPeriod += C;
  const seq = ++state.ledgerSeq;
  const held = loaded.records[0]!;
  const value = { ...held.value, status: 'settled', finishedAt: ctx.now(), entrySeq: seq, allocations: [] } as StoredRecord['value'];
  return {
    workspaceId,
    expectedVersion: loaded.version,
    state,
    ledger: [
      row(workspaceId, seq, 'reply', -C, ctx.now(), {
        replyId,
        agentId: 'agent_a',
        conversationId: 'conv_1',
        model: 'one-credit',
        route: 'credits',
        priceVersion: 'p',
        ...fields,
      }),
    ],
    records: [{ key: held.key, holdExpiresAt: null, value }],
  };
}

/** Appends rows (amounts summing to zero with their state change is the caller's job) at the stored version. */
async function append(
  ctx: ConformanceContext,
  workspaceId: string,
  rows: readonly Omit<LedgerRow, 'seq' | 'workspaceId'>[],
): Promise<LedgerRow[]> {
  const loaded = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
  const state = structuredClone(loaded.state!);
  const written = rows.map((r) => ({ ...r, workspaceId, seq: ++state.ledgerSeq }));
  const delta = sum(written.map((r) => r.amount));
  const grant = state.account!.grants[0]!;
  grant.amount += delta;
  grant.remaining += delta;
  expect(await ctx.storage.commit([{ workspaceId, expectedVersion: loaded.version, state, ledger: written, records: [] }])).toEqual([
    'committed',
  ]);
  return written;
}

/** A workspace with 30 rows at known instants: kinds, agents, models and conversations vary. */
async function busy(ctx: ConformanceContext): Promise<{ workspaceId: string; rows: LedgerRow[] }> {
  const workspaceId = await created(ctx, undefined, 1000 * C);
  const kinds: LedgerKind[] = ['reply', 'reply', 'topup', 'reply', 'expiry'];
  const rows = Array.from({ length: 29 }, (_, i) => {
    const kind = kinds[i % kinds.length]!;
    const amount = kind === 'topup' ? C : kind === 'expiry' ? -C : -(1 + (i % 3)) * C;
    const reply = kind === 'reply';
    return {
      ...row(workspaceId, 0, kind, amount, CONFORMANCE_EPOCH + (i + 1) * HOUR),
      ...(reply && {
        replyId: `r${i}`,
        agentId: i % 2 === 0 ? 'agent_even' : 'agent_odd',
        model: `m${i % 3}`,
        conversationId: i % 4 === 0 ? null : `conv_${i % 4}`,
        route: 'credits' as const,
        priceVersion: 'p',
      }),
      ...(!reply && { grantId: `topup:g${i}` }),
    };
  });
  await append(ctx, workspaceId, rows.slice(0, 10));
  await append(ctx, workspaceId, rows.slice(10));
  const all = await ctx.storage.ledger({ workspaceId, limit: 1000 });
  expect(all).toHaveLength(30);
  return { workspaceId, rows: all };
}

/** Pages through `ledger` with `afterSeq`, `limit` at a time. */
async function pages(
  ctx: ConformanceContext,
  query: Omit<Parameters<ConformanceContext['storage']['ledger']>[0], 'afterSeq'>,
): Promise<LedgerRow[]> {
  const seen: LedgerRow[] = [];
  let afterSeq: number | undefined;
  for (let guard = 0; guard < 1000; guard++) {
    const page = await ctx.storage.ledger({ ...query, ...(afterSeq !== undefined && { afterSeq }) });
    expect(page.length).toBeLessThanOrEqual(query.limit);
    seen.push(...page);
    if (page.length < query.limit) return seen;
    afterSeq = page[page.length - 1]!.seq;
  }
  throw new Error('ledger paging never ended');
}

function sortUsage<T extends { key: string; day?: number | undefined; amount: number; replies: number }>(rows: readonly T[]) {
  return rows
    .map((r) => ({ key: r.key, day: r.day, amount: n(r.amount), replies: r.replies }))
    .sort((a, b) => (a.day ?? 0) - (b.day ?? 0) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/** Quotes, SQL and LIKE metacharacters, key separators, hash tags, non-ASCII. */
const ODD = [`'"; DROP TABLE ledger; --`, ':a', ':a:b', '%_\\*?[]{x}', '{tag}', ' wś 漢字 🙂', '.', '%', '_'];

export const seamCases = defineCases([
  [
    'load - a workspace with no state is version 0 with nothing in it',
    async (ctx) => {
      const loaded = await ctx.storage.load({ workspaceId: ctx.id('missing'), keys: ['reply:x', 'topup:y'], now: ctx.now() });
      expect(holdFree(loaded)).toEqual({ version: 0, state: null, records: [], lapsed: [] });
    },
  ],
  [
    'commit - creates a workspace at expectedVersion 0; load returns exactly what was written',
    async (ctx) => {
      const commit = create(ctx);
      const record = replyStored(commit.workspaceId, 'r1', ctx.now());
      commit.records = [record];
      commit.state.account!.grants[0]!.remaining -= C;
      commit.state.account!.grants[0]!.held += C;
      commit.state.account!.held += C;
      expect(await ctx.storage.commit([commit])).toEqual(['committed']);
      const loaded = await ctx.storage.load({ workspaceId: commit.workspaceId, keys: ['reply:r1'], now: ctx.now() });
      expect(loaded.version).toBe(1);
      expect(loaded.state).toEqual(commit.state);
      expect(loaded.records).toEqual([record]);
      expect(loaded.lapsed).toEqual([]);
      expect(await ctx.storage.ledger({ workspaceId: commit.workspaceId, limit: 10 })).toEqual(commit.ledger);
    },
  ],
  [
    'commit - a second create at version 0 conflicts and writes nothing',
    async (ctx) => {
      const first = create(ctx);
      expect(await ctx.storage.commit([first])).toEqual(['committed']);
      const again: WorkspaceCommit = {
        ...create(ctx, first.workspaceId, 99 * C),
        records: [replyStored(first.workspaceId, 'intruder', ctx.now())],
      };
      expect(await ctx.storage.commit([again])).toEqual(['conflict']);
      const loaded = await ctx.storage.load({ workspaceId: first.workspaceId, keys: ['reply:intruder'], now: ctx.now() + DAY });
      expect(holdFree(loaded)).toEqual({ version: 1, state: first.state, records: [], lapsed: [] });
      expect(await ctx.storage.ledger({ workspaceId: first.workspaceId, limit: 10 })).toEqual(first.ledger);
    },
  ],
  [
    'commit - a stale expectedVersion conflicts and writes nothing: no state, no rows, no records',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const stale = await holdCommit(ctx, workspaceId, 'r1', ctx.now() + MINUTE);
      expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, 'r0', ctx.now() + MINUTE)])).toEqual(['committed']);
      const before = await ctx.storage.load({ workspaceId, keys: ['reply:r0', 'reply:r1'], now: ctx.now() + DAY });
      stale.ledger = [row(workspaceId, 2, 'topup', 5 * C, ctx.now(), { grantId: 'topup:stale' })];
      stale.state.ledgerSeq = 2;
      expect(await ctx.storage.commit([stale])).toEqual(['conflict']);
      const after = await ctx.storage.load({ workspaceId, keys: ['reply:r0', 'reply:r1'], now: ctx.now() + DAY });
      expect(after.version).toBe(2);
      expect(after.state).toEqual(before.state);
      expect(byKey(after.records)).toEqual(byKey(before.records));
      expect(after.records.map((r) => r.key)).toEqual(['reply:r0']);
      expect(after.lapsed.map((r) => r.key)).toEqual(['reply:r0']);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toHaveLength(1);
      // A version ahead of the stored one is as wrong as one behind it.
      const ahead = await holdCommit(ctx, workspaceId, 'r2', ctx.now() + MINUTE);
      expect(await ctx.storage.commit([{ ...ahead, expectedVersion: ahead.expectedVersion + 1 }])).toEqual(['conflict']);
      expect((await ctx.storage.load({ workspaceId, keys: ['reply:r2'], now: ctx.now() })).records).toEqual([]);
    },
  ],
  [
    'commit - each commit adds one to the version',
    async (ctx) => {
      const workspaceId = await created(ctx);
      for (let i = 0; i < 5; i++) {
        const commit = await holdCommit(ctx, workspaceId, `r${i}`, ctx.now() + HOUR);
        expect(commit.expectedVersion).toBe(i + 1);
        expect(await ctx.storage.commit([commit])).toEqual(['committed']);
      }
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).version).toBe(6);
    },
  ],
  [
    'commit - stores the nextVersion it is given, when it is given; a commit expecting a repeat of a lost version conflicts',
    async (ctx) => {
      const first = create(ctx);
      const workspaceId = first.workspaceId;
      expect(await ctx.storage.commit([{ ...first, nextVersion: 524_288 }])).toEqual(['committed']);
      const version = async () => (await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).version;
      expect(await version()).toBe(524_288);
      const second = await holdCommit(ctx, workspaceId, 'r0', ctx.now() + HOUR);
      expect(second.expectedVersion).toBe(524_288);
      expect(await ctx.storage.commit([{ ...second, nextVersion: 2 ** 40 + 3 }])).toEqual(['committed']);
      expect(await version()).toBe(2 ** 40 + 3);
      // What a meter that kept its state would expect had the server handed out versions one by one.
      const repeat = await holdCommit(ctx, workspaceId, 'r1', ctx.now() + HOUR);
      expect(await ctx.storage.commit([{ ...repeat, expectedVersion: 524_289, nextVersion: 524_290 }])).toEqual(['conflict']);
      // Without one, the version goes up by one, as before.
      expect(await ctx.storage.commit([repeat])).toEqual(['committed']);
      expect(await version()).toBe(2 ** 40 + 4);
    },
  ],
  [
    'commit - two commits of one workspace at one version in one call: the first lands, the second conflicts whole',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const a = await holdCommit(ctx, workspaceId, 'a', ctx.now() + HOUR);
      const b = await holdCommit(ctx, workspaceId, 'b', ctx.now() + HOUR);
      b.state.ledgerSeq = 2;
      b.ledger = [row(workspaceId, 2, 'topup', 0, ctx.now(), { grantId: 'topup:b' })];
      expect(await ctx.storage.commit([a, b])).toEqual(['committed', 'conflict']);
      const loaded = await ctx.storage.load({ workspaceId, keys: ['reply:a', 'reply:b'], now: ctx.now() });
      expect(loaded.version).toBe(2);
      expect(loaded.state).toEqual(a.state);
      expect(loaded.records.map((r) => r.key)).toEqual(['reply:a']);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toHaveLength(1);
    },
  ],
  [
    'commit - commits of several workspaces are independent, with results in order',
    async (ctx) => {
      const existing = await created(ctx);
      const fresh = create(ctx);
      const stale = { ...(await holdCommit(ctx, existing, 'r1', ctx.now() + HOUR)), expectedVersion: 0 };
      const other = create(ctx);
      const results = await ctx.storage.commit([fresh, stale, other]);
      expect(results).toEqual(['committed', 'conflict', 'committed']);
      for (const commit of [fresh, other]) {
        const loaded = await ctx.storage.load({ workspaceId: commit.workspaceId, keys: [], now: ctx.now() });
        expect(loaded.version).toBe(1);
        expect(loaded.state).toEqual(commit.state);
        expect(await ctx.storage.ledger({ workspaceId: commit.workspaceId, limit: 10 })).toEqual(commit.ledger);
      }
      const untouched = await ctx.storage.load({ workspaceId: existing, keys: ['reply:r1'], now: ctx.now() });
      expect(untouched.version).toBe(1);
      expect(untouched.records).toEqual([]);
      expect(await ctx.storage.commit([])).toEqual([]);
    },
  ],
  [
    'commit - concurrent commits at one version: exactly one wins, and only its writes land',
    async (ctx) => {
      const workspaceId = await created(ctx, undefined, 100 * C);
      const racers = Math.max(10, ctx.concurrency.meters * 4);
      const commits = await Promise.all(
        Array.from({ length: racers }, async (_, i) => {
          const commit = await holdCommit(ctx, workspaceId, `racer${i}`, ctx.now() + HOUR);
          commit.state.ledgerSeq = 2;
          commit.ledger = [row(workspaceId, 2, 'topup', 0, ctx.now(), { grantId: `topup:racer${i}` })];
          return commit;
        }),
      );
      const results = await Promise.all(commits.map((commit) => ctx.storage.commit([commit]).then((r) => r[0])));
      const winners = results.flatMap((result, i) => (result === 'committed' ? [i] : []));
      expect(winners).toHaveLength(1);
      expect(results.filter((r) => r === 'conflict')).toHaveLength(racers - 1);
      const winner = winners[0]!;
      const loaded = await ctx.storage.load({ workspaceId, keys: commits.map((_, i) => `reply:racer${i}`), now: ctx.now() });
      expect(loaded.version).toBe(2);
      expect(loaded.state).toEqual(commits[winner]!.state);
      expect(loaded.records.map((r) => r.key)).toEqual([`reply:racer${winner}`]);
      const rows = await ctx.storage.ledger({ workspaceId, limit: 100 });
      expect(rows.map((r) => r.grantId)).toEqual(['period:0', `topup:racer${winner}`]);
    },
  ],
  [
    'records - upsert by key and come back unchanged',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const first = await holdCommit(ctx, workspaceId, 'r1', ctx.now() + HOUR);
      const topUp: StoredRecord = {
        key: 'topup:g1',
        holdExpiresAt: null,
        value: { type: 'topup', grantId: 'g1', amount: MAX_MICROS, expiresAt: null, createdAt: ctx.now() },
      };
      first.records = [...first.records, topUp];
      expect(await ctx.storage.commit([first])).toEqual(['committed']);
      let loaded = await ctx.storage.load({ workspaceId, keys: ['reply:r1', 'topup:g1', 'reply:none'], now: ctx.now() });
      expect(byKey(loaded.records)).toEqual(byKey(first.records));
      // Rewriting a key replaces the record: one record per key, the latest value.
      const settled = await settleCommit(ctx, workspaceId, 'r1', { inputTokens: 12, outputTokens: 34 });
      expect(await ctx.storage.commit([settled])).toEqual(['committed']);
      loaded = await ctx.storage.load({ workspaceId, keys: ['reply:r1', 'topup:g1'], now: ctx.now() + DAY });
      expect(byKey(loaded.records)).toEqual(byKey([settled.records[0]!, topUp]));
      expect(loaded.lapsed).toEqual([]);
      // The same key in another workspace is another record.
      const other = await created(ctx);
      expect((await ctx.storage.load({ workspaceId: other, keys: ['reply:r1', 'topup:g1'], now: ctx.now() })).records).toEqual([]);
    },
  ],
  [
    'records - ids and keys with any characters round-trip and never collide',
    async (ctx) => {
      const base = ctx.id('ws');
      const ids = ODD.map((suffix) => base + suffix);
      ids.push(base + 'x'.repeat(255 - base.length));
      for (const [index, workspaceId] of ids.entries()) {
        await created(ctx, workspaceId, (index + 1) * C);
        const replyId = `reply${ODD[index % ODD.length]}`;
        const commit = await holdCommit(ctx, workspaceId, replyId, ctx.now() + HOUR);
        (commit.records[0]!.value as { agentId: string }).agentId = `agent${ODD[index % ODD.length]}`;
        expect(await ctx.storage.commit([commit])).toEqual(['committed']);
        const settled = await settleCommit(ctx, workspaceId, replyId, {
          agentId: `agent${ODD[index % ODD.length]}`,
          model: `model ${index} ✓`,
          conversationId: `conv${ODD[index % ODD.length]}`,
        });
        expect(await ctx.storage.commit([settled])).toEqual(['committed']);
      }
      for (const [index, workspaceId] of ids.entries()) {
        const replyId = `reply${ODD[index % ODD.length]}`;
        const loaded = await ctx.storage.load({
          workspaceId,
          keys: ODD.map((s) => `reply${s}`).map((id) => `reply:${id}`),
          now: ctx.now(),
        });
        expect(loaded.state?.workspaceId, JSON.stringify(workspaceId)).toBe(workspaceId);
        expect(loaded.state?.account?.allotment).toBe((index + 1) * C);
        expect(loaded.records.map((r) => r.key)).toEqual([`reply:${replyId}`]);
        expect(loaded.records[0]!.value).toMatchObject({
          replyId,
          workspaceId,
          agentId: `agent${ODD[index % ODD.length]}`,
          status: 'settled',
        });
        const rows = await ctx.storage.ledger({ workspaceId, limit: 10 });
        expect(rows.map((r) => r.workspaceId)).toEqual([workspaceId, workspaceId]);
        expect(rows[1]).toMatchObject({ replyId, agentId: `agent${ODD[index % ODD.length]}`, model: `model ${index} ✓` });
        expect(await ctx.storage.ledger({ workspaceId, agentId: `agent${ODD[index % ODD.length]}`, limit: 10 })).toEqual([rows[1]]);
        if (ctx.storage.usage) {
          const usage = await ctx.storage.usage({ workspaceId, from: ctx.now(), to: ctx.now() + 1, groupBy: 'model', byDay: false });
          expect(usage.map((u) => u.key)).toEqual([`model ${index} ✓`]);
        }
      }
      expect(holdFree(await ctx.storage.load({ workspaceId: `${base}:a:`, keys: [], now: ctx.now() }))).toEqual({
        version: 0,
        state: null,
        records: [],
        lapsed: [],
      });
      expect(await ctx.storage.ledger({ workspaceId: base, limit: 10 })).toEqual([]);
    },
  ],
  [
    'load - returns only the records asked for that exist',
    async (ctx) => {
      const workspaceId = await created(ctx);
      for (const id of ['a', 'b', 'c'])
        expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, id, ctx.now() + HOUR)])).toEqual(['committed']);
      const loaded = await ctx.storage.load({ workspaceId, keys: ['reply:a', 'reply:c', 'reply:zzz', 'topup:a'], now: ctx.now() });
      expect(loaded.records.map((r) => r.key).sort()).toEqual(['reply:a', 'reply:c']);
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).records).toEqual([]);
    },
  ],
  [
    'load - lapsed lists exactly the records whose holdExpiresAt is at or before now',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const t = ctx.now();
      const lapses = { early: t + MINUTE, same1: t + 2 * MINUTE, same2: t + 2 * MINUTE, late: t + HOUR };
      for (const [id, at] of Object.entries(lapses))
        expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, id, at)])).toEqual(['committed']);
      // A record with no hold is never lapsed, whatever its value says.
      const topUp: StoredRecord = {
        key: 'topup:g',
        holdExpiresAt: null,
        value: { type: 'topup', grantId: 'g', amount: 0, expiresAt: t, createdAt: t },
      };
      const loaded0 = await ctx.storage.load({ workspaceId, keys: [], now: t });
      expect(
        await ctx.storage.commit([{ workspaceId, expectedVersion: loaded0.version, state: loaded0.state!, ledger: [], records: [topUp] }]),
      ).toEqual(['committed']);
      const other = await created(ctx);
      expect(await ctx.storage.commit([await holdCommit(ctx, other, 'early', t + MINUTE)])).toEqual(['committed']);
      const lapsedAt = async (now: number) => (await ctx.storage.load({ workspaceId, keys: [], now })).lapsed.map((r) => r.key).sort();
      expect(await lapsedAt(t)).toEqual([]);
      expect(await lapsedAt(t + MINUTE - 1)).toEqual([]);
      expect(await lapsedAt(t + MINUTE)).toEqual(['reply:early']);
      expect(await lapsedAt(t + 2 * MINUTE - 1)).toEqual(['reply:early']);
      expect(await lapsedAt(t + 2 * MINUTE)).toEqual(['reply:early', 'reply:same1', 'reply:same2']);
      expect(await lapsedAt(t + DAY)).toEqual(['reply:early', 'reply:late', 'reply:same1', 'reply:same2']);
      // A load is not a write: asking again lists them again.
      expect(await lapsedAt(t + DAY)).toEqual(['reply:early', 'reply:late', 'reply:same1', 'reply:same2']);
      const full = await ctx.storage.load({ workspaceId, keys: [], now: t + DAY });
      for (const record of full.lapsed)
        expect(record).toEqual(
          replyStored(workspaceId, record.key.slice('reply:'.length), t, { expiresAt: lapses[record.key.slice(6) as keyof typeof lapses] }),
        );
    },
  ],
  [
    'load - a record rewritten without a hold stops being lapsed; one rewritten with a later lapse moves',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const t = ctx.now();
      for (const id of ['settled', 'extended', 'kept'])
        expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, id, t + MINUTE)])).toEqual(['committed']);
      expect(await ctx.storage.commit([await settleCommit(ctx, workspaceId, 'settled')])).toEqual(['committed']);
      const loaded = await ctx.storage.load({ workspaceId, keys: ['reply:extended'], now: t });
      const extended = {
        ...loaded.records[0]!,
        holdExpiresAt: t + HOUR,
        value: { ...loaded.records[0]!.value, expiresAt: t + HOUR },
      } as StoredRecord;
      expect(
        await ctx.storage.commit([{ workspaceId, expectedVersion: loaded.version, state: loaded.state!, ledger: [], records: [extended] }]),
      ).toEqual(['committed']);
      const lapsedAt = async (now: number) => (await ctx.storage.load({ workspaceId, keys: [], now })).lapsed.map((r) => r.key).sort();
      expect(await lapsedAt(t + MINUTE)).toEqual(['reply:kept']);
      expect(await lapsedAt(t + HOUR - 1)).toEqual(['reply:kept']);
      expect(await lapsedAt(t + HOUR)).toEqual(['reply:extended', 'reply:kept']);
      // Lapsed records come back as they were last written.
      expect((await ctx.storage.load({ workspaceId, keys: [], now: t + HOUR })).lapsed.find((r) => r.key === 'reply:extended')).toEqual(
        extended,
      );
    },
  ],
  [
    'load - nextLapseAt, when reported, is the earliest hold of the workspace, lapsed ones included',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const t = ctx.now();
      const next = async (now: number) => (await ctx.storage.load({ workspaceId, keys: [], now })).nextLapseAt;
      if ((await next(t)) === undefined) return; // the store does not report it: the meter always loads
      expect(await next(t)).toBeNull();
      for (const [id, at] of [
        ['late', t + HOUR],
        ['early', t + MINUTE],
        ['settled', t + MINUTE / 2],
      ] as const)
        expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, id, at)])).toEqual(['committed']);
      expect(await next(t)).toBe(t + MINUTE / 2);
      expect(await ctx.storage.commit([await settleCommit(ctx, workspaceId, 'settled')])).toEqual(['committed']);
      expect(await next(t)).toBe(t + MINUTE);
      // Past its lapse a hold is still open until a commit ends it.
      expect(await next(t + DAY)).toBe(t + MINUTE);
      const other = await created(ctx);
      expect(await ctx.storage.commit([await holdCommit(ctx, other, 'x', t + 1)])).toEqual(['committed']);
      expect(await next(t)).toBe(t + MINUTE);
      expect(await ctx.storage.commit([await settleCommit(ctx, workspaceId, 'early')])).toEqual(['committed']);
      expect(await next(t)).toBe(t + HOUR);
    },
  ],
  [
    'commit - absentKeys: when one of them exists the commit conflicts whole and writes nothing',
    async (ctx) => {
      const workspaceId = await created(ctx);
      expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, 'taken', ctx.now() + HOUR)])).toEqual(['committed']);
      const clash = await holdCommit(ctx, workspaceId, 'new', ctx.now() + HOUR);
      clash.ledger = [row(workspaceId, 2, 'topup', 0, ctx.now(), { grantId: 'topup:clash' })];
      clash.state.ledgerSeq = 2;
      const before = await ctx.storage.load({ workspaceId, keys: ['reply:new', 'reply:taken'], now: ctx.now() });
      expect(await ctx.storage.commit([{ ...clash, absentKeys: ['reply:new', 'reply:taken'] }])).toEqual(['conflict']);
      const after = await ctx.storage.load({ workspaceId, keys: ['reply:new', 'reply:taken'], now: ctx.now() });
      expect(after).toEqual(before);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toHaveLength(1);
      // Keys that are indeed absent (including the one the commit writes) let it through.
      expect(await ctx.storage.commit([{ ...clash, absentKeys: ['reply:new', 'topup:never'] }])).toEqual(['committed']);
      expect((await ctx.storage.load({ workspaceId, keys: ['reply:new'], now: ctx.now() })).records).toEqual(clash.records);
    },
  ],
  [
    'lock - commits of other writers wait for it, then meet the version its commit wrote',
    async (ctx) => {
      const lock = ctx.storage.lock?.bind(ctx.storage);
      if (!lock) return;
      const workspaceId = await created(ctx);
      const inside = await holdCommit(ctx, workspaceId, 'inside', ctx.now() + HOUR);
      const outside = await holdCommit(ctx, workspaceId, 'outside', ctx.now() + HOUR);
      let outsideDone = false;
      let racing: Promise<CommitResult[]> | undefined;
      const answer = await lock(workspaceId, async (workspace) => {
        const loaded = await workspace.load({ workspaceId, keys: ['reply:inside'], now: ctx.now() });
        expect(loaded.version).toBe(1);
        racing = ctx.storage.commit([outside]).finally(() => {
          outsideDone = true;
        });
        // Time for the other writer's commit to reach the store: it must wait, not land.
        await new Promise((resolve) => setTimeout(resolve, 100));
        expect(outsideDone, 'a commit outside the lock answered while the lock was held').toBe(false);
        return workspace.commit(inside);
      });
      expect(answer).toBe('committed');
      expect(await racing).toEqual(['conflict']);
      const after = await ctx.storage.load({ workspaceId, keys: ['reply:inside', 'reply:outside'], now: ctx.now() });
      expect(after.version).toBe(2);
      expect(after.state).toEqual(inside.state);
      expect(after.records).toEqual(inside.records);
    },
  ],
  [
    'lock - when its work fails nothing it committed lands, and the workspace is free again',
    async (ctx) => {
      const lock = ctx.storage.lock?.bind(ctx.storage);
      if (!lock) return;
      const workspaceId = await created(ctx);
      const before = await ctx.storage.load({ workspaceId, keys: ['reply:lost'], now: ctx.now() });
      const lost = await holdCommit(ctx, workspaceId, 'lost', ctx.now() + HOUR);
      lost.ledger = [row(workspaceId, 2, 'topup', 0, ctx.now(), { grantId: 'topup:lost' })];
      lost.state.ledgerSeq = 2;
      const failure = new Error('the work failed after its commit');
      const failing = lock(workspaceId, async (workspace) => {
        expect(await workspace.commit(lost)).toBe('committed');
        throw failure;
      });
      await expect(failing).rejects.toBe(failure);
      expect(await ctx.storage.load({ workspaceId, keys: ['reply:lost'], now: ctx.now() })).toEqual(before);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toHaveLength(1);
      // Inside the lock the version still guards: a stale commit conflicts, a current one lands.
      const stale = { ...lost, expectedVersion: 0 };
      const results = await lock(workspaceId, async (workspace) => [await workspace.commit(stale)]);
      expect(results).toEqual(['conflict']);
      expect(await ctx.storage.commit([lost])).toEqual(['committed']);
      const fresh = ctx.id('ws');
      expect(await lock(fresh, (workspace) => workspace.commit(create(ctx, fresh)))).toBe('committed');
      expect((await ctx.storage.load({ workspaceId: fresh, keys: [], now: ctx.now() })).version).toBe(1);
    },
  ],
  [
    'ledger - limit and afterSeq page through every row exactly once, in seq order',
    async (ctx) => {
      const { workspaceId, rows } = await busy(ctx);
      expect(rows.map((r) => r.seq)).toEqual(rows.map((_, i) => i + 1));
      for (const limit of [1, 4, 7, rows.length, rows.length + 5]) expect(await pages(ctx, { workspaceId, limit })).toEqual(rows);
      expect(await ctx.storage.ledger({ workspaceId, afterSeq: 10, limit: 3 })).toEqual(rows.slice(10, 13));
      expect(await ctx.storage.ledger({ workspaceId, afterSeq: rows.length, limit: 3 })).toEqual([]);
    },
  ],
  [
    'ledger - from is inclusive and to is exclusive',
    async (ctx) => {
      const { workspaceId, rows } = await busy(ctx);
      const from = rows[3]!.at;
      const to = rows[9]!.at;
      const page = await ctx.storage.ledger({ workspaceId, from, to, limit: 1000 });
      expect(page).toEqual(rows.filter((r) => r.at >= from && r.at < to));
      expect(page[0]?.at).toBe(from);
      expect(page.some((r) => r.at === to)).toBe(false);
      expect(await ctx.storage.ledger({ workspaceId, to, limit: 1000 })).toEqual(rows.filter((r) => r.at < to));
      expect(await ctx.storage.ledger({ workspaceId, from: to, to, limit: 10 })).toEqual([]);
      expect(await ctx.storage.ledger({ workspaceId, from: rows[rows.length - 1]!.at + 1, limit: 10 })).toEqual([]);
    },
  ],
  [
    'ledger - agentId and kinds filter, and combine with windows and paging',
    async (ctx) => {
      const { workspaceId, rows } = await busy(ctx);
      expect(await ctx.storage.ledger({ workspaceId, agentId: 'agent_odd', limit: 1000 })).toEqual(
        rows.filter((r) => r.agentId === 'agent_odd'),
      );
      expect(await ctx.storage.ledger({ workspaceId, agentId: 'agent_nobody', limit: 10 })).toEqual([]);
      expect(await ctx.storage.ledger({ workspaceId, kinds: ['reply'], limit: 1000 })).toEqual(rows.filter((r) => r.kind === 'reply'));
      expect(await ctx.storage.ledger({ workspaceId, kinds: ['topup', 'expiry'], limit: 1000 })).toEqual(
        rows.filter((r) => r.kind === 'topup' || r.kind === 'expiry'),
      );
      const from = rows[2]!.at;
      const to = rows[rows.length - 3]!.at;
      const expected = rows.filter((r) => r.at >= from && r.at < to && r.agentId === 'agent_even' && r.kind === 'reply');
      expect(expected.length).toBeGreaterThan(3);
      expect(await pages(ctx, { workspaceId, from, to, agentId: 'agent_even', kinds: ['reply'], limit: 2 })).toEqual(expected);
      expect(await pages(ctx, { workspaceId, from, to, kinds: ['reply', 'topup'], limit: 3 })).toEqual(
        rows.filter((r) => r.at >= from && r.at < to && r.kind !== 'expiry' && r.kind !== 'grant'),
      );
    },
  ],
  [
    'ledger - keeps seq order even when the clock goes back',
    async (ctx) => {
      const workspaceId = await created(ctx);
      const t = ctx.now();
      const written = await append(ctx, workspaceId, [
        row('', 0, 'topup', C, t + HOUR),
        row('', 0, 'topup', C, t + 30 * MINUTE),
        row('', 0, 'topup', C, t + 2 * HOUR),
      ]);
      const rows = await ctx.storage.ledger({ workspaceId, limit: 10 });
      expect(rows.map((r) => r.seq)).toEqual([1, 2, 3, 4]);
      expect(rows.slice(1)).toEqual(written);
      expect((await ctx.storage.ledger({ workspaceId, from: t + 30 * MINUTE, limit: 10 })).map((r) => r.seq)).toEqual([2, 3, 4]);
      expect((await ctx.storage.ledger({ workspaceId, from: t + 30 * MINUTE, to: t + 2 * HOUR, limit: 10 })).map((r) => r.seq)).toEqual([
        2, 3,
      ]);
      expect((await ctx.storage.ledger({ workspaceId, from: t + 30 * MINUTE, to: t + HOUR, limit: 10 })).map((r) => r.seq)).toEqual([3]);
    },
  ],
  [
    'ledger - shows only the rows of the workspace asked for',
    async (ctx) => {
      const a = await created(ctx);
      const b = await created(ctx, `${a}_`);
      await append(ctx, b, [row('', 0, 'topup', C, ctx.now())]);
      expect((await ctx.storage.ledger({ workspaceId: a, limit: 10 })).map((r) => r.workspaceId)).toEqual([a]);
      expect((await ctx.storage.ledger({ workspaceId: b, limit: 10 })).map((r) => r.workspaceId)).toEqual([b, b]);
      expect(await ctx.storage.ledger({ workspaceId: ctx.id('missing'), limit: 10 })).toEqual([]);
    },
  ],
  [
    'ledger - big, negative and zero amounts and every column round-trip exactly',
    async (ctx) => {
      const workspaceId = await created(ctx, undefined, 0);
      const at = Number.MAX_SAFE_INTEGER - DAY;
      const written = await append(ctx, workspaceId, [
        row('', 0, 'topup', MAX_MICROS, ctx.now(), { grantId: 'topup:big' }),
        row('', 0, 'expiry', -MAX_MICROS, ctx.now(), { grantId: 'topup:big' }),
        row('', 0, 'reply', 0, at, {
          replyId: 'r',
          agentId: 'a',
          conversationId: 'c',
          model: 'm',
          route: 'byo',
          priceVersion: 'v',
          inputTokens: MAX_MICROS,
          outputTokens: 0,
        }),
        row('', 0, 'plan_change', 1, 0, { plan: 'team' }),
        row('', 0, 'expiry', -1, 1, { grantId: 'period:0' }),
      ]);
      const rows = await ctx.storage.ledger({ workspaceId, limit: 10 });
      expect(rows.slice(1)).toEqual(written);
      for (const r of rows) {
        expect(typeof r.amount).toBe('number');
        expect(typeof r.at).toBe('number');
        expect(typeof r.seq).toBe('number');
      }
      expect(Object.is(rows[3]!.amount, 0)).toBe(true);
      expect(rows[1]!.amount).toBe(MAX_MICROS);
      expect(rows[2]!.amount).toBe(-MAX_MICROS);
      expect(rows[3]!.at).toBe(at);
      expect(Object.keys(rows[3]!).sort()).toEqual(Object.keys(written[2]!).sort());
      const state = (await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).state!;
      expect(state.ledgerSeq).toBe(6);
    },
  ],
  [
    'usage - equals UsageAccumulator over the same rows, per group and per UTC day',
    async (ctx) => {
      if (!ctx.storage.usage) return;
      const workspaceId = await created(ctx, undefined, 1000 * C);
      const midnight = Date.UTC(2026, 0, 16);
      const replies: Omit<LedgerRow, 'seq' | 'workspaceId'>[] = [];
      const at = [midnight - DAY - 1, midnight - 1, midnight, midnight + 1, midnight + DAY - 1, midnight + DAY, midnight + 3 * DAY + 5];
      for (let i = 0; i < 28; i++) {
        replies.push(
          row('', 0, 'reply', i % 5 === 0 ? 0 : -((i % 4) + 1) * C - (i === 7 ? 123_457 : 0), at[i % at.length]!, {
            replyId: `r${i}`,
            agentId: i % 6 === 0 ? null : `agent_${i % 3}`,
            model: i % 7 === 0 ? null : `model_${i % 2}`,
            conversationId: i % 5 === 0 ? null : `conv_${i % 4}`,
            route: i % 5 === 0 ? 'byo' : 'credits',
          }),
        );
      }
      // Rows of other kinds in the same window are never counted.
      replies.push(
        row('', 0, 'topup', 7 * C, midnight, { agentId: 'agent_0', grantId: 'topup:x' }),
        row('', 0, 'expiry', -2 * C, midnight, { agentId: 'agent_0', grantId: 'topup:x' }),
      );
      await append(ctx, workspaceId, replies);
      const other = await created(ctx);
      await append(ctx, other, [row('', 0, 'reply', -C, midnight, { agentId: 'agent_0', model: 'model_0', conversationId: 'conv_0' })]);
      const rows = await ctx.storage.ledger({ workspaceId, limit: 1000 });
      const windows: [number, number][] = [
        [midnight - 2 * DAY, midnight + 5 * DAY],
        [midnight, midnight + DAY],
        [midnight - 1, midnight + 1],
        [midnight, midnight],
      ];
      for (const [from, to] of windows) {
        for (const groupBy of ['agent', 'model', 'conversation'] as UsageGroupBy[]) {
          for (const byDay of [false, true]) {
            const expected = new UsageAccumulator(groupBy, byDay);
            for (const r of rows) if (r.at >= from && r.at < to) expected.add(r);
            const actual = await ctx.storage.usage({ workspaceId, from, to, groupBy, byDay });
            expect(sortUsage(actual), `usage ${groupBy} byDay=${byDay} [${from}, ${to})`).toEqual(sortUsage(expected.totals()));
            for (const u of actual) {
              expect(typeof u.amount).toBe('number');
              if (!byDay) expect(u.day).toBeUndefined();
            }
          }
        }
      }
      expect(
        await ctx.storage.usage({
          workspaceId: ctx.id('missing'),
          from: midnight - DAY,
          to: midnight + DAY,
          groupBy: 'agent',
          byDay: false,
        }),
      ).toEqual([]);
    },
  ],
  [
    'usage - big amounts sum exactly',
    async (ctx) => {
      if (!ctx.storage.usage) return;
      const workspaceId = await created(ctx, undefined, 0);
      const half = Math.floor(MAX_MICROS / 2);
      await append(ctx, workspaceId, [
        row('', 0, 'topup', MAX_MICROS, ctx.now(), { grantId: 'topup:big' }),
        row('', 0, 'reply', -half, ctx.now(), { agentId: 'a', model: 'm', conversationId: 'c' }),
        row('', 0, 'reply', -(MAX_MICROS - half), ctx.now(), { agentId: 'a', model: 'm', conversationId: 'c' }),
      ]);
      const usage = await ctx.storage.usage({ workspaceId, from: ctx.now(), to: ctx.now() + 1, groupBy: 'agent', byDay: true });
      expect(sortUsage(usage)).toEqual([{ key: 'a', day: Date.UTC(2026, 0, 15), amount: MAX_MICROS, replies: 2 }]);
    },
  ],
  [
    'migrate - running it again keeps every state, row and record',
    async (ctx) => {
      const workspaceId = await created(ctx);
      expect(await ctx.storage.commit([await holdCommit(ctx, workspaceId, 'r1', ctx.now() + MINUTE)])).toEqual(['committed']);
      const before = await ctx.storage.load({ workspaceId, keys: ['reply:r1'], now: ctx.now() + HOUR });
      const rows = await ctx.storage.ledger({ workspaceId, limit: 10 });
      await ctx.storage.migrate();
      await ctx.storage.migrate();
      expect(await ctx.storage.load({ workspaceId, keys: ['reply:r1'], now: ctx.now() + HOUR })).toEqual(before);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toEqual(rows);
      expect(await ctx.storage.commit([await settleCommit(ctx, workspaceId, 'r1')])).toEqual(['committed']);
      expect(await ctx.storage.ledger({ workspaceId, limit: 10 })).toHaveLength(2);
    },
  ],
]);
