import { describe, expect, it } from 'vitest';
import { type BalanceBelowEvent, CreditMeter, MemoryStorage, type RechargeFailedEvent } from '../../src/index.js';
import { ask, harness, ledgerSum, turn } from '../support.js';

const credits = async (meter: CreditMeter, workspaceId = 'ws') => {
  const ws = await meter.getWorkspace(workspaceId);
  return { balance: Number(ws.balance), held: Number(ws.held), used: Number(ws.usedThisPeriod) };
};

describe('refunds', () => {
  it('a full refund gives back what the reply was charged, once per refundId, with a refund row pointing at the reply', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    const refund = await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 't1', reason: 'wrong answer' });
    expect([Number(refund.credits), refund.replayed]).toEqual([5, false]);
    expect(await credits(meter)).toEqual({ balance: 100, held: 0, used: 0 });
    const again = await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 't1', reason: 'wrong answer' });
    expect(again.replayed).toBe(true);
    expect((await credits(meter)).balance).toBe(100);
    const row = (await meter.ledger({ workspaceId: 'ws' })).entries.at(-1);
    expect(row).toMatchObject({ kind: 'refund', replyId: 'm1', agentId: 'agent-1', model: 'gpt-4o' });
    expect(Number(row?.credits)).toBe(5);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('partial refunds never add up to more than was charged, and a refused one changes nothing', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'a', reason: 'partly wrong', credits: 2 });
    await expect(meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'b', reason: 'again', credits: 4 })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
      issues: [{ path: 'credits' }],
    });
    const last = await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'c', reason: 'the rest' });
    expect(Number(last.credits)).toBe(3);
    await expect(meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'd', reason: 'more' })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
    });
    await expect(meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'a', reason: 'x', credits: 3 })).rejects.toMatchObject({
      code: 'IDEMPOTENCY_CONFLICT',
    });
    await expect(meter.refund({ workspaceId: 'ws', replyId: 'nope', refundId: 'e', reason: 'x' })).rejects.toMatchObject({
      code: 'REPLY_NOT_FOUND',
    });
    expect((await credits(meter)).balance).toBe(100);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('credits go back to the grant that paid while it is live, otherwise into a grant that expires with the period', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.addCredits({ workspaceId: 'ws', credits: 10, grantId: 'promo', expiresAt: '2026-03-12T00:00:00Z' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' }); // paid by the promo, which expires first
    clock.set('2026-03-13T00:00:00Z');
    await meter.getWorkspace('ws'); // the promo's 5 left expire
    const refund = await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'r', reason: 'bad answer' });
    const ws = refund.workspace!;
    expect(ws.grants.map((g) => [g.grantId, Number(g.remaining), g.expiresAt?.toISOString()])).toEqual([
      ['period:0', 100, '2026-04-10T00:00:00.000Z'],
      ['refund:r', 5, '2026-04-10T00:00:00.000Z'],
    ]);
    expect(await ledgerSum(meter, 'ws')).toBe(105);
  });

  it('usage shows gross, refunded and net credits', async () => {
    const { meter } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o', 'support'), replyId: 'm1' });
    await meter.reply({ ...turn(2, 'gpt-4o', 'sales'), replyId: 'm2' });
    await meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'r1', reason: 'wrong', credits: 2 });
    const report = await meter.usage({ workspaceId: 'ws', from: '2026-03-01T00:00:00Z', to: '2026-04-01T00:00:00Z', groupBy: 'agent' });
    const rows = Object.fromEntries(report.rows.map((r) => [r.key, [Number(r.credits), Number(r.refunded), Number(r.net), r.replies]]));
    expect(rows).toEqual({ support: [5, 2, 3, 1], sales: [5, 0, 5, 1] });
    expect([Number(report.totalCredits), Number(report.totalRefunded), Number(report.totalNet)]).toEqual([10, 2, 8]);
  });
});

