import { expect } from 'vitest';
import type { ReplyContext, ReplyProvider, ReplyRequest } from '../src/index.js';
import { CreditMeter, type CreditMeterOptions, type CreditStorage, MemoryStorage } from '../src/index.js';
import type { WorkspaceCommit } from '../src/storage/index.js';
import { overriding } from '../src/testing/fixtures.js';

/** A clock the test moves by hand. */
export class TestClock {
  ms: number;
  constructor(start: string | number = '2026-01-15T12:00:00Z') {
    this.ms = typeof start === 'string' ? Date.parse(start) : start;
  }
  readonly now = (): Date => new Date(this.ms);
  set(iso: string): void {
    this.ms = Date.parse(iso);
  }
  advance(ms: number): void {
    this.ms += ms;
  }
}

/** A provider that answers instantly and records what it was asked. */
export class EchoProvider implements ReplyProvider {
  readonly calls: Array<{ request: ReplyRequest; hadKey: boolean; key: string | undefined }> = [];
  failWith: unknown = undefined;
  async generate(request: ReplyRequest, context: ReplyContext): Promise<{ output: unknown }> {
    this.calls.push({ request, hadKey: context.apiKey !== undefined, key: context.apiKey });
    if (this.failWith !== undefined) throw this.failWith;
    return { output: `reply from ${request.model}` };
  }
}

export interface Harness {
  meter: CreditMeter;
  storage: CreditStorage;
  clock: TestClock;
  providers: { openai: EchoProvider; anthropic: EchoProvider; bookbag: EchoProvider };
}

/** A cloud meter on a memory store with echo providers and a hand-moved clock. */
export function harness(options: Partial<CreditMeterOptions> & { start?: string } = {}): Harness {
  const clock = new TestClock(options.start);
  const providers = { openai: new EchoProvider(), anthropic: new EchoProvider(), bookbag: new EchoProvider() };
  const storage = options.storage ?? new MemoryStorage();
  const { start: _start, ...rest } = options;
  const meter = new CreditMeter({ storage, clock: clock.now, providers, ...rest });
  return { meter, storage, clock, providers };
}

export const turn = (n: number, model = 'gpt-4o-mini', agentId = 'agent-1', conversationId = 'conv-1') => ({
  workspaceId: 'ws',
  agentId,
  conversationId,
  model,
  input: `message ${n}`,
});

/** A reply's identity without its input: what `reserve()` takes (it refuses unknown keys). */
export const ask = (n: number, model = 'gpt-4o-mini', agentId = 'agent-1', conversationId = 'conv-1') => {
  const { input: _input, ...identity } = turn(n, model, agentId, conversationId);
  return identity;
};

/** Sum of the ledger of a workspace, in credits, read through every page. */
export async function ledgerSum(meter: CreditMeter, workspaceId: string): Promise<number> {
  let total = 0;
  let cursor: string | undefined;
  do {
    const page = await meter.ledger({ workspaceId, limit: 1000, ...(cursor !== undefined && { cursor }) });
    for (const entry of page.entries) total += Number(entry.credits) * 1e6;
    cursor = page.nextCursor;
  } while (cursor);
  return total / 1e6;
}

/**
 * App servers charging one hot workspace without pause: each meter runs `inFlight` loops of
 * `charges` reserve + settle (1 credit each). Resolves to the errors, if any.
 */
export async function chargeWithoutPause(meters: readonly CreditMeter[], workspaceId: string, inFlight: number, charges: number) {
  const loops = meters.flatMap((meter, m) =>
    Array.from({ length: inFlight }, async (_, w) => {
      for (let i = 0; i < charges; i++) {
        const hold = await meter.reserve({ workspaceId, agentId: `agent-${w % 3}`, conversationId: `c${m}-${w}`, model: 'gpt-4o-mini' });
        await meter.settle({ workspaceId, replyId: hold.replyId });
      }
    }),
  );
  return (await Promise.allSettled(loops)).flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
}

