import { createAnthropic } from '@ai-sdk/anthropic';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText, wrapLanguageModel } from 'ai';
import { describe, expect, it } from 'vitest';
import { type CreditsMiddlewareOptions, creditsMiddleware } from '../../src/providers/ai-sdk.js';
import type { FakeLlmServer } from './fake-llm-server.js';
import { charges, codeOf, leaks, rejection, shopMeter, until, useFakeLlmServer } from './support.js';

const PLATFORM_KEY = 'sk-platform-ai-sdk-0000';
const BYO_KEY = 'sk-byo-ai-sdk-SECRET-9999';

let server: FakeLlmServer;
useFakeLlmServer((started) => {
  server = started;
});

const openai = () => createOpenAI({ baseURL: server.openaiBaseURL, apiKey: PLATFORM_KEY });
const anthropic = (apiKey = PLATFORM_KEY) => createAnthropic({ baseURL: `${server.anthropicBaseURL}/v1`, apiKey });

async function setup() {
  // The meter needs no registered provider: the middleware brings the call. 100 credits: gpt-4o 5, sonnet 4.
  const { meter, events } = await shopMeter({}, BYO_KEY);
  const wrap = (model: Parameters<typeof wrapLanguageModel>[0]['model'], extra: Partial<CreditsMiddlewareOptions> = {}) =>
    wrapLanguageModel({ model, middleware: creditsMiddleware({ meter, initialRetryDelayMs: 0, ...extra }) });
  return { meter, events, wrap };
}

