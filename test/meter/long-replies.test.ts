import { describe, expect, it, vi } from 'vitest';
import { CreditMeter, MemoryStorage, type ReplyProvider } from '../../src/index.js';
import { ask, ledgerSum, turn } from '../support.js';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// These run on the real clock: the keep-alive is a timer, and the hold's expiry is checked
// against the meter's clock when the reply settles. Each reply outlives its hold three times
// over; the TTL leaves room for a loaded machine's timer delays.
describe('holds that live as long as the reply', () => {
  it('a reply that takes longer than holdTtlMs is still charged exactly once', async () => {
    const slow: ReplyProvider = {
      async generate() {
        await sleep(1600);
        return { output: 'late but here' };
      },
    };
    const meter = new CreditMeter({ providers: { openai: slow }, holdTtlMs: 500 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect(result.output).toBe('late but here');
    expect(Number(result.credits)).toBe(5);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([95, 0]);
    expect(await ledgerSum(meter, 'ws')).toBe(95);
  });

  it('a stream that runs past holdTtlMs is charged once when it ends', async () => {
    const slow: ReplyProvider = {
      async generate() {
        return { output: '' };
      },
      async *stream() {
        for (const chunk of ['a', 'b', 'c', 'd']) {
          await sleep(450);
          yield chunk;
        }
      },
    };
    const meter = new CreditMeter({ providers: { openai: slow }, holdTtlMs: 500 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    const chunks: unknown[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks).toEqual(['a', 'b', 'c', 'd']);
    expect(Number((await stream.result).credits)).toBe(5);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('extend keeps a low-level hold alive past its TTL; without it the hold lapses', async () => {
    let now = Date.parse('2026-01-15T12:00:00Z');
    const meter = new CreditMeter({ clock: () => new Date(now), holdTtlMs: 1000 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const kept = await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'kept' });
    const lost = await meter.reserve({ ...ask(2, 'gpt-4o'), replyId: 'lost' });
    now += 900;
    const extended = await meter.extend({ workspaceId: 'ws', replyId: kept.replyId });
    expect(extended.expiresAt.getTime()).toBe(now + 1000);
    now += 900;
    expect(Number((await meter.settle({ workspaceId: 'ws', replyId: kept.replyId })).credits)).toBe(5);
    await expect(meter.settle({ workspaceId: 'ws', replyId: lost.replyId })).rejects.toMatchObject({ code: 'HOLD_EXPIRED' });
    await expect(meter.extend({ workspaceId: 'ws', replyId: lost.replyId })).rejects.toMatchObject({ code: 'HOLD_EXPIRED' });
    await expect(meter.extend({ workspaceId: 'ws', replyId: 'nope' })).rejects.toMatchObject({ code: 'REPLY_NOT_FOUND' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('a hold whose process died still lapses and returns its credits', async () => {
    let now = Date.parse('2026-01-15T12:00:00Z');
    const storage = new MemoryStorage();
    const crashed = new CreditMeter({ storage, clock: () => new Date(now), holdTtlMs: 1000 });
    await crashed.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await crashed.reserve({ ...ask(1, 'gpt-4o'), replyId: 'orphan' });
    const survivor = new CreditMeter({ storage, clock: () => new Date(now), holdTtlMs: 1000 });
    expect(Number((await survivor.getWorkspace('ws')).held)).toBe(5);
    now += 1000;
    const ws = await survivor.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
  });
});

describe('charging the model that produced the reply', () => {
  const fallback = (model: string): ReplyProvider => ({
    async generate() {
      return { output: 'answered by a fallback', model, usage: { inputTokens: 12, outputTokens: 34 } };
    },
  });

  it('a cheaper model that answered is charged its own price, and the ledger row names it and keeps the usage', async () => {
    const meter = new CreditMeter({ providers: { openai: fallback('gpt-4o-mini') } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect([result.model, Number(result.credits)]).toEqual(['gpt-4o-mini', 1]);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held), Number(ws.usedThisPeriod)]).toEqual([99, 0, 1]);
    const row = (await meter.ledger({ workspaceId: 'ws' })).entries.at(-1);
    expect(row).toMatchObject({ kind: 'reply', model: 'gpt-4o-mini', inputTokens: 12, outputTokens: 34 });
    expect(Number(row?.credits)).toBe(-1);
    expect(await ledgerSum(meter, 'ws')).toBe(99);
  });

  it('a dearer model is charged the difference only as far as the balance covers it', async () => {
    const meter = new CreditMeter({ providers: { anthropic: fallback('gpt-4o') } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 3 });
    const result = await meter.reply(turn(1, 'claude-haiku-4-5'));
    // Held 2, the producing model costs 5, 1 more was available: charged 3, never below zero.
    expect([result.model, Number(result.credits)]).toEqual(['gpt-4o', 3]);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([0, 0]);
    expect(await ledgerSum(meter, 'ws')).toBe(0);
  });

  it('a retry with the model first asked for replays the charge, even though another model was charged', async () => {
    const meter = new CreditMeter({ providers: { openai: fallback('gpt-4o-mini') } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const first = await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    const again = await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    expect(again).toMatchObject({ replayed: true, entryId: first.entryId, model: 'gpt-4o-mini' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(99);
  });

  it('a model the price table does not know is charged at the model held for', async () => {
    const meter = new CreditMeter({ providers: { openai: fallback('gpt-4o-2024-08-06') } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect([result.model, Number(result.credits)]).toEqual(['gpt-4o', 5]);
  });

  it('settle({ model }) does the same for hosts on the low-level calls; a BYO reply stays free', async () => {
    const meter = new CreditMeter({ byoKeys: ({ provider }) => (provider === 'anthropic' ? 'sk-ant-own' : undefined) });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    expect(Number((await meter.settle({ workspaceId: 'ws', replyId: hold.replyId, model: 'claude-sonnet-4-6' })).credits)).toBe(4);
    const byo = await meter.reserve(ask(2, 'claude-haiku-4-5'));
    const settled = await meter.settle({ workspaceId: 'ws', replyId: byo.replyId, model: 'claude-sonnet-4-6' });
    expect([settled.route, settled.model, Number(settled.credits)]).toEqual(['byo', 'claude-sonnet-4-6', 0]);
    await expect(meter.settle({ workspaceId: 'ws', replyId: 'x', model: 'no-such-model' })).rejects.toMatchObject({
      code: 'UNKNOWN_MODEL',
    });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(96);
  });
});

describe('a provider result must be a result', () => {
  for (const [label, value] of [
    ['a string', 'just text'],
    ['a number', 42],
    ['an empty object', {}],
    ['null', null],
    ['an array', [{ output: 'x' }]],
    ['an unknown field', { output: 'x', extra: true }],
    ['a model that is not a string', { output: 'x', model: 5 }],
    ['negative token usage', { output: 'x', usage: { inputTokens: -1 } }],
  ] as const) {
    it(`${label} is a PROVIDER_ERROR and nothing is charged`, async () => {
      const odd: ReplyProvider = { generate: async () => value as never };
      const meter = new CreditMeter({ providers: { openai: odd } });
      await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
      await expect(meter.reply(turn(1, 'gpt-4o'))).rejects.toMatchObject({ code: 'PROVIDER_ERROR' });
      const ws = await meter.getWorkspace('ws');
      expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
      expect(await ledgerSum(meter, 'ws')).toBe(100);
    });
  }
});

describe('aborts return, whatever the provider does', () => {
  const deaf: ReplyProvider = {
    // Ignores its signal and never answers.
    generate: () => new Promise(() => undefined),
    async *stream() {
      yield 'first';
      await new Promise(() => undefined);
    },
  };

  it('reply() rejects with the abort reason at once and releases the hold', async () => {
    const meter = new CreditMeter({ providers: { openai: deaf } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const controller = new AbortController();
    const pending = meter.reply({ ...turn(1, 'gpt-4o'), signal: controller.signal });
    await sleep(20);
    const reason = new Error('user left');
    controller.abort(reason);
    await expect(pending).rejects.toBe(reason);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
  });

  it('replyStream() rejects the pending chunk on abort and charges the output already delivered', async () => {
    const meter = new CreditMeter({ providers: { openai: deaf } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const controller = new AbortController();
    const stream = await meter.replyStream({ ...turn(1, 'gpt-4o'), signal: controller.signal });
    const iterator = stream[Symbol.asyncIterator]();
    expect(await iterator.next()).toEqual({ done: false, value: 'first' });
    const next = iterator.next();
    controller.abort(new Error('stop'));
    await expect(next).rejects.toThrow('stop');
    expect(Number((await stream.result).credits)).toBe(5);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });
});

describe('streams you can cancel', () => {
  function tracked() {
    const state = { closed: false, started: false };
    const provider: ReplyProvider = {
      async generate() {
        return { output: '' };
      },
      async *stream() {
        state.started = true;
        try {
          for (let i = 0; ; i++) {
            await sleep(5);
            yield `chunk ${i}`;
          }
        } finally {
          state.closed = true;
        }
      },
    };
    return { state, provider };
  }

  it('cancel() before any output releases at once, closes nothing it never opened, and result says REPLY_RELEASED', async () => {
    const { state, provider } = tracked();
    const meter = new CreditMeter({ providers: { openai: provider } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(5);
    await stream.cancel();
    await expect(stream.result).rejects.toMatchObject({ code: 'REPLY_RELEASED' });
    expect(state.started).toBe(false);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
    expect(await stream[Symbol.asyncIterator]().next()).toEqual({ done: true, value: undefined });
  });

  it('cancel() after output settles at once and closes the upstream request', async () => {
    const { state, provider } = tracked();
    const meter = new CreditMeter({ providers: { openai: provider } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    const iterator = stream[Symbol.asyncIterator]();
    await iterator.next();
    await stream.cancel();
    expect(Number((await stream.result).credits)).toBe(5);
    await vi.waitFor(() => expect(state.closed).toBe(true));
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('a for-await break after output settles once, like cancel()', async () => {
    const { state, provider } = tracked();
    const meter = new CreditMeter({ providers: { openai: provider } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    for await (const chunk of stream) {
      expect(chunk).toBe('chunk 0');
      break;
    }
    await stream.cancel();
    expect(Number((await stream.result).credits)).toBe(5);
    await vi.waitFor(() => expect(state.closed).toBe(true));
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });
});
