/**
 * What hostile input and hostile providers must never do to a store: a refused input changes
 * nothing, a BYO key never lands in a row or a record, and an abort leaves nothing held. The
 * rules are the core's and the meter's; these cases check that nothing of them leaks into what
 * the store keeps, whatever the store.
 */
import { expect } from 'vitest';
import type { ReplyProvider } from '../meter/provider.js';
import { allRows, ask, BYO, type ConformanceContext, codeOf, defineCases, money, newMeter, newWorkspace, ONE } from './fixtures.js';

const KEY = 'sk-conformance-secret-0123456789abcdef';

/** Everything the store holds for a workspace, as text. */
async function stored(ctx: ConformanceContext, workspaceId: string, keys: readonly string[] = []): Promise<string> {
  const loaded = await ctx.storage.load({ workspaceId, keys, now: ctx.now() });
  return JSON.stringify({
    version: loaded.version,
    state: loaded.state,
    records: loaded.records,
    rows: await allRows(ctx.storage, workspaceId),
  });
}

/** Every string reachable from a value: own properties (symbols and hidden ones too), causes, errors' messages. */
function strings(value: unknown, seen = new Set<unknown>()): string[] {
  if (typeof value === 'string') return [value];
  if (typeof value !== 'object' || value === null || seen.has(value)) return [];
  seen.add(value);
  const out: string[] = [];
  if (value instanceof Error) out.push(value.message, String(value.stack));
  for (const key of Reflect.ownKeys(value)) {
    const descriptor = Object.getOwnPropertyDescriptor(value, key);
    if (descriptor && 'value' in descriptor) out.push(...strings(descriptor.value, seen));
  }
  return out;
}

export const hardeningCases = defineCases([
  [
    'input - a refused input on any entry point changes nothing in the store',
    async (ctx) => {
      const meter = newMeter(ctx);
      const workspaceId = await newWorkspace(ctx, meter, 10);
      await meter.reserve(ask(workspaceId, ONE, { replyId: 'held' }));
      const before = await stored(ctx, workspaceId, ['reply:held']);
      const attempts: Array<() => Promise<unknown>> = [
        () => meter.reserve({ ...ask(workspaceId, ONE), replyID: 'typo' } as never),
        () => meter.reply({ ...ask(workspaceId, ONE), input: 'x', replyId: '' }),
        () => meter.settle({ workspaceId, replyId: 'held', modle: ONE } as never),
        () => meter.release({ workspaceId, replyId: 'x'.repeat(10_000) }),
        () => meter.extend({ workspaceId, replyId: 'held\u0000' }),
        () => meter.addCredits({ workspaceId, credits: 1.0000001, grantId: 'g' }),
        () => meter.addCredits({ workspaceId, credits: 5, grantId: 'g', expiresAT: '2030-01-01' } as never),
        () => meter.changePlan({ workspaceId, plan: 'custom', allotment: Number.NaN }),
        () => meter.refund({ workspaceId, replyId: 'held', refundId: 'r', reason: '' }),
        () => meter.adjust({ workspaceId, adjustmentId: 'a', credits: '1e400', reason: 'x' }),
        () => meter.setAgentLimit({ workspaceId, agentId: 'a', credits: -1 }),
        () => meter.setRecharge({ workspaceId, recharge: { below: 'abc', credits: 5 } }),
        () => meter.ledger({ workspaceId, from: '2027-01-01', to: '2026-01-01' }),
        () => meter.usage({ workspaceId, from: 'yesterday', to: '2026-01-01', groupBy: 'agent' }),
        () => meter.deleteWorkspace({ workspaceId, keepLedgers: true } as never),
      ];
      for (const attempt of attempts) expect(codeOf(await attempt().catch((error: unknown) => error))).toBe('INVALID_INPUT');
      expect(await stored(ctx, workspaceId, ['reply:held'])).toBe(before);
    },
  ],
  [
    'secrets - a BYO key in a provider error reaches no row, record, error or event',
    async (ctx) => {
      const events: unknown[] = [];
      const leaky: ReplyProvider = {
        async generate() {
          const error = new Error(`Incorrect API key provided: ${KEY}`) as Error & Record<string, unknown>;
          error.request = { headers: new Map([['authorization', `Bearer ${KEY}`]]) };
          error.cause = new AggregateError([new Error(KEY)], 'upstream');
          Object.defineProperty(error, 'hidden', { value: { apiKey: KEY }, enumerable: false });
          throw error;
        },
      };
      const meter = newMeter(ctx, { byoKeys: () => KEY, providers: { openai: leaky, bookbag: leaky } });
      for (const name of ['reply.charged', 'reply.blocked', 'balance.low', 'period.renewed'] as const)
        meter.on(name, (event) => void events.push(event));
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const error = await meter.reply({ ...ask(workspaceId, BYO, { replyId: 'r1' }), input: 'q' }).catch((e: unknown) => e);
      expect(codeOf(error)).toBe('PROVIDER_ERROR');
      const seen = [...strings(error), JSON.stringify(events), await stored(ctx, workspaceId, ['reply:r1'])];
      expect(seen.filter((text) => text.includes(KEY) || text.toLowerCase().includes(KEY.slice(3, 20).toLowerCase()))).toEqual([]);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
    },
  ],
  [
    'abort - a reply aborted while its provider ignores the signal returns at once and leaves nothing held',
    async (ctx) => {
      const deaf: ReplyProvider = { generate: () => new Promise(() => undefined) };
      const meter = newMeter(ctx, { providers: { bookbag: deaf } });
      const workspaceId = await newWorkspace(ctx, meter, 10);
      const controller = new AbortController();
      const pending = meter.reply({ ...ask(workspaceId, ONE, { replyId: 'r1' }), input: 'q', signal: controller.signal });
      await new Promise((resolve) => setTimeout(resolve, 10));
      const reason = new Error('the user left');
      controller.abort(reason);
      expect(await pending.catch((error: unknown) => error)).toBe(reason);
      expect(await money(meter, workspaceId)).toMatchObject({ balance: 10, held: 0 });
      expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toEqual([]);
    },
  ],
]);
