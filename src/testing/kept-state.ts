/**
 * A meter starts a batch that writes from the state it committed last, without a `load`,
 * while the stored version is unchanged and no hold can have lapsed. These cases have other
 * meters change the workspace behind its back in the three ways that must stop it: an id it
 * never saw, a hold it never saw lapsing, and the workspace deleted and created afresh. A
 * store that ignores `absentKeys`, misreports `nextLapseAt` or resets the version on `erase`
 * fails here with a double hold, a stuck balance or an overwritten workspace.
 */
import { expect } from 'vitest';
import type { CreditMeter } from '../meter/credit-meter.js';
import {
  allRows,
  ask,
  defineCases,
  expectCode,
  HOUR,
  MINUTE,
  money,
  newMeter,
  newWorkspace,
  ONE,
  overriding,
  sum,
  THREE,
  TWO,
} from './fixtures.js';

export const keptStateCases = defineCases([
  [
    'reserve - a meter that kept its state replays a replyId another meter settled before',
    async (ctx) => {
      const first = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, first, 10);
      const replyId = ctx.id('reply');
      await first.reply({ ...ask(workspaceId, ONE, { replyId }), input: 'q' });
      const second = newMeter(ctx);
      await second.reply({ ...ask(workspaceId, ONE), input: 'q' }); // it now keeps the state it wrote
      // The id is new to this meter, so it commits on the assumption that no record has it: the store says otherwise.
      expect(await second.reserve(ask(workspaceId, ONE, { replyId }))).toMatchObject({ status: 'settled', replayed: true });
      expect(await money(second, workspaceId)).toMatchObject({ balance: 8, held: 0 });
      expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.replyId === replyId)).toHaveLength(1);
    },
  ],
  [
    'hold expiry - a meter that kept its state still sees a hold of another meter lapse',
    async (ctx) => {
      const dying = newMeter(ctx, { holdTtlMs: 5 * MINUTE });
      const workspaceId = await newWorkspace(ctx, dying, 3);
      await dying.reserve(ask(workspaceId, TWO)); // never settled: its server died
      const survivor = newMeter(ctx, { holdTtlMs: HOUR });
      await survivor.reply({ ...ask(workspaceId, ONE), input: 'q' });
      await expectCode(survivor.reserve(ask(workspaceId, ONE)), 'INSUFFICIENT_CREDITS');
      ctx.advance(5 * MINUTE);
      // The survivor's next batch writes; it must start from a load that ends the lapsed hold.
      await survivor.reply({ ...ask(workspaceId, ONE), input: 'q' });
      expect(await money(survivor, workspaceId)).toMatchObject({ balance: 1, held: 0 });
    },
  ],
  [
    'deleteWorkspace - a meter that kept the old workspace never writes it over the new one',
    async (ctx) => {
      const old = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, old, 10);
      await old.reply({ ...ask(workspaceId, THREE), input: 'q' }); // old keeps this state
      const admin = newMeter(ctx);
      if (!ctx.storage.erase) return;
      await admin.deleteWorkspace({ workspaceId });
      await newWorkspace(ctx, admin, 20, { workspaceId });
      await admin.reply({ ...ask(workspaceId, THREE), input: 'q' });
      // As many commits as the old workspace had: only the version's history tells them apart.
      const hold = await old.reserve(ask(workspaceId, THREE));
      expect(hold.replayed).toBe(false);
      expect(await money(admin, workspaceId)).toMatchObject({ balance: 14, held: 3 });
      const rows = await allRows(ctx.storage, workspaceId);
      expect(rows.map((row) => row.seq)).toEqual([1, 2]);
      expect(sum(rows.map((row) => row.amount))).toBe(17_000_000);
    },
  ],
  [
    'commit - one that landed but answered conflict (re-sent after a lost answer) keeps its outcomes: load returns exactly what it wrote',
    async (ctx) => {
      // As a store's re-send after a dropped connection answers: the commit landed, the answer says otherwise.
      let lose = 0;
      const storage = overriding(ctx.storage, {
        commit: async (commits) => {
          const results = await ctx.storage.commit(commits);
          if (lose === 0) return results;
          lose--;
          return results.map(() => 'conflict');
        },
      });
      const meter = newMeter({ ...ctx, storage });
      const workspaceId = ctx.id('ws');
      ctx.track(workspaceId);
      lose = 1;
      await meter.createWorkspace({ workspaceId, plan: 'custom', allotment: 10 });
      // The meter tells its own commit by the version it chose and the state it wrote, as `load` returns them.
      await chargeThroughLostAnswers(meter, workspaceId, () => {
        lose = 1;
      });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 8, held: 0 });
      expect((await allRows(ctx.storage, workspaceId)).map((row) => row.kind)).toEqual(['grant', 'reply']);
    },
  ],
  [
    'commit - one that landed but answered conflict keeps its outcomes after another meter wrote too: the reply record carries its number',
    async (ctx) => {
      const other = newMeter(ctx);
      // The commit lands, then another app server writes, then the answer says `conflict`.
      let lose = false;
      const storage = overriding(ctx.storage, {
        commit: async (commits) => {
          const results = await ctx.storage.commit(commits);
          if (!lose) return results;
          lose = false;
          await other.addCredits({ workspaceId: commits[0]!.workspaceId, credits: 1, grantId: ctx.id('grant') });
          return results.map(() => 'conflict');
        },
      });
      const meter = newMeter({ ...ctx, storage });
      const workspaceId = await newWorkspace(ctx, meter, 10);
      // The state moved on, so only the record (`writtenBy`, kept as given) can tell.
      await chargeThroughLostAnswers(meter, workspaceId, () => {
        lose = true;
      });
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect((await allRows(ctx.storage, workspaceId)).map((row) => row.kind)).toEqual(['grant', 'topup', 'reply', 'topup']);
    },
  ],
]);

/**
 * Reserves and settles a reply of 2 credits, each commit landing but answering `conflict` once
 * `loseNext` has armed the store, and expects both to answer as first applied, with one
 * `reply.charged`.
 */
async function chargeThroughLostAnswers(meter: CreditMeter, workspaceId: string, loseNext: () => void): Promise<void> {
  const charged: string[] = [];
  meter.on('reply.charged', ({ replyId }) => {
    charged.push(replyId);
  });
  loseNext();
  const hold = await meter.reserve(ask(workspaceId, TWO));
  loseNext();
  const settlement = await meter.settle({ workspaceId, replyId: hold.replyId });
  expect({ held: hold.replayed, settled: settlement.replayed, charged }).toEqual({ held: false, settled: false, charged: [hold.replyId] });
}
