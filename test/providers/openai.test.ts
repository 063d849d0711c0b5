import OpenAI from 'openai';
import { describe, expect, it } from 'vitest';
import type { ReplyProvider } from '../../src/index.js';
import { type OpenAIClientLike, openaiProvider } from '../../src/providers/openai.js';
import type { FakeLlmServer } from './fake-llm-server.js';
import { charges, codeOf, leaks, rejection, shopMeter, until, useFakeLlmServer } from './support.js';

const PLATFORM_KEY = 'sk-platform-0000';
const BYO_KEY = 'sk-byo-their-own-SECRET-1234';

let server: FakeLlmServer;
useFakeLlmServer((started) => {
  server = started;
});

const newClient = (apiKey: string | undefined, maxRetries = 0) =>
  new OpenAI({ baseURL: server.openaiBaseURL, apiKey: apiKey ?? PLATFORM_KEY, maxRetries });

const setup = (provider: ReplyProvider) => shopMeter({ openai: provider }, BYO_KEY); // 100 credits; gpt-4o costs 5

const messages = [{ role: 'user', content: 'When does my order ship?' }];
const ask = (extra: Record<string, unknown> = {}) => ({
  workspaceId: 'shop',
  agentId: 'support',
  conversationId: 'c1',
  model: 'gpt-4o',
  input: messages,
  ...extra,
});

