import { describe, expect, it } from 'vitest';
import { CreditMeter, MemoryStorage, type Reservation } from '../../src/index.js';
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
const turnIds = { agentId: 'a', conversationId: 'c', model: 'gpt-4o-mini' };

/** The memory store behind commit calls that take 2 ms each, one after another, as a database's do; `commit` makes each call. */
function slowStore(commit: (commits: readonly WorkspaceCommit[], inner: MemoryStorage) => Promise<CommitResult[]>) {
  const inner = new MemoryStorage();
  let slow = Promise.resolve();
  return wrapStorage(inner, {
    commit: async (commits) => {
      slow = slow.then(() => new Promise((resolve) => setTimeout(resolve, 2)));
      await slow;
      return commit(commits, inner);
    },
  });
}

/** Each workspace has `replies` reply rows, each of its own reply, nothing held, and a balance that is its ledger's sum. */
async function expectEveryCharge(meter: CreditMeter, ids: readonly string[], replies: number): Promise<void> {
  for (const workspaceId of ids) {
    const { entries } = await meter.ledger({ workspaceId, limit: 100 });
    const rows = entries.filter((entry) => entry.kind === 'reply');
    expect(rows).toHaveLength(replies);
    expect(new Set(rows.map((entry) => entry.replyId)).size).toBe(replies);
    const ws = await meter.getWorkspace(workspaceId);
    expect(Number(ws.held)).toBe(0);
    expect(await ledgerSum(meter, workspaceId)).toBe(Number(ws.balance) + Number(ws.held));
  }
}

/** Commits of workspaces a, b, c and d, each in a turn of its own: four lone calls in flight. */
async function fourInFlight(group: CommitGroup): Promise<Promise<CommitResult>[]> {
  const first: Promise<CommitResult>[] = [];
  for (const id of ['a', 'b', 'c', 'd']) {
    first.push(group.commit(commitOf(id)));
    await tick();
  }
  return first;
}

/** A commit of `id` goes at once in a call of its own, and gets that call's answer. */
async function expectSentAlone(group: CommitGroup, calls: ReturnType<typeof manualSend>['calls'], id: string): Promise<void> {
  const before = calls.length;
  const pending = group.commit(commitOf(id));
  await tick();
  expect(calls.slice(before).map((call) => call.ids)).toEqual([[id]]);
  calls[before]!.answer(['committed']);
  expect(await pending).toBe('committed');
}

