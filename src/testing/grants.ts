/**
 * Grants through `CreditMeter`: top-ups, the spending order, grants that expire, plan
 * upgrades and downgrades, and the ceiling of 2⁵³ − 1 micro-credits.
 */
import { expect } from 'vitest';
import { fromMicros, MAX_INPUT_CREDITS, MAX_MICROS } from '../core/credits.js';
import type { CreditMeter } from '../meter/credit-meter.js';
import {
  allRows,
  ask,
  C,
  type ConformanceContext,
  DAY,
  defineCases,
  expectCode,
  FOUR,
  HOUR,
  money,
  newMeter,
  newWorkspace,
  num,
  race,
  racingMeters,
  rowsOf,
  THREE,
  TWO,
} from './fixtures.js';

async function spend(meter: CreditMeter, workspaceId: string, model: string) {
  return meter.settle({ workspaceId, replyId: (await meter.reserve(ask(workspaceId, model))).replyId });
}

/** `[grantId, remaining credits]` of the live grants, in spending order. */
async function grants(meter: CreditMeter, workspaceId: string): Promise<[string, number][]> {
  return (await meter.getWorkspace(workspaceId)).grants.map((g) => [g.grantId, num(g.remaining)]);
}

async function stored(ctx: ConformanceContext, workspaceId: string) {
  return (await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).state;
}

/** Tops a workspace up to within a few million credits of the ceiling; returns its stored total (balance + held). */
async function nearCeiling(meter: CreditMeter, workspaceId: string): Promise<number> {
  for (let i = 0; i < 9; i++) await meter.addCredits({ workspaceId, credits: MAX_INPUT_CREDITS, grantId: `bulk${i}` });
  const state = (await meter.storage.load({ workspaceId, keys: [], now: 0 })).state!;
  return state.account!.grants.reduce((sum, grant) => sum + grant.remaining, 0) + state.account!.held;
}

/** Balance + held, as stored. */
async function total(ctx: ConformanceContext, workspaceId: string): Promise<number> {
  const account = (await stored(ctx, workspaceId))!.account!;
  return account.grants.reduce((sum, grant) => sum + grant.remaining, 0) + account.held;
}

