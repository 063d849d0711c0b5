/**
 * The store under test against the memory store, on random operations through meters that share
 * one clock (two app servers taking turns on the store, one meter on the memory store): every
 * outcome, every ledger page and every usage report must be the same.
 * The rules live in the core, so the two can only differ where a store stores and fetches:
 * versions, records, ledger order and paging, windows around UTC days, usage sums, ids that
 * differ only by case, accent or a trailing space, and a clock that goes back.
 */
import { expect } from 'vitest';
import { CreditsError } from '../core/errors.js';
import type { CreditMeter } from '../meter/credit-meter.js';
import { MemoryStorage } from '../storage/memory-storage.js';
import type { CreditStorage } from '../storage/storage.js';
import { CONFORMANCE_EPOCH, type ConformanceContext, DAY, defineCases, HOUR, newMeter, ONE, overriding, TWO } from './fixtures.js';

/** Random operation sequences per run, and operations in each. */
const SEQUENCES = 40;
const OPERATIONS = { min: 30, max: 60 };
// Distinct ids a collation or a trimming comparison would merge.
const AGENTS = ['agent-e', 'Agent-e', 'agent-é', 'agent-e '];
const CONVERSATIONS = ['c1', 'C1', 'c-ü'];

type Op =
  | { kind: 'reserve'; reply: number; agent: number; model: string }
  | { kind: 'charge'; agent: number; conversation: number; model: string }
  | { kind: 'settle' | 'release'; reply: number }
  | { kind: 'topUp'; grant: number; credits: number }
  | { kind: 'refund'; reply: number; refund: number; credits: number | undefined }
  | { kind: 'adjust'; adjustment: number; credits: number }
  | { kind: 'changePlan'; allotment: number }
  | { kind: 'agentLimit'; agent: number; credits: number | null; models: string[] | null }
  | { kind: 'extend'; reply: number }
  | { kind: 'recreate'; keepLedger: boolean }
  | { kind: 'clock'; ms: number }
  | { kind: 'ledger'; from: number | undefined; span: number | undefined; agent: number | undefined; limit: number }
  | { kind: 'usage'; from: number; span: number; group: 'agent' | 'model' | 'conversation'; interval: 'day' | 'week' | undefined }
  | { kind: 'summary' };

/** mulberry32: a small seeded generator, so a failure names the seed that reproduces it. */
function generator(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (min: number, max: number) => min + Math.floor(next() * (max - min + 1));
  const maybe = <T>(value: () => T) => (next() < 0.5 ? undefined : value());
  return { int, maybe, pick: <T>(items: readonly T[]) => items[int(0, items.length - 1)]! };
}

function randomOp(r: ReturnType<typeof generator>): Op {
  const roll = r.int(1, 30);
  if (roll === 25) return { kind: 'adjust', adjustment: r.int(0, 3), credits: r.pick([-3, -1, 2, 15]) };
  if (roll === 26) return { kind: 'changePlan', allotment: r.pick([50, 100, 200]) };
  if (roll === 27)
    return { kind: 'agentLimit', agent: r.int(0, 3), credits: r.pick([null, 0, 5]), models: r.pick([null, [ONE], [ONE, TWO]]) };
  if (roll === 28) return { kind: 'extend', reply: r.int(0, 12) };
  // Rarely: the workspace is deleted (its ledger kept, anonymised, or not) and created again.
  if (roll === 29 && r.int(0, 2) === 0) return { kind: 'recreate', keepLedger: r.pick([true, false]) };
  // A few reply ids, so settles, releases and refunds meet holds, and retries meet their first outcome.
  if (roll <= 5) return { kind: 'reserve', reply: r.int(0, 12), agent: r.int(0, 3), model: r.pick([ONE, TWO]) };
  if (roll <= 8) return { kind: 'charge', agent: r.int(0, 3), conversation: r.int(0, 2), model: r.pick([ONE, TWO]) };
  if (roll <= 12) return { kind: r.pick(['settle', 'release'] as const), reply: r.int(0, 12) };
  if (roll === 13) return { kind: 'topUp', grant: r.int(0, 3), credits: r.int(1, 20) };
  if (roll === 14) return { kind: 'refund', reply: r.int(0, 12), refund: r.int(0, 3), credits: r.maybe(() => r.int(1, 2)) };
  // Mostly forward, sometimes back (a clock that went back): the ledger's time order breaks.
  if (roll <= 17) return { kind: 'clock', ms: r.int(-6 * HOUR, 20 * HOUR) };
  // Windows start up to two days before the clock, where the rows are.
  if (roll <= 20) {
    const from = r.maybe(() => r.int(0, 2 * DAY));
    return { kind: 'ledger', from, span: r.maybe(() => r.int(0, 2 * DAY)), agent: r.maybe(() => r.int(0, 3)), limit: r.int(1, 15) };
  }
  if (roll <= 23) {
    const group = r.pick(['agent', 'model', 'conversation'] as const);
    return { kind: 'usage', from: r.int(0, 2 * DAY), span: r.int(0, 3 * DAY), group, interval: r.pick(['day', 'week', undefined]) };
  }
  return { kind: 'summary' };
}

