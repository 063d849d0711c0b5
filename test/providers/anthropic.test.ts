import Anthropic from '@anthropic-ai/sdk';
import { describe, expect, it } from 'vitest';
import type { ReplyProvider } from '../../src/index.js';
import { type AnthropicClientLike, anthropicProvider } from '../../src/providers/anthropic.js';
import type { FakeLlmServer } from './fake-llm-server.js';
import { charges, codeOf, leaks, rejection, shopMeter, until, useFakeLlmServer } from './support.js';

const PLATFORM_KEY = 'sk-ant-platform-0000';
const BYO_KEY = 'sk-ant-byo-their-own-SECRET-5678';

let server: FakeLlmServer;
useFakeLlmServer((started) => {
  server = started;
});

const newClient = (apiKey: string | undefined, maxRetries = 0) =>
  new Anthropic({ baseURL: server.anthropicBaseURL, apiKey: apiKey ?? PLATFORM_KEY, maxRetries });

const setup = (provider: ReplyProvider) => shopMeter({ anthropic: provider }, BYO_KEY); // 100 credits; Sonnet 4.6 costs 4

const messages = [{ role: 'user', content: 'Can I return this?' }];
const ask = (extra: Record<string, unknown> = {}) => ({
  workspaceId: 'shop',
  agentId: 'returns',
  conversationId: 'c1',
  model: 'claude-sonnet-4-6',
  input: messages,
  ...extra,
});

describe('anthropicProvider', () => {
  it('charges a reply and returns the text, the reported model and usage', async () => {
    const provider = anthropicProvider({ client: newClient(undefined) });
    const { meter } = await setup(provider);
    const result = await meter.reply(ask());
    expect(result.output).toBe('Your order ships tomorrow.');
    expect(Number(result.credits)).toBe(4);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(96);
    expect(server.requests[0]).toMatchObject({
      api: 'messages',
      credential: PLATFORM_KEY,
      body: { model: 'claude-sonnet-4-6', max_tokens: 1024, messages },
    });
    server.script({ kind: 'ok', model: 'claude-sonnet-4-6-20260101' });
    expect(await provider.generate({ ...ask(), input: messages }, {})).toEqual({
      output: 'Your order ships tomorrow.',
      model: 'claude-sonnet-4-6-20260101',
      usage: { inputTokens: 12, outputTokens: 4 },
    });
  });

  it('passes { messages, system, ...params } and maxTokens', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined), maxTokens: 300 }));
    await meter.reply(ask({ input: { messages, system: 'Be brief.', temperature: 0 } }));
    await meter.reply(ask({ conversationId: 'c2', input: { messages, max_tokens: 64 } }));
    expect(server.requests[0]?.body).toMatchObject({ messages, system: 'Be brief.', temperature: 0, max_tokens: 300 });
    expect(server.requests[1]?.body).toMatchObject({ max_tokens: 64 });
  });

  it('a BYO reply sends the key only in the auth header (x-api-key or Authorization, by SDK version) and nowhere else', async () => {
    const { meter, events } = await setup(anthropicProvider({ client: (apiKey) => newClient(apiKey) }));
    const result = await meter.reply({ ...ask(), workspaceId: 'byo' });
    expect(result.route).toBe('byo');
    expect(Number(result.credits)).toBe(0);
    expect(server.requests[0]?.credential).toBe(BYO_KEY);
    server.script({ kind: 'error', status: 401, message: `invalid x-api-key: ${BYO_KEY}` });
    const error = await rejection(meter.reply({ ...ask(), workspaceId: 'byo', conversationId: 'c2' }));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    const stream = await meter.replyStream({ ...ask(), workspaceId: 'byo', conversationId: 'c3' });
    for await (const _ of stream) {
      // drain
    }
    const settled = await stream.result;
    const ledger = await meter.ledger({ workspaceId: 'byo' });
    for (const value of [result, error, settled, ledger, events]) expect(leaks(value, BYO_KEY)).toBe(false);
    expect(
      leaks(
        server.requests.map((r) => r.body),
        BYO_KEY,
      ),
    ).toBe(false);
    expect(server.requests.map((r) => r.credential)).toEqual([BYO_KEY, BYO_KEY, BYO_KEY]);
  });

  it('fails closed when a BYO key meets a single client instance', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined) }));
    expect(codeOf(await rejection(meter.reply({ ...ask(), workspaceId: 'byo' })))).toBe('PROVIDER_ERROR');
    expect(server.requests).toHaveLength(0);
  });

  it('streams text deltas and charges once when the stream ends', async () => {
    const { meter, events } = await setup(anthropicProvider({ client: newClient(undefined) }));
    server.script({ kind: 'ok', chunkDelayMs: 10 });
    const stream = await meter.replyStream(ask());
    const chunks: unknown[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks).toEqual(['Your', ' order', ' ships', ' tomorrow.']);
    expect(Number((await stream.result).credits)).toBe(4);
    expect(server.requests[0]?.stream).toBe(true);
    expect(await charges(meter, 'shop')).toHaveLength(1);
    expect(events.filter((event) => event.type === 'reply.charged')).toHaveLength(1);
  });

  it('an abort before the first token charges nothing', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang' });
    const controller = new AbortController();
    const pending = rejection(meter.reply(ask({ signal: controller.signal })));
    await until(() => server.requests.length === 1);
    controller.abort(new Error('user left'));
    expect(((await pending) as Error).message).toBe('user left');
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
    expect(await charges(meter, 'shop')).toHaveLength(0);
  });

  it('a streamed reply aborted after the first token is charged once', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang-after-first-chunk' });
    const controller = new AbortController();
    const stream = await meter.replyStream(ask({ signal: controller.signal }));
    const error = await rejection(
      (async () => {
        for await (const _ of stream) controller.abort(new Error('user left'));
      })(),
    );
    expect((error as Error).message).toBe('user left');
    expect(Number((await stream.result).credits)).toBe(4);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it.each([500, 429])('a %i maps to PROVIDER_ERROR with the status kept and nothing charged', async (status) => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined) }));
    server.script({ kind: 'error', status });
    const error = await rejection(meter.reply(ask()));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    expect(((error as Error).cause as { status?: number }).status).toBe(status);
    expect(await charges(meter, 'shop')).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
  });

  it('the SDK retries happen inside one hold: charged once', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined, 2) }));
    server.script({ kind: 'error', status: 429 }, { kind: 'error', status: 500 });
    expect(Number((await meter.reply(ask())).credits)).toBe(4);
    expect(server.requests).toHaveLength(3);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('50 concurrent replies against credits for 20 reach the model exactly 20 times', async () => {
    const { meter } = await setup(anthropicProvider({ client: newClient(undefined) }));
    await meter.createWorkspace({ workspaceId: 'small', plan: 'enterprise', allotment: 80 });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => meter.reply(ask({ workspaceId: 'small', conversationId: `c${i}` }))),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(20);
    expect(outcomes.filter((o) => o.status === 'rejected' && codeOf(o.reason) === 'INSUFFICIENT_CREDITS')).toHaveLength(30);
    expect(server.requests).toHaveLength(20);
  });

  it('accepts a real Anthropic client structurally', () => {
    const instance: AnthropicClientLike = new Anthropic({ apiKey: 'x' });
    expect(anthropicProvider({ client: instance })).toBeDefined();
  });
});