describe('adjustments', () => {
  it('a credit is a grant with its own ledger kind and reason; a replay adds nothing', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const credit = await meter.adjust({ workspaceId: 'ws', adjustmentId: 'a1', credits: 25, reason: 'outage goodwill' });
    expect([Number(credit.credits), credit.replayed, Number(credit.workspace.balance)]).toEqual([25, false, 125]);
    expect((await meter.adjust({ workspaceId: 'ws', adjustmentId: 'a1', credits: 25, reason: 'outage goodwill' })).replayed).toBe(true);
    await expect(meter.adjust({ workspaceId: 'ws', adjustmentId: 'a1', credits: 30, reason: 'x' })).rejects.toMatchObject({
      code: 'IDEMPOTENCY_CONFLICT',
    });
    expect((await meter.ledger({ workspaceId: 'ws' })).entries.at(-1)).toMatchObject({ kind: 'adjustment', grantId: 'adjustment:a1' });
    expect(await ledgerSum(meter, 'ws')).toBe(125);
  });

  it('a debit never takes the balance below zero: refused with required and available, nothing changed', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'h' }); // 5 held
    await expect(meter.adjust({ workspaceId: 'ws', adjustmentId: 'd1', credits: -96, reason: 'clawback' })).rejects.toMatchObject({
      code: 'INSUFFICIENT_CREDITS',
    });
    const error = (await meter
      .adjust({ workspaceId: 'ws', adjustmentId: 'd1', credits: -96, reason: 'clawback' })
      .catch((e: unknown) => e)) as { required: unknown; available: unknown };
    expect([Number(error.required), Number(error.available)]).toEqual([96, 95]);
    const debit = await meter.adjust({ workspaceId: 'ws', adjustmentId: 'd2', credits: '-95', reason: 'clawback' });
    expect(Number(debit.workspace.balance)).toBe(0);
    expect(await credits(meter)).toEqual({ balance: 0, held: 5, used: 0 });
    expect(await ledgerSum(meter, 'ws')).toBe(5);
  });

  it('a reason is refused, naming it, when empty, over 500 characters or holding what an id may not hold; nothing changes', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    const before = JSON.stringify([await meter.getWorkspace('ws'), await meter.ledger({ workspaceId: 'ws' })]);
    const bad = [
      '',
      'x'.repeat(501),
      'a\u0000b',
      'a\nb',
      'a\u007fb',
      'a\u0085b',
      'a\u2028b',
      'lone \uD800 surrogate',
      'lone \uDC00 low',
      42,
    ];
    for (const reason of bad) {
      await expect(meter.adjust({ workspaceId: 'ws', adjustmentId: 'a1', credits: 5, reason: reason as string })).rejects.toMatchObject({
        code: 'INVALID_INPUT',
        field: 'reason',
      });
      await expect(meter.refund({ workspaceId: 'ws', replyId: 'm1', refundId: 'r1', reason: reason as string })).rejects.toMatchObject({
        code: 'INVALID_INPUT',
        field: 'reason',
      });
    }
    expect(JSON.stringify([await meter.getWorkspace('ws'), await meter.ledger({ workspaceId: 'ws' })])).toBe(before);
    // A paired surrogate (an emoji) and other scripts are text like any other.
    const fine = await meter.adjust({ workspaceId: 'ws', adjustmentId: 'a2', credits: 1, reason: 'goodwill 🎁 — überfällig' });
    expect(fine.replayed).toBe(false);
  });
});