/** What an operation answered, as plain data; a refusal as its error code. */
async function apply(meter: CreditMeter, workspaceId: string, op: Op, index: number, now: number): Promise<unknown> {
  const plain = (value: unknown) => JSON.parse(JSON.stringify(value)) as unknown;
  const ask = (agent: number, conversation: number, model: string) => ({
    workspaceId,
    agentId: AGENTS[agent]!,
    conversationId: CONVERSATIONS[conversation]!,
    model,
  });
  try {
    switch (op.kind) {
      case 'reserve':
        return plain(await meter.reserve({ ...ask(op.agent, 0, op.model), replyId: `r${op.reply}` }));
      case 'charge': {
        // A fresh id per charge, the same on both meters: the operation's index.
        const hold = await meter.reserve({ ...ask(op.agent, op.conversation, op.model), replyId: `c${index}` });
        return plain(await meter.settle({ workspaceId, replyId: hold.replyId }));
      }
      case 'settle':
        return plain(await meter.settle({ workspaceId, replyId: `r${op.reply}` }));
      case 'release':
        return plain(await meter.release({ workspaceId, replyId: `r${op.reply}` }));
      case 'topUp':
        return plain(await meter.addCredits({ workspaceId, credits: op.credits, grantId: `g${op.grant}` }));
      case 'refund':
        return plain(
          await meter.refund({
            workspaceId,
            replyId: `r${op.reply}`,
            refundId: `f${op.refund}`,
            reason: 'différentiel',
            ...(op.credits !== undefined && { credits: op.credits }),
          }),
        );
      case 'adjust':
        return plain(await meter.adjust({ workspaceId, adjustmentId: `a${op.adjustment}`, credits: op.credits, reason: 'ajusté' }));
      case 'changePlan':
        return plain(await meter.changePlan({ workspaceId, plan: 'custom', allotment: op.allotment }));
      case 'agentLimit':
        return plain(await meter.setAgentLimit({ workspaceId, agentId: AGENTS[op.agent]!, credits: op.credits, models: op.models }));
      case 'extend':
        return plain(await meter.extend({ workspaceId, replyId: `r${op.reply}` }));
      case 'recreate': {
        const deleted = await meter.deleteWorkspace({ workspaceId, keepLedger: op.keepLedger });
        return [plain(deleted), plain(await meter.createWorkspace({ workspaceId, plan: 'custom', allotment: 100 }))];
      }
      case 'clock':
        return null;
      case 'ledger': {
        // Every page of the query, so paging over a window is compared too.
        const pages = [];
        let cursor: string | undefined;
        do {
          const page = await meter.ledger({
            workspaceId,
            limit: op.limit,
            ...(op.from !== undefined && { from: new Date(now - op.from) }),
            ...(op.span !== undefined && { to: new Date(now - (op.from ?? 2 * DAY) + op.span) }),
            ...(op.agent !== undefined && { agentId: AGENTS[op.agent]! }),
            ...(cursor !== undefined && { cursor }),
          });
          pages.push(plain(page));
          cursor = page.nextCursor;
          // A store whose cursor never moves on must fail the comparison, not hang it.
        } while (cursor && pages.length < 1000);
        return pages;
      }
      case 'usage':
        return plain(
          await meter.usage({
            workspaceId,
            from: new Date(now - op.from),
            to: new Date(now - op.from + op.span),
            groupBy: op.group,
            ...(op.interval !== undefined && { interval: op.interval }),
          }),
        );
      case 'summary':
        return plain(await meter.getWorkspace(workspaceId));
    }
  } catch (error) {
    if (CreditsError.is(error) && error.code !== 'STORAGE_ERROR') return error.code;
    throw error;
  }
}

