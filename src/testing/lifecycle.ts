/**
 * The reply lifecycle through a real `CreditMeter` on the store: workspaces, reserve,
 * settle, release, extend and holds that lapse, checked through the meter's answers and
 * through what the store keeps (records and ledger rows).
 */
import { expect } from 'vitest';
import type { CreditMeter } from '../meter/credit-meter.js';
import type { Reservation } from '../meter/types.js';
import {
  allRows,
  ask,
  BYO,
  C,
  type ConformanceContext,
  DAY,
  defineCases,
  expectCode,
  FOUR,
  HOUR,
  holdFree,
  MINUTE,
  money,
  n,
  newMeter,
  newWorkspace,
  num,
  ONE,
  PRICE_VERSION,
  race,
  racingMeters,
  rejection,
  replyRecord,
  rowsOf,
  sum,
  THREE,
  TWO,
} from './fixtures.js';

/** A meter (with a BYO key for `openai`) and a workspace of `credits`. */
async function setup(ctx: ConformanceContext, credits: number, holdTtlMs?: number): Promise<{ meter: CreditMeter; workspaceId: string }> {
  const meter = newMeter(ctx, { byoKeys: () => 'sk-conformance', ...(holdTtlMs !== undefined && { holdTtlMs }) });
  return { meter, workspaceId: await newWorkspace(ctx, meter, credits) };
}

/** Reserves and settles one reply; returns the settlement. */
async function charge(
  meter: CreditMeter,
  workspaceId: string,
  model = ONE,
  extra: { agentId?: string; conversationId?: string; replyId?: string } = {},
) {
  const hold = await meter.reserve(ask(workspaceId, model, extra));
  return meter.settle({ workspaceId, replyId: hold.replyId });
}

/** Quotes, SQL and LIKE metacharacters, key separators, hash tags, non-ASCII. */
const ODD = [`'"; DROP TABLE ledger; --`, ':a', ':a:b', '%_\\*?[]{x}', '{tag}', ' wś 漢字 🙂', '.'];