describe('per-agent caps', () => {
  it('refuses a reply over the agent cap (holds in flight count) before the model is called', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.setAgentLimit({ workspaceId: 'ws', agentId: 'sales', credits: 12 });
    await meter.reply(turn(1, 'gpt-4o', 'sales')); // 5
    await meter.reserve({ ...ask(2, 'gpt-4o', 'sales'), replyId: 'held' }); // 5 held
    const calls = providers.openai.calls.length;
    const error = await meter.reply(turn(3, 'gpt-4o', 'sales')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'AGENT_LIMIT_REACHED', agentId: 'sales' });
    const { limit, used, required, renewsAt } = error as { limit: unknown; used: unknown; required: unknown; renewsAt: Date };
    expect([Number(limit), Number(used), Number(required)]).toEqual([12, 10, 5]);
    expect(renewsAt).toBeInstanceOf(Date);
    expect(providers.openai.calls.length).toBe(calls);
    // Other agents still reply; a cheaper model still fits the cap.
    await meter.reply(turn(4, 'gpt-4o', 'support'));
    await meter.reply(turn(5, 'gpt-4o-mini', 'sales'));
    const quote = await meter.quote({ workspaceId: 'ws', model: 'gpt-4o', agentId: 'sales' });
    expect([quote.allowed, quote.blockedBy]).toEqual([false, 'agent-limit']);
    const ws = await meter.getWorkspace('ws');
    expect(ws.agents.find((a) => a.agentId === 'sales')).toMatchObject({ limit: expect.anything(), models: undefined });
    expect(Number(ws.agents.find((a) => a.agentId === 'sales')?.spent)).toBe(6);
    await meter.setAgentLimit({ workspaceId: 'ws', agentId: 'sales', credits: null });
    await meter.reply(turn(6, 'gpt-4o', 'sales'));
  });

  it('limits the models an agent may use', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.setAgentLimit({ workspaceId: 'ws', agentId: 'faq', credits: null, models: ['gpt-4o-mini'] });
    await expect(meter.reply(turn(1, 'gpt-4o', 'faq'))).rejects.toMatchObject({ code: 'MODEL_NOT_ALLOWED', model: 'gpt-4o' });
    await meter.reply(turn(2, 'gpt-4o-mini', 'faq'));
    await expect(meter.setAgentLimit({ workspaceId: 'ws', agentId: 'faq', credits: 1, models: ['gpt-5-turbo'] })).rejects.toMatchObject({
      code: 'INVALID_INPUT',
    });
  });

  it('the cap resets at renewal', async () => {
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.setAgentLimit({ workspaceId: 'ws', agentId: 'sales', credits: 5 });
    await meter.reply(turn(1, 'gpt-4o', 'sales'));
    await expect(meter.reply(turn(2, 'gpt-4o', 'sales'))).rejects.toMatchObject({ code: 'AGENT_LIMIT_REACHED' });
    clock.set('2026-04-10T00:00:00Z');
    await meter.reply(turn(3, 'gpt-4o', 'sales'));
  });

  it('is exact under concurrency from many meters', async () => {
    const storage = new MemoryStorage();
    const meters = Array.from(
      { length: 4 },
      () => new CreditMeter({ storage, providers: { openai: { generate: async () => ({ output: 'ok' }) } } }),
    );
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    await meters[0]!.setAgentLimit({ workspaceId: 'ws', agentId: 'sales', credits: 100 });
    const results = await Promise.allSettled(Array.from({ length: 60 }, (_, i) => meters[i % 4]!.reply(turn(i, 'gpt-4o', 'sales'))));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(20);
    expect(
      results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason.code === 'AGENT_LIMIT_REACHED'),
    ).toBe(true);
    expect(Number((await meters[1]!.getWorkspace('ws')).usedThisPeriod)).toBe(100);
  });
});

describe('recharge', () => {
  it('calls the handler once per crossing with an idempotency key, even with many servers, and adds the credits once', async () => {
    const storage = new MemoryStorage();
    const charged: string[] = [];
    const onRecharge = async ({ rechargeId }: { rechargeId: string }) => void charged.push(rechargeId);
    const meters = Array.from(
      { length: 3 },
      () => new CreditMeter({ storage, onRecharge, providers: { openai: { generate: async () => ({ output: 'ok' }) } } }),
    );
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meters[0]!.setRecharge({ workspaceId: 'ws', recharge: { below: 50, credits: 200 } });
    await Promise.all(Array.from({ length: 12 }, (_, i) => meters[i % 3]!.reply(turn(i, 'gpt-4o'))));
    expect(charged).toEqual(['recharge:1']);
    const ws = await meters[2]!.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(100 - 60 + 200);
    expect(ws.grants.some((g) => g.grantId === 'recharge:1')).toBe(true);
    expect(await ledgerSum(meters[2]!, 'ws')).toBe(240);
  });

  it('re-arms once the balance is back above the threshold; a failing handler is reported as an event', async () => {
    const failures: RechargeFailedEvent[] = [];
    let fail = true;
    const { meter } = harness({
      onRecharge: async () => {
        if (fail) throw new Error('card declined');
      },
    });
    meter.on('recharge.failed', (event) => void failures.push(event));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.setRecharge({ workspaceId: 'ws', recharge: { below: 90, credits: 50 } });
    await meter.reply(turn(1, 'gpt-4o')); // 95: not below
    await meter.reply(turn(2, 'gpt-4o')); // 90: not below
    await meter.reply(turn(3, 'gpt-4o')); // 85: crossing, handler fails
    await meter.reply(turn(4, 'gpt-4o')); // 80: same crossing, no new call
    expect(failures.map((f) => [f.rechargeId, f.error.message])).toEqual([['recharge:1', 'card declined']]);
    fail = false;
    await meter.addCredits({ workspaceId: 'ws', credits: 20, grantId: 'manual' }); // 100: re-armed
    await meter.reply(turn(5, 'gpt-4o')); // 95
    await meter.reply(turn(6, 'gpt-4o')); // 90
    await meter.reply(turn(7, 'gpt-4o')); // 85: second crossing, recharged
    expect((await credits(meter)).balance).toBe(135);
    expect(failures).toHaveLength(1);
  });
});

