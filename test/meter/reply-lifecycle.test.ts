import { describe, expect, it } from 'vitest';
import { CreditMeter, CreditsError, InsufficientCreditsError, MemoryStorage } from '../../src/index.js';
import { ask, harness, ledgerSum, turn, wrapStorage } from '../support.js';

describe('reply - charge per reply', () => {
  it('charges exactly the model price and records one ledger entry', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply({ ...turn(1, 'claude-sonnet-4-6') });
    expect(result.output).toBe('reply from claude-sonnet-4-6');
    expect(Number(result.credits)).toBe(4);
    expect(result.route).toBe('credits');
    expect(providers.anthropic.calls).toHaveLength(1);
    const ws = await meter.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(96);
    const { entries } = await meter.ledger({ workspaceId: 'ws' });
    expect(entries.map((e) => [e.kind, Number(e.credits)])).toEqual([
      ['grant', 100],
      ['reply', -4],
    ]);
    expect(entries[1]).toMatchObject({
      agentId: 'agent-1',
      conversationId: 'conv-1',
      model: 'claude-sonnet-4-6',
      route: 'credits',
      replyId: result.replyId,
      priceVersion: meter.models.version,
    });
  });

  it('charges a 3-reply conversation 3 × the model price', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 3; i++) await meter.reply(turn(i, 'claude-haiku-4-5'));
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100 - 3 * 2);
    const usage = await meter.usage({
      workspaceId: 'ws',
      from: '2026-01-01T00:00:00Z',
      to: '2026-02-01T00:00:00Z',
      groupBy: 'conversation',
    });
    expect(usage.rows).toEqual([expect.objectContaining({ key: 'conv-1', replies: 3 })]);
    expect(Number(usage.rows[0]?.credits)).toBe(6);
  });

  it('charges fractional prices exactly', async () => {
    const { meter } = harness({
      models: new CreditMeter().models.extend([{ id: 'tiny', name: 'Tiny', provider: 'openai', credits: '0.1', providerBacked: true }]),
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 3; i++) await meter.reply(turn(i, 'tiny'));
    expect((await meter.getWorkspace('ws')).balance.toString()).toBe('99.7');
  });

  it('fails closed on an unknown model without calling any provider', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.reply(turn(1, 'gpt-9'))).rejects.toMatchObject({ code: 'UNKNOWN_MODEL' });
    expect(providers.openai.calls).toHaveLength(0);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
  });

  it('refuses an unknown workspace', async () => {
    const { meter } = harness();
    await expect(meter.reply(turn(1))).rejects.toMatchObject({ code: 'WORKSPACE_NOT_FOUND' });
  });

  it('refuses a model whose provider is not registered, before holding anything', async () => {
    const meter = new CreditMeter({ providers: {} });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.reply(turn(1))).rejects.toMatchObject({ code: 'PROVIDER_NOT_FOUND' });
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(0);
  });
});

describe('reply - zero-balance blocking', () => {
  it('blocks a reply the balance cannot cover, before the model is called', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    const calls = providers.openai.calls.length;
    const error = await meter.reply(turn(99, 'gpt-4o')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(InsufficientCreditsError);
    const insufficient = error as InsufficientCreditsError;
    expect(insufficient.code).toBe('INSUFFICIENT_CREDITS');
    expect(insufficient.workspaceId).toBe('ws');
    expect(insufficient.model).toBe('gpt-4o');
    expect(Number(insufficient.required)).toBe(5);
    expect(Number(insufficient.available)).toBe(0);
    expect(insufficient.renewsAt?.toISOString()).toBe('2026-02-15T12:00:00.000Z');
    expect(providers.openai.calls).toHaveLength(calls);
  });

  it('refuses a cost larger than what remains and consumes nothing', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 24; i++) await meter.reply(turn(i, 'claude-sonnet-4-6')); // 96 spent
    await expect(meter.reply(turn(50, 'gpt-4o'))).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(4);
    await meter.reply(turn(51, 'claude-sonnet-4-6'));
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(0);
  });

  it('never charges a replyId that was refused, even after credits arrive', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    for (let i = 0; i < 20; i++) await meter.reply(turn(i, 'gpt-4o'));
    await expect(meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'late' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    await meter.addCredits({ workspaceId: 'ws', credits: 50, grantId: 'pack-1' });
    await expect(meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'late' })).rejects.toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(50);
  });
});

