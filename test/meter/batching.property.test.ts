import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { CreditMeter, type CreditStorage, CreditsError, MemoryStorage } from '../../src/index.js';
import type { CommitResult, WorkspaceCommit } from '../../src/storage/index.js';
import { itemsOf, ledgerSum, TestClock } from '../support.js';

/**
 * The per-workspace batcher must be invisible: commands sent all at once (one batch, one
 * commit) give each caller exactly the outcome it would have had one at a time, in arrival
 * order, and leave the same balance, holds and ledger.
 */
type Step =
  | { kind: 'reserve'; id: number; model: string }
  | { kind: 'settle'; id: number; model?: string }
  | { kind: 'release'; id: number }
  | { kind: 'extend'; id: number }
  | { kind: 'topUp'; id: number; credits: number };

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    arbitrary: fc.record({
      kind: fc.constant('reserve' as const),
      id: fc.nat(12),
      model: fc.constantFrom('gpt-4o-mini', 'claude-haiku-4-5', 'gpt-4o'),
    }),
    weight: 5,
  },
  { arbitrary: fc.record({ kind: fc.constant('settle' as const), id: fc.nat(12) }), weight: 3 },
  {
    arbitrary: fc.record({
      kind: fc.constant('settle' as const),
      id: fc.nat(12),
      model: fc.constantFrom('gpt-4o-mini', 'claude-sonnet-4-6'),
    }),
    weight: 1,
  },
  { arbitrary: fc.record({ kind: fc.constant('release' as const), id: fc.nat(12) }), weight: 2 },
  { arbitrary: fc.record({ kind: fc.constant('extend' as const), id: fc.nat(12) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('topUp' as const), id: fc.nat(3), credits: fc.integer({ min: 1, max: 9 }) }), weight: 1 },
);

function run(meter: CreditMeter, s: Step): Promise<string> {
  const replyId = `r${s.id}`;
  const outcome = (p: Promise<unknown>) =>
    p.then(
      (value) => JSON.stringify(value, (key, v) => (key === 'workspace' || key === 'expiresAt' || key === 'at' ? undefined : v)),
      (error: unknown) => (CreditsError.is(error) ? error.code : `unexpected ${String(error)}`),
    );
  switch (s.kind) {
    case 'reserve':
      return outcome(meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: s.model, replyId }));
    case 'settle':
      return outcome(meter.settle({ workspaceId: 'ws', replyId, ...(s.model !== undefined && { model: s.model }) }));
    case 'release':
      return outcome(meter.release({ workspaceId: 'ws', replyId }));
    case 'extend':
      return outcome(meter.extend({ workspaceId: 'ws', replyId }));
    case 'topUp':
      return outcome(meter.addCredits({ workspaceId: 'ws', credits: s.credits, grantId: `g${s.id}` }));
  }
}

/**
 * Counts commits, to prove the concurrent run really was batched, and keeps each one's items
 * (as `maxCommitItems` counts them); declares `maxCommitItems` when given.
 */
function counting(inner: MemoryStorage, maxCommitItems?: number): { storage: CreditStorage; commits: () => number; sizes: number[] } {
  let count = 0;
  const sizes: number[] = [];
  const storage: CreditStorage = {
    migrate: () => inner.migrate(),
    close: () => inner.close(),
    load: (request) => inner.load(request),
    ledger: (query) => inner.ledger(query),
    commit: (commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> => {
      count++;
      sizes.push(...commits.map(itemsOf));
      return inner.commit(commits);
    },
    ...(maxCommitItems !== undefined && { maxCommitItems }),
  };
  return { storage, commits: () => count, sizes };
}

/** The batched meter ends with the balance, holds, use and ledger of the one-at-a-time one. */
async function expectSameBooks(one: CreditMeter, all: CreditMeter): Promise<void> {
  const [a, b] = await Promise.all([one.getWorkspace('ws'), all.getWorkspace('ws')]);
  expect([String(b.balance), String(b.held), String(b.usedThisPeriod)]).toEqual([
    String(a.balance),
    String(a.held),
    String(a.usedThisPeriod),
  ]);
  expect(await ledgerSum(all, 'ws')).toBe(await ledgerSum(one, 'ws'));
  expect(await ledgerSum(all, 'ws')).toBe(Number(b.balance) + Number(b.held));
}

describe('the per-workspace batcher (property)', () => {
  it('commands sent at once get the outcomes they would get one at a time, and the same state', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 60 }), async (steps) => {
        const clock = new TestClock('2026-01-31T00:00:00Z');
        const one = new CreditMeter({ clock: clock.now });
        const counted = counting(new MemoryStorage());
        const all = new CreditMeter({ clock: clock.now, storage: counted.storage });
        for (const meter of [one, all]) await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 20 });

        const sequential: string[] = [];
        for (const s of steps) sequential.push(await run(one, s));
        const before = counted.commits();
        const concurrent = await Promise.all(steps.map((s) => run(all, s)));
        expect(concurrent).toEqual(sequential);
        // Everything sent at once went out in at most one commit.
        expect(counted.commits() - before).toBeLessThanOrEqual(1);

        await expectSameBooks(one, all);
      }),
      { numRuns: 200 },
    );
  }, 120_000);

  it("with a store's maxCommitItems: the same outcomes and state, in commits that each fit", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(step, { minLength: 20, maxLength: 60 }), fc.integer({ min: 8, max: 16 }), async (steps, max) => {
        const clock = new TestClock('2026-01-31T00:00:00Z');
        const one = new CreditMeter({ clock: clock.now });
        const { storage, sizes } = counting(new MemoryStorage(), max);
        const all = new CreditMeter({ clock: clock.now, storage });
        for (const meter of [one, all]) await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 20 });

        const sequential: string[] = [];
        for (const s of steps) sequential.push(await run(one, s));
        expect(await Promise.all(steps.map((s) => run(all, s)))).toEqual(sequential);
        expect(Math.max(...sizes)).toBeLessThanOrEqual(max);
        await expectSameBooks(one, all);
      }),
      { numRuns: 200 },
    );
  }, 120_000);

  it('one refused reserve never fails its neighbours in the same batch', async () => {
    const meter = new CreditMeter();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 12 });
    const asks = ['gpt-4o', 'gpt-4o', 'gpt-4o', 'claude-haiku-4-5', 'gpt-4o-mini'];
    const results = await Promise.allSettled(
      asks.map((model, i) => meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model, replyId: `r${i}` })),
    );
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'rejected', 'fulfilled', 'rejected']);
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(12);
  });
});
