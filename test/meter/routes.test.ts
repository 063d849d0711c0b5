import { describe, expect, it } from 'vitest';
import { type CreditEvent, CreditMeter } from '../../src/index.js';
import { harness, turn } from '../support.js';

const SECRET = 'sk-live-TOPSECRET-1234567890';

function byoHarness(keys: Record<string, string>) {
  return harness({
    byoKeys: ({ workspaceId, provider }) => (workspaceId === 'ws' ? keys[provider] : undefined),
  });
}

describe('route - bring your own key', () => {
  it('a provider-backed reply on a workspace key costs 0 credits and reaches the provider with the key', async () => {
    const { meter, providers } = byoHarness({ openai: SECRET });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect(result.route).toBe('byo');
    expect(Number(result.credits)).toBe(0);
    expect(providers.openai.calls[0]?.key).toBe(SECRET);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
    const { entries } = await meter.ledger({ workspaceId: 'ws' });
    expect(entries[1]).toMatchObject({ kind: 'reply', route: 'byo', model: 'gpt-4o' });
    expect(Number(entries[1]?.credits)).toBe(0);
  });

  it('is never blocked, even at a zero balance', async () => {
    const { meter } = byoHarness({ openai: SECRET });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 100; i++) await meter.reply(turn(i, 'bookbag-local'));
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(0);
    await expect(meter.reply(turn(100, 'bookbag-local'))).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    const result = await meter.reply(turn(101, 'gpt-4o'));
    expect(result.route).toBe('byo');
    expect((await meter.quote({ workspaceId: 'ws', model: 'gpt-4o' })).allowed).toBe(true);
  });

  it('only bypasses the provider the key is for', async () => {
    const { meter } = byoHarness({ openai: SECRET });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    expect((await meter.reply(turn(1, 'claude-haiku-4-5'))).route).toBe('credits');
  });

  it('never bypasses Bookbag Local: it is not provider-backed and costs 1 credit', async () => {
    const { meter } = byoHarness({ openai: SECRET, anthropic: SECRET, bookbag: SECRET });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'bookbag-local'));
    expect(result.route).toBe('credits');
    expect(Number(result.credits)).toBe(1);
  });

  it('keeps the key out of ledger rows, events, errors and the quote', async () => {
    const { meter, providers } = byoHarness({ openai: SECRET });
    const seen: CreditEvent[] = [];
    meter.on('reply.charged', (e) => void seen.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply(turn(1, 'gpt-4o'));
    providers.openai.failWith = Object.assign(new Error(`Incorrect API key provided: ${SECRET}`), {
      status: 401,
      headers: { authorization: `Bearer ${SECRET}` },
    });
    const error = await meter.reply(turn(2, 'gpt-4o')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'PROVIDER_ERROR' });
    const quote = await meter.quote({ workspaceId: 'ws', model: 'gpt-4o' });
    const everything = JSON.stringify({
      ledger: await meter.ledger({ workspaceId: 'ws' }),
      seen,
      quote,
      workspace: await meter.getWorkspace('ws'),
      message: (error as Error).message,
      stack: (error as Error).stack,
      cause: String((error as Error).cause),
      causeStack: ((error as Error).cause as Error).stack,
      causeProps: (error as Error).cause,
    });
    expect(everything).not.toContain(SECRET);
    expect(((error as Error).cause as { status?: number }).status).toBe(401);
  });

  it('a failing key lookup fails the reply without quoting the resolver error', async () => {
    const { meter, providers } = harness({
      byoKeys: () => {
        throw new Error(`vault said no for ${SECRET}`);
      },
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const error = await meter.reply(turn(1, 'gpt-4o')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'PROVIDER_ERROR' });
    expect(JSON.stringify({ m: (error as Error).message, c: String((error as Error).cause) })).not.toContain(SECRET);
    expect(providers.openai.calls).toHaveLength(0);
  });
});

describe('route - self-hosted', () => {
  it('never charges or blocks, records every reply with route unmetered and 0 credits, needs no workspace', async () => {
    const { meter, providers } = harness({ mode: 'self-hosted' });
    for (let i = 0; i < 500; i++) await meter.reply(turn(i, 'gpt-4o'));
    expect(providers.openai.calls).toHaveLength(500);
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 1000 });
    expect(entries).toHaveLength(500);
    expect(entries.every((e) => e.route === 'unmetered' && Number(e.credits) === 0)).toBe(true);
    const usage = await meter.usage({ workspaceId: 'ws', from: '2026-01-01T00:00:00Z', to: '2027-01-01T00:00:00Z', groupBy: 'agent' });
    expect(usage.rows).toEqual([expect.objectContaining({ key: 'agent-1', replies: 500 })]);
    expect(Number(usage.totalCredits)).toBe(0);
  });

  it('quotes every reply as allowed and unmetered', async () => {
    const meter = new CreditMeter({ mode: 'self-hosted' });
    expect(await meter.quote({ workspaceId: 'any', model: 'gpt-4o' })).toMatchObject({ route: 'unmetered', allowed: true });
  });

  it('still passes a workspace key to the provider', async () => {
    const { meter, providers } = harness({ mode: 'self-hosted', byoKeys: () => SECRET });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect(result.route).toBe('unmetered');
    expect(providers.openai.calls[0]?.key).toBe(SECRET);
  });

  it('stays idempotent by replyId', async () => {
    const { meter, providers } = harness({ mode: 'self-hosted' });
    await meter.reply({ ...turn(1), replyId: 'same' });
    const again = await meter.reply({ ...turn(1), replyId: 'same' });
    expect(again.replayed).toBe(true);
    expect(providers.openai.calls).toHaveLength(1);
  });
});

describe('quote - free inspection', () => {
  it('says what a reply would cost, by which route, and whether it is allowed, changing nothing', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const quote = await meter.quote({ workspaceId: 'ws', model: 'claude-sonnet-4-6' });
    expect(quote).toMatchObject({ route: 'credits', allowed: true, priceVersion: meter.models.version });
    expect([Number(quote.credits), Number(quote.price), Number(quote.available)]).toEqual([4, 4, 100]);
    expect(quote.renewsAt?.toISOString()).toBe('2026-02-15T12:00:00.000Z');
    expect(providers.anthropic.calls).toHaveLength(0);
    expect((await meter.ledger({ workspaceId: 'ws' })).entries).toHaveLength(1);
  });

  it('says not allowed when the balance cannot cover it', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 97; i++) await meter.reply(turn(i, 'bookbag-local'));
    expect((await meter.quote({ workspaceId: 'ws', model: 'claude-sonnet-4-6' })).allowed).toBe(false);
    expect((await meter.quote({ workspaceId: 'ws', model: 'claude-haiku-4-5' })).allowed).toBe(true);
  });
});
