/**
 * History through `CreditMeter`: ledger pages with cursors, filters and windows, and usage
 * reports per agent, model and conversation, which must match the ledger fallback whether
 * or not the store sums inside its database.
 */
import { expect } from 'vitest';
import type { CreditMeter } from '../meter/credit-meter.js';
import type { LedgerEntry, LedgerInput, UsageInput, UsageReport } from '../meter/types.js';
import type { CreditStorage } from '../storage/storage.js';
import {
  allRows,
  ask,
  BYO,
  CONFORMANCE_EPOCH,
  type ConformanceContext,
  DAY,
  defineCases,
  FOUR,
  HOUR,
  MINUTE,
  newMeter,
  newWorkspace,
  num,
  ONE,
  overriding,
  THREE,
  TWO,
} from './fixtures.js';

async function spend(meter: CreditMeter, workspaceId: string, model: string, extra: { agentId?: string; conversationId?: string } = {}) {
  return meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, model, extra))).replyId });
}

/** A workspace with 20 replies an hour apart, agents and conversations alternating, and a few top-ups. */
async function busy(ctx: ConformanceContext, meter: CreditMeter): Promise<string> {
  const workspaceId = await newWorkspace(ctx, meter, 1000);
  for (let i = 0; i < 20; i++) {
    ctx.advance(HOUR);
    await spend(meter, workspaceId, [ONE, TWO, THREE][i % 3]!, {
      agentId: i % 2 === 0 ? 'agent_even' : 'agent_odd',
      conversationId: `conv_${i % 4}`,
    });
    if (i % 7 === 6) await meter.addCredits({ workspaceId, credits: 1, grantId: `g${i}` });
  }
  return workspaceId;
}

/** Every entry the meter pages through, `limit` at a time. */
async function everyEntry(meter: CreditMeter, input: Omit<LedgerInput, 'cursor' | 'limit'>, limit: number): Promise<LedgerEntry[]> {
  const seen: LedgerEntry[] = [];
  let cursor: string | undefined;
  for (let guard = 0; guard < 1000; guard++) {
    const page = await meter.ledger({ ...input, limit, ...(cursor !== undefined && { cursor }) });
    expect(page.entries.length).toBeLessThanOrEqual(limit);
    seen.push(...page.entries);
    if (page.nextCursor === undefined) return seen;
    cursor = page.nextCursor;
  }
  throw new Error('ledger paging never ended');
}

