import { describe, expect, it, vi } from 'vitest';
import type { BalanceLowEvent, CreditEvent } from '../../src/index.js';
import { harness, turn } from '../support.js';

describe('events', () => {
  it('reply.charged runs before reply() resolves, on every route', async () => {
    const { meter } = harness({ byoKeys: ({ provider }) => (provider === 'anthropic' ? 'sk-ant' : undefined) });
    const seen: string[] = [];
    meter.on('reply.charged', async (e) => {
      await new Promise((resolve) => setTimeout(resolve, 5));
      seen.push(`${e.route}:${Number(e.credits)}`);
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply(turn(1, 'gpt-4o'));
    expect(seen).toEqual(['credits:5']);
    await meter.reply(turn(2, 'claude-haiku-4-5'));
    expect(seen).toEqual(['credits:5', 'byo:0']);
  });

  it('reply.blocked carries what a host needs', async () => {
    const { meter } = harness();
    const blocked: CreditEvent[] = [];
    meter.on('reply.blocked', (e) => void blocked.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    await meter.reply(turn(21, 'gpt-4o')).catch(() => undefined);
    expect(blocked).toHaveLength(1);
    expect(blocked[0]).toMatchObject({
      type: 'reply.blocked',
      workspaceId: 'ws',
      model: 'gpt-4o',
      renewsAt: new Date('2026-02-15T12:00:00Z'),
    });
  });

  it('balance.low fires once per threshold per period (80 % and 100 % by default)', async () => {
    const { meter, clock } = harness();
    const low: BalanceLowEvent[] = [];
    meter.on('balance.low', (e) => void low.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 15; i++) await meter.reply(turn(i, 'gpt-4o')); // 75
    expect(low).toHaveLength(0);
    await meter.reply(turn(15, 'gpt-4o')); // 80
    expect(low.map((e) => e.threshold)).toEqual([0.8]);
    for (let i = 16; i < 20; i++) await meter.reply(turn(i, 'gpt-4o')); // 100
    expect(low.map((e) => e.threshold)).toEqual([0.8, 1]);
    expect(Number(low[1]?.used)).toBe(100);
    clock.set('2026-02-15T12:00:00Z');
    for (let i = 0; i < 16; i++) await meter.reply(turn(i, 'gpt-4o'));
    expect(low.map((e) => e.threshold)).toEqual([0.8, 1, 0.8]);
  });

  it('custom thresholds', async () => {
    const { meter } = harness({ lowBalanceThresholds: [0.5] });
    const low: BalanceLowEvent[] = [];
    meter.on('balance.low', (e) => void low.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    expect(low.map((e) => e.threshold)).toEqual([0.5]);
  });

  it('a throwing or rejecting handler is reported and never breaks the reply', async () => {
    const onEventError = vi.fn();
    const { meter } = harness({ onEventError });
    meter.on('reply.charged', () => {
      throw new Error('sync boom');
    });
    meter.on('reply.charged', async () => {
      throw new Error('async boom');
    });
    const after = vi.fn();
    meter.on('reply.charged', after);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1, 'gpt-4o'));
    expect(Number(result.credits)).toBe(5);
    expect(onEventError).toHaveBeenCalledTimes(2);
    expect(onEventError.mock.calls.map(([error]) => (error as Error).message)).toEqual(['sync boom', 'async boom']);
    expect(after).toHaveBeenCalledTimes(1);
  });

  it('on() returns an unsubscribe function', async () => {
    const { meter } = harness();
    const handler = vi.fn();
    const off = meter.on('reply.charged', handler);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply(turn(1));
    off();
    await meter.reply(turn(2));
    expect(handler).toHaveBeenCalledTimes(1);
  });
});
