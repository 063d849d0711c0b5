import { describe, expect, it } from 'vitest';
import type { ReplyProvider } from '../../src/index.js';
import { harness, turn } from '../support.js';

function streaming(chunks: string[], failAfter?: number): ReplyProvider {
  return {
    async generate() {
      return { output: chunks.join('') };
    },
    async *stream() {
      for (let i = 0; i < chunks.length; i++) {
        if (failAfter !== undefined && i === failAfter) throw new Error('stream broke');
        yield chunks[i];
      }
    },
  };
}

async function collect(iterable: AsyncIterable<unknown>, stopAfter = Infinity): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const chunk of iterable) {
    out.push(chunk);
    if (out.length >= stopAfter) break;
  }
  return out;
}

describe('replyStream', () => {
  it('streams every chunk and settles once at the end', async () => {
    const { meter } = harness({ providers: { openai: streaming(['Hel', 'lo', '!']) } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(5);
    expect(await collect(stream)).toEqual(['Hel', 'lo', '!']);
    const settled = await stream.result;
    expect(Number(settled.credits)).toBe(5);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([95, 0]);
  });

  it('charges a reply the caller stopped reading after some output', async () => {
    const { meter } = harness({ providers: { openai: streaming(['a', 'b', 'c']) } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    expect(await collect(stream, 1)).toEqual(['a']);
    await stream.result;
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('charges nothing when the stream fails before the first chunk', async () => {
    const { meter } = harness({ providers: { openai: streaming(['a'], 0) } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    await expect(collect(stream)).rejects.toMatchObject({ code: 'PROVIDER_ERROR' });
    await expect(stream.result).rejects.toMatchObject({ code: 'PROVIDER_ERROR' });
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
  });

  it('charges a reply that broke after delivering output (it was a reply)', async () => {
    const { meter } = harness({ providers: { openai: streaming(['a', 'b'], 1) } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    await expect(collect(stream)).rejects.toMatchObject({ code: 'PROVIDER_ERROR' });
    await stream.result;
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('falls back to generate() for a provider without stream()', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const stream = await meter.replyStream(turn(1, 'gpt-4o'));
    expect(await collect(stream)).toEqual(['reply from gpt-4o']);
    expect(Number((await stream.result).credits)).toBe(5);
  });

  it('is refused up front when the balance cannot cover it', async () => {
    const { meter } = harness({ providers: { openai: streaming(['a']) } });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.changePlan({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    await expect(meter.replyStream(turn(99, 'gpt-4o'))).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
  });
});