/**
 * The store as a network would hand it over now and then: one commit in ten lands but answers
 * `conflict` (a re-send after a dropped connection), one in twenty lands and then fails (the
 * answer lost after COMMIT). The meter must tell its own commit by what `load` returns and
 * answer exactly as if nothing had gone wrong.
 */
function losingAnswers(storage: CreditStorage, r: ReturnType<typeof generator>): CreditStorage {
  return overriding(storage, {
    commit: async (commits) => {
      const roll = r.int(1, 20);
      const results = await storage.commit(commits);
      // Only a commit that landed: one that conflicted fails as it should, with STORAGE_ERROR.
      if (roll === 1 && results.every((result) => result === 'committed')) throw new Error('connection lost after COMMIT');
      return roll <= 3 ? results.map(() => 'conflict') : results;
    },
  });
}

async function sequence(ctx: ConformanceContext, seed: number): Promise<void> {
  const r = generator(seed);
  const ops = Array.from({ length: r.int(OPERATIONS.min, OPERATIONS.max) }, () => randomOp(r));
  // Two app servers on the store, one after the other at random: each starts from the state it
  // committed last until the other's commit proves it stale.
  const servers = ops.map(() => r.int(0, 1));
  ctx.setNow(CONFORMANCE_EPOCH);
  const workspaceId = ctx.id('diff');
  ctx.track(workspaceId);
  const options = { holdTtlMs: 8 * HOUR };
  const network = losingAnswers(ctx.storage, generator(~seed));
  const stored = [newMeter({ ...ctx, storage: network }, options), newMeter({ ...ctx, storage: network }, options)];
  const reference = newMeter({ ...ctx, storage: new MemoryStorage() }, options);
  for (const meter of [stored[0]!, reference]) {
    await meter.createWorkspace({ workspaceId, plan: 'custom', allotment: 100, startsAt: new Date(CONFORMANCE_EPOCH) });
  }
  for (const [i, op] of ops.entries()) {
    if (op.kind === 'clock') ctx.setNow(Math.max(CONFORMANCE_EPOCH, ctx.now() + op.ms));
    const where = `seed ${seed}, operation ${i} (on server ${servers[i]}) of ${JSON.stringify(ops.slice(0, i + 1))}`;
    const found = await apply(stored[servers[i]!]!, workspaceId, op, i, ctx.now());
    expect(found, where).toEqual(await apply(reference, workspaceId, op, i, ctx.now()));
  }
  const whole: Op = { kind: 'ledger', from: undefined, span: undefined, agent: undefined, limit: 100 };
  const ledger = async (meter: CreditMeter) => apply(meter, workspaceId, whole, ops.length, ctx.now());
  expect(await ledger(stored[1]!), `seed ${seed}: the whole ledger`).toEqual(await ledger(reference));
}

export const differentialCases = defineCases([
  [
    'differential - random operations answer as on the memory store: outcomes, every ledger page, usage, summaries',
    async (ctx) => {
      for (let i = 0; i < SEQUENCES; i++) await sequence(ctx, ctx.seed + i);
    },
  ],
]);