describe('CommitGroup', () => {
  it('sends each commit at once while fewer than four calls are in flight', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const pending = await fourInFlight(group);
    expect(calls.map((call) => call.ids)).toEqual([['a'], ['b'], ['c'], ['d']]);
    for (const [i, call] of calls.entries()) call.answer([i % 2 === 0 ? 'committed' : 'conflict']);
    expect(await Promise.all(pending)).toEqual(['committed', 'conflict', 'committed', 'conflict']);
  });

  it('commits that become ready in the same turn go at once in one call, in workspace order, each with its own result', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const pending = ['c', 'a', 'b'].map((id) => group.commit(commitOf(id)));
    await tick();
    expect(calls.map((call) => call.ids)).toEqual([['a', 'b', 'c']]);
    calls[0]!.answer(['committed', 'conflict', 'committed']);
    expect(await Promise.all(pending)).toEqual(['committed', 'committed', 'conflict']);
    // The next turn's lone commit does not wait for anything.
    await expectSentAlone(group, calls, 'd');
  });

  it('more commits ready in one turn than a call takes (256) go at once in several calls', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const ids = Array.from({ length: 300 }, (_, i) => `w${String(i).padStart(3, '0')}`);
    const pending = ids.map((id) => group.commit(commitOf(id)));
    await tick();
    expect(calls.map((call) => call.ids)).toEqual([ids.slice(0, 256), ids.slice(256)]);
    for (const call of calls) call.answer(call.ids.map(() => 'committed'));
    expect(await Promise.all(pending)).toEqual(ids.map(() => 'committed'));
  });

  it('while four are in flight, later commits wait and go together in one call, in workspace order, each with its own result', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const first = await fourInFlight(group);
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

  it('a failed lone call rejects its commit; a failed grouped call sends each commit again alone, each getting its own answer', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const first = await fourInFlight(group);
    const grouped = ['e', 'f', 'g'].map((id) => group.commit(commitOf(id)));
    await tick();
    calls[0]!.answer(new Error('connection lost'));
    await expect(first[0]).rejects.toThrow('connection lost');
    await tick();
    expect(calls[4]!.ids).toEqual(['e', 'f', 'g']);
    calls[4]!.answer(new Error('refused: bad row'));
    await tick();
    expect(calls.slice(5).map((call) => call.ids)).toEqual([['e'], ['f'], ['g']]);
    calls[5]!.answer(['committed']);
    calls[6]!.answer(new Error('refused: bad row'));
    calls[7]!.answer(['conflict']);
    expect(await grouped[0]).toBe('committed');
    await expect(grouped[1]).rejects.toThrow('refused: bad row');
    expect(await grouped[2]).toBe('conflict');
    for (const call of calls.slice(1, 4)) call.answer(['committed']);
    await Promise.all(first.slice(1));
    // The group's place is free again: the next commit goes at once.
    await expectSentAlone(group, calls, 'h');
  });

  it('a store down for a grouped call: each commit is tried alone once more and rejects with its own error', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send);
    const first = await fourInFlight(group);
    const grouped = ['e', 'f'].map((id) => group.commit(commitOf(id)));
    await tick();
    calls[0]!.answer(['committed']);
    await tick();
    calls[4]!.answer(new Error('still down'));
    await tick();
    expect(calls.slice(5).map((call) => call.ids)).toEqual([['e'], ['f']]);
    for (const call of calls.slice(5)) call.answer(new Error('still down'));
    for (const pending of grouped) await expect(pending).rejects.toThrow('still down');
    for (const call of calls.slice(1, 4)) call.answer(['committed']);
    await Promise.all(first);
  });

  it('a grouped call that failed in a way not worth retrying (a timeout) rejects its commits without sending them again', async () => {
    const { calls, send } = manualSend();
    const group = new CommitGroup(send, (error) => !(error instanceof Error && error.message.includes('timed out')));
    const first = await fourInFlight(group);
    const grouped = ['e', 'f'].map((id) => group.commit(commitOf(id)));
    await tick();
    calls[0]!.answer(['committed']);
    await tick();
    calls[4]!.answer(new Error('commit timed out after 100 ms'));
    for (const pending of grouped) await expect(pending).rejects.toThrow('timed out');
    await tick();
    expect(calls).toHaveLength(5);
    for (const call of calls.slice(1, 4)) call.answer(['committed']);
    await Promise.all(first);
  });

  it('through a meter: a grouped call that outlives storageTimeoutMs fails its commits with STORAGE_ERROR and is not sent again', async () => {
    const inner = new MemoryStorage();
    const sizes: number[] = [];
    const storage = wrapStorage(inner, {
      commit: (commits) => {
        sizes.push(commits.length);
        // A database too busy to answer a grouped call; lone calls still go through.
        return commits.length > 1 ? new Promise(() => undefined) : inner.commit(commits);
      },
    });
    const meter = new CreditMeter({ storage, storageTimeoutMs: 100 });
    const ids = Array.from({ length: 8 }, (_, i) => `ws${i}`);
    for (const workspaceId of ids) await meter.createWorkspace({ workspaceId, plan: 'pro' });
    sizes.length = 0;
    const outcomes = await Promise.allSettled(ids.map((workspaceId) => meter.reserve({ workspaceId, ...turnIds })));
    const failed = outcomes.filter((outcome) => outcome.status === 'rejected');
    expect(failed.length).toBeGreaterThan(0);
    for (const outcome of failed) expect((outcome as PromiseRejectedResult).reason).toMatchObject({ code: 'STORAGE_ERROR' });
    expect(sizes.filter((size) => size > 1)).toHaveLength(1);
    expect(sizes.length).toBe(ids.length - failed.length + 1);
  });

  it('through a meter on many workspaces: commits of different workspaces share store calls, and every charge lands', async () => {
    const sizes: number[] = [];
    const storage = slowStore((commits, inner) => {
      sizes.push(commits.length);
      return inner.commit(commits);
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
    await expectEveryCharge(meter, ids, 10);
  });

  it("through a meter: a workspace whose commits the store refuses fails alone; its neighbours' charges in the same calls land", async () => {
    let grouped = 0;
    const storage = slowStore(async (commits, inner) => {
      if (commits.length > 1) grouped++;
      // As a database refuses a statement: the whole call, whichever workspaces it carried.
      if (commits.some((commit) => commit.workspaceId === 'poisoned' && commit.ledger.some((row) => row.kind === 'reply'))) {
        throw new Error('value too long for column');
      }
      return inner.commit(commits);
    });
    const meter = new CreditMeter({ storage });
    const ids = Array.from({ length: 20 }, (_, i) => `ws${i}`);
    for (const workspaceId of [...ids, 'poisoned']) await meter.createWorkspace({ workspaceId, plan: 'pro' });
    const outcomes = await Promise.allSettled(
      Array.from({ length: 420 }, async (_, i) => {
        const workspaceId = i % 21 === 20 ? 'poisoned' : ids[i % 21]!;
        const hold = await meter.reserve({ workspaceId, agentId: 'a', conversationId: `c${i}`, model: 'gpt-4o-mini' });
        await meter.settle({ workspaceId, replyId: hold.replyId });
        return workspaceId;
      }),
    );
    expect(grouped).toBeGreaterThan(0);
    const failed = outcomes.flatMap((outcome, i) =>
      outcome.status === 'rejected' ? [{ i, code: (outcome.reason as { code?: string }).code }] : [],
    );
    expect(failed).toHaveLength(20);
    expect(failed.every(({ i, code }) => i % 21 === 20 && code === 'STORAGE_ERROR')).toBe(true);
    await expectEveryCharge(meter, ids, 20);
  });

  it('through a meter: a grouped call that landed but answered with an error answers as the first try, charging nothing twice', async () => {
    let lost = 0;
    const storage = slowStore(async (commits, inner) => {
      const results = await inner.commit(commits);
      // The connection drops after the database committed: the caller hears only the error.
      if (commits.length > 1 && lost < 5) {
        lost++;
        throw new Error('connection lost after commit');
      }
      return results;
    });
    const meter = new CreditMeter({ storage });
    const charged: string[] = [];
    meter.on('reply.charged', ({ replyId }) => {
      charged.push(replyId);
    });
    const ids = Array.from({ length: 20 }, (_, i) => `ws${i}`);
    // Created together, so their creates share calls too: a create that landed is not WORKSPACE_EXISTS.
    await Promise.all(ids.map((workspaceId) => meter.createWorkspace({ workspaceId, plan: 'pro' })));
    const holds: Reservation[] = [];
    const settled = await Promise.all(
      Array.from({ length: 400 }, async (_, i) => {
        const workspaceId = ids[i % ids.length]!;
        const hold = await meter.reserve({ workspaceId, agentId: 'a', conversationId: `c${i}`, model: 'gpt-4o-mini' });
        holds.push(hold);
        return meter.settle({ workspaceId, replyId: hold.replyId });
      }),
    );
    expect(lost).toBeGreaterThan(0);
    expect(new Set(settled.map((settlement) => settlement.replyId)).size).toBe(400);
    // The calls whose answer was lost answer as they would have: nothing reads as a replay, and
    // every charge is announced once.
    expect(holds.filter((hold) => hold.replayed)).toEqual([]);
    expect(settled.filter((settlement) => settlement.replayed)).toEqual([]);
    expect(charged.sort()).toEqual(settled.map((settlement) => settlement.replyId).sort());
    await expectEveryCharge(meter, ids, 20);
  });
});
