import { describe, expect, it } from 'vitest';
import { ask, harness, ledgerSum, turn } from '../support.js';

describe('changePlan', () => {
  it('upgrade Hobby → Pro mid-period after spending 1,500: 38,500 available at once, anchor kept', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    for (let i = 0; i < 300; i++) await meter.reply(turn(i, 'gpt-4o')); // 1,500
    clock.set('2026-03-20T00:00:00Z');
    const change = await meter.changePlan({ workspaceId: 'ws', plan: 'pro' });
    expect(change).toMatchObject({ plan: 'pro', effective: 'now' });
    expect(Number(change.creditsAdded)).toBe(38_000);
    expect(Number(change.workspace.balance)).toBe(38_500);
    expect(Number(change.workspace.allotment)).toBe(40_000);
    expect(change.workspace.renewsAt.toISOString()).toBe('2026-04-10T00:00:00.000Z');
    const last = (await meter.ledger({ workspaceId: 'ws', limit: 1000 })).entries.at(-1);
    expect(last).toMatchObject({ kind: 'plan_change', plan: 'pro' });
    expect(Number(last?.credits)).toBe(38_000);
    expect(await ledgerSum(meter, 'ws')).toBe(38_500);
  });

  it('the upgrade difference expires with the period like the rest of the allotment', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await meter.changePlan({ workspaceId: 'ws', plan: 'pro' });
    clock.set('2026-04-10T00:00:00Z');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(40_000);
  });

  it('downgrade Pro → Hobby: Pro until renewal, Hobby after', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    const change = await meter.changePlan({ workspaceId: 'ws', plan: 'hobby' });
    expect(change).toMatchObject({ plan: 'pro', effective: 'next-period', effectiveAt: new Date('2026-04-10T00:00:00Z') });
    expect(change.workspace.pendingPlan).toBe('hobby');
    expect(Number(change.workspace.balance)).toBe(40_000);
    clock.set('2026-04-10T00:00:00Z');
    const ws = await meter.getWorkspace('ws');
    expect(ws.plan).toBe('hobby');
    expect(ws.pendingPlan).toBeUndefined();
    expect(Number(ws.balance)).toBe(2_000);
    clock.set('2026-05-10T00:00:00Z');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(2_000);
  });

  it('an upgrade cancels a pending downgrade', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'standard' });
    await meter.changePlan({ workspaceId: 'ws', plan: 'hobby' });
    await meter.changePlan({ workspaceId: 'ws', plan: 'pro' });
    clock.set('2026-04-10T00:00:00Z');
    expect((await meter.getWorkspace('ws')).plan).toBe('pro');
  });

  it('Enterprise needs an allotment and uses it every period', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    await expect(meter.changePlan({ workspaceId: 'ws', plan: 'enterprise' })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      field: 'allotment',
    });
    const change = await meter.changePlan({ workspaceId: 'ws', plan: 'enterprise', allotment: 100_000 });
    expect(Number(change.workspace.balance)).toBe(100_000);
    clock.set('2026-04-10T00:00:00Z');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100_000);
  });

  it('refuses an unknown plan or workspace and changes nothing', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.changePlan({ workspaceId: 'ws', plan: 'gold' })).rejects.toMatchObject({ code: 'UNKNOWN_PLAN' });
    await expect(meter.changePlan({ workspaceId: 'nope', plan: 'pro' })).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
    expect((await meter.getWorkspace('ws')).plan).toBe('free');
  });
});

