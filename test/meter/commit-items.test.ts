import { describe, expect, it } from 'vitest';
import { CreditMeter, InvalidInputError, MemoryStorage } from '../../src/index.js';
import type { CreditStorage, WorkspaceCommit } from '../../src/storage/index.js';
import { chargeWithoutPause, itemsOf, ledgerSum, TestClock, wrapStorage } from '../support.js';

/** A memory store that keeps every commit it was sent and declares `maxCommitItems`, when given. */
function recordingStore(maxCommitItems?: number) {
  const inner = new MemoryStorage();
  const sent: WorkspaceCommit[] = [];
  const storage: CreditStorage = {
    ...wrapStorage(inner, {
      commit: (commits) => {
        sent.push(...commits);
        return inner.commit(commits);
      },
    }),
    ...(maxCommitItems !== undefined && { maxCommitItems }),
  };
  return { storage, sent };
}

const identity = (n: number) => ({ workspaceId: 'ws', agentId: `agent-${n % 3}`, conversationId: `c${n}`, model: 'gpt-4o-mini' });

describe("a store's maxCommitItems", () => {
  it('a hot workspace goes in commits that fit, in arrival order, each command with its own outcome', async () => {
    const { storage, sent } = recordingStore(10);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 150 });
    sent.length = 0;
    // 200 reserves at once on 150 credits: the first 150 hold, the rest are refused.
    const reserves = await Promise.allSettled(Array.from({ length: 200 }, (_, n) => meter.reserve({ ...identity(n), replyId: `r${n}` })));
    expect(reserves.map((r) => r.status)).toEqual(Array.from({ length: 200 }, (_, n) => (n < 150 ? 'fulfilled' : 'rejected')));
    for (const r of reserves.slice(150)) expect((r as PromiseRejectedResult).reason).toMatchObject({ code: 'INSUFFICIENT_CREDITS' });
    const settles = await Promise.all(Array.from({ length: 150 }, (_, n) => meter.settle({ workspaceId: 'ws', replyId: `r${n}` })));
    expect(settles.map((s) => s.replyId)).toEqual(Array.from({ length: 150 }, (_, n) => `r${n}`));

    expect(Math.max(...sent.map(itemsOf))).toBeLessThanOrEqual(10);
    // A reserve alone is 3 items (state, record, absent key); a settle 3 (state, record, row).
    expect(sent.length).toBeGreaterThanOrEqual(Math.ceil(200 / 4) + Math.ceil(150 / 4));
    // Arrival order across commits: the settles' rows are numbered in the order they were asked.
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 1000 });
    const replies = entries.filter((entry) => entry.kind === 'reply');
    expect(replies.map((entry) => entry.replyId)).toEqual(Array.from({ length: 150 }, (_, n) => `r${n}`));
    const workspace = await meter.getWorkspace('ws');
    expect([Number(workspace.balance), Number(workspace.held)]).toEqual([0, 0]);
    expect(await ledgerSum(meter, 'ws')).toBe(0);
  });

  it('without it, the same batch goes in one commit', async () => {
    const { storage, sent } = recordingStore();
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 150 });
    sent.length = 0;
    await Promise.all(Array.from({ length: 100 }, (_, n) => meter.reserve(identity(n))));
    expect(sent.map(itemsOf)).toEqual([1 + 100 + 100]);
  });

  it('a command over the limit on its own is sent alone; the commands after it go in commits that fit', async () => {
    const clock = new TestClock('2026-01-15T12:00:00Z');
    const { storage, sent } = recordingStore(12);
    const meter = new CreditMeter({ storage, clock: clock.now });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    for (let g = 0; g < 20; g++) {
      await meter.addCredits({ workspaceId: 'ws', grantId: `g${g}`, credits: 1, expiresAt: '2026-01-20T00:00:00Z' });
    }
    clock.set('2026-01-21T00:00:00Z');
    sent.length = 0;
    // The first reserve expires the 20 top-ups: 20 expiry rows in its commit, over 12 on its own.
    const holds = await Promise.all(Array.from({ length: 30 }, (_, n) => meter.reserve({ ...identity(n), replyId: `r${n}` })));
    expect(holds.map((hold) => hold.status)).toEqual(Array(30).fill('held'));
    const [first, ...rest] = sent;
    expect(first!.ledger.filter((row) => row.kind === 'expiry')).toHaveLength(20);
    expect(first!.records.filter((record) => record.key.startsWith('reply:')).map((record) => record.key)).toEqual(['reply:r0']);
    expect(Math.max(...rest.map(itemsOf))).toBeLessThanOrEqual(12);
    expect(rest.flatMap((commit) => commit.records.map((record) => record.key))).toEqual(
      Array.from({ length: 29 }, (_, n) => `reply:r${n + 1}`),
    );
    const workspace = await meter.getWorkspace('ws');
    expect([Number(workspace.balance), Number(workspace.held)]).toEqual([70, 30]);
    expect(await ledgerSum(meter, 'ws')).toBe(100);
  });

  it('a commit that fails fails only its own commands: those it left out go on', async () => {
    const { storage, sent } = recordingStore(10);
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    const commit = storage.commit.bind(storage);
    let failNext = true;
    storage.commit = async (commits) => {
      if (!failNext) return commit(commits);
      failNext = false;
      throw new Error('connection refused');
    };
    sent.length = 0;
    // Two items a reserve (its record and absent key) beside the state: four to a commit. The
    // first four fail; the other eight are held, in one commit (after the failure the meter
    // loads, so they prove no key absent: one item each).
    const reserves = await Promise.allSettled(Array.from({ length: 12 }, (_, n) => meter.reserve({ ...identity(n), replyId: `r${n}` })));
    expect(reserves.map((r) => r.status)).toEqual([...Array(4).fill('rejected'), ...Array(8).fill('fulfilled')]);
    expect((reserves[0] as PromiseRejectedResult).reason).toMatchObject({ code: 'STORAGE_ERROR' });
    expect(sent.map((c) => c.records.map((record) => record.key))).toEqual([Array.from({ length: 8 }, (_, n) => `reply:r${n + 4}`)]);
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(8);
  });

  it('more lapsed holds than a commit takes end a few at a time, before the commands, as they would all at once', async () => {
    // Two meters on one timeline: one on a capped store, one on a plain one. 20 holds lapse
    // before the period ends, 20 after; a reserve after all of them catches up.
    const clock = new TestClock('2026-01-15T12:00:00Z');
    const capped = recordingStore(8);
    const plain = recordingStore();
    const renewed: string[][] = [[], []];
    const meters = [capped, plain].map(({ storage }, m) => {
      const meter = new CreditMeter({ storage, clock: clock.now });
      meter.on('period.renewed', ({ periodStart }) => {
        renewed[m]!.push(periodStart.toISOString());
      });
      return meter;
    });
    for (const meter of meters) await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    for (const [at, first] of [
      ['2026-02-15T11:40:00Z', 0],
      ['2026-02-15T11:50:00Z', 20],
    ] as const) {
      clock.set(at);
      for (const meter of meters)
        await Promise.all(Array.from({ length: 20 }, (_, n) => meter.reserve({ ...identity(n), replyId: `r${first + n}` })));
    }
    clock.set('2026-02-15T12:30:00Z');
    capped.sent.length = 0;
    const [a, b] = await Promise.all(meters.map((meter) => meter.reserve({ ...identity(99), replyId: 'last' })));
    expect(a).toEqual(b);
    // Three holds (of at most 8 items, a third of them for the renewal's rows) to a commit.
    expect(capped.sent.length).toBeGreaterThanOrEqual(Math.ceil(40 / 3));
    expect(Math.max(...capped.sent.map(itemsOf))).toBeLessThanOrEqual(8);
    expect(await meters[0]!.ledger({ workspaceId: 'ws', limit: 1000 })).toEqual(
      await meters[1]!.ledger({ workspaceId: 'ws', limit: 1000 }),
    );
    expect(await meters[0]!.getWorkspace('ws')).toEqual(await meters[1]!.getWorkspace('ws'));
    expect(renewed).toEqual([['2026-02-15T12:00:00.000Z'], ['2026-02-15T12:00:00.000Z']]);
    expect(Number((await meters[0]!.getWorkspace('ws')).held)).toBe(1);
  });

  it('when the commit ending lapsed holds fails, the commands waiting on it fail with it', async () => {
    const clock = new TestClock('2026-01-15T12:00:00Z');
    const { storage } = recordingStore(8);
    const meter = new CreditMeter({ storage, clock: clock.now });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    await Promise.all(Array.from({ length: 10 }, (_, n) => meter.reserve({ ...identity(n), replyId: `r${n}` })));
    clock.advance(60 * 60 * 1000);
    const commit = storage.commit.bind(storage);
    let calls = 0;
    storage.commit = async () => {
      calls++;
      throw new Error('connection refused');
    };
    await expect(meter.reserve({ ...identity(10), replyId: 'r10' })).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect(calls).toBe(1);
    storage.commit = commit;
    expect((await meter.reserve({ ...identity(10), replyId: 'r10' })).status).toBe('held');
    expect(Number((await meter.getWorkspace('ws')).held)).toBe(1);
  });

  it('four meters racing on one workspace: no error, every commit fits, the books balance', async () => {
    const { storage, sent } = recordingStore(10);
    const meters = Array.from({ length: 4 }, () => new CreditMeter({ storage }));
    await meters[0]!.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 10_000 });
    expect(await chargeWithoutPause(meters, 'ws', 16, 10)).toEqual([]);
    expect(Math.max(...sent.map(itemsOf))).toBeLessThanOrEqual(10);
    const { entries } = await meters[1]!.ledger({ workspaceId: 'ws', limit: 1000 });
    expect(entries.filter((entry) => entry.kind === 'reply')).toHaveLength(4 * 16 * 10);
    const workspace = await meters[2]!.getWorkspace('ws');
    expect([Number(workspace.balance), Number(workspace.held)]).toEqual([10_000 - 640, 0]);
    expect(await ledgerSum(meters[3]!, 'ws')).toBe(10_000 - 640);
  });

  it('is refused at construction unless a whole number of at least 8, naming the field; so is a store without ledger()', () => {
    for (const maxCommitItems of [0, 7, 8.5, '10', Number.NaN]) {
      const storage = { ...new MemoryStorage(), ...wrapStorage(new MemoryStorage(), {}), maxCommitItems } as unknown as CreditStorage;
      const error = (() => {
        try {
          new CreditMeter({ storage });
        } catch (caught) {
          return caught;
        }
      })();
      expect(error).toBeInstanceOf(InvalidInputError);
      expect((error as InvalidInputError).issues).toEqual([
        { path: 'storage.maxCommitItems', message: 'must be a whole number, at least 8' },
      ]);
    }
    expect(() => new CreditMeter({ storage: { ...wrapStorage(new MemoryStorage(), {}), maxCommitItems: 8 } })).not.toThrow();
    const { ledger: _ledger, ...withoutLedger } = wrapStorage(new MemoryStorage(), {});
    expect(() => new CreditMeter({ storage: withoutLedger as CreditStorage })).toThrow(InvalidInputError);
  });
});