function rowsOfReport(report: UsageReport) {
  return report.rows
    .map((row) => ({ key: row.key, credits: num(row.credits), replies: row.replies, bucket: row.bucket?.getTime() }))
    .sort((a, b) => (a.bucket ?? 0) - (b.bucket ?? 0) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

async function usage(meter: CreditMeter, input: UsageInput) {
  return rowsOfReport(await meter.usage(input));
}

/** The same store without `usage`: the meter then pages the ledger and sums in memory. */
function withoutUsage(storage: CreditStorage): CreditStorage {
  const { usage: _, ...rest } = overriding(storage, {});
  return rest;
}

export const analyticsCases = defineCases([
  // ledger -------------------------------------------------------------------
  [
    'ledger - through CreditMeter, entries come oldest first with increasing decimal ids',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'g' });
      ctx.advance(MINUTE);
      const charged = await spend(meter, workspaceId, TWO);
      ctx.advance(MINUTE);
      await meter.changePlan({ workspaceId, plan: 'team' });
      const { entries, nextCursor } = await meter.ledger({ workspaceId });
      expect(nextCursor).toBeUndefined();
      expect(entries.map((entry) => entry.kind)).toEqual(['grant', 'topup', 'reply', 'plan_change']);
      expect(entries[1]?.kind).toBe('topup');
      expect(entries[2]).toMatchObject({ id: charged.entryId, replyId: charged.replyId, model: TWO, route: 'credits' });
      expect(num(entries[2]!.credits)).toBe(-2);
      // Ids are page cursors: decimal digits (at most 20), increasing.
      for (const entry of entries) expect(entry.id).toMatch(/^\d{1,20}$/);
      const ids = entries.map((entry) => BigInt(entry.id));
      for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
    },
  ],
  [
    'ledger - through CreditMeter, a cursor pages through every entry exactly once',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await busy(ctx, meter);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.length).toBeGreaterThan(20);
      for (const limit of [1, 4, 7, rows.length, rows.length + 5]) {
        expect((await everyEntry(meter, { workspaceId }, limit)).map((entry) => entry.id)).toEqual(rows.map((row) => String(row.seq)));
      }
    },
  ],
  [
    'ledger - through CreditMeter, from is inclusive, to exclusive, and agentId filters, also across pages',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await busy(ctx, meter);
      const rows = await allRows(ctx.storage, workspaceId);
      const from = rows[3]!.at;
      const to = rows[rows.length - 4]!.at;
      const window = await everyEntry(meter, { workspaceId, from: new Date(from), to: new Date(to) }, 3);
      expect(window.map((entry) => entry.id)).toEqual(rows.filter((row) => row.at >= from && row.at < to).map((row) => String(row.seq)));
      const odd = await everyEntry(meter, { workspaceId, agentId: 'agent_odd' }, 4);
      expect(odd.map((entry) => entry.id)).toEqual(rows.filter((row) => row.agentId === 'agent_odd').map((row) => String(row.seq)));
      expect(odd).toHaveLength(10);
      const both = await everyEntry(meter, { workspaceId, agentId: 'agent_even', from: new Date(from), to: new Date(to) }, 2);
      expect(both.map((entry) => entry.id)).toEqual(
        rows.filter((row) => row.at >= from && row.at < to && row.agentId === 'agent_even').map((row) => String(row.seq)),
      );
      expect((await meter.ledger({ workspaceId, agentId: 'agent_nobody' })).entries).toEqual([]);
    },
  ],
  [
    'ledger and usage - a window starting days into the history holds exactly its rows, written by app servers whose clocks disagree by hours',
    async (ctx) => {
      // One app server's clock runs three hours behind the other's: its rows come out of time order.
      const ahead = newMeter(ctx);
      const behind = newMeter(ctx, { clock: () => new Date(ctx.now() - 3 * HOUR) });
      const workspaceId = await newWorkspace(ctx, ahead, 1000);
      for (let i = 0; i < 40; i++) {
        ctx.advance(2 * HOUR + 7 * MINUTE);
        const meter = i % 3 === 0 ? behind : ahead;
        await spend(meter, workspaceId, i % 2 ? ONE : TWO, { agentId: i % 2 ? 'a1' : 'a2' });
        if (i % 9 === 4) await meter.addCredits({ workspaceId, credits: 1, grantId: `g${i}` });
      }
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.some((row, i) => i > 0 && row.at < rows[i - 1]!.at)).toBe(true);
      expect(rows[rows.length - 1]!.at - rows[0]!.at).toBeGreaterThan(3 * DAY);
      const reader = newMeter(ctx);
      const fallback = newMeter({ ...ctx, storage: withoutUsage(ctx.storage) });
      for (const row of rows.filter((_, i) => i % 6 === 1)) {
        for (const from of [row.at - 3 * HOUR, row.at, row.at + 1]) {
          const expected = rows.filter((candidate) => candidate.at >= from).map((candidate) => String(candidate.seq));
          expect((await everyEntry(reader, { workspaceId, from: new Date(from) }, 4)).map((entry) => entry.id)).toEqual(expected);
          const to = from + DAY;
          const window = { workspaceId, from: new Date(from), to: new Date(to), groupBy: 'agent' } as const;
          const replies = rows.filter((candidate) => candidate.kind === 'reply' && candidate.at >= from && candidate.at < to);
          const sums = ['a1', 'a2'].flatMap((agentId) => {
            const mine = replies.filter((reply) => reply.agentId === agentId);
            return mine.length
              ? [
                  {
                    key: agentId,
                    credits: -mine.reduce((sum, reply) => sum + reply.amount, 0) / 1e6,
                    replies: mine.length,
                    bucket: undefined,
                  },
                ]
              : [];
          });
          expect(await usage(reader, window)).toEqual(sums);
          expect(await usage(fallback, window)).toEqual(sums);
        }
      }
      expect((await reader.ledger({ workspaceId, from: new Date(ctx.now() + 2 * DAY) })).entries).toEqual([]);
    },
  ],
  [
    'ledger - a workspace erased keeping its ledger, then written again (created afresh, or self-hosted replies): a window still holds its rows from before the erasure',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 100);
      for (let i = 0; i < 6; i++) {
        ctx.advance(10 * HOUR);
        await spend(meter, workspaceId, ONE);
      }
      await meter.deleteWorkspace({ workspaceId, keepLedger: true });
      ctx.advance(HOUR);
      await meter.createWorkspace({ workspaceId, plan: 'custom', allotment: 50 });
      for (let i = 0; i < 6; i++) {
        ctx.advance(10 * HOUR);
        await spend(meter, workspaceId, TWO);
      }
      // A workspace known only from self-hosted replies has no account to close, but its rows stay too.
      const hosted = newMeter(ctx, { mode: 'self-hosted' });
      const selfHosted = ctx.id('selfhosted');
      ctx.track(selfHosted);
      const reply = () => hosted.reply({ ...ask(selfHosted, FOUR), input: 'hi' });
      for (let i = 0; i < 4; i++, ctx.advance(10 * HOUR)) await reply();
      await hosted.deleteWorkspace({ workspaceId: selfHosted, keepLedger: true });
      for (let i = 0; i < 4; i++, ctx.advance(10 * HOUR)) await reply();
      for (const [id, reader] of [
        [workspaceId, meter],
        [selfHosted, hosted],
      ] as const) {
        const rows = await allRows(ctx.storage, id);
        for (const row of rows) {
          const expected = rows.filter((candidate) => candidate.at >= row.at).map((candidate) => String(candidate.seq));
          expect((await everyEntry(reader, { workspaceId: id, from: new Date(row.at) }, 3)).map((entry) => entry.id)).toEqual(expected);
        }
      }
    },
  ],
  [
    'ledger - through CreditMeter, entries of another workspace never show',
    async (ctx) => {
      const meter = newMeter(ctx);
      const a = await newWorkspace(ctx, meter, 10);
      const b = await newWorkspace(ctx, meter, 10, { workspaceId: `${a}x` });
      await spend(meter, a, ONE);
      await spend(meter, b, TWO);
      expect((await meter.ledger({ workspaceId: a })).entries.map((entry) => [entry.workspaceId, entry.kind])).toEqual([
        [a, 'grant'],
        [a, 'reply'],
      ]);
      expect((await meter.ledger({ workspaceId: ctx.id('missing') })).entries).toEqual([]);
    },
  ],
  // usage --------------------------------------------------------------------
  [
    'usage - sums credits and counts replies per agent, model and conversation',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 100);
      const from = new Date(ctx.now());
      await spend(meter, workspaceId, ONE, { agentId: 'a1', conversationId: 'c1' });
      await spend(meter, workspaceId, TWO, { agentId: 'a1', conversationId: 'c1' });
      await spend(meter, workspaceId, FOUR, { agentId: 'a2', conversationId: 'c2' });
      await spend(meter, workspaceId, TWO, { agentId: 'a2', conversationId: 'c2' });
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'g' }); // not a reply: never counted
      const to = new Date(ctx.now() + 1);
      expect(await usage(meter, { workspaceId, from, to, groupBy: 'agent' })).toEqual([
        { key: 'a1', credits: 3, replies: 2, bucket: undefined },
        { key: 'a2', credits: 6, replies: 2, bucket: undefined },
      ]);
      expect(await usage(meter, { workspaceId, from, to, groupBy: 'model' })).toEqual([
        { key: FOUR, credits: 4, replies: 1, bucket: undefined },
        { key: ONE, credits: 1, replies: 1, bucket: undefined },
        { key: TWO, credits: 4, replies: 2, bucket: undefined },
      ]);
      expect(await usage(meter, { workspaceId, from, to, groupBy: 'conversation' })).toEqual([
        { key: 'c1', credits: 3, replies: 2, bucket: undefined },
        { key: 'c2', credits: 6, replies: 2, bucket: undefined },
      ]);
      const report = await meter.usage({ workspaceId, from, to, groupBy: 'agent' });
      expect([num(report.totalCredits), report.totalReplies]).toEqual([9, 4]);
    },
  ],
  [
    'usage - the window is half-open',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 100);
      const at = (offset: number) => CONFORMANCE_EPOCH + offset;
      for (const [offset, model] of [
        [HOUR - 1, ONE],
        [HOUR, TWO],
        [2 * HOUR - 1, FOUR],
        [2 * HOUR, THREE],
      ] as const) {
        ctx.setNow(at(offset));
        await spend(meter, workspaceId, model);
      }
      expect(await usage(meter, { workspaceId, from: new Date(at(HOUR)), to: new Date(at(2 * HOUR)), groupBy: 'agent' })).toEqual([
        { key: 'agent_a', credits: 6, replies: 2, bucket: undefined },
      ]);
      expect(await usage(meter, { workspaceId, from: new Date(at(HOUR)), to: new Date(at(HOUR)), groupBy: 'agent' })).toEqual([]);
    },
  ],
  [
    'usage - by day splits replies by UTC day',
    async (ctx) => {
      const meter = newMeter(ctx, { holdTtlMs: 3 * DAY });
      const workspaceId = await newWorkspace(ctx, meter, 100);
      const midnight = Date.UTC(2026, 0, 16);
      for (const [at, model, agentId] of [
        [midnight - 1, ONE, 'agent_a'],
        [midnight, TWO, 'agent_a'],
        [midnight + DAY - 1, FOUR, 'agent_a'],
        [midnight + DAY, FOUR, 'agent_b'],
      ] as const) {
        ctx.setNow(at);
        await spend(meter, workspaceId, model, { agentId });
      }
      expect(
        await usage(meter, {
          workspaceId,
          from: new Date(midnight - DAY),
          to: new Date(midnight + 2 * DAY),
          groupBy: 'agent',
          interval: 'day',
        }),
      ).toEqual([
        { key: 'agent_a', credits: 1, replies: 1, bucket: midnight - DAY },
        { key: 'agent_a', credits: 6, replies: 2, bucket: midnight },
        { key: 'agent_b', credits: 4, replies: 1, bucket: midnight + DAY },
      ]);
    },
  ],
  [
    'usage - byo replies count with 0 credits',
    async (ctx) => {
      const meter = newMeter(ctx, { byoKeys: () => 'sk-conformance' });
      const workspaceId = await newWorkspace(ctx, meter, 100);
      const from = new Date(ctx.now());
      await spend(meter, workspaceId, TWO, { agentId: 'a1' });
      await spend(meter, workspaceId, BYO, { agentId: 'a1' });
      await spend(meter, workspaceId, BYO, { agentId: 'a2' });
      expect(await usage(meter, { workspaceId, from, to: new Date(ctx.now() + 1), groupBy: 'agent' })).toEqual([
        { key: 'a1', credits: 2, replies: 2, bucket: undefined },
        { key: 'a2', credits: 0, replies: 1, bucket: undefined },
      ]);
    },
  ],
  [
    'usage - includes unmetered replies of workspaces without an account (self-hosted)',
    async (ctx) => {
      const meter = newMeter(ctx, { mode: 'self-hosted' });
      const workspaceId = ctx.id('selfhosted');
      ctx.track(workspaceId);
      const from = new Date(ctx.now());
      for (const agentId of ['a1', 'a1', 'a2']) await meter.reply({ ...ask(workspaceId, FOUR, { agentId }), input: 'hi' });
      expect(await usage(meter, { workspaceId, from, to: new Date(ctx.now() + 1), groupBy: 'agent' })).toEqual([
        { key: 'a1', credits: 0, replies: 2, bucket: undefined },
        { key: 'a2', credits: 0, replies: 1, bucket: undefined },
      ]);
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(3);
    },
  ],
  [
    'usage - ignores other workspaces and empty windows',
    async (ctx) => {
      const meter = newMeter(ctx);
      const a = await newWorkspace(ctx, meter, 100);
      const b = await newWorkspace(ctx, meter, 100, { workspaceId: `${a}_` });
      const from = new Date(ctx.now());
      await spend(meter, a, ONE);
      await spend(meter, b, TWO);
      const to = new Date(ctx.now() + 1);
      expect(await usage(meter, { workspaceId: a, from, to, groupBy: 'model' })).toEqual([
        { key: ONE, credits: 1, replies: 1, bucket: undefined },
      ]);
      expect(await usage(meter, { workspaceId: ctx.id('missing'), from, to, groupBy: 'model' })).toEqual([]);
      expect(await usage(meter, { workspaceId: a, from: to, to: new Date(to.getTime() + DAY), groupBy: 'model' })).toEqual([]);
    },
  ],
  [
    "usage - the store's sums equal the meter's ledger fallback",
    async (ctx) => {
      const meter = newMeter(ctx, { byoKeys: () => 'sk-conformance' });
      const fallback = newMeter(ctx, { storage: withoutUsage(ctx.storage) });
      const workspaceId = await busy(ctx, meter);
      await spend(meter, workspaceId, BYO, { agentId: 'agent_byo' });
      const end = ctx.now() + 1;
      for (const groupBy of ['agent', 'model', 'conversation'] as const) {
        for (const interval of [undefined, 'day', 'week', 'month'] as const) {
          for (const [from, to] of [
            [CONFORMANCE_EPOCH, end],
            [CONFORMANCE_EPOCH + 5 * HOUR, CONFORMANCE_EPOCH + 15 * HOUR],
          ] as const) {
            const input = { workspaceId, from: new Date(from), to: new Date(to), groupBy, ...(interval && { interval }) };
            expect(await usage(meter, input), `${groupBy} ${interval ?? 'total'} [${from}, ${to})`).toEqual(await usage(fallback, input));
          }
        }
      }
    },
  ],
]);