describe('addCredits (top-ups)', () => {
  it('adds credits once per grantId', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const first = await meter.addCredits({ workspaceId: 'ws', credits: 500, grantId: 'pi_1' });
    const again = await meter.addCredits({ workspaceId: 'ws', credits: 500, grantId: 'pi_1' });
    expect([first.replayed, again.replayed]).toEqual([false, true]);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.topUpBalance)]).toEqual([600, 500]);
    await expect(meter.addCredits({ workspaceId: 'ws', credits: 700, grantId: 'pi_1' })).rejects.toMatchObject({
      code: 'IDEMPOTENCY_CONFLICT',
    });
  });

  it('survives renewals and is spent after the allotment', async () => {
    const { meter, clock } = harness({ start: '2026-01-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.addCredits({ workspaceId: 'ws', credits: 50, grantId: 'pack' });
    for (let i = 0; i < 22; i++) await meter.reply(turn(i, 'gpt-4o')); // 110: the 100 allotment, then 10 of the pack
    let ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.topUpBalance)]).toEqual([40, 40]);
    clock.set('2026-02-10T00:00:00Z');
    ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.topUpBalance)]).toEqual([140, 40]);
  });

  it('spends a promo that expires before the period end before the allotment, and never after it expired', async () => {
    const { meter, clock } = harness({ start: '2026-01-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.addCredits({ workspaceId: 'ws', credits: 10, grantId: 'promo', expiresAt: '2026-01-20T00:00:00Z' });
    await meter.addCredits({ workspaceId: 'ws', credits: 10, grantId: 'pack' });
    await meter.reply(turn(1, 'gpt-4o'));
    let ws = await meter.getWorkspace('ws');
    expect(ws.grants.map((g) => [g.grantId, Number(g.remaining)])).toEqual([
      ['promo', 5],
      ['period:0', 100],
      ['pack', 10],
    ]);
    clock.set('2026-01-20T00:00:00Z');
    ws = await meter.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(110);
    expect(ws.grants.map((g) => g.grantId)).toEqual(['period:0', 'pack']);
    expect((await meter.ledger({ workspaceId: 'ws', limit: 1000 })).entries.at(-1)).toMatchObject({ kind: 'expiry', grantId: 'promo' });
    expect(await ledgerSum(meter, 'ws')).toBe(110);
  });

  it('credits held from a grant that expires meanwhile expire on release', async () => {
    const { meter, clock } = harness({ start: '2026-01-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.addCredits({ workspaceId: 'ws', credits: 5, grantId: 'promo', expiresAt: '2026-01-10T00:05:00Z' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    clock.advance(6 * 60_000);
    await meter.release({ workspaceId: 'ws', replyId: hold.replyId });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('refuses zero, past expiry, and an unknown workspace', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.addCredits({ workspaceId: 'ws', credits: 0, grantId: 'g' })).rejects.toMatchObject({ field: 'credits' });
    await expect(
      meter.addCredits({ workspaceId: 'ws', credits: 1, grantId: 'g', expiresAt: '2020-01-01T00:00:00Z' }),
    ).rejects.toMatchObject({
      field: 'expiresAt',
    });
    await expect(meter.addCredits({ workspaceId: 'none', credits: 1, grantId: 'g' })).rejects.toMatchObject({
      code: 'WORKSPACE_NOT_FOUND',
    });
  });

  it('refuses a top-up that would overflow what a store can hold', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 9; i++) await meter.addCredits({ workspaceId: 'ws', credits: 999_999_999, grantId: `big-${i}` });
    await expect(meter.addCredits({ workspaceId: 'ws', credits: 999_999_999, grantId: 'big-9' })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      field: 'credits',
    });
    expect(Number((await meter.getWorkspace('ws')).topUpBalance)).toBe(9 * 999_999_999);
  });
});

describe('the worked example of docs/periods-and-plans.md', () => {
  it('ends April 10 with 3,000 credits on Hobby', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    const balance = async () => Number((await meter.getWorkspace('ws')).balance);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    for (let i = 0; i < 300; i++) await meter.reply(turn(i, 'gpt-4o'));
    expect(await balance()).toBe(500);
    clock.set('2026-03-19T00:00:00Z');
    await meter.addCredits({ workspaceId: 'ws', credits: 1000, grantId: 'pi_1' });
    expect(await balance()).toBe(1500);
    clock.set('2026-03-20T00:00:00Z');
    await meter.changePlan({ workspaceId: 'ws', plan: 'pro' });
    expect(await balance()).toBe(39_500);
    clock.set('2026-03-25T00:00:00Z');
    for (let i = 0; i < 100; i++) await meter.reply(turn(i, 'claude-sonnet-4-6'));
    expect(await balance()).toBe(39_100);
    clock.set('2026-03-28T00:00:00Z');
    await meter.changePlan({ workspaceId: 'ws', plan: 'hobby' });
    clock.set('2026-04-10T00:00:00Z');
    const ws = await meter.getWorkspace('ws');
    expect([ws.plan, Number(ws.balance), Number(ws.topUpBalance), ws.renewsAt.toISOString()]).toEqual([
      'hobby',
      3000,
      1000,
      '2026-05-10T00:00:00.000Z',
    ]);
    const last = (await meter.ledger({ workspaceId: 'ws', limit: 1000 })).entries.slice(-2);
    expect(last.map((e) => [e.kind, Number(e.credits)])).toEqual([
      ['expiry', -38_100],
      ['grant', 2000],
    ]);
  });
});