const who = (extra: Record<string, string> = {}) => ({
  credits: { workspaceId: 'shop', agentId: 'support', conversationId: 'c1', ...extra },
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Reads a whole fullStream, returning its parts. */
async function drain(stream: AsyncIterable<{ type: string }>) {
  const parts: Array<{ type: string } & Record<string, unknown>> = [];
  for await (const part of stream) parts.push(part as { type: string } & Record<string, unknown>);
  return parts;
}

describe('creditsMiddleware - generateText', () => {
  it('charges a reply on the OpenAI Chat API and reports the charge in providerMetadata', async () => {
    const { meter, wrap } = await setup();
    const result = await generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'When does my order ship?', providerOptions: who() });
    expect(result.text).toBe('Your order ships tomorrow.');
    expect(result.providerMetadata?.credits).toMatchObject({ credits: '5', route: 'credits', replayed: false });
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(95);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]).toMatchObject({ api: 'chat', model: 'gpt-4o', credential: PLATFORM_KEY });
    // the credits options never reach the API
    expect(JSON.stringify(server.requests[0]?.body)).not.toContain('workspaceId');
  });

  it('charges a reply on the OpenAI Responses API', async () => {
    const { meter, wrap } = await setup();
    const result = await generateText({ model: wrap(openai()('gpt-4o')), prompt: 'Hi', providerOptions: who() });
    expect(result.text).toBe('Your order ships tomorrow.');
    expect(server.requests[0]?.api).toBe('responses');
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('charges a reply on Anthropic, at the price of the model that ran', async () => {
    const { wrap } = await setup();
    const result = await generateText({
      model: wrap(anthropic()('claude-sonnet-4-6')),
      prompt: 'Can I return this?',
      providerOptions: who(),
    });
    expect(result.text).toBe('Your order ships tomorrow.');
    expect(result.providerMetadata?.credits).toMatchObject({ credits: '4' });
    expect(server.requests[0]).toMatchObject({ api: 'messages', model: 'claude-sonnet-4-6' });
  });

  it('prices the model through the model option', async () => {
    const { meter, wrap } = await setup();
    await generateText({
      model: wrap(openai().chat('gpt-4o-2024-11-20'), { model: () => 'gpt-4o' }),
      prompt: 'Hi',
      providerOptions: who(),
    });
    expect((await charges(meter, 'shop'))[0]?.model).toBe('gpt-4o');
  });

  it('refuses a call without providerOptions.credits: INVALID_INPUT, no request', async () => {
    const { wrap } = await setup();
    const error = await rejection(generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi' }));
    expect(codeOf(error)).toBe('INVALID_INPUT');
    expect((error as { field?: string }).field).toBe('providerOptions.credits');
    expect(server.requests).toHaveLength(0);
  });

  it('refuses a reply the balance cannot cover before any request', async () => {
    const { meter, wrap } = await setup();
    await meter.createWorkspace({ workspaceId: 'poor', plan: 'enterprise', allotment: 3 });
    const error = await rejection(
      generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who({ workspaceId: 'poor' }) }),
    );
    expect(codeOf(error)).toBe('INSUFFICIENT_CREDITS');
    expect(server.requests).toHaveLength(0);
  });

  it('a BYO reply (header override) sends the workspace key only in the auth header and charges nothing', async () => {
    const { meter, events, wrap } = await setup();
    const result = await generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who({ workspaceId: 'byo' }) });
    expect(result.providerMetadata?.credits).toMatchObject({ credits: '0', route: 'byo' });
    expect(server.requests[0]?.credential).toBe(BYO_KEY);
    expect(server.requests[0]?.authorization).toBe(`Bearer ${BYO_KEY}`);

    server.script({ kind: 'error', status: 401, message: `Incorrect API key provided: ${BYO_KEY}` });
    const error = await rejection(
      generateText({
        model: wrap(openai().chat('gpt-4o')),
        prompt: 'Hi',
        providerOptions: who({ workspaceId: 'byo', conversationId: 'c2' }),
      }),
    );
    expect(codeOf(error)).toBe('PROVIDER_ERROR');

    const ledger = await meter.ledger({ workspaceId: 'byo' });
    for (const value of [result.providerMetadata, result.response.body, error, ledger, events]) expect(leaks(value, BYO_KEY)).toBe(false);
    expect(
      leaks(
        server.requests.map((r) => r.body),
        BYO_KEY,
      ),
    ).toBe(false);
  });

  it('a BYO reply (byoModel) runs on a model made with the workspace key', async () => {
    const { wrap } = await setup();
    const model = wrap(anthropic()('claude-haiku-4-5'), { byoModel: (apiKey, m) => anthropic(apiKey)(m.modelId) });
    const result = await generateText({ model, prompt: 'Hi', providerOptions: who({ workspaceId: 'byo' }) });
    expect(result.providerMetadata?.credits).toMatchObject({ route: 'byo', credits: '0' });
    expect(server.requests.map((r) => r.credential)).toEqual([BYO_KEY]);
  });

  it('a byoModel with another modelId fails closed', async () => {
    const { meter, wrap } = await setup();
    const model = wrap(openai().chat('gpt-4o'), { byoModel: () => openai().chat('gpt-4o-mini') });
    expect(codeOf(await rejection(generateText({ model, prompt: 'Hi', providerOptions: who({ workspaceId: 'byo' }) })))).toBe(
      'PROVIDER_ERROR',
    );
    expect(server.requests).toHaveLength(0);
    expect(await charges(meter, 'byo')).toHaveLength(0);
  });

  it.each([500, 429])('a %i after retries is PROVIDER_ERROR, nothing charged, and the AI SDK does not retry on top', async (status) => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'error', status }, { kind: 'error', status }, { kind: 'error', status }, { kind: 'error', status });
    const error = await rejection(generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who() }));
    expect(codeOf(error)).toBe('PROVIDER_ERROR');
    expect((error as { status?: number }).status ?? ((error as Error).cause as { status?: number }).status).toBe(status);
    expect(server.requests).toHaveLength(3); // the middleware's 1 + 2 retries, inside one hold
    expect(await charges(meter, 'shop')).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
  });

  it('retries inside one hold and charges once', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'error', status: 429 }, { kind: 'error', status: 500 });
    const result = await generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who() });
    expect(result.text).toBe('Your order ships tomorrow.');
    expect(server.requests).toHaveLength(3);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('an abort before the answer charges nothing', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'hang' });
    const controller = new AbortController();
    const pending = rejection(
      generateText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who(), abortSignal: controller.signal }),
    );
    await until(() => server.requests.length === 1);
    controller.abort(new Error('user left'));
    await pending;
    expect(await charges(meter, 'shop')).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
  });

  it('a replyId charged already is REPLY_SETTLED, with no second request or charge', async () => {
    const { meter, wrap } = await setup();
    const model = wrap(openai().chat('gpt-4o'));
    await generateText({ model, prompt: 'Hi', providerOptions: who({ replyId: 'm1' }) });
    const error = await rejection(generateText({ model, prompt: 'Hi', providerOptions: who({ replyId: 'm1' }) }));
    expect(codeOf(error)).toBe('REPLY_SETTLED');
    expect(server.requests).toHaveLength(1);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });

  it('50 concurrent calls against credits for 20 reach the model exactly 20 times', async () => {
    const { wrap } = await setup();
    const model = wrap(openai().chat('gpt-4o'));
    const outcomes = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => generateText({ model, prompt: 'Hi', providerOptions: who({ conversationId: `c${i}` }) })),
    );
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(20);
    expect(outcomes.filter((o) => o.status === 'rejected' && codeOf(o.reason) === 'INSUFFICIENT_CREDITS')).toHaveLength(30);
    expect(server.requests).toHaveLength(20);
  });
});

