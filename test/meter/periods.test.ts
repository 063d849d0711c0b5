import { describe, expect, it } from 'vitest';
import { CreditMeter, definePlans, MemoryStorage, type PeriodRenewedEvent } from '../../src/index.js';
import { harness, ledgerSum, TestClock, turn } from '../support.js';

describe('periods - lazy renewal', () => {
  it('renews on the first operation after the period end: unused allotment expires, a new one is granted', async () => {
    const { meter, clock } = harness({ start: '2026-01-31T09:00:00Z' });
    const renewed: PeriodRenewedEvent[] = [];
    meter.on('period.renewed', (e) => void renewed.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 10; i++) await meter.reply(turn(i, 'gpt-4o')); // 50 used
    clock.set('2026-02-28T08:59:59.999Z');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(50);
    clock.set('2026-02-28T09:00:00Z');
    const ws = await meter.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(100);
    expect(Number(ws.usedThisPeriod)).toBe(0);
    expect(ws.periodStart.toISOString()).toBe('2026-02-28T09:00:00.000Z');
    expect(ws.renewsAt.toISOString()).toBe('2026-03-31T09:00:00.000Z');
    expect(renewed).toHaveLength(1);
    expect(Number(renewed[0]?.expired)).toBe(50);
    const kinds = (await meter.ledger({ workspaceId: 'ws', limit: 1000 })).entries.slice(-2).map((e) => [e.kind, Number(e.credits)]);
    expect(kinds).toEqual([
      ['expiry', -50],
      ['grant', 100],
    ]);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('follows clamped month ends from the anchor: Jan 31 → Feb 29 (leap) → Mar 31 → Apr 30', async () => {
    const { meter, clock } = harness({ start: '2028-01-31T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const ends: string[] = [];
    for (const at of ['2028-02-01T00:00:00Z', '2028-03-01T00:00:00Z', '2028-04-05T00:00:00Z', '2028-05-05T00:00:00Z']) {
      clock.set(at);
      ends.push((await meter.getWorkspace('ws')).periodStart.toISOString().slice(0, 10));
    }
    expect(ends).toEqual(['2028-01-31', '2028-02-29', '2028-03-31', '2028-04-30']);
  });

  it('crosses the year: Dec 31 → Jan 31', async () => {
    const { meter, clock } = harness({ start: '2026-12-31T12:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    expect((await meter.getWorkspace('ws')).renewsAt.toISOString()).toBe('2027-01-31T12:00:00.000Z');
    clock.set('2027-01-31T12:00:00Z');
    expect((await meter.getWorkspace('ws')).renewsAt.toISOString()).toBe('2027-02-28T12:00:00.000Z');
  });

  it('a reply at exactly the period end belongs to the new period', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    await expect(meter.reply(turn(20, 'gpt-4o'))).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    clock.set('2026-04-10T00:00:00Z');
    const result = await meter.reply(turn(21, 'gpt-4o'));
    expect(result.at.toISOString()).toBe('2026-04-10T00:00:00.000Z');
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.usedThisPeriod)]).toEqual([95, 5]);
  });

  it('catches up a workspace idle for 5 months, one period at a time', async () => {
    const { meter, clock } = harness({ start: '2026-01-15T00:00:00Z' });
    const renewed: PeriodRenewedEvent[] = [];
    meter.on('period.renewed', (e) => void renewed.push(e));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await meter.reply(turn(1, 'gpt-4o'));
    clock.set('2026-06-20T00:00:00Z');
    const ws = await meter.getWorkspace('ws');
    expect(ws.periodStart.toISOString()).toBe('2026-06-15T00:00:00.000Z');
    expect(Number(ws.balance)).toBe(2000);
    expect(renewed.map((e) => e.periodStart.toISOString().slice(0, 10))).toEqual([
      '2026-02-15',
      '2026-03-15',
      '2026-04-15',
      '2026-05-15',
      '2026-06-15',
    ]);
    expect(await ledgerSum(meter, 'ws')).toBe(2000);
  });

  it('the blocked error says when the allotment renews', async () => {
    const { meter } = harness({ start: '2026-05-31T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    await expect(meter.reply(turn(99, 'gpt-4o'))).rejects.toMatchObject({ renewsAt: new Date('2026-06-30T00:00:00Z') });
  });

  it('renews once when 50 operations across 5 meters race just after the period end', async () => {
    const storage = new MemoryStorage();
    const clock = new TestClock('2026-01-31T00:00:00Z');
    const openai = { generate: async () => ({ output: 'ok' }) };
    const meters = Array.from({ length: 5 }, () => new CreditMeter({ storage, clock: clock.now, providers: { openai } }));
    const renewed: PeriodRenewedEvent[] = [];
    for (const meter of meters) meter.on('period.renewed', (e) => void renewed.push(e));
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    clock.set('2026-02-28T00:00:00.001Z');
    const results = await Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => {
        const meter = meters[i % 5]!;
        return i % 3 === 0 ? meter.getWorkspace('ws') : meter.reply(turn(i, 'gpt-4o-mini'));
      }),
    );
    expect(results.every((r) => r.status === 'fulfilled')).toBe(true);
    expect(renewed).toHaveLength(1);
    const { entries } = await meters[0]!.ledger({ workspaceId: 'ws', limit: 1000 });
    expect(entries.filter((e) => e.kind === 'grant')).toHaveLength(2);
    expect(await ledgerSum(meters[0]!, 'ws')).toBe(100 - 33);
  });

  it('a past startsAt begins in the period that contains now', async () => {
    const { meter } = harness({ start: '2026-07-04T00:00:00Z' });
    const ws = await meter.createWorkspace({ workspaceId: 'ws', plan: 'free', startsAt: '2025-12-31T00:00:00Z' });
    expect(ws.periodStart.toISOString()).toBe('2026-06-30T00:00:00.000Z');
    expect(ws.renewsAt.toISOString()).toBe('2026-07-31T00:00:00.000Z');
    await expect(meter.createWorkspace({ workspaceId: 'later', plan: 'free', startsAt: '2027-01-01T00:00:00Z' })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      field: 'startsAt',
    });
  });
});

describe('periods - rollover', () => {
  const plans = definePlans([
    { id: 'team', name: 'Team', monthlyCredits: 1000, rolloverCap: 300 },
    { id: 'solo', name: 'Solo', monthlyCredits: 100 },
  ]);

  it('carries unused plan credits up to the cap when the plan opts in', async () => {
    const { meter, clock } = harness({ plans, start: '2026-01-01T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'team' });
    for (let i = 0; i < 100; i++) await meter.reply(turn(i, 'gpt-4o')); // 500 used, 500 unused
    clock.set('2026-02-01T00:00:00Z');
    const ws = await meter.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(1300);
    const last = (await meter.ledger({ workspaceId: 'ws', limit: 1000 })).entries.slice(-2);
    expect(last.map((e) => [e.kind, Number(e.credits)])).toEqual([
      ['expiry', -200],
      ['grant', 1000],
    ]);
    clock.set('2026-03-01T00:00:00Z');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(1300);
  });
});