export const lifecycleCases = defineCases([
  // createWorkspace ----------------------------------------------------------
  [
    'createWorkspace - creates the workspace with its allotment and one grant row',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = ctx.id('ws');
      const summary = await meter.createWorkspace({ workspaceId, plan: 'starter' });
      ctx.track(workspaceId);
      expect(num(summary.balance)).toBe(10);
      expect(num(summary.held)).toBe(0);
      expect(summary.grants.map((g) => [g.grantId, num(g.remaining)])).toEqual([['period:0', 10]]);
      expect(await allRows(ctx.storage, workspaceId)).toEqual([
        expect.objectContaining({
          workspaceId,
          seq: 1,
          kind: 'grant',
          amount: 10 * C,
          grantId: 'period:0',
          plan: 'starter',
          at: ctx.now(),
          replyId: null,
        }),
      ]);
      const loaded = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      expect(loaded.version).toBeGreaterThan(0);
      expect(loaded.state).toMatchObject({ workspaceId, ledgerSeq: 1, account: { plan: 'starter', allotment: 10 * C, held: 0 } });
      expect((await meter.getWorkspace(workspaceId)).balance.toString()).toBe('10');
    },
  ],
  [
    'createWorkspace - an existing id throws WORKSPACE_EXISTS and changes nothing',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const before = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      await expectCode(meter.createWorkspace({ workspaceId, plan: 'team' }), 'WORKSPACE_EXISTS');
      await expectCode(newMeter(ctx).createWorkspace({ workspaceId, plan: 'custom', allotment: 99 }), 'WORKSPACE_EXISTS');
      expect(await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).toEqual(before);
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
    },
  ],
  [
    'createWorkspace - concurrent creates of one id from several meters create it once',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = ctx.id('ws');
      const { ok, errors } = await race(10, (i) =>
        fleet[i % fleet.length]!.createWorkspace({ workspaceId, plan: 'custom', allotment: i + 1 }),
      );
      ctx.track(workspaceId);
      expect(ok).toHaveLength(1);
      expect(errors).toEqual(Array.from({ length: 9 }, () => 'WORKSPACE_EXISTS'));
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows).toHaveLength(1);
      expect(rows[0]!.amount).toBe(num(ok[0]!.allotment) * C);
    },
  ],
  [
    'createWorkspace - ids with any characters round-trip and never collide',
    async (ctx) => {
      const meter = newMeter(ctx);
      const base = ctx.id('ws');
      const ids = ODD.map((suffix) => base + suffix);
      ids.push(base + 'x'.repeat(255 - base.length));
      for (const [index, workspaceId] of ids.entries()) await newWorkspace(ctx, meter, index + 1, { workspaceId });
      for (const [index, workspaceId] of ids.entries()) {
        const odd = ODD[index % ODD.length]!;
        const settlement = await charge(meter, workspaceId, ONE, {
          replyId: `${ctx.id('reply')}${odd}`,
          agentId: `agent ${odd}`,
          conversationId: `conv${odd}`,
        });
        expect(settlement).toMatchObject({ workspaceId, agentId: `agent ${odd}`, replayed: false });
        expect((await replyRecord(ctx, workspaceId, settlement.replyId))?.workspaceId).toBe(workspaceId);
      }
      for (const [index, workspaceId] of ids.entries()) {
        expect(num((await meter.getWorkspace(workspaceId)).balance), `balance of ${JSON.stringify(workspaceId)}`).toBe(index);
        const rows = await allRows(ctx.storage, workspaceId);
        expect(rows.map((row) => row.workspaceId)).toEqual([workspaceId, workspaceId]);
        const { entries } = await meter.ledger({ workspaceId, agentId: `agent ${ODD[index % ODD.length]}` });
        expect(entries).toHaveLength(1);
      }
      await expectCode(meter.getWorkspace(`${base}:a:`), 'WORKSPACE_NOT_FOUND');
    },
  ],
  // getWorkspace -------------------------------------------------------------
  [
    'getWorkspace - an unknown workspace throws WORKSPACE_NOT_FOUND and writes nothing',
    async (ctx) => {
      const workspaceId = ctx.id('missing');
      await expectCode(newMeter(ctx).getWorkspace(workspaceId), 'WORKSPACE_NOT_FOUND');
      expect(holdFree(await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() }))).toEqual({
        version: 0,
        state: null,
        records: [],
        lapsed: [],
      });
      expect(await allRows(ctx.storage, workspaceId)).toEqual([]);
    },
  ],
  [
    'getWorkspace - lists live grants with credits left in spending order',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'forever' });
      await meter.addCredits({ workspaceId, credits: 2, grantId: 'promo', expiresAt: new Date(ctx.now() + DAY) });
      await meter.addCredits({ workspaceId, credits: 1, grantId: 'empty', expiresAt: new Date(ctx.now() + 2 * DAY) });
      await charge(meter, workspaceId, THREE); // 2 from the promo, 1 from the next grant to expire
      const { summary, balance } = await money(meter, workspaceId);
      expect(summary.grants.map((g) => g.grantId)).toEqual(['period:0', 'forever']);
      expect(balance).toBe(15);
      expect(sum(summary.grants.map((g) => num(g.remaining)))).toBe(15);
      expect(num(summary.topUpBalance)).toBe(5);
    },
  ],
  // reserve ------------------------------------------------------------------
  [
    'reserve - holds the amount when the balance covers it',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      expect(hold).toMatchObject({ workspaceId, model: THREE, route: 'credits', status: 'held', replayed: false });
      expect(num(hold.credits)).toBe(3);
      expect(hold.expiresAt.getTime()).toBe(ctx.now() + meter.holdTtlMs);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 7, held: 3 });
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() });
      expect(loaded.records).toHaveLength(1);
      expect(loaded.records[0]!.holdExpiresAt).toBe(hold.expiresAt.getTime());
      expect(loaded.records[0]!.value).toMatchObject({
        type: 'reply',
        replyId: hold.replyId,
        workspaceId,
        status: 'held',
        amount: 3 * C,
        model: THREE,
      });
      // A hold is not a ledger row: the ledger sums to balance + held.
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
    },
  ],
  [
    'reserve - holds an amount equal to the whole balance',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 4);
      await meter.reserve(ask(workspaceId, FOUR));
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 0, held: 4 });
    },
  ],
  [
    'reserve - refuses an amount above the balance, writes a refused record and changes nothing else',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 4);
      await meter.reserve(ask(workspaceId, ONE));
      const before = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      const replyId = ctx.id('reply');
      const error = await meter.reserve(ask(workspaceId, FOUR, { replyId })).then(
        () => undefined,
        (reason: unknown) => reason as { code: string; available: { toString(): string }; required: { toString(): string } },
      );
      expect(error?.code).toBe('INSUFFICIENT_CREDITS');
      expect(num(error!.available)).toBe(3);
      expect(num(error!.required)).toBe(4);
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${replyId}`], now: ctx.now() + DAY });
      expect(loaded.records).toHaveLength(1);
      expect(loaded.records[0]!.holdExpiresAt).toBeNull();
      expect(loaded.records[0]!.value).toMatchObject({ status: 'refused', finishedAt: ctx.now() });
      // The commit wrote the state again under its own number (`writtenBy`); nothing else in it moved.
      expect({ ...loaded.state, writtenBy: 0 }).toEqual({ ...before.state, writtenBy: 0 });
      expect(loaded.lapsed.map((r) => r.key)).not.toContain(`reply:${replyId}`);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 3, held: 1 });
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
    },
  ],
  [
    'reserve - a refused replyId never charges later',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 1);
      const replyId = ctx.id('reply');
      await expectCode(meter.reserve(ask(workspaceId, TWO, { replyId })), 'INSUFFICIENT_CREDITS');
      await meter.addCredits({ workspaceId, credits: 10, grantId: 'g' });
      await expectCode(meter.reserve(ask(workspaceId, TWO, { replyId })), 'INSUFFICIENT_CREDITS');
      await expectCode(meter.reply({ ...ask(workspaceId, TWO, { replyId }), input: 'hi' }), 'INSUFFICIENT_CREDITS');
      await expectCode(meter.settle({ workspaceId, replyId }), 'REPLY_NOT_FOUND');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 11, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(0);
    },
  ],
  [
    'reserve - an existing replyId returns the same hold; in another workspace it is another reply',
    async (ctx) => {
      const { meter, workspaceId: a } = await setup(ctx, 10);
      const b = await newWorkspace(ctx, meter, 10);
      const replyId = ctx.id('reply');
      const first = await meter.reserve(ask(a, TWO, { replyId }));
      const same = await meter.reserve(ask(a, TWO, { replyId }));
      expect(same).toEqual({ ...first, replayed: true });
      // Reply ids are scoped to their workspace: the same id elsewhere is a separate reply.
      const other = await meter.reserve(ask(b, TWO, { replyId }));
      expect(other).toMatchObject({ workspaceId: b, replyId, replayed: false, status: 'held' });
      expect(await money(meter, a)).toMatchObject({ balance: 8, held: 2 });
      expect(await money(meter, b)).toMatchObject({ balance: 8, held: 2 });
      await meter.settle({ workspaceId: a, replyId });
      const afterSettle = await meter.reserve(ask(a, TWO, { replyId }));
      expect(afterSettle).toMatchObject({ status: 'settled', replayed: true });
      expect(await replyRecord(ctx, a, replyId)).toMatchObject({ workspaceId: a, status: 'settled' });
      expect(await replyRecord(ctx, b, replyId)).toMatchObject({ workspaceId: b, status: 'held' });
      expect(await rowsOf(ctx, a, 'reply')).toHaveLength(1);
      expect(await rowsOf(ctx, b, 'reply')).toHaveLength(0);
      await meter.release({ workspaceId: b, replyId });
      expect(await money(meter, b)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'reserve - a missing workspace throws WORKSPACE_NOT_FOUND and writes nothing',
    async (ctx) => {
      const workspaceId = ctx.id('missing');
      const replyId = ctx.id('reply');
      await expectCode(newMeter(ctx).reserve(ask(workspaceId, ONE, { replyId })), 'WORKSPACE_NOT_FOUND');
      expect(holdFree(await ctx.storage.load({ workspaceId, keys: [`reply:${replyId}`], now: ctx.now() }))).toEqual({
        version: 0,
        state: null,
        records: [],
        lapsed: [],
      });
    },
  ],
  [
    'reserve - in self-hosted mode writes only a reply record, and settle a zero row',
    async (ctx) => {
      const meter = newMeter(ctx, { mode: 'self-hosted' });
      const workspaceId = ctx.id('selfhosted');
      ctx.track(workspaceId);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      expect(hold).toMatchObject({ route: 'unmetered', status: 'held' });
      expect(num(hold.credits)).toBe(0);
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() });
      expect(loaded.state?.account ?? null).toBeNull();
      expect(loaded.records.map((r) => r.value)).toEqual([expect.objectContaining({ status: 'held', workspaceId, amount: 0 })]);
      expect(await allRows(ctx.storage, workspaceId)).toEqual([]);
      await expectCode(newMeter(ctx).getWorkspace(workspaceId), 'WORKSPACE_NOT_FOUND');
      const settled = await meter.settle({ workspaceId, replyId: hold.replyId });
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows).toHaveLength(1);
      expect(rows[0]).toMatchObject({ kind: 'reply', route: 'unmetered', replyId: hold.replyId, workspaceId, seq: 1 });
      expect(Object.is(rows[0]!.amount, 0)).toBe(true);
      expect(settled.entryId).toBe(String(rows[0]!.seq));
      const replay = await meter.settle({ workspaceId, replyId: hold.replyId });
      expect(replay).toMatchObject({ replayed: true, entryId: settled.entryId });
    },
  ],
  [
    'reserve - a free reply is held even at a zero balance',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 1);
      await charge(meter, workspaceId, ONE);
      await expectCode(meter.reserve(ask(workspaceId, ONE)), 'INSUFFICIENT_CREDITS');
      const hold = await meter.reserve(ask(workspaceId, BYO));
      expect(hold.route).toBe('byo');
      expect(num(hold.credits)).toBe(0);
      await meter.settle({ workspaceId, replyId: hold.replyId });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 0, held: 0 });
    },
  ],
  [
    'reserve - concurrent reserves never overspend',
    async (ctx) => {
      const { requests, affordable } = ctx.concurrency;
      const { meter, workspaceId } = await setup(ctx, affordable);
      const { ok, errors } = await race(requests, (i) => meter.reserve(ask(workspaceId, ONE, { conversationId: `conv_${i}` })));
      expect(ok).toHaveLength(affordable);
      expect(errors).toEqual(Array.from({ length: requests - affordable }, () => 'INSUFFICIENT_CREDITS'));
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 0, held: affordable });
    },
  ],
  [
    'reserve - concurrent reserves of one replyId create one hold',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 100);
      const replyId = ctx.id('reply');
      const { ok, errors } = await race(20, () => meter.reserve(ask(workspaceId, ONE, { replyId })));
      expect(errors).toEqual([]);
      expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 99, held: 1 });
    },
  ],
  [
    'reserve - concurrent reserves in several workspaces stay independent',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaces = await Promise.all(Array.from({ length: 5 }, (_, i) => newWorkspace(ctx, meter, 10 + i)));
      const outcomes = await Promise.all(
        Array.from({ length: workspaces.length * 25 }, (_, i) => {
          const workspaceId = workspaces[i % workspaces.length]!;
          return meter.reserve(ask(workspaceId, ONE)).then(
            () => ({ workspaceId, ok: true }),
            () => ({ workspaceId, ok: false }),
          );
        }),
      );
      for (const [i, workspaceId] of workspaces.entries()) {
        expect(
          outcomes.filter((o) => o.workspaceId === workspaceId && o.ok),
          `holds in workspace ${i}`,
        ).toHaveLength(10 + i);
        expect(await money(meter, workspaceId)).toMatchObject({ balance: 0, held: 10 + i });
      }
    },
  ],
  // settle -------------------------------------------------------------------
  [
    'settle - charges a hold with one reply row and grows usedThisPeriod',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, THREE, { agentId: 'agent_s', conversationId: 'conv_s' }));
      ctx.advance(1000);
      const settlement = await meter.settle({ workspaceId, replyId: hold.replyId });
      expect(settlement).toMatchObject({
        replyId: hold.replyId,
        workspaceId,
        agentId: 'agent_s',
        conversationId: 'conv_s',
        model: THREE,
        route: 'credits',
        replayed: false,
        priceVersion: PRICE_VERSION,
      });
      expect(num(settlement.credits)).toBe(3);
      expect(settlement.at.getTime()).toBe(ctx.now());
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.map((row) => row.kind)).toEqual(['grant', 'reply']);
      expect(rows[1]).toMatchObject({
        workspaceId,
        seq: 2,
        kind: 'reply',
        amount: -3 * C,
        at: ctx.now(),
        replyId: hold.replyId,
        agentId: 'agent_s',
        conversationId: 'conv_s',
        model: THREE,
        route: 'credits',
        priceVersion: PRICE_VERSION,
        grantId: null,
        plan: null,
        inputTokens: null,
        outputTokens: null,
      });
      expect(settlement.entryId).toBe('2');
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() + DAY });
      expect(loaded.records[0]).toMatchObject({ holdExpiresAt: null, value: { status: 'settled', finishedAt: ctx.now(), entrySeq: 2 } });
      expect(loaded.lapsed).toEqual([]);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 7, held: 0, used: 3 });
    },
  ],
  [
    'settle - a replay returns the same entry with replayed true and charges nothing more',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      const first = await meter.settle({ workspaceId, replyId: hold.replyId });
      ctx.advance(5 * MINUTE);
      const second = await newMeter(ctx).settle({ workspaceId, replyId: hold.replyId });
      expect(second).toEqual({ ...first, replayed: true });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 7, used: 3 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(1);
    },
  ],
  [
    'settle - a free reply writes a zero-amount row and leaves the balance alone',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const settlement = await charge(meter, workspaceId, BYO);
      expect(settlement.route).toBe('byo');
      const [row] = await rowsOf(ctx, workspaceId, 'reply');
      // 0, not -0: a free reply's row must read as zero everywhere (JSON, Decimal, SQL).
      expect(Object.is(row!.amount, 0)).toBe(true);
      expect(row).toMatchObject({ route: 'byo', model: BYO });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, used: 0 });
    },
  ],
  [
    'settle - after the hold expired throws HOLD_EXPIRED and returns the credits',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.advance(MINUTE); // expiresAt is the first instant the hold is gone
      await expectCode(meter.settle({ workspaceId, replyId: hold.replyId }), 'HOLD_EXPIRED');
      expect((await replyRecord(ctx, workspaceId, hold.replyId))?.status).toBe('expired');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      await expectCode(meter.settle({ workspaceId, replyId: hold.replyId }), 'HOLD_EXPIRED');
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(0);
    },
  ],
  [
    'settle - one millisecond before the hold expires still charges',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.advance(MINUTE - 1);
      await meter.settle({ workspaceId, replyId: hold.replyId });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 6, held: 0 });
    },
  ],
  [
    'settle - a released or refused reply throws and charges nothing',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 2);
      const released = await meter.reserve(ask(workspaceId, ONE));
      await meter.release({ workspaceId, replyId: released.replyId });
      await expectCode(meter.settle({ workspaceId, replyId: released.replyId }), 'REPLY_RELEASED');
      const refusedId = ctx.id('reply');
      await expectCode(meter.reserve(ask(workspaceId, FOUR, { replyId: refusedId })), 'INSUFFICIENT_CREDITS');
      await expectCode(meter.settle({ workspaceId, replyId: refusedId }), 'REPLY_NOT_FOUND');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 2, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(0);
    },
  ],
  [
    "settle - an unknown reply or another workspace's reply throws REPLY_NOT_FOUND",
    async (ctx) => {
      const { meter, workspaceId: a } = await setup(ctx, 10);
      const b = await newWorkspace(ctx, meter, 10);
      await expectCode(meter.settle({ workspaceId: a, replyId: ctx.id('nope') }), 'REPLY_NOT_FOUND');
      const hold = await meter.reserve(ask(a, THREE));
      await expectCode(meter.settle({ workspaceId: b, replyId: hold.replyId }), 'REPLY_NOT_FOUND');
      expect((await replyRecord(ctx, a, hold.replyId))?.status).toBe('held');
      expect(await replyRecord(ctx, b, hold.replyId)).toBeUndefined();
      expect(await money(meter, a)).toMatchObject({ held: 3 });
      expect(await allRows(ctx.storage, b)).toHaveLength(1);
    },
  ],
  [
    'settle - concurrent settles of one reply charge once',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      const { ok, errors } = await race(20, () => meter.settle({ workspaceId, replyId: hold.replyId }));
      expect(errors).toEqual([]);
      expect(ok.filter((s) => !s.replayed)).toHaveLength(1);
      expect(new Set(ok.map((s) => s.entryId)).size).toBe(1);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 7, used: 3 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(1);
    },
  ],
  [
    'settle - the model that produced the reply is charged at its price, with token counts on the row',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const dearer = await meter.reserve(ask(workspaceId, TWO));
      const charged = await meter.settle({
        workspaceId,
        replyId: dearer.replyId,
        model: FOUR,
        usage: { inputTokens: 10, outputTokens: 20 },
      });
      expect(num(charged.credits)).toBe(4);
      const cheaper = await meter.reserve(ask(workspaceId, FOUR));
      expect(num((await meter.settle({ workspaceId, replyId: cheaper.replyId, model: ONE })).credits)).toBe(1);
      const rows = await rowsOf(ctx, workspaceId, 'reply');
      expect(rows.map((row) => [row.model, row.amount, row.inputTokens, row.outputTokens])).toEqual([
        [FOUR, -4 * C, 10, 20],
        [ONE, -1 * C, null, null],
      ]);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 5, held: 0, used: 5 });
    },
  ],
  // release ------------------------------------------------------------------
  [
    'release - returns the credits to the grants they came from',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 2);
      await meter.addCredits({ workspaceId, credits: 5, grantId: 'g' });
      const before = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      const release = await meter.release({ workspaceId, replyId: hold.replyId });
      expect(release).toMatchObject({ replyId: hold.replyId, workspaceId, replayed: false });
      expect(num(release.credits)).toBe(4);
      const after = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() });
      expect(after.state?.account?.grants).toEqual(before.state?.account?.grants);
      expect(after.records[0]).toMatchObject({ holdExpiresAt: null, value: { status: 'released', finishedAt: ctx.now() } });
      expect((await money(meter, workspaceId)).summary.grants.map((g) => [g.grantId, num(g.remaining)])).toEqual([
        ['period:0', 2],
        ['g', 5],
      ]);
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(2);
    },
  ],
  [
    'release - a second release returns replayed true',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      await meter.release({ workspaceId, replyId: hold.replyId });
      expect((await newMeter(ctx).release({ workspaceId, replyId: hold.replyId })).replayed).toBe(true);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'release - a settled reply throws REPLY_SETTLED and is not refunded',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const { replyId } = await charge(meter, workspaceId, FOUR);
      await expectCode(meter.release({ workspaceId, replyId }), 'REPLY_SETTLED');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 6, held: 0 });
    },
  ],
  [
    'release - an expired or refused reply throws and returns nothing twice',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      const refusedId = ctx.id('reply');
      await meter.reserve(ask(workspaceId, FOUR));
      await expectCode(meter.reserve(ask(workspaceId, FOUR, { replyId: refusedId })), 'INSUFFICIENT_CREDITS');
      ctx.advance(MINUTE);
      await expectCode(meter.release({ workspaceId, replyId: hold.replyId }), 'HOLD_EXPIRED');
      await expectCode(meter.release({ workspaceId, replyId: refusedId }), 'REPLY_NOT_FOUND');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    "release - an unknown reply or another workspace's reply throws REPLY_NOT_FOUND",
    async (ctx) => {
      const { meter, workspaceId: a } = await setup(ctx, 10);
      const b = await newWorkspace(ctx, meter, 10);
      await expectCode(meter.release({ workspaceId: a, replyId: ctx.id('nope') }), 'REPLY_NOT_FOUND');
      const hold = await meter.reserve(ask(a, THREE));
      await expectCode(meter.release({ workspaceId: b, replyId: hold.replyId }), 'REPLY_NOT_FOUND');
      expect(await money(meter, a)).toMatchObject({ held: 3 });
      expect(await money(meter, b)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'release - credits of a grant that expired while held expire with an expiry row',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, 2 * HOUR);
      await meter.addCredits({ workspaceId, credits: 3, grantId: 'promo', expiresAt: new Date(ctx.now() + HOUR) });
      const hold = await meter.reserve(ask(workspaceId, FOUR)); // 3 from the promo, 1 from the allotment
      ctx.advance(90 * MINUTE);
      await meter.release({ workspaceId, replyId: hold.replyId });
      const { balance, held, summary } = await money(meter, workspaceId);
      expect({ balance, held }).toEqual({ balance: 10, held: 0 });
      expect(summary.grants.map((g) => g.grantId)).toEqual(['period:0']);
      const expired = (await rowsOf(ctx, workspaceId, 'expiry')).filter((row) => row.grantId === 'topup:promo');
      expect(sum(expired.map((row) => row.amount))).toBe(-3 * C);
    },
  ],
  [
    'release - concurrent releases of one reply return the credits once',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      const { ok, errors } = await race(20, () => meter.release({ workspaceId, replyId: hold.replyId }));
      expect(errors).toEqual([]);
      expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'release - racing a settle, exactly one of them wins',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10);
      const other = newMeter(ctx);
      const hold = await meter.reserve(ask(workspaceId, THREE));
      const [settled, released] = await Promise.allSettled([
        meter.settle({ workspaceId, replyId: hold.replyId }),
        other.release({ workspaceId, replyId: hold.replyId }),
      ]);
      expect([settled.status, released.status].filter((s) => s === 'fulfilled')).toHaveLength(1);
      const { balance, held } = await money(meter, workspaceId);
      expect(held).toBe(0);
      expect(balance).toBe(settled.status === 'fulfilled' ? 7 : 10);
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(settled.status === 'fulfilled' ? 1 : 0);
    },
  ],
  // extend -------------------------------------------------------------------
  [
    'extend - keeps a hold alive past its first expiry',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.advance(50_000);
      const extended = await newMeter(ctx, { holdTtlMs: MINUTE }).extend({ workspaceId, replyId: hold.replyId });
      expect(extended.expiresAt.getTime()).toBe(ctx.now() + MINUTE);
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: hold.expiresAt.getTime() });
      expect(loaded.records[0]!.holdExpiresAt).toBe(extended.expiresAt.getTime());
      expect(loaded.lapsed).toEqual([]);
      ctx.setNow(hold.expiresAt.getTime() + 1);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 6, held: 4 });
      await meter.settle({ workspaceId, replyId: hold.replyId });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 6, held: 0 });
    },
  ],
  [
    'extend - a lapsed, settled or unknown reply throws',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const lapsed = await meter.reserve(ask(workspaceId, ONE));
      const { replyId } = await charge(meter, workspaceId, ONE);
      ctx.advance(MINUTE);
      await expectCode(meter.extend({ workspaceId, replyId: lapsed.replyId }), 'HOLD_EXPIRED');
      await expectCode(meter.extend({ workspaceId, replyId }), 'REPLY_SETTLED');
      await expectCode(meter.extend({ workspaceId, replyId: ctx.id('nope') }), 'REPLY_NOT_FOUND');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 9, held: 0 });
    },
  ],
  // hold expiry --------------------------------------------------------------
  [
    'hold expiry - a lapsed hold returns its credits on the next getWorkspace',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      // The process that took the hold died: nobody settles or releases it.
      ctx.advance(MINUTE - 1);
      expect(await money(meter, workspaceId)).toMatchObject({ held: 4 });
      ctx.advance(1);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect(await replyRecord(ctx, workspaceId, hold.replyId)).toMatchObject({ status: 'expired', finishedAt: hold.expiresAt.getTime() });
      expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
    },
  ],
  [
    'hold expiry - a hold once swept is no longer listed as lapsed',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, MINUTE);
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.advance(MINUTE);
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).lapsed.map((r) => r.key)).toEqual([
        `reply:${hold.replyId}`,
      ]);
      await meter.getWorkspace(workspaceId);
      const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${hold.replyId}`], now: ctx.now() + DAY });
      expect(loaded.lapsed).toEqual([]);
      expect(loaded.records[0]).toMatchObject({ holdExpiresAt: null, value: { status: 'expired' } });
      // Sweeping again changes nothing.
      await meter.getWorkspace(workspaceId);
      expect((await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).version).toBe(loaded.version);
    },
  ],
  [
    'hold expiry - a lapsed hold returns its credits on the next reserve',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 4, MINUTE);
      const dead = await meter.reserve(ask(workspaceId, FOUR));
      await expectCode(meter.reserve(ask(workspaceId, FOUR)), 'INSUFFICIENT_CREDITS');
      ctx.advance(MINUTE);
      await meter.reserve(ask(workspaceId, FOUR));
      expect((await replyRecord(ctx, workspaceId, dead.replyId))?.status).toBe('expired');
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 0, held: 4 });
    },
  ],
  [
    'hold expiry - holds with different lifetimes lapse independently',
    async (ctx) => {
      const { meter: long, workspaceId } = await setup(ctx, 10, HOUR);
      const short = newMeter(ctx, { holdTtlMs: MINUTE });
      const kept = await long.reserve(ask(workspaceId, TWO));
      const lapsed = await short.reserve(ask(workspaceId, THREE));
      ctx.advance(MINUTE);
      // Only the short hold lapsed, though it was taken after the long one.
      await long.reserve(ask(workspaceId, FOUR));
      await long.reserve(ask(workspaceId, FOUR));
      expect((await replyRecord(ctx, workspaceId, lapsed.replyId))?.status).toBe('expired');
      expect((await replyRecord(ctx, workspaceId, kept.replyId))?.status).toBe('held');
      expect(await money(long, workspaceId)).toMatchObject({ balance: 0, held: 10 });
    },
  ],
  [
    'hold expiry - credits of a lapsed hold from an expired grant expire with an expiry row',
    async (ctx) => {
      const { meter, workspaceId } = await setup(ctx, 10, 2 * HOUR);
      await meter.addCredits({ workspaceId, credits: 3, grantId: 'promo', expiresAt: new Date(ctx.now() + HOUR) });
      const hold = await meter.reserve(ask(workspaceId, FOUR));
      ctx.advance(2 * HOUR);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect((await replyRecord(ctx, workspaceId, hold.replyId))?.status).toBe('expired');
      const expired = (await rowsOf(ctx, workspaceId, 'expiry')).filter((row) => row.grantId === 'topup:promo');
      expect(sum(expired.map((row) => row.amount))).toBe(-3 * C);
    },
  ],
  [
    'hold expiry - a hold a dead server left returns its credits on another meter after holdTtlMs',
    async (ctx) => {
      const holdTtlMs = 5 * MINUTE;
      const dying = newMeter(ctx, { holdTtlMs });
      const workspaceId = await newWorkspace(ctx, dying, 3);
      // This server reserves, then dies before it settles or releases.
      const lost = await dying.reserve(ask(workspaceId, ONE, { conversationId: 'conv_1' }));
      await dying.reserve(ask(workspaceId, ONE, { conversationId: 'conv_2' }));
      const survivor = newMeter(ctx, { holdTtlMs });
      expect(await money(survivor, workspaceId)).toMatchObject({ balance: 1 });
      ctx.advance(holdTtlMs - 1);
      expect(await money(survivor, workspaceId)).toMatchObject({ held: 2 });
      ctx.advance(1);
      expect(await money(survivor, workspaceId)).toMatchObject({ balance: 3, held: 0 });
      await expectCode(survivor.settle({ workspaceId, replyId: lost.replyId }), 'HOLD_EXPIRED');
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(0);
    },
  ],
  // invariants ---------------------------------------------------------------
  [
    'invariants - the ledger sums to balance plus held through a mixed history',
    async (ctx) => {
      const quick = newMeter(ctx, { holdTtlMs: 20 * MINUTE });
      const slow = newMeter(ctx, { holdTtlMs: HOUR });
      const workspaceId = await newWorkspace(ctx, quick, 0, { plan: 'rollover' });
      await quick.addCredits({ workspaceId, credits: 3, grantId: 'promo', expiresAt: new Date(ctx.now() + 2 * HOUR) });
      await quick.addCredits({ workspaceId, credits: 4, grantId: 'forever' });
      const check = async (): Promise<void> => {
        const { balance, held } = await money(quick, workspaceId);
        const rows = await allRows(ctx.storage, workspaceId);
        expect(sum(rows.map((row) => row.amount))).toBe((balance + held) * C);
        expect(balance).toBeGreaterThanOrEqual(0);
      };
      const kept: Reservation[] = [];
      const models = [ONE, TWO, THREE, FOUR];
      for (let step = 0; step < 12; step++) {
        ctx.advance(17 * MINUTE);
        const meter = step % 3 === 0 ? quick : slow;
        const hold = await meter.reserve(ask(workspaceId, models[step % 4]!)).catch(() => undefined);
        if (hold) kept.push(hold);
        const earlier = kept[step - 2];
        if (earlier && step % 2 === 0) await rejection(slow.settle({ workspaceId, replyId: earlier.replyId }));
        if (earlier && step % 2 === 1) await rejection(quick.release({ workspaceId, replyId: earlier.replyId }));
        await check();
      }
      const { summary } = await money(quick, workspaceId);
      ctx.setNow(summary.periodEnd.getTime());
      await check();
      expect((await rowsOf(ctx, workspaceId, 'grant')).map((row) => row.grantId)).toEqual(['period:0', 'period:1']);
      expect(n(sum((await allRows(ctx.storage, workspaceId)).map((row) => row.amount)))).toBeGreaterThan(0);
    },
  ],
]);
