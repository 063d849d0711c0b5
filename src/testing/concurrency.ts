/**
 * Several `CreditMeter` instances on one store, as several app servers would share a
 * database: races of `concurrency.requests` calls from `concurrency.meters` meters against a
 * balance of `concurrency.affordable` credits. A store that loses a version check, a row or
 * a record shows up here as an overspend, a double charge or a ledger that disagrees.
 */
import { expect } from 'vitest';
import type { CreditMeter } from '../meter/credit-meter.js';
import { FakeProvider } from './fake-provider.js';
import {
  allRows,
  ask,
  type ConformanceContext,
  defineCases,
  meters,
  money,
  newWorkspace,
  ONE,
  race,
  racingMeters,
  rowsOf,
  sum,
} from './fixtures.js';

/** Polls the stored state while `work` runs and returns the lowest stored balance seen. */
async function watchBalance<T>(ctx: ConformanceContext, workspaceId: string, work: Promise<T>): Promise<{ result: T; lowest: number }> {
  let done = false;
  let lowest = Number.POSITIVE_INFINITY;
  const watcher = (async () => {
    while (!done) {
      const loaded = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
      const account = loaded.state?.account;
      if (account) {
        lowest = Math.min(
          lowest,
          ...account.grants.map((grant) => grant.remaining),
          sum(account.grants.map((grant) => grant.remaining)),
          account.held,
        );
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  try {
    return { result: await work, lowest };
  } finally {
    done = true;
    await watcher;
  }
}

async function funded(ctx: ConformanceContext, fleet: readonly CreditMeter[], credits: number): Promise<string> {
  return newWorkspace(ctx, fleet[0]!, credits);
}

/**
 * Reserves from every meter, each settled or released by the next meter or left held: the
 * ledger, balance and holds must agree exactly, and no balance may go below zero.
 */
async function mixedTraffic(ctx: ConformanceContext, fleet: readonly CreditMeter[]): Promise<void> {
  const { requests, affordable } = ctx.concurrency;
  const workspaceId = await funded(ctx, fleet, affordable);
  const { result, lowest } = await watchBalance(
    ctx,
    workspaceId,
    race(requests, async (i) => {
      const hold = await fleet[i % fleet.length]!.reserve(ask(workspaceId, ONE, { conversationId: `conv_${i}` }));
      const other = fleet[(i + 1) % fleet.length]!;
      if (i % 3 === 0) return { kind: 'settled', charge: await other.settle({ workspaceId, replyId: hold.replyId }) } as const;
      if (i % 3 === 1) return { kind: 'released', release: await other.release({ workspaceId, replyId: hold.replyId }) } as const;
      return { kind: 'held' } as const;
    }),
  );
  expect(result.errors.every((code) => code === 'INSUFFICIENT_CREDITS')).toBe(true);
  expect(lowest).toBeGreaterThanOrEqual(0);
  const settled = result.ok.filter((r) => r.kind === 'settled').length;
  const held = result.ok.filter((r) => r.kind === 'held').length;
  expect(settled + held).toBeLessThanOrEqual(affordable);
  expect(await money(fleet[0]!, workspaceId)).toMatchObject({ held, balance: affordable - settled - held, used: settled });
  expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(settled);
  expect(sum((await allRows(ctx.storage, workspaceId)).map((row) => row.amount))).toBe((affordable - settled) * 1_000_000);
}

export const concurrencyCases = defineCases([
  [
    'concurrency - replies from several meters never overspend',
    async (ctx) => {
      const { requests, affordable } = ctx.concurrency;
      const fleet = racingMeters(ctx);
      const workspaceId = await funded(ctx, fleet, affordable);
      const { result, lowest } = await watchBalance(
        ctx,
        workspaceId,
        race(requests, (i) =>
          fleet[i % fleet.length]!.reply({
            ...ask(workspaceId, ONE, { agentId: `agent_${i % 3}`, conversationId: `conv_${i}` }),
            input: i,
          }),
        ),
      );
      expect(result.ok).toHaveLength(affordable);
      expect(result.errors).toEqual(Array.from({ length: requests - affordable }, () => 'INSUFFICIENT_CREDITS'));
      expect(lowest).toBeGreaterThanOrEqual(0);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 0, held: 0, used: affordable });
      const replies = await rowsOf(ctx, workspaceId, 'reply');
      expect(replies).toHaveLength(affordable);
      expect(new Set(replies.map((row) => row.replyId))).toEqual(new Set(result.ok.map((r) => r.replyId)));
      expect(new Set(result.ok.map((r) => r.entryId)).size).toBe(affordable);
    },
  ],
  [
    'concurrency - reserves from several meters hold exactly the affordable amount',
    async (ctx) => {
      const { requests, affordable } = ctx.concurrency;
      const fleet = racingMeters(ctx);
      const workspaceId = await funded(ctx, fleet, affordable);
      const { result, lowest } = await watchBalance(
        ctx,
        workspaceId,
        race(requests, (i) => fleet[i % fleet.length]!.reserve(ask(workspaceId, ONE, { conversationId: `conv_${i}` }))),
      );
      expect(result.ok).toHaveLength(affordable);
      expect(result.errors.every((code) => code === 'INSUFFICIENT_CREDITS')).toBe(true);
      expect(lowest).toBeGreaterThanOrEqual(0);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 0, held: affordable });
      // Every hold and every refusal left its record.
      const loaded = await ctx.storage.load({ workspaceId, keys: result.ok.map((r) => `reply:${r.replyId}`), now: ctx.now() });
      expect(loaded.records).toHaveLength(affordable);
      for (const record of loaded.records) expect(record.value).toMatchObject({ status: 'held' });
      // Settling every hold at once, from every meter, charges each exactly once.
      const settled = await race(result.ok.length, (i) =>
        fleet[(i + 1) % fleet.length]!.settle({ workspaceId, replyId: result.ok[i]!.replyId }),
      );
      expect(settled.errors).toEqual([]);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ held: 0, used: affordable });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(affordable);
    },
  ],
  [
    'concurrency - settles of one replyId from several meters charge once',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await funded(ctx, fleet, 10);
      const hold = await fleet[0]!.reserve(ask(workspaceId, ONE));
      const { ok, errors } = await race(Math.max(10, ctx.concurrency.meters * 4), (i) =>
        fleet[i % fleet.length]!.settle({ workspaceId, replyId: hold.replyId }),
      );
      expect(errors).toEqual([]);
      expect(ok.filter((s) => !s.replayed)).toHaveLength(1);
      expect(new Set(ok.map((s) => s.entryId)).size).toBe(1);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 9, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(1);
    },
  ],
  [
    'concurrency - reserves of one replyId from several meters create one hold',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await funded(ctx, fleet, 10);
      const replyId = ctx.id('reply');
      const { ok, errors } = await race(Math.max(10, ctx.concurrency.meters * 4), (i) =>
        fleet[i % fleet.length]!.reserve(ask(workspaceId, ONE, { replyId })),
      );
      expect(errors).toEqual([]);
      expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 9, held: 1 });
    },
  ],
  [
    'concurrency - a retried reply with one replyId charges once and calls the provider once',
    async (ctx) => {
      const provider = new FakeProvider({ delayMs: 5 });
      const fleet = racingMeters(ctx, { providers: { bookbag: provider } });
      const workspaceId = await funded(ctx, fleet, 10);
      const replyId = ctx.id('reply');
      const send = (i: number) => fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { replyId }), input: 'hi' });
      const { ok, errors } = await race(Math.max(10, ctx.concurrency.meters * 2), send);
      // One caller runs the reply; the others see it in progress, or replay it once it is charged.
      expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
      expect(errors.every((code) => code === 'REPLY_IN_PROGRESS')).toBe(true);
      const retry = await send(0);
      expect(retry.replayed).toBe(true);
      expect(new Set([...ok, retry].map((r) => r.entryId)).size).toBe(1);
      expect(provider.calls).toHaveLength(1);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 9, held: 0 });
    },
  ],
  [
    'concurrency - a failing provider charges nothing under load',
    async (ctx) => {
      const provider = new FakeProvider({ error: new Error('upstream down') });
      const fleet = racingMeters(ctx, { providers: { bookbag: provider } });
      const workspaceId = await funded(ctx, fleet, 10);
      const { ok, errors } = await race(40, (i) =>
        fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { conversationId: `conv_${i}` }), input: i }),
      );
      expect(ok).toHaveLength(0);
      // Every hold was released: a reply refused while others held the balance is fine, a charge is not.
      expect(errors.every((code) => code === 'PROVIDER_ERROR' || code === 'INSUFFICIENT_CREDITS')).toBe(true);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect(await rowsOf(ctx, workspaceId, 'reply')).toHaveLength(0);
    },
  ],
  [
    'concurrency - mixed reserve, settle and release traffic from several meters keeps the ledger exact',
    (ctx) => mixedTraffic(ctx, racingMeters(ctx)),
  ],
  [
    'concurrency - mixed traffic from meters that start from the state they kept keeps the ledger exact',
    (ctx) => mixedTraffic(ctx, meters(ctx, ctx.concurrency.meters)),
  ],
  [
    'concurrency - replies in several workspaces from several meters stay independent',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaces = await Promise.all(Array.from({ length: 4 }, (_, i) => newWorkspace(ctx, fleet[i % fleet.length]!, 5 + i)));
      const { ok } = await race(workspaces.length * 15, (i) => {
        const workspaceId = workspaces[i % workspaces.length]!;
        return fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { conversationId: `conv_${i}` }), input: i });
      });
      expect(ok).toHaveLength(sum(workspaces.map((_, i) => 5 + i)));
      for (const [i, workspaceId] of workspaces.entries()) {
        expect(ok.filter((r) => r.workspaceId === workspaceId)).toHaveLength(5 + i);
        expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 0, held: 0, used: 5 + i });
      }
    },
  ],
]);