export const grantCases = defineCases([
  // addCredits ---------------------------------------------------------------
  [
    'addCredits - adds a top-up with one topup row and a record',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const topUp = await meter.addCredits({ workspaceId, credits: 5, grantId: 'g1' });
      expect(topUp).toMatchObject({ workspaceId, grantId: 'g1', replayed: false, expiresAt: undefined });
      expect(num(topUp.workspace.balance)).toBe(15);
      expect(await grants(meter, workspaceId)).toEqual([
        ['period:0', 10],
        ['g1', 5],
      ]);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows[1]).toMatchObject({ kind: 'topup', amount: 5 * C, grantId: 'topup:g1', at: ctx.now(), seq: 2 });
      const loaded = await ctx.storage.load({ workspaceId, keys: ['topup:g1'], now: ctx.now() });
      expect(loaded.records).toEqual([
        {
          key: 'topup:g1',
          holdExpiresAt: null,
          value: { type: 'topup', grantId: 'g1', amount: 5 * C, expiresAt: null, createdAt: ctx.now() },
        },
      ]);
    },
  ],
  [
    'addCredits - the same grantId returns the stored top-up with replayed true and changes nothing',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const expiresAt = new Date(ctx.now() + 10 * DAY);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'g1', expiresAt });
      await spend(meter, workspaceId, FOUR);
      await spend(meter, workspaceId, FOUR);
      await spend(meter, workspaceId, FOUR);
      const before = await ctx.storage.load({ workspaceId, keys: ['topup:g1'], now: ctx.now() });
      ctx.advance(HOUR);
      const again = await newMeter(ctx).addCredits({ workspaceId, credits: 5, grantId: 'g1', expiresAt });
      expect(again.replayed).toBe(true);
      await expectCode(meter.addCredits({ workspaceId, credits: 7, grantId: 'g1', expiresAt }), 'IDEMPOTENCY_CONFLICT');
      await expectCode(meter.addCredits({ workspaceId, credits: 5, grantId: 'g1' }), 'IDEMPOTENCY_CONFLICT');
      const after = await ctx.storage.load({ workspaceId, keys: ['topup:g1'], now: ctx.now() });
      expect(after.state).toEqual(before.state);
      expect(after.records).toEqual(before.records);
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(5);
    },
  ],
  [
    'addCredits - concurrent top-ups with one grantId from several meters add it once',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 10);
      const { ok, errors } = await race(20, (i) => fleet[i % fleet.length]!.addCredits({ workspaceId, credits: 5, grantId: 'g1' }));
      expect(errors).toEqual([]);
      expect(ok.filter((t) => !t.replayed)).toHaveLength(1);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 15 });
      expect(await rowsOf(ctx, workspaceId, 'topup')).toHaveLength(1);
    },
  ],
  [
    'addCredits - a grantId is scoped to its workspace',
    async (ctx) => {
      const meter = newMeter(ctx);
      const a = await newWorkspace(ctx, meter, 10);
      const b = await newWorkspace(ctx, meter, 10);
      expect((await meter.addCredits({ workspaceId: a, credits: 5, grantId: 'g1' })).replayed).toBe(false);
      expect((await meter.addCredits({ workspaceId: b, credits: 3, grantId: 'g1' })).replayed).toBe(false);
      expect(await money(meter, a)).toMatchObject({ balance: 15 });
      expect(await money(meter, b)).toMatchObject({ balance: 13 });
    },
  ],
  [
    'addCredits - an overflow is refused and changes nothing; exactly the ceiling is allowed',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      await meter.reserve(ask(workspaceId, FOUR)); // held credits count toward the ceiling
      const room = MAX_MICROS - (await nearCeiling(meter, workspaceId));
      const before = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      const rows = await allRows(ctx.storage, workspaceId);
      await expectCode(meter.addCredits({ workspaceId, credits: fromMicros(room + 1), grantId: 'over' }), 'INVALID_INPUT');
      expect(await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).toEqual(before);
      expect(await allRows(ctx.storage, workspaceId)).toEqual(rows);
      await meter.addCredits({ workspaceId, credits: fromMicros(room), grantId: 'ceiling' });
      expect(await total(ctx, workspaceId)).toBe(MAX_MICROS);
      expect((await rowsOf(ctx, workspaceId, 'topup')).pop()?.amount).toBe(room);
    },
  ],
  [
    'addCredits - a missing workspace throws WORKSPACE_NOT_FOUND',
    async (ctx) => {
      const workspaceId = ctx.id('missing');
      await expectCode(newMeter(ctx).addCredits({ workspaceId, credits: 1, grantId: 'g' }), 'WORKSPACE_NOT_FOUND');
      expect((await ctx.storage.load({ workspaceId, keys: ['topup:g'], now: ctx.now() })).version).toBe(0);
    },
  ],
  // spending order -----------------------------------------------------------
  [
    'spending - the allotment goes before a never-expiring top-up',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 4);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'forever' });
      await meter.reserve(ask(workspaceId, THREE));
      expect(await grants(meter, workspaceId)).toEqual([
        ['period:0', 1],
        ['forever', 5],
      ]);
      await meter.reserve(ask(workspaceId, THREE));
      expect(await grants(meter, workspaceId)).toEqual([['forever', 3]]);
    },
  ],
  [
    'spending - a grant expiring before the period end goes before the allotment',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const end = (await meter.getWorkspace(workspaceId)).periodEnd.getTime();
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'forever' });
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'promo', expiresAt: new Date(end - DAY) });
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'later', expiresAt: new Date(end + DAY) });
      expect((await grants(meter, workspaceId)).map(([id]) => id)).toEqual(['promo', 'period:0', 'later', 'forever']);
      await meter.reserve(ask(workspaceId, THREE));
      expect(await grants(meter, workspaceId)).toEqual([
        ['period:0', 9],
        ['later', 2],
        ['forever', 5],
      ]);
    },
  ],
  [
    'spending - expiry ties break by creation time, then grantId',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0);
      const expiresAt = new Date(ctx.now() + 10 * DAY);
      const start = ctx.now();
      ctx.setNow(start + 2);
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'a-late', expiresAt });
      ctx.setNow(start + 1);
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'b', expiresAt });
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'a', expiresAt });
      ctx.setNow(start + 10);
      expect((await grants(meter, workspaceId)).map(([id]) => id)).toEqual(['a', 'b', 'a-late']);
      await meter.reserve(ask(workspaceId, THREE));
      expect(await grants(meter, workspaceId)).toEqual([
        ['b', 1],
        ['a-late', 2],
      ]);
    },
  ],
  [
    'spending - an expired grant is never spent and expires with one expiry row',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 1);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'promo', expiresAt: new Date(ctx.now() + DAY) });
      ctx.advance(DAY); // expiresAt is exclusive: at that instant the grant is gone
      await expectCode(meter.reserve(ask(workspaceId, THREE)), 'INSUFFICIENT_CREDITS');
      expect(await grants(meter, workspaceId)).toEqual([['period:0', 1]]);
      const expiries = await rowsOf(ctx, workspaceId, 'expiry');
      expect(expiries.map((row) => [row.amount, row.grantId, row.at])).toEqual([[-5 * C, 'topup:promo', ctx.now()]]);
      await meter.reserve(ask(workspaceId, 'one-credit'));
    },
  ],
  [
    'spending - a grant that expired is swept by the next read with one expiry row',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 1);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'promo', expiresAt: new Date(ctx.now() + HOUR) });
      await spend(meter, workspaceId, TWO);
      const expiresAt = ctx.now() + HOUR;
      ctx.advance(2 * HOUR);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 1 });
      await meter.getWorkspace(workspaceId); // a second read writes nothing
      const expiries = await rowsOf(ctx, workspaceId, 'expiry');
      expect(expiries.map((row) => [row.amount, row.grantId, row.at])).toEqual([[-3 * C, 'topup:promo', expiresAt]]);
    },
  ],
  // changePlan ---------------------------------------------------------------
  [
    'changePlan - an upgrade adds to the current allotment grant at once',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'starter' });
      await spend(meter, workspaceId, THREE);
      ctx.advance(DAY);
      const change = await meter.changePlan({ workspaceId, plan: 'team' });
      expect(change).toMatchObject({ plan: 'team', effective: 'now' });
      expect(num(change.creditsAdded)).toBe(20);
      const { summary } = await money(meter, workspaceId);
      expect(num(summary.balance)).toBe(27);
      expect(summary.grants.map((g) => [g.grantId, num(g.remaining), g.expiresAt?.getTime()])).toEqual([
        ['period:0', 27, summary.periodEnd.getTime()],
      ]);
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows[rows.length - 1]).toMatchObject({ kind: 'plan_change', amount: 20 * C, plan: 'team', at: ctx.now() });
      expect((await stored(ctx, workspaceId))?.account).toMatchObject({ plan: 'team', allotment: 30 * C });
    },
  ],
  [
    'changePlan - a downgrade takes effect at the next renewal',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 0, { plan: 'team' });
      const change = await meter.changePlan({ workspaceId, plan: 'starter' });
      expect(change).toMatchObject({ plan: 'team', effective: 'next-period' });
      const { summary } = await money(meter, workspaceId);
      expect(num(summary.balance)).toBe(30);
      expect(summary.pendingPlan).toBe('starter');
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows).toHaveLength(2);
      expect(rows[1]).toMatchObject({ kind: 'plan_change', plan: 'starter' });
      expect(Object.is(rows[1]!.amount, 0)).toBe(true);
      ctx.setNow(summary.periodEnd.getTime());
      const renewed = (await money(meter, workspaceId)).summary;
      expect(renewed).toMatchObject({ plan: 'starter', pendingPlan: undefined });
      expect(num(renewed.balance)).toBe(10);
      expect((await rowsOf(ctx, workspaceId, 'grant')).map((row) => [row.grantId, row.amount, row.plan])).toEqual([
        ['period:0', 30 * C, 'team'],
        ['period:1', 10 * C, 'starter'],
      ]);
    },
  ],
  [
    'changePlan - racing upgrades from several meters add the credits once',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 0, { plan: 'starter' });
      const { ok, errors } = await race(10, (i) => fleet[i % fleet.length]!.changePlan({ workspaceId, plan: 'team' }));
      expect(errors).toEqual([]);
      expect(ok.map((change) => num(change.creditsAdded)).sort((x, y) => y - x)).toEqual([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 30 });
      expect((await rowsOf(ctx, workspaceId, 'plan_change')).filter((row) => row.amount > 0)).toHaveLength(1);
    },
  ],
  [
    'changePlan - an overflow is refused and changes nothing; exactly the ceiling is allowed',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const room = MAX_MICROS - (await nearCeiling(meter, workspaceId));
      const before = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      await expectCode(meter.changePlan({ workspaceId, plan: 'custom', allotment: fromMicros(10 * C + room + 1) }), 'INVALID_INPUT');
      expect(await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).toEqual(before);
      await meter.changePlan({ workspaceId, plan: 'custom', allotment: fromMicros(10 * C + room) });
      expect(await total(ctx, workspaceId)).toBe(MAX_MICROS);
      expect((await rowsOf(ctx, workspaceId, 'plan_change')).map((row) => row.amount)).toEqual([room]);
    },
  ],
  [
    'changePlan - a missing workspace throws WORKSPACE_NOT_FOUND',
    async (ctx) => {
      const workspaceId = ctx.id('missing');
      await expectCode(newMeter(ctx).changePlan({ workspaceId, plan: 'team' }), 'WORKSPACE_NOT_FOUND');
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).version).toBe(0);
    },
  ],
]);