describe('openaiProvider - Chat Completions', () => {
  it('charges a reply and returns the text, the reported model and usage', async () => {
    const provider = openaiProvider({ client: newClient(undefined) });
    const { meter } = await setup(provider);
    const result = await meter.reply(ask());
    expect(result.output).toBe('Your order ships tomorrow.');
    expect(result.route).toBe('credits');
    expect(Number(result.credits)).toBe(5);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(95);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]).toMatchObject({ api: 'chat', model: 'gpt-4o', stream: false, authorization: `Bearer ${PLATFORM_KEY}` });
    expect(server.requests[0]?.body.messages).toEqual(messages);

    const direct = await provider.generate({ ...ask(), input: messages }, {});
    expect(direct).toEqual({ output: 'Your order ships tomorrow.', model: 'gpt-4o', usage: { inputTokens: 12, outputTokens: 4 } });
  });

  it('reports the model the API says answered (a fallback)', async () => {
    const provider = openaiProvider({ client: newClient(undefined) });
    server.script({ kind: 'ok', model: 'gpt-4o-2024-11-20' });
    const result = await provider.generate({ ...ask(), input: messages }, {});
    expect(result.model).toBe('gpt-4o-2024-11-20');
  });

  it('passes extra request parameters from { messages, ...params }', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    await meter.reply(ask({ input: { messages, temperature: 0.2, max_completion_tokens: 50 } }));
    expect(server.requests[0]?.body).toMatchObject({ model: 'gpt-4o', messages, temperature: 0.2, max_completion_tokens: 50 });
    expect(server.requests[0]?.body.stream).toBeUndefined();
  });

  it('refuses an input that sets the model: PROVIDER_ERROR, no request, nothing charged', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    const error = await rejection(meter.reply(ask({ input: { messages, model: 'gpt-4o-mini' } })));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    expect(server.requests).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
  });

  it('returns the whole completion with output: "response"', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined), output: 'response' }));
    const result = await meter.reply(ask());
    expect(result.output).toMatchObject({ object: 'chat.completion', choices: [{ message: { content: 'Your order ships tomorrow.' } }] });
  });

  it('a BYO reply sends the key only in the Authorization header and nowhere else', async () => {
    const made: Array<string | undefined> = [];
    const provider = openaiProvider({
      client: (apiKey) => {
        made.push(apiKey === undefined ? undefined : 'a key');
        return newClient(apiKey);
      },
    });
    const { meter, events } = await setup(provider);
    const result = await meter.reply({ ...ask(), workspaceId: 'byo' });
    expect(result.route).toBe('byo');
    expect(Number(result.credits)).toBe(0);
    expect(server.requests[0]?.authorization).toBe(`Bearer ${BYO_KEY}`);
    expect(leaks(server.requests[0]?.body, BYO_KEY)).toBe(false);

    // The API echoes the key in its error (as OpenAI does for a wrong key).
    server.script({ kind: 'error', status: 401, message: `Incorrect API key provided: ${BYO_KEY}` });
    const error = await rejection(meter.reply({ ...ask(), workspaceId: 'byo', conversationId: 'c2' }));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');

    const stream = await meter.replyStream({ ...ask(), workspaceId: 'byo', conversationId: 'c3' });
    for await (const _ of stream) {
      // drain
    }
    const settled = await stream.result;
    expect(server.requests[2]?.authorization).toBe(`Bearer ${BYO_KEY}`);

    const ledger = await meter.ledger({ workspaceId: 'byo' });
    for (const value of [result, error, settled, ledger, events, made]) expect(leaks(value, BYO_KEY)).toBe(false);
    expect(events.length).toBeGreaterThan(0);
    // one client per key: the BYO client was made once and reused
    expect(made).toEqual(['a key']);
  });

  it('fails closed when a BYO key meets a single client instance: no request, nothing charged', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    const error = await rejection(meter.reply({ ...ask(), workspaceId: 'byo' }));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    expect(leaks(error, BYO_KEY)).toBe(false);
    expect(server.requests).toHaveLength(0);
    expect(await charges(meter, 'byo')).toHaveLength(0);
  });

  it('keeps a bounded LRU of clients per key', async () => {
    let made = 0;
    const provider = openaiProvider({
      client: (apiKey) => {
        made++;
        return newClient(apiKey);
      },
      maxClients: 2,
    });
    const call = (apiKey: string | undefined) => provider.generate({ ...ask(), input: messages }, apiKey === undefined ? {} : { apiKey });
    await call('k1');
    await call('k2');
    await call('k1'); // cached, now most recent
    await call('k3'); // evicts k2
    await call('k1'); // still cached
    expect(made).toBe(3);
    await call('k2'); // made again
    expect(made).toBe(4);
    await call(undefined);
    await call(undefined);
    expect(made).toBe(5);
    expect(server.requests.map((r) => r.authorization)).toEqual(
      ['k1', 'k2', 'k1', 'k3', 'k1', 'k2', PLATFORM_KEY, PLATFORM_KEY].map((key) => `Bearer ${key}`),
    );
  });

  it('streams text deltas and charges once when the stream ends', async () => {
    const { meter, events } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'ok', chunkDelayMs: 10 });
    const stream = await meter.replyStream(ask());
    const chunks: unknown[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks).toEqual(['Your', ' order', ' ships', ' tomorrow.']);
    expect(Number((await stream.result).credits)).toBe(5);
    expect(server.requests[0]).toMatchObject({ stream: true });
    expect(await charges(meter, 'shop')).toHaveLength(1);
    expect(events.filter((event) => event.type === 'reply.charged')).toHaveLength(1);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(95);
  });

  it('an abort before the first token charges nothing', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang' });
    const controller = new AbortController();
    const pending = rejection(meter.reply(ask({ signal: controller.signal })));
    await until(() => server.requests.length === 1);
    controller.abort(new Error('user left'));
    const error = await pending;
    expect((error as Error).message).toBe('user left');
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
    expect(await charges(meter, 'shop')).toHaveLength(0);
  });

  it('a streamed reply aborted before the first token charges nothing', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang' });
    const controller = new AbortController();
    const stream = await meter.replyStream(ask({ signal: controller.signal }));
    const reading = rejection(
      (async () => {
        for await (const _ of stream) {
          // nothing arrives
        }
      })(),
    );
    await until(() => server.requests.length === 1);
    controller.abort(new Error('user left'));
    expect(((await reading) as Error).message).toBe('user left');
    await expect(stream.result).rejects.toThrow('user left');
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
    expect(await charges(meter, 'shop')).toHaveLength(0);
  });

  it('a streamed reply aborted after the first token is charged once', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang-after-first-chunk' });
    const controller = new AbortController();
    const stream = await meter.replyStream(ask({ signal: controller.signal }));
    const chunks: unknown[] = [];
    const error = await rejection(
      (async () => {
        for await (const chunk of stream) {
          chunks.push(chunk);
          controller.abort(new Error('user left'));
        }
      })(),
    );
    expect((error as Error).message).toBe('user left');
    expect(chunks).toEqual(['Your']);
    expect(Number((await stream.result).credits)).toBe(5);
    expect(await charges(meter, 'shop')).toHaveLength(1);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(95);
  });

  it('a caller who stops reading after output is charged and the request is cut', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'hang-after-first-chunk' });
    const stream = await meter.replyStream(ask());
    for await (const _ of stream) break;
    expect(Number((await stream.result).credits)).toBe(5);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it.each([500, 429])('a %i maps to PROVIDER_ERROR with the status kept and nothing charged', async (status) => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    server.script({ kind: 'error', status });
    const error = await rejection(meter.reply(ask()));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    expect(((error as Error).cause as { status?: number }).status).toBe(status);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
    expect(await charges(meter, 'shop')).toHaveLength(0);
  });

  it('the SDK retries happen inside one hold: charged once', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined, 2) }));
    server.script({ kind: 'error', status: 429 }, { kind: 'error', status: 500 });
    const result = await meter.reply(ask());
    expect(Number(result.credits)).toBe(5);
    expect(server.requests).toHaveLength(3);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('50 concurrent replies against credits for 20 reach the model exactly 20 times', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined) }));
    const outcomes = await Promise.allSettled(Array.from({ length: 50 }, (_, i) => meter.reply(ask({ conversationId: `c${i}` }))));
    const ok = outcomes.filter((o) => o.status === 'fulfilled');
    const refused = outcomes.filter((o) => o.status === 'rejected' && codeOf(o.reason) === 'INSUFFICIENT_CREDITS');
    expect(ok).toHaveLength(20);
    expect(refused).toHaveLength(30);
    expect(server.requests).toHaveLength(20);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(0);
  });
});