describe('alerts at absolute levels', () => {
  it('balance.below fires once per period per level, on the way down', async () => {
    const events: BalanceBelowEvent[] = [];
    const { meter, clock } = harness({ start: '2026-03-10T00:00:00Z', lowBalanceLevels: [50, 10] });
    meter.on('balance.below', (event) => void events.push(event));
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 19; i++) await meter.reply(turn(i, 'gpt-4o')); // down to 5
    expect(events.map((e) => [Number(e.level), Number(e.available)])).toEqual([
      [50, 50],
      [10, 10],
    ]);
    await meter.addCredits({ workspaceId: 'ws', credits: 100, grantId: 'g' });
    for (let i = 19; i < 40; i++) await meter.reply(turn(i, 'gpt-4o'));
    expect(events).toHaveLength(2); // once per period
    clock.set('2026-04-10T00:00:00Z');
    for (let i = 40; i < 60; i++) await meter.reply(turn(i, 'gpt-4o')).catch(() => undefined);
    expect(events.map((e) => Number(e.level))).toEqual([50, 10, 50, 10]);
  });
});

describe('charges come from the grants live at settle', () => {
  it('a release never strands purchased credits behind an expiring allotment', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.addCredits({ workspaceId: 'ws', credits: 50, grantId: 'pack' });
    const first = await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'a' });
    // Spend the allotment down so the next hold spills into the pack.
    for (let i = 0; i < 19; i++) await meter.reply(turn(10 + i, 'gpt-4o'));
    const spill = await meter.reserve({ ...ask(2, 'gpt-4o'), replyId: 'b' }); // from the pack
    await meter.release({ workspaceId: 'ws', replyId: first.replyId }); // 5 back into the allotment
    await meter.settle({ workspaceId: 'ws', replyId: spill.replyId }); // charged from the allotment now
    const ws = await meter.getWorkspace('ws');
    expect(ws.grants.map((g) => [g.grantId, Number(g.remaining)])).toEqual([['pack', 50]]);
    expect(await ledgerSum(meter, 'ws')).toBe(50);
  });
});

describe('erasure and listing', () => {
  it('deleteWorkspace removes state, records and ledger; it is idempotent and the id can be created afresh', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    expect(await meter.deleteWorkspace({ workspaceId: 'ws' })).toEqual({ workspaceId: 'ws', existed: true, keptLedger: false });
    await expect(meter.getWorkspace('ws')).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
    expect((await meter.ledger({ workspaceId: 'ws' })).entries).toEqual([]);
    expect((await meter.deleteWorkspace({ workspaceId: 'ws' })).existed).toBe(false);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    // The old replyId is a new reply now: nothing of the old workspace survived.
    expect((await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' })).replayed).toBe(false);
    expect(await ledgerSum(meter, 'ws')).toBe(1995);
  });

  it('keepLedger keeps the rows with agent and conversation ids erased, and a new workspace numbers on after them', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    await meter.deleteWorkspace({ workspaceId: 'ws', keepLedger: true });
    await expect(meter.getWorkspace('ws')).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
    const kept = (await meter.ledger({ workspaceId: 'ws' })).entries;
    expect(kept.map((e) => [e.kind, Number(e.credits), e.agentId, e.conversationId])).toEqual([
      ['grant', 100, undefined, undefined],
      ['reply', -5, undefined, undefined],
      ['expiry', -95, undefined, undefined],
    ]);
    expect(await ledgerSum(meter, 'ws')).toBe(0);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const ids = (await meter.ledger({ workspaceId: 'ws' })).entries.map((e) => Number(e.id));
    expect(ids).toEqual([1, 2, 3, 4]);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('listWorkspaces pages through every workspace once', async () => {
    const { meter } = harness();
    const ids = Array.from({ length: 7 }, (_, i) => `ws_${i}`);
    for (const workspaceId of ids) await meter.createWorkspace({ workspaceId, plan: 'free' });
    const seen: string[] = [];
    let page = await meter.listWorkspaces({ limit: 3 });
    seen.push(...page.workspaces);
    while (page.nextCursor) {
      page = await meter.listWorkspaces({ cursor: page.nextCursor, limit: 3 });
      seen.push(...page.workspaces);
    }
    expect(seen).toEqual(ids);
  });
});
