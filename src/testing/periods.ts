/**
 * Billing periods through `CreditMeter`: renewal, rollover, catch-up over missed periods,
 * holds that straddle a period end, racing renewals from several meters, and low-balance
 * alerts once per period.
 */
import { expect } from 'vitest';
import {
  allRows,
  ask,
  C,
  type ConformanceContext,
  DAY,
  defineCases,
  FOUR,
  HOUR,
  MINUTE,
  money,
  newMeter,
  newWorkspace,
  num,
  ONE,
  race,
  racingMeters,
  rowsOf,
  sum,
  THREE,
} from './fixtures.js';

/** The end of a workspace's current period, epoch ms. */
async function periodEnd(ctx: ConformanceContext, workspaceId: string): Promise<number> {
  return (await newMeter(ctx).getWorkspace(workspaceId)).periodEnd.getTime();
}

export const periodCases = defineCases([
  [
    'renew - moves to the next period with a new allotment grant and expires the old one',
    async (ctx) => {
      const meter = newMeter(ctx);
      const renewals: unknown[] = [];
      meter.on('period.renewed', (event) => {
        renewals.push({ expired: num(event.expired), carried: num(event.carried), allotment: num(event.allotment) });
      });
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      await meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, THREE))).replyId });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end);
      const { summary, balance, held, used } = await money(meter, workspaceId);
      expect({ balance, held, used }).toEqual({ balance: 10, held: 0, used: 0 });
      expect(summary.periodStart.getTime()).toBe(end);
      expect(summary.grants.map((g) => [g.grantId, num(g.remaining)])).toEqual([['period:1', 10]]);
      expect(renewals).toEqual([{ expired: 7, carried: 0, allotment: 10 }]);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.map((row) => [row.kind, row.amount, row.grantId, row.at])).toEqual([
        ['grant', 10 * C, 'period:0', rows[0]!.at],
        ['reply', -3 * C, null, rows[1]!.at],
        ['expiry', -7 * C, 'period:0', end],
        ['grant', 10 * C, 'period:1', end],
      ]);
      expect(rows[3]!.plan).toBe('starter');
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).state?.account).toMatchObject({
        periodIndex: 1,
        periodStart: end,
        usedThisPeriod: 0,
      });
    },
  ],
  [
    'renew - one millisecond before the period end renews nothing',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end - 1);
      expect((await meter.getWorkspace(workspaceId)).periodEnd.getTime()).toBe(end);
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
    },
  ],
  [
    'renew - a reserve at or after the period end renews first, then holds in the new period',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end + DAY);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      expect(hold.status).toBe('held');
      const { summary, balance, held } = await money(meter, workspaceId);
      expect({ balance, held }).toEqual({ balance: 6, held: 4 });
      expect(summary.periodStart.getTime()).toBe(end);
      expect((await rowsOf(ctx, workspaceId, 'grant')).map((row) => row.grantId)).toEqual(['period:0', 'period:1']);
    },
  ],
  [
    'renew - exactly once when several meters read after the period end',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 0, { plan: 'starter' });
      ctx.setNow((await periodEnd(ctx, workspaceId)) + 1);
      const racers = Math.max(2, ctx.concurrency.meters * 4);
      const { errors } = await race(racers, (i) => fleet[i % fleet.length]!.getWorkspace(workspaceId));
      expect(errors).toEqual([]);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.filter((row) => row.kind === 'grant' && row.grantId === 'period:1')).toHaveLength(1);
      expect(rows.filter((row) => row.kind === 'expiry')).toHaveLength(1);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 10 });
    },
  ],
  [
    'renew - carries min(unused, cap) of the allotment over and expires the rest',
    async (ctx) => {
      const meter = newMeter(ctx);
      const capped = await newWorkspace(ctx, meter, 0, { plan: 'rollover' }); // 10 a month, carries up to 5
      const all = await newWorkspace(ctx, meter, 0, { plan: 'rollover-all' }); // 10 a month, carries up to 100
      for (const workspaceId of [capped, all])
        await meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, THREE))).replyId });
      ctx.setNow(await periodEnd(ctx, capped));
      let summary = (await money(meter, capped)).summary;
      expect(num(summary.balance)).toBe(15);
      expect(summary.grants.map((g) => [g.grantId, num(g.remaining)])).toEqual([['period:1', 15]]);
      expect((await rowsOf(ctx, capped, 'expiry')).map((row) => row.amount)).toEqual([-2 * C]);
      // A cap above what is unused carries all of it, with no expiry row.
      expect(await money(meter, all)).toMatchObject({ balance: 17 });
      ctx.setNow(await periodEnd(ctx, all));
      summary = (await money(meter, all)).summary;
      expect(num(summary.balance)).toBe(27);
      expect(await rowsOf(ctx, all, 'expiry')).toEqual([]);
      // The carried credits are no new grant: the ledger shows one grant row per period.
      expect((await rowsOf(ctx, all, 'grant')).map((row) => row.amount)).toEqual([10 * C, 10 * C, 10 * C]);
    },
  ],
  [
    'renew - credits of a hold that lapsed before the period end roll over',
    async (ctx) => {
      const meter = newMeter(ctx, { holdTtlMs: MINUTE });
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'rollover-all' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end - 10 * MINUTE);
      await meter.reserve(ask(workspaceId, FOUR));
      // Nobody reads the workspace before the period ends: the lapse and the renewal are applied together.
      ctx.setNow(end);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 20, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'expiry')).toEqual([]);
    },
  ],
  [
    'renew - credits of a hold that lapsed before the period end return to the ending period and expire with it',
    async (ctx) => {
      const meter = newMeter(ctx, { holdTtlMs: MINUTE });
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end - 10 * MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      // Nobody reads the workspace until a day after the end: the lapse is applied as of its own instant, before the renewal.
      ctx.setNow(end + DAY);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect((await rowsOf(ctx, workspaceId, 'expiry')).map((row) => [row.amount, row.grantId, row.at])).toEqual([
        [-10 * C, 'period:0', end],
      ]);
      expect((await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() })).records[0]?.value).toMatchObject({
        status: 'expired',
        finishedAt: hold.expiresAt.getTime(),
      });
    },
  ],
  [
    'renew - top-ups survive the renewal',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      await meter.addCredits({ workspaceId, credits: 4, grantId: 'kept' });
      for (let i = 0; i < 3; i++) await meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, FOUR))).replyId }); // the allotment, then 2 of the top-up
      ctx.setNow(await periodEnd(ctx, workspaceId));
      const { summary } = await money(meter, workspaceId);
      expect(num(summary.balance)).toBe(12);
      expect(summary.grants.map((g) => [g.grantId, num(g.remaining)])).toEqual([
        ['period:1', 10],
        ['kept', 2],
      ]);
      expect(await rowsOf(ctx, workspaceId, 'expiry')).toEqual([]);
    },
  ],
  [
    'renew - a hold taken before the renewal still settles once',
    async (ctx) => {
      const meter = newMeter(ctx, { holdTtlMs: HOUR });
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end - MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.setNow(end);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 4 });
      expect((await rowsOf(ctx, workspaceId, 'expiry')).map((row) => row.amount)).toEqual([-6 * C]);
      await newMeter(ctx).settle({ workspaceId, replyId: hold.replyId });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(1);
    },
  ],
  [
    'renew - a hold released after the renewal expires its old allotment credits',
    async (ctx) => {
      const meter = newMeter(ctx, { holdTtlMs: HOUR });
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end - MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.setNow(end);
      await meter.getWorkspace(workspaceId);
      await meter.release({ workspaceId, replyId: hold.replyId });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      const expired = (await rowsOf(ctx, workspaceId, 'expiry')).filter((row) => row.grantId === 'period:0');
      expect(sum(expired.map((row) => row.amount))).toBe(-10 * C);
    },
  ],
  [
    'renew - concurrent operations from several meters just after a period end renew once',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 0, { plan: 'team' });
      const end = await periodEnd(ctx, workspaceId);
      ctx.setNow(end + 1);
      const { errors } = await race(50, async (i) => {
        const meter = fleet[i % fleet.length]!;
        switch (i % 4) {
          case 0:
            return meter.getWorkspace(workspaceId);
          case 1:
            return meter.reserve(ask(workspaceId, ONE, { conversationId: `conv_${i}` }));
          case 2:
            return meter.quote({ workspaceId, model: ONE });
          default:
            return meter.reply({ ...ask(workspaceId, ONE, { agentId: 'agent_b', conversationId: `conv_${i}` }), input: 'hi' });
        }
      });
      expect(errors).toEqual([]);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.filter((row) => row.kind === 'grant').map((row) => row.grantId)).toEqual(['period:0', 'period:1']);
      expect(rows.filter((row) => row.kind === 'expiry')).toHaveLength(1);
      expect((await fleet[0]!.getWorkspace(workspaceId)).periodStart.getTime()).toBe(end);
    },
  ],
  [
    'renew - catches up over several missed periods, one period at a time',
    async (ctx) => {
      const meter = newMeter(ctx);
      ctx.setNow(Date.UTC(2026, 1, 1));
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter', startsAt: Date.UTC(2026, 0, 31) });
      ctx.setNow(Date.UTC(2026, 4, 1));
      const { summary } = await money(meter, workspaceId);
      expect(summary.periodStart.toISOString()).toBe('2026-04-30T00:00:00.000Z');
      expect(summary.periodEnd.toISOString()).toBe('2026-05-31T00:00:00.000Z');
      const grants = await rowsOf(ctx, workspaceId, 'grant');
      expect(grants.map((row) => [row.grantId, new Date(row.at).toISOString()])).toEqual([
        ['period:0', '2026-02-01T00:00:00.000Z'],
        ['period:1', '2026-02-28T00:00:00.000Z'],
        ['period:2', '2026-03-31T00:00:00.000Z'],
        ['period:3', '2026-04-30T00:00:00.000Z'],
      ]);
      expect((await rowsOf(ctx, workspaceId, 'expiry')).map((row) => row.grantId)).toEqual(['period:0', 'period:1', 'period:2']);
      expect(num(summary.balance)).toBe(10);
    },
  ],
  // alerts -------------------------------------------------------------------
  [
    'alerts - balance.low is announced once per workspace, period and threshold',
    async (ctx) => {
      const seen: string[] = [];
      const meter = newMeter(ctx, { lowBalanceThresholds: [0.5, 0.8] });
      meter.on('balance.low', (event) => {
        seen.push(`${event.workspaceId === a ? 'a' : 'b'}:${event.periodStart.getTime() === start ? 0 : 1}:${event.threshold}`);
      });
      const a = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const b = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      const start = (await meter.getWorkspace(a)).periodStart.getTime();
      const spend = async (workspaceId: string, model: string) =>
        meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, model))).replyId });
      await spend(a, FOUR);
      expect(seen).toEqual([]);
      await spend(a, ONE); // used 5 of 10
      expect(seen).toEqual(['a:0:0.5']);
      await spend(a, THREE); // used 8
      expect(seen).toEqual(['a:0:0.5', 'a:0:0.8']);
      await spend(a, ONE);
      await spend(b, FOUR);
      await spend(b, FOUR);
      expect(seen).toEqual(['a:0:0.5', 'a:0:0.8', 'b:0:0.5', 'b:0:0.8']);
      expect((await ctx.storage.load({ workspaceId: a, keys: [], now: ctx.now() })).state?.account?.alerts).toHaveLength(2);
      ctx.setNow(await periodEnd(ctx, a));
      for (let i = 0; i < 5; i++) await spend(a, ONE);
      expect(seen).toEqual(['a:0:0.5', 'a:0:0.8', 'b:0:0.5', 'b:0:0.8', 'a:1:0.5']);
    },
  ],
  [
    'alerts - racing charges from several meters announce each threshold once',
    async (ctx) => {
      const seen: number[] = [];
      const fleet = racingMeters(ctx, { lowBalanceThresholds: [0.5, 0.8, 1] });
      for (const meter of fleet) {
        meter.on('balance.low', (event) => {
          seen.push(event.threshold);
        });
      }
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 0, { plan: 'starter' });
      const { ok } = await race(20, (i) =>
        fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { conversationId: `conv_${i}` }), input: i }),
      );
      expect(ok).toHaveLength(10);
      expect(seen.sort()).toEqual([0.5, 0.8, 1]);
    },
  ],
]);