/** Items of a commit as a store's `maxCommitItems` counts them. */
export const itemsOf = (commit: WorkspaceCommit) => 1 + commit.ledger.length + commit.records.length + (commit.absentKeys?.length ?? 0);

/**
 * A store that delegates to `inner` except for the methods given (a fault injector): the kit's
 * {@link overriding}, with `close` passed through. It has a `lock` only when one is given: the
 * inner store's would commit past an overridden `commit`.
 */
export function wrapStorage(inner: CreditStorage, overrides: Partial<CreditStorage>): CreditStorage {
  return overriding(inner, { close: () => inner.close(), ...overrides });
}

/**
 * One call of each kind that takes a pooled connection: reads through the meter and the store,
 * four loads and four charges at once (so each needs a connection of its own). For the tests
 * that drop a pool's idle connections before each call.
 */
export function pooledCalls(meter: CreditMeter, storage: CreditStorage, workspaceId: string, charge: () => Promise<unknown>) {
  const four = (call: () => Promise<unknown>) => () => Promise.all(Array.from({ length: 4 }, call));
  return [
    () => meter.getWorkspace(workspaceId),
    () => meter.ledger({ workspaceId }),
    () => meter.usage({ workspaceId, from: new Date(0), to: new Date(Date.now() + 60_000), groupBy: 'agent' }),
    () => meter.listWorkspaces(),
    four(() => storage.load({ workspaceId, keys: [], now: Date.now() })),
    four(charge),
  ];
}

/**
 * Data an earlier release stored whole (record values and ledger rows as JSON objects, before
 * they were packed) stays readable beside packed data. A meter holds one reply and charges
 * another; `storeWhole` rewrites what the store keeps of the workspace in the whole form and
 * answers how many values it rewrote; then a fresh meter reads the ledger (whole and by agent),
 * replays the charge, settles the open hold and sums usage over part of a day.
 */
export async function readsWholeValues(storage: CreditStorage, storeWhole: (workspaceId: string) => Promise<number>): Promise<void> {
  const clock = new TestClock('2026-03-01T10:00:00Z');
  const workspaceId = `whole-${Math.random().toString(36).slice(2)}`;
  const first = new CreditMeter({ storage, clock: clock.now });
  await first.createWorkspace({ workspaceId, plan: 'hobby' });
  const held = await first.reserve({ ...ask(1, 'gpt-4o', 'agent-1'), workspaceId });
  const charged = await first.reserve({ ...ask(2, 'gpt-4o-mini', 'agent-2'), workspaceId });
  const settled = await first.settle({ workspaceId, replyId: charged.replyId });
  const before = await first.ledger({ workspaceId });
  // The two reply records and the day mark at least.
  expect(await storeWhole(workspaceId)).toBeGreaterThanOrEqual(3);

  clock.advance(1000);
  const second = new CreditMeter({ storage, clock: clock.now });
  expect(await second.ledger({ workspaceId })).toEqual(before);
  expect((await second.ledger({ workspaceId, agentId: 'agent-2' })).entries.map((entry) => entry.id)).toEqual([settled.entryId]);
  expect(await second.settle({ workspaceId, replyId: charged.replyId })).toEqual({ ...settled, replayed: true });
  const late = await second.settle({ workspaceId, replyId: held.replyId });
  expect(late.replayed).toBe(false);
  const after = await second.ledger({ workspaceId });
  expect(after.entries.map((entry) => entry.id)).toEqual([...before.entries.map((entry) => entry.id), late.entryId]);
  const usage = await second.usage({ workspaceId, from: '2026-03-01T09:00:00Z', to: '2026-03-01T11:00:00Z', groupBy: 'agent' });
  expect(usage.totalReplies).toBe(2);
  expect(usage.totalCredits.toNumber()).toBe(settled.credits.toNumber() + late.credits.toNumber());
  const summary = await second.getWorkspace(workspaceId);
  expect(summary.balance.toNumber() + summary.held.toNumber()).toBe(await ledgerSum(second, workspaceId));
}