describe('openaiProvider - Responses API', () => {
  it('answers, reports model and usage, and passes { input, ...params }', async () => {
    const provider = openaiProvider({ client: newClient(undefined), api: 'responses' });
    const { meter } = await setup(provider);
    server.script({ kind: 'ok', model: 'gpt-4o-2024-11-20' });
    const result = await meter.reply(ask({ input: { input: 'When does my order ship?', instructions: 'Be brief.' } }));
    expect(result.output).toBe('Your order ships tomorrow.');
    expect(Number(result.credits)).toBe(5);
    expect(server.requests[0]).toMatchObject({
      api: 'responses',
      body: { model: 'gpt-4o', input: 'When does my order ship?', instructions: 'Be brief.' },
    });
    const direct = await provider.generate({ ...ask(), input: messages }, {});
    expect(direct).toEqual({ output: 'Your order ships tomorrow.', model: 'gpt-4o', usage: { inputTokens: 12, outputTokens: 4 } });
  });

  it('streams text deltas and charges once', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined), api: 'responses' }));
    const stream = await meter.replyStream(ask());
    const chunks: unknown[] = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.join('')).toBe('Your order ships tomorrow.');
    expect(Number((await stream.result).credits)).toBe(5);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('a 500 maps to PROVIDER_ERROR, nothing charged', async () => {
    const { meter } = await setup(openaiProvider({ client: newClient(undefined), api: 'responses' }));
    server.script({ kind: 'error', status: 500 });
    expect(codeOf(await rejection(meter.reply(ask())))).toBe('PROVIDER_ERROR');
    expect(await charges(meter, 'shop')).toHaveLength(0);
  });
});

describe('openaiProvider - typing', () => {
  it('accepts a real OpenAI client and a factory structurally', () => {
    const instance: OpenAIClientLike = new OpenAI({ apiKey: 'x' });
    const factory = (apiKey: string | undefined) => new OpenAI({ apiKey: apiKey ?? 'x' });
    expect(openaiProvider({ client: instance })).toBeDefined();
    expect(openaiProvider({ client: factory, api: 'responses' })).toBeDefined();
  });
});
