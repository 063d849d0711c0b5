/**
 * Billing operations through `CreditMeter`: refunds, adjustments, per-agent caps, recharges,
 * alerts at absolute levels, charges taken at settle, erasure and listing. The rules live in
 * the core; these cases prove a store keeps what they need (records by key, the state
 * document, the version guard under racing meters, `erase` and `listWorkspaces`).
 */
import { expect } from 'vitest';
import {
  allRows,
  ask,
  type ConformanceContext,
  codeOf,
  defineCases,
  holdFree,
  money,
  newMeter,
  newWorkspace,
  num,
  ONE,
  race,
  racingMeters,
  rejection,
  rowsOf,
  THREE,
} from './fixtures.js';

async function charged(ctx: ConformanceContext, credits: number) {
  const meter = newMeter(ctx);
  const workspaceId = await newWorkspace(ctx, meter, credits);
  return { meter, workspaceId };
}

export const billingCases = defineCases([
  [
    'refund - gives a charge back once per refundId, with a refund row pointing at the reply',
    async (ctx) => {
      const { meter, workspaceId } = await charged(ctx, 10);
      await meter.reply({ ...ask(workspaceId, THREE, { replyId: 'r1' }), input: 'q' });
      const first = await meter.refund({ workspaceId, replyId: 'r1', refundId: 'f1', reason: 'wrong answer' });
      const again = await meter.refund({ workspaceId, replyId: 'r1', refundId: 'f1', reason: 'wrong answer' });
      expect([num(first.credits), first.replayed, again.replayed]).toEqual([3, false, true]);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0, used: 0 });
      const refunds = await rowsOf(ctx, workspaceId, 'refund');
      expect(refunds).toHaveLength(1);
      expect(refunds[0]).toMatchObject({ replyId: 'r1', amount: 3_000_000, reason: 'wrong answer', agentId: 'agent_a' });
    },
  ],
  [
    'refund - racing refunds from several meters never give back more than was charged',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 10);
      await fleet[0]!.reply({ ...ask(workspaceId, THREE, { replyId: 'r1' }), input: 'q' });
      const result = await race(12, (i) =>
        fleet[i % fleet.length]!.refund({ workspaceId, replyId: 'r1', refundId: `f${i}`, reason: 'x', credits: 1 }),
      );
      expect(result.ok).toHaveLength(3);
      expect(result.errors.every((code) => code === 'INVALID_INPUT')).toBe(true);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'refund - an unknown reply, a reply in flight and too much are refused and change nothing',
    async (ctx) => {
      const { meter, workspaceId } = await charged(ctx, 10);
      await meter.reserve(ask(workspaceId, ONE, { replyId: 'held' }));
      await meter.reply({ ...ask(workspaceId, THREE, { replyId: 'done' }), input: 'q' });
      const before = await allRows(ctx.storage, workspaceId);
      expect(await rejection(meter.refund({ workspaceId, replyId: 'nope', refundId: 'a', reason: 'x' }))).toBe('REPLY_NOT_FOUND');
      expect(await rejection(meter.refund({ workspaceId, replyId: 'held', refundId: 'b', reason: 'x' }))).toBe('REPLY_IN_PROGRESS');
      expect(await rejection(meter.refund({ workspaceId, replyId: 'done', refundId: 'c', reason: 'x', credits: 4 }))).toBe('INVALID_INPUT');
      expect(await allRows(ctx.storage, workspaceId)).toEqual(before);
    },
  ],
  [
    'adjust - credits and debits with a reason; racing debits never take the balance below zero',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 10);
      const credit = await fleet[0]!.adjust({ workspaceId, adjustmentId: 'plus', credits: 5, reason: 'goodwill' });
      expect(num(credit.workspace.balance)).toBe(15);
      const result = await race(20, (i) =>
        fleet[i % fleet.length]!.adjust({ workspaceId, adjustmentId: `minus${i}`, credits: -2, reason: 'clawback' }),
      );
      expect(result.ok).toHaveLength(7);
      expect(result.errors.every((code) => code === 'INSUFFICIENT_CREDITS')).toBe(true);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 1, held: 0 });
      expect((await rowsOf(ctx, workspaceId, 'adjustment')).map((row) => row.reason)).toEqual(['goodwill', ...Array(7).fill('clawback')]);
    },
  ],
  [
    'agent limit - racing replies from several meters never pass an agent cap',
    async (ctx) => {
      const fleet = racingMeters(ctx);
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 1000);
      await fleet[0]!.setAgentLimit({ workspaceId, agentId: 'capped', credits: 30 });
      const result = await race(60, (i) =>
        fleet[i % fleet.length]!.reply({
          ...ask(workspaceId, THREE, { agentId: i % 2 === 0 ? 'capped' : 'free', conversationId: `c${i}` }),
          input: i,
        }),
      );
      expect(result.ok).toHaveLength(40);
      expect(result.errors).toEqual(Array(20).fill('AGENT_LIMIT_REACHED'));
      const { summary } = await money(fleet[0]!, workspaceId);
      expect(num(summary.agents.find((agent) => agent.agentId === 'capped')!.spent)).toBe(30);
      expect(num(summary.usedThisPeriod)).toBe(120);
    },
  ],
  [
    'recharge - one crossing asks once, however many meters race through it',
    async (ctx) => {
      const asked: string[] = [];
      const fleet = racingMeters(ctx, { onRecharge: ({ rechargeId }) => void asked.push(rechargeId) });
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 20);
      await fleet[0]!.setRecharge({ workspaceId, recharge: { below: 10, credits: 50 } });
      const result = await race(15, (i) =>
        fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { conversationId: `c${i}` }), input: i }),
      );
      expect(result.ok).toHaveLength(15);
      expect(asked).toEqual(['recharge:1']);
      expect(await money(fleet[0]!, workspaceId)).toMatchObject({ balance: 55, held: 0 });
    },
  ],
  [
    'alerts - an absolute level is announced once per period, whatever the number of meters',
    async (ctx) => {
      const levels: number[] = [];
      const fleet = racingMeters(ctx, { lowBalanceLevels: [5] });
      for (const meter of fleet) meter.on('balance.below', (event) => void levels.push(num(event.level)));
      const workspaceId = await newWorkspace(ctx, fleet[0]!, 20);
      await race(20, (i) => fleet[i % fleet.length]!.reply({ ...ask(workspaceId, ONE, { conversationId: `c${i}` }), input: i }));
      expect(levels).toEqual([5]);
    },
  ],
  [
    'settle - charges from the grants live at settle, so a release never strands purchased credits',
    async (ctx) => {
      const { meter, workspaceId } = await charged(ctx, 6);
      await meter.addCredits({ workspaceId, credits: 10, grantId: 'pack' });
      await meter.reserve(ask(workspaceId, THREE, { replyId: 'first' }));
      await meter.reserve(ask(workspaceId, THREE, { replyId: 'second' }));
      const spill = await meter.reserve(ask(workspaceId, THREE, { replyId: 'spill' })); // from the pack
      await meter.release({ workspaceId, replyId: 'first' });
      await meter.settle({ workspaceId, replyId: spill.replyId });
      const { summary } = await money(meter, workspaceId);
      expect(summary.grants.map((grant) => [grant.grantId, num(grant.remaining)])).toEqual([['pack', 10]]);
    },
  ],
  [
    'erase - removes a workspace, or keeps its ledger with agent and conversation ids erased',
    async (ctx) => {
      const meter = newMeter(ctx);
      const gone = await newWorkspace(ctx, meter, 10);
      const kept = await newWorkspace(ctx, meter, 10);
      if (!ctx.storage.erase) {
        expect(await rejection(meter.deleteWorkspace({ workspaceId: gone }))).toBe('STORAGE_ERROR');
        return;
      }
      for (const workspaceId of [gone, kept]) await meter.reply({ ...ask(workspaceId, THREE, { replyId: 'r1' }), input: 'q' });
      const versionOf = async (workspaceId: string) => (await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() })).version;
      const before = await versionOf(gone);
      expect((await meter.deleteWorkspace({ workspaceId: gone })).existed).toBe(true);
      expect((await meter.deleteWorkspace({ workspaceId: gone })).existed).toBe(false);
      // Nothing is left but the version, which never goes back: no version is reused for another state.
      const erased = holdFree(await ctx.storage.load({ workspaceId: gone, keys: ['reply:r1'], now: ctx.now() }));
      expect(erased).toEqual({ version: erased.version, state: null, records: [], lapsed: [] });
      expect(erased.version).toBeGreaterThan(before);
      if (ctx.storage.listWorkspaces)
        expect(await ctx.storage.listWorkspaces({ afterId: gone.slice(0, -1), limit: 10_000 })).not.toContain(gone);
      expect(await allRows(ctx.storage, gone)).toEqual([]);
      await meter.deleteWorkspace({ workspaceId: kept, keepLedger: true });
      const rows = await allRows(ctx.storage, kept);
      expect(rows.map((row) => [row.seq, row.kind, row.amount, row.agentId, row.conversationId])).toEqual([
        [1, 'grant', 10_000_000, null, null],
        [2, 'reply', -3_000_000, null, null],
        [3, 'expiry', -7_000_000, null, null], // what was left, written off
      ]);
      expect(codeOf(await meter.getWorkspace(kept).catch((error: unknown) => error))).toBe('WORKSPACE_NOT_FOUND');
      // Both ids can be used afresh; the kept ledger numbers on.
      const keptVersion = await versionOf(kept);
      await newWorkspace(ctx, meter, 10, { workspaceId: gone });
      await newWorkspace(ctx, meter, 10, { workspaceId: kept });
      // Each is committed on top of the version it kept (by the meter's step), never below it.
      expect(await versionOf(gone)).toBeGreaterThan(erased.version);
      expect(await versionOf(kept)).toBeGreaterThan(keptVersion);
      expect((await meter.reply({ ...ask(gone, THREE, { replyId: 'r1' }), input: 'q' })).replayed).toBe(false);
      expect((await allRows(ctx.storage, kept)).map((row) => row.seq)).toEqual([1, 2, 3, 4]);
    },
  ],
  [
    'listWorkspaces - pages through every workspace once, in a stable order',
    async (ctx) => {
      const meter = newMeter(ctx);
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await newWorkspace(ctx, meter, 10));
      if (!ctx.storage.listWorkspaces) {
        expect(await rejection(meter.listWorkspaces())).toBe('STORAGE_ERROR');
        return;
      }
      const seen: string[] = [];
      let page = await meter.listWorkspaces({ limit: 2 });
      seen.push(...page.workspaces);
      while (page.nextCursor) {
        page = await meter.listWorkspaces({ cursor: page.nextCursor, limit: 2 });
        seen.push(...page.workspaces);
      }
      // The store may hold other cases' workspaces too: this case's appear exactly once each, in order.
      const mine = seen.filter((id) => ids.includes(id));
      expect([...mine].sort()).toEqual([...ids].sort());
      expect(new Set(seen).size).toBe(seen.length);
    },
  ],
]);
