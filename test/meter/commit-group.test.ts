import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import { CommitGroup } from '../../src/meter/commit-group.js';
import type { CommitResult, WorkspaceCommit } from '../../src/storage/index.js';
import { ledgerSum, wrapStorage } from '../support.js';

const commitOf = (workspaceId: string): WorkspaceCommit => ({
  workspaceId,
  expectedVersion: 1,
  state: { workspaceId, account: null, ledgerSeq: 0 },
  ledger: [],
  records: [],
});

/** A store call the test answers by hand, recording what each call carried. */
function manualSend() {
  const calls: { ids: string[]; answer: (results: CommitResult[] | Error) => void }[] = [];
  const send = (commits: WorkspaceCommit[]) =>
    new Promise<CommitResult[]>((resolve, reject) => {
      calls.push({ ids: commits.map((c) => c.workspaceId), answer: (r) => (r instanceof Error ? reject(r) : resolve(r)) });
    });
  return { calls, send };
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('CommitGroup', () => {
  it('sends each commit at once while fewer than four calls are in flight', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const pending = ['a', 'b', 'c', 'd'].map((id) => group.commit(commitOf(id)));
    await tick();
    expect(calls.map((call) => call.ids)).toEqual([['a'], ['b'], ['c'], ['d']]);
    for (const [i, call] of calls.entries()) call.answer([i % 2 === 0 ? 'committed' : 'conflict']);
    expect(await Promise.all(pending)).toEqual(['committed', 'conflict', 'committed', 'conflict']);
  });

  it('while four are in flight, later commits wait and go together in one call, in workspace order, each with its own result', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const first = ['a', 'b', 'c', 'd'].map((id) => group.commit(commitOf(id)));
    const later = ['z', 'x', 'y'].map((id) => group.commit(commitOf(id)));
    await tick();
    expect(calls).toHaveLength(4);
    calls[0]!.answer(['committed']);
    await tick();
    expect(calls[4]!.ids).toEqual(['x', 'y', 'z']);
    calls[4]!.answer(['committed', 'conflict', 'committed']);
    expect(await Promise.all(later)).toEqual(['committed', 'committed', 'conflict']);
    for (const call of calls.slice(1, 4)) call.answer(['committed']);
    expect(await Promise.all(first)).toEqual(['committed', 'committed', 'committed', 'committed']);
  });

  it('a failed call rejects the commits it carried, and the commits after it still go', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const first = ['a', 'b', 'c', 'd'].map((id) => group.commit(commitOf(id)));
    const grouped = ['e', 'f'].map((id) => group.commit(commitOf(id)));
    const last = group.commit(commitOf('g'));
    await tick();
    calls[0]!.answer(new Error('connection lost'));
    await expect(first[0]).rejects.toThrow('connection lost');
    await tick();
    expect(calls[4]!.ids).toEqual(['e', 'f', 'g']);
    calls[4]!.answer(new Error('still down'));
    for (const pending of [...grouped, last]) await expect(pending).rejects.toThrow('still down');
    for (const call of calls.slice(1, 4)) call.answer(['committed']);
    await Promise.all(first.slice(1));
    expect(await Promise.race([group.commit(commitOf('h')), tick().then(() => 'waiting')])).toBe('waiting');
    calls[5]!.answer(['committed']);
  });

  it('through a meter on many workspaces: commits of different workspaces share store calls, and every charge lands', async () => {
    const inner = new MemoryStorage();
    let slow = Promise.resolve();
    const sizes: number[] = [];
    // A store whose commits take a while, as a database's do.
    const storage = wrapStorage(inner, {
      commit: async (commits) => {
        sizes.push(commits.length);
        slow = slow.then(() => new Promise((resolve) => setTimeout(resolve, 2)));
        await slow;
        return inner.commit(commits);
      },
    });
    const meter = new CreditMeter({ storage });
    const ids = Array.from({ length: 40 }, (_, i) => `ws${i}`);
    for (const workspaceId of ids) await meter.createWorkspace({ workspaceId, plan: 'pro' });
    sizes.length = 0;
    await Promise.all(
      Array.from({ length: 400 }, async (_, i) => {
        const workspaceId = ids[i % ids.length]!;
        const hold = await meter.reserve({ workspaceId, agentId: 'a', conversationId: `c${i}`, model: 'gpt-4o-mini' });
        await meter.settle({ workspaceId, replyId: hold.replyId });
      }),
    );
    expect(Math.max(...sizes)).toBeGreaterThan(1);
    expect(sizes.reduce((a, b) => a + b, 0)).toBeGreaterThan(sizes.length);
    for (const workspaceId of ids) {
      const { entries } = await meter.ledger({ workspaceId, limit: 100 });
      expect(entries.filter((entry) => entry.kind === 'reply')).toHaveLength(10);
      const ws = await meter.getWorkspace(workspaceId);
      expect(await ledgerSum(meter, workspaceId)).toBe(Number(ws.balance) + Number(ws.held));
    }
  });
});
