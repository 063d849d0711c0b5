import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import { chargeWithoutPause, ledgerSum, TestClock, wrapStorage } from '../support.js';

const slowProvider = {
  async generate() {
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 5));
    return { output: 'ok' };
  },
};

describe('concurrency', () => {
  it('1,000 concurrent replies on a balance that covers exactly k: k succeed, k ledger rows, balance 0, never negative', async () => {
    const storage = new MemoryStorage();
    const clock = new TestClock();
    const meters = Array.from({ length: 4 }, () => new CreditMeter({ storage, clock: clock.now, providers: { openai: slowProvider } }));
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'free' }); // 100 credits
    const k = 20; // gpt-4o costs 5
    let lowest = Infinity;
    const watcher = setInterval(() => {
      void meters[0]!.getWorkspace('ws').then((ws) => (lowest = Math.min(lowest, Number(ws.balance))));
    }, 1);
    const results = await Promise.allSettled(
      Array.from({ length: 1000 }, (_, i) =>
        meters[i % 4]!.reply({ workspaceId: 'ws', agentId: `a${i % 7}`, conversationId: `c${i}`, model: 'gpt-4o', input: i }),
      ),
    );
    clearInterval(watcher);
    const ok = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    expect(ok).toHaveLength(k);
    expect(refused.every((r) => (r as PromiseRejectedResult).reason.code === 'INSUFFICIENT_CREDITS')).toBe(true);
    const ws = await meters[0]!.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([0, 0]);
    expect(lowest).toBeGreaterThanOrEqual(0);
    const { entries } = await meters[0]!.ledger({ workspaceId: 'ws', limit: 1000 });
    expect(entries.filter((e) => e.kind === 'reply')).toHaveLength(k);
    expect(await ledgerSum(meters[0]!, 'ws')).toBe(0);
  });

  it('concurrent retries of one replyId charge once and call the provider once', async () => {
    let calls = 0;
    const meter = new CreditMeter({
      providers: {
        openai: {
          async generate() {
            calls++;
            await new Promise((resolve) => setTimeout(resolve, 10));
            return { output: 'ok' };
          },
        },
      },
    });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const attempt = () =>
      meter.reply({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'gpt-4o', input: 'x', replyId: 'same' });
    const results = await Promise.allSettled(Array.from({ length: 20 }, attempt));
    expect(calls).toBe(1);
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(
      results.filter((r) => r.status === 'rejected').every((r) => (r as PromiseRejectedResult).reason.code === 'REPLY_IN_PROGRESS'),
    ).toBe(true);
    expect((await attempt()).replayed).toBe(true);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('concurrent settles and releases of one hold resolve it once', async () => {
    const meter = new CreditMeter();
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'free' });
    const hold = await meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model: 'gpt-4o' });
    const ref = { workspaceId: 'ws', replyId: hold.replyId };
    const results = await Promise.allSettled([
      ...Array.from({ length: 10 }, () => meter.settle(ref)),
      ...Array.from({ length: 10 }, () => meter.release(ref)),
    ]);
    const settled = results.slice(0, 10).filter((r) => r.status === 'fulfilled');
    const fresh = settled.filter((r) => !(r as PromiseFulfilledResult<{ replayed: boolean }>).value.replayed);
    expect(fresh).toHaveLength(1);
    expect(results.slice(10).every((r) => r.status === 'rejected' && r.reason.code === 'REPLY_SETTLED')).toBe(true);
    expect(Number((await meter.getWorkspace('ws')).balance)).toBe(95);
  });

  it('a large batch that lost a race retries under the store lock: every reserve lands, and no locked retry conflicts', async () => {
    const inner = new MemoryStorage();
    const counts = { bigConflicts: 0, locks: 0, lockedConflicts: 0 };
    const storage = wrapStorage(inner, {
      commit: async (commits) => {
        const results = await inner.commit(commits);
        // A reserve writes one record: a commit of 16 records or more carries a batch that large.
        counts.bigConflicts += results.filter((result, i) => result === 'conflict' && commits[i]!.records.length >= 16).length;
        return results;
      },
      lock: (workspaceId, work) => {
        counts.locks++;
        return inner.lock(workspaceId, (workspace) =>
          work({
            load: (request) => workspace.load(request),
            commit: async (commit) => {
              const result = await workspace.commit(commit);
              if (result === 'conflict') counts.lockedConflicts++;
              return result;
            },
          }),
        );
      },
    });
    const meters = Array.from({ length: 4 }, () => new CreditMeter({ storage }));
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    // Each meter's 50 reserves arrive together: one batch per meter, all four racing for one version.
    const results = await Promise.allSettled(
      meters.flatMap((meter, m) =>
        Array.from({ length: 50 }, (_, i) =>
          meter.reserve({ workspaceId: 'ws', agentId: 'a', conversationId: `c${m}-${i}`, model: 'gpt-4o-mini' }),
        ),
      ),
    );
    expect(results.filter((result) => result.status === 'rejected')).toEqual([]);
    expect(counts.bigConflicts).toBeGreaterThan(0);
    expect(counts.locks).toBeGreaterThanOrEqual(counts.bigConflicts);
    expect(counts.lockedConflicts).toBe(0);
    const ws = await meters[0]!.getWorkspace('ws');
    expect(Number(ws.held)).toBe(200);
    expect(await ledgerSum(meters[0]!, 'ws')).toBe(Number(ws.balance) + Number(ws.held));
  });

  it('64 app servers on one hot workspace of a store without lock: every charge lands, none gives up', async () => {
    // A store without `lock`, as an integrator's may be: lost races are all the meters can see.
    const storage = wrapStorage(new MemoryStorage(), {});
    const meters = Array.from({ length: 64 }, () => new CreditMeter({ storage }));
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 1_000_000 });
    const charges = 10;
    expect(await chargeWithoutPause(meters, 'ws', 8, charges)).toEqual([]);
    // gpt-4o-mini costs 1 credit: the balance shows every charge, once.
    const ws = await meters[0]!.getWorkspace('ws');
    expect([Number(ws.balance), Number(ws.held)]).toEqual([1_000_000 - 64 * 8 * charges, 0]);
    expect(await ledgerSum(meters[0]!, 'ws')).toBe(Number(ws.balance));
  });
});
