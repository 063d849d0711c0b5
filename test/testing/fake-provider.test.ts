import { inspect } from 'node:util';
import { describe, expect, it } from 'vitest';
import { CreditMeter, CreditsError } from '../../src/index.js';
import { FakeProvider } from '../../src/testing/index.js';

const request = { model: 'gpt-4o-mini', input: 'hi', workspaceId: 'ws_1', agentId: 'a', conversationId: 'c' };
const SECRET = 'sk-live-do-not-print-1234';

async function collect(iterable: AsyncIterable<unknown>): Promise<unknown[]> {
  const chunks: unknown[] = [];
  for await (const chunk of iterable) chunks.push(chunk);
  return chunks;
}

describe('FakeProvider', () => {
  it('generate - records the call and returns the configured output', async () => {
    const provider = new FakeProvider({ output: (r: { model: string }) => `echo ${r.model}` });
    expect(await provider.generate(request, {})).toEqual({ output: 'echo gpt-4o-mini' });
    expect(provider.calls).toEqual([
      { method: 'generate', request, hasApiKey: false, hasSignal: false, outcome: 'ok', chunksDelivered: 1 },
    ]);
    expect(await new FakeProvider().generate(request, {})).toEqual({ output: 'fake reply to gpt-4o-mini' });
  });

  it('generate - never records the key in anything printable', async () => {
    const provider = new FakeProvider();
    await provider.generate(request, { apiKey: SECRET });
    const call = provider.calls[0]!;
    expect(call.hasApiKey).toBe(true);
    expect(JSON.stringify(provider.calls)).not.toContain(SECRET);
    expect(inspect(provider, { depth: 10, showHidden: true })).not.toContain(SECRET);
    expect(provider.apiKeyOf(call)).toBe(SECRET);
  });

  it('generate - fails the next failTimes calls, then succeeds', async () => {
    const boom = new Error('rate limited');
    const provider = new FakeProvider().configure({ error: boom, failTimes: 2 });
    await expect(provider.generate(request, {})).rejects.toBe(boom);
    await expect(provider.generate(request, {})).rejects.toBe(boom);
    await expect(provider.generate(request, {})).resolves.toBeDefined();
    expect(provider.calls.map((c) => c.outcome)).toEqual(['failed', 'failed', 'ok']);
    provider.configure({ error: boom });
    await expect(provider.generate(request, {})).rejects.toBe(boom);
    await expect(provider.generate(request, {})).rejects.toBe(boom);
    provider.succeed();
    await expect(provider.generate(request, {})).resolves.toBeDefined();
  });

  it('generate - a delay ends early on abort', async () => {
    const provider = new FakeProvider({ delayMs: 10_000 });
    const controller = new AbortController();
    const pending = provider.generate(request, { signal: controller.signal });
    controller.abort(new Error('stop'));
    await expect(pending).rejects.toThrow('stop');
    expect(provider.calls[0]).toMatchObject({ hasSignal: true, outcome: 'aborted' });
  });

  it('stream - yields the chunks, or fails after some', async () => {
    const provider = new FakeProvider({ chunks: ['a', 'b', 'c'] });
    expect(await collect(provider.stream(request, {}))).toEqual(['a', 'b', 'c']);
    expect(provider.calls[0]).toMatchObject({ method: 'stream', outcome: 'ok', chunksDelivered: 3 });
    provider.configure({ failAfterChunks: 1, error: new Error('cut off') });
    const seen: unknown[] = [];
    await expect(
      (async () => {
        for await (const chunk of provider.stream(request, {})) seen.push(chunk);
      })(),
    ).rejects.toThrow('cut off');
    expect(seen).toEqual(['a']);
    expect(provider.calls[1]).toMatchObject({ outcome: 'failed', chunksDelivered: 1 });
    provider.succeed().reset();
    expect(provider.calls).toEqual([]);
  });

  it('works as a provider of CreditMeter: byo keys reach it, failures charge nothing and never leak the key', async () => {
    const openai = new FakeProvider({ output: 'Hello!' });
    const meter = new CreditMeter({ providers: { openai }, byoKeys: () => SECRET });
    await meter.createWorkspace({ workspaceId: 'ws_1', plan: 'free' });
    const result = await meter.reply({ workspaceId: 'ws_1', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini', input: 'Hi' });
    expect(result).toMatchObject({ output: 'Hello!', route: 'byo' });
    expect(openai.apiKeyOf(openai.calls[0]!)).toBe(SECRET);
    openai.configure({ error: new Error(`upstream refused key ${SECRET}`), failTimes: 1 });
    const failure = await meter
      .reply({ workspaceId: 'ws_1', agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini', input: 'Hi' })
      .catch((e: unknown) => e);
    expect(CreditsError.is(failure) && failure.code).toBe('PROVIDER_ERROR');
    expect(inspect(failure, { depth: 10 })).not.toContain(SECRET);
    expect(Number((await meter.getWorkspace('ws_1')).balance)).toBe(100);
  });
});