describe('reply - idempotency', () => {
  it('a retry with a settled replyId returns the first charge without a second provider call', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const first = await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'msg-1' });
    const again = await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'msg-1' });
    expect(again.replayed).toBe(true);
    expect(again.entryId).toBe(first.entryId);
    expect(Number(again.credits)).toBe(5);
    expect(providers.openai.calls).toHaveLength(1);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('the same replyId with another model is a conflict, not a replay', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'msg-1' });
    await expect(meter.reply({ ...turn(1, 'gpt-4o-mini'), replyId: 'msg-1' })).rejects.toMatchObject({ code: 'IDEMPOTENCY_CONFLICT' });
    await expect(meter.reply({ ...turn(1, 'gpt-4o'), agentId: 'sales', replyId: 'msg-1' })).rejects.toMatchObject({
      code: 'IDEMPOTENCY_CONFLICT',
    });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('a replyId is scoped to its workspace: the same id in another workspace is another reply', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.createWorkspace({ workspaceId: 'other', plan: 'free' });
    await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'msg-1' });
    const there = await meter.reply({ ...turn(1, 'gpt-4o'), workspaceId: 'other', replyId: 'msg-1' });
    expect(there.replayed).toBe(false);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
    expect(Number((await meter.getWorkspace('other')).balance)).toBe(95);
  });

  it('a reply in flight elsewhere is not called twice', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve({ ...ask(1), replyId: 'busy' });
    await expect(meter.reply({ ...turn(1), replyId: hold.replyId })).rejects.toMatchObject({ code: 'REPLY_IN_PROGRESS' });
  });
});

describe('reply - provider failure and abort', () => {
  it('a provider error releases the hold and charges nothing', async () => {
    const { meter, providers } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    providers.openai.failWith = new Error('upstream 500');
    const error = await meter.reply(turn(1, 'gpt-4o')).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'PROVIDER_ERROR' });
    expect((error as Error).cause).toBeInstanceOf(Error);
    expect((error as Error).cause).toMatchObject({ name: 'Error', message: 'upstream 500' });
    const ws = await meter.getWorkspace('ws');
    expect(Number(ws.balance)).toBe(100);
    expect(Number(ws.held)).toBe(0);
    expect((await meter.ledger({ workspaceId: 'ws' })).entries).toHaveLength(1);
  });

  it('an abort before output releases the hold and rethrows the abort reason', async () => {
    const { meter } = harness({
      providers: {
        openai: {
          generate: (_request, { signal }) =>
            new Promise((_resolve, reject) => signal?.addEventListener('abort', () => reject(signal.reason))),
        },
      },
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const controller = new AbortController();
    const pending = meter.reply({ ...turn(1, 'gpt-4o'), signal: controller.signal });
    setTimeout(() => controller.abort(new Error('user left')), 5);
    await expect(pending).rejects.toThrow('user left');
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
  });

  it('an already-aborted signal never reaches the store', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.reply({ ...turn(1), signal: AbortSignal.abort() })).rejects.toBeDefined();
    expect((await meter.ledger({ workspaceId: 'ws' })).entries).toHaveLength(1);
  });
});