describe('creditsMiddleware - streamText', () => {
  it('streams and charges once when the stream ends; the finish carries the charge', async () => {
    const { meter, events, wrap } = await setup();
    server.script({ kind: 'ok', chunkDelayMs: 5 });
    const result = streamText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who() });
    let text = '';
    for await (const delta of result.textStream) text += delta;
    expect(text).toBe('Your order ships tomorrow.');
    expect((await result.providerMetadata)?.credits).toMatchObject({ credits: '5', route: 'credits' });
    expect(server.requests[0]?.stream).toBe(true);
    expect(await charges(meter, 'shop')).toHaveLength(1);
    expect(events.filter((event) => event.type === 'reply.charged')).toHaveLength(1);
  });

  it('streams Anthropic and the Responses API too', async () => {
    const { meter, wrap } = await setup();
    for (const model of [wrap(anthropic()('claude-sonnet-4-6')), wrap(openai()('gpt-4o'))]) {
      const result = streamText({ model, prompt: 'Hi', providerOptions: who({ conversationId: model.modelId }) });
      expect(await result.text).toBe('Your order ships tomorrow.');
    }
    expect((await charges(meter, 'shop')).map((entry) => Number(entry.credits))).toEqual([-4, -5]);
  });

  it('a BYO stream sends the workspace key and charges nothing', async () => {
    const { meter, wrap } = await setup();
    const result = streamText({
      model: wrap(anthropic()('claude-sonnet-4-6')),
      prompt: 'Hi',
      providerOptions: who({ workspaceId: 'byo' }),
    });
    expect(await result.text).toBe('Your order ships tomorrow.');
    expect(server.requests[0]?.apiKey).toBe(BYO_KEY);
    expect(server.requests[0]?.authorization).toBeUndefined();
    expect(leaks(await meter.ledger({ workspaceId: 'byo' }), BYO_KEY)).toBe(false);
  });

  it('an error before any output releases: nothing charged, the error reaches the stream', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'error', status: 500 }, { kind: 'error', status: 500 }, { kind: 'error', status: 500 });
    const errors: unknown[] = [];
    const result = streamText({
      model: wrap(openai().chat('gpt-4o')),
      prompt: 'Hi',
      providerOptions: who(),
      onError: ({ error }) => void errors.push(error),
    });
    const parts = await drain(result.fullStream);
    expect(parts.some((part) => part.type === 'error')).toBe(true);
    expect(codeOf(errors[0])).toBe('PROVIDER_ERROR');
    expect(server.requests).toHaveLength(3);
    expect(await charges(meter, 'shop')).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
  });

  it('an abort before the first token charges nothing', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'hang' });
    const controller = new AbortController();
    const result = streamText({
      model: wrap(openai().chat('gpt-4o')),
      prompt: 'Hi',
      providerOptions: who(),
      abortSignal: controller.signal,
      onError: () => undefined,
    });
    const reading = drain(result.fullStream).catch((error: unknown) => error);
    await until(() => server.requests.length === 1);
    controller.abort(new Error('user left'));
    await reading;
    await sleep(50); // the release runs as the stream closes
    expect(await charges(meter, 'shop')).toHaveLength(0);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(100);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
  });

  it('an abort after the first token is charged once', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'hang-after-first-chunk' });
    const controller = new AbortController();
    const result = streamText({
      model: wrap(openai().chat('gpt-4o')),
      prompt: 'Hi',
      providerOptions: who(),
      abortSignal: controller.signal,
      onError: () => undefined,
    });
    const reading = (async () => {
      for await (const part of result.fullStream) if (part.type === 'text-delta') controller.abort(new Error('user left'));
    })().catch((error: unknown) => error);
    await reading;
    await sleep(50); // the charge runs as the stream closes
    const settled = await charges(meter, 'shop');
    expect(settled).toHaveLength(1);
    expect(Number((await meter.getWorkspace('shop')).balance)).toBe(95);
  });

  it('a stream the balance cannot cover is refused before any request', async () => {
    const { meter, wrap } = await setup();
    await meter.createWorkspace({ workspaceId: 'poor', plan: 'enterprise', allotment: 3 });
    const errors: unknown[] = [];
    const result = streamText({
      model: wrap(openai().chat('gpt-4o')),
      prompt: 'Hi',
      providerOptions: who({ workspaceId: 'poor' }),
      onError: ({ error }) => void errors.push(error),
    });
    await drain(result.fullStream);
    expect(codeOf(errors[0])).toBe('INSUFFICIENT_CREDITS');
    expect(server.requests).toHaveLength(0);
  });

  it('a reader that stops early is charged once: streamText keeps reading the model (stop it with abortSignal)', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'ok', chunkDelayMs: 10 });
    const result = streamText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who() });
    for await (const _ of result.textStream) break;
    expect(await result.text).toBe('Your order ships tomorrow.');
    expect(await charges(meter, 'shop')).toHaveLength(1);
    expect(Number((await meter.getWorkspace('shop')).held)).toBe(0);
  });

  it('a stream retries inside one hold and charges once', async () => {
    const { meter, wrap } = await setup();
    server.script({ kind: 'error', status: 429 });
    const result = streamText({ model: wrap(openai().chat('gpt-4o')), prompt: 'Hi', providerOptions: who() });
    expect(await result.text).toBe('Your order ships tomorrow.');
    expect(server.requests).toHaveLength(2);
    expect(await charges(meter, 'shop')).toHaveLength(1);
  });
});