describe('reserve / settle / release', () => {
  it('holds the cost, then charges once on settle', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    expect(hold).toMatchObject({ status: 'held', route: 'credits', replayed: false });
    expect(Number(hold.credits)).toBe(5);
    let ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([95, 5]);
    const settled = await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
    expect(settled.replayed).toBe(false);
    const again = await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
    expect(again).toMatchObject({ replayed: true, entryId: settled.entryId });
    ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([95, 0]);
    expect(await ledgerSum(meter, 'ws')).toBe(95);
  });

  it('a repeated reserve returns the same hold; after settle it reports settled', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'r' });
    expect(await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'r' })).toMatchObject({ replyId: 'r', status: 'held', replayed: true });
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(5);
    await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
    expect(await meter.reserve({ ...ask(1, 'gpt-4o'), replyId: 'r' })).toMatchObject({ status: 'settled', replayed: true });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('release returns the credits; settle after release is refused; release resolves at most once', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    expect(await meter.release({ workspaceId: 'ws', replyId: hold.replyId })).toMatchObject({ replayed: false });
    expect(await meter.release({ workspaceId: 'ws', replyId: hold.replyId })).toMatchObject({ replayed: true });
    await expect(meter.settle({ workspaceId: 'ws', replyId: hold.replyId })).rejects.toMatchObject({ code: 'REPLY_RELEASED' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
  });

  it('release after settle is refused and changes nothing', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    await meter.settle({ workspaceId: 'ws', replyId: hold.replyId });
    await expect(meter.release({ workspaceId: 'ws', replyId: hold.replyId })).rejects.toMatchObject({ code: 'REPLY_SETTLED' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('a hold expires after its TTL and returns the credits (a process died mid-reply)', async () => {
    const { meter, clock } = harness({ holdTtlMs: 60_000 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    expect(hold.expiresAt.getTime() - clock.ms).toBe(60_000);
    clock.advance(59_999);
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(5);
    clock.advance(1);
    const ws = await meter.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([100, 0]);
    await expect(meter.settle({ workspaceId: 'ws', replyId: hold.replyId })).rejects.toMatchObject({ code: 'HOLD_EXPIRED' });
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('a settle after the hold expired is refused even before any sweep', async () => {
    const { meter, clock } = harness({ holdTtlMs: 1000 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    clock.advance(1000);
    await expect(meter.settle({ workspaceId: 'ws', replyId: hold.replyId })).rejects.toMatchObject({ code: 'HOLD_EXPIRED' });
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(100);
  });

  it('settle of an unknown reply or of another workspace is REPLY_NOT_FOUND', async () => {
    const { meter } = harness();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await meter.createWorkspace({ workspaceId: 'other', plan: 'free' });
    const hold = await meter.reserve(ask(1, 'gpt-4o'));
    await expect(meter.settle({ workspaceId: 'ws', replyId: 'nope' })).rejects.toMatchObject({ code: 'REPLY_NOT_FOUND' });
    await expect(meter.settle({ workspaceId: 'other', replyId: hold.replyId })).rejects.toMatchObject({ code: 'REPLY_NOT_FOUND' });
  });

  it('heals a lost response: the store committed, the caller retries the same replyId', async () => {
    const storage = new MemoryStorage();
    let dropNextSettle = true;
    let failNextLoad = false;
    const flaky = wrapStorage(storage, {
      commit: async (commits) => {
        const results = await storage.commit(commits);
        if (dropNextSettle && commits.some((commit) => commit.ledger.some((row) => row.kind === 'reply'))) {
          dropNextSettle = false;
          // The store then stays away long enough that the meter cannot see the settle landed.
          failNextLoad = true;
          throw new Error('connection reset after commit');
        }
        return results;
      },
      load: async (request) => {
        if (failNextLoad) {
          failNextLoad = false;
          throw new Error('connection refused');
        }
        return storage.load(request);
      },
    });
    const { meter } = harness({ storage: flaky });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' })).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    const retried = await meter.reply({ ...turn(1, 'gpt-4o'), replyId: 'm1' });
    expect(retried.replayed).toBe(true);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });
});

describe('store failures', () => {
  /** A store that is up for creating workspaces and down for holding replies. */
  function brokenStorage() {
    const storage = new MemoryStorage();
    return wrapStorage(storage, {
      commit: async (commits) => {
        if (commits.some((commit) => commit.records.some((record) => record.key.startsWith('reply:')))) throw new Error('ECONNREFUSED');
        return storage.commit(commits);
      },
    });
  }

  it('fail closed by default: a store error refuses the reply and the provider is not called', async () => {
    const { meter, providers } = harness({ storage: brokenStorage() });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const error = await meter.reply(turn(1)).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'STORAGE_ERROR' });
    expect(CreditsError.is(error)).toBe(true);
    expect((error as Error).cause).toEqual(new Error('ECONNREFUSED'));
    expect(providers.openai.calls).toHaveLength(0);
  });

  it("onStorageFailure: 'allow' lets the reply through unmetered", async () => {
    const { meter, providers } = harness({ storage: brokenStorage(), onStorageFailure: 'allow' });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const result = await meter.reply(turn(1));
    expect(result).toMatchObject({ metered: false, output: 'reply from gpt-4o-mini' });
    expect(providers.openai.calls).toHaveLength(1);
  });

  it('a store call slower than storageTimeoutMs fails closed', async () => {
    const inner = new MemoryStorage();
    const slow = wrapStorage(inner, {
      commit: (commits) =>
        commits.some((commit) => commit.records.some((record) => record.key.startsWith('reply:')))
          ? new Promise<never>(() => undefined)
          : inner.commit(commits),
    });
    const { meter, providers } = harness({ storage: slow, storageTimeoutMs: 20 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    await expect(meter.reply(turn(1))).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect(providers.openai.calls).toHaveLength(0);
  });
});
