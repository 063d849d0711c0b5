/**
 * A store that loses its last acknowledged commits (a Redis failover or crash under
 * `appendfsync everysec`, SQLite `synchronous=NORMAL` on power loss) hands out versions again.
 * A meter still holding a lost state must never commit it over what was written since.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CreditMeter, MemoryStorage } from '../../src/index.js';
import type { CommitResult, CreditStorage, LoadedWorkspace, LoadRequest, WorkspaceCommit } from '../../src/storage/index.js';
import { wrapStorage } from '../support.js';

/** The memory store, able to forget its last commits, as a failed-over replica would. */
class LossyStorage implements CreditStorage {
  #inner = new MemoryStorage();
  readonly #landed: WorkspaceCommit[] = [];

  async migrate(): Promise<void> {}
  async close(): Promise<void> {}
  load(request: LoadRequest): Promise<LoadedWorkspace> {
    return this.#inner.load(request);
  }
  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const results = await this.#inner.commit(commits);
    for (const [i, commit] of commits.entries()) if (results[i] === 'committed') this.#landed.push(commit);
    return results;
  }
  ledger(...args: Parameters<MemoryStorage['ledger']>) {
    return this.#inner.ledger(...args);
  }
  listWorkspaces(...args: Parameters<MemoryStorage['listWorkspaces']>) {
    return this.#inner.listWorkspaces(...args);
  }
  /** Forgets the last `count` commits: the store holds what it held before them, versions included. */
  async lose(count: number): Promise<void> {
    this.#landed.splice(this.#landed.length - count, count);
    this.#inner = new MemoryStorage();
    for (const commit of this.#landed) expect(await this.#inner.commit([commit])).toEqual(['committed']);
  }
}

const ask = (replyId: string, model: string) => ({ workspaceId: 'ws', agentId: 'a', conversationId: 'c', model, replyId });

describe('a store that lost its last commits', () => {
  it('a meter holding a lost state meets a new version, reloads, and the books still balance', async () => {
    const storage = new LossyStorage();
    const first = new CreditMeter({ storage });
    await first.createWorkspace({ workspaceId: 'ws', plan: 'enterprise', allotment: 100 });
    await first.reserve(ask('r1', 'gpt-4o-mini'));
    await first.settle({ workspaceId: 'ws', replyId: 'r1' });
    // The settle is lost: the store is back at the held reply. `first` still holds the settled state.
    await storage.lose(1);
    // One commit by another server: with versions handed out one by one, it would write the
    // very version the lost settle had.
    const second = new CreditMeter({ storage });
    await second.reserve(ask('r9', 'gpt-4o'));
    // Starts from the state it kept; a repeated version would let that state overwrite r9's hold.
    await first.reserve(ask('r2', 'gpt-4o-mini'));
    await first.settle({ workspaceId: 'ws', replyId: 'r2' });

    const fresh = new CreditMeter({ storage });
    const summary = await fresh.getWorkspace('ws');
    const { entries } = await fresh.ledger({ workspaceId: 'ws', limit: 100 });
    const sum = entries.reduce((total, entry) => total.plus(entry.credits), summary.balance.minus(summary.balance));
    expect(summary.balance.plus(summary.held).toString()).toBe(sum.toString());
    // r1's and r9's holds (1 + 5) and r2's charge (1) all count; r1's lost settle does not.
    expect(entries.map((entry) => entry.id)).toEqual(['1', '2']);
    expect(entries.filter((entry) => entry.kind === 'reply').map((entry) => entry.replyId)).toEqual(['r2']);
    expect(summary.balance.toString()).toBe('93');
    expect(summary.held.toString()).toBe('6');
  });
});

/** The memory store whose next commit goes wrong, in one of the ways a network does. */
class UnreliableStorage extends MemoryStorage {
  /**
   * `conflict`: it lands but answers conflict (as a store's re-send after a dropped connection
   * does); `lost`: it lands and the call fails (the connection dropped after COMMIT); `refused`:
   * the call fails before anything lands.
   */
  next: 'conflict' | 'lost' | 'refused' | undefined;
  loads = 0;

  override load(request: LoadRequest): Promise<LoadedWorkspace> {
    this.loads++;
    return super.load(request);
  }

  override async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const next = this.next;
    this.next = undefined;
    if (next === 'refused') throw new Error('connection refused');
    const results = await super.commit(commits);
    if (next === 'lost') throw new Error('connection lost after COMMIT');
    return next === 'conflict' ? results.map(() => 'conflict') : results;
  }
}

/** A meter on `storage`, and the reply ids of the `reply.charged` events it emits. */
function listened(storage: CreditStorage): { meter: CreditMeter; charged: string[] } {
  const meter = new CreditMeter({ storage });
  const charged: string[] = [];
  meter.on('reply.charged', ({ replyId }) => {
    charged.push(replyId);
  });
  return { meter, charged };
}

describe('a commit that landed but whose answer was lost', () => {
  it.each(['conflict', 'lost'] as const)(
    'answering %s, its commands answer as first applied: created, held, charged once with one event, one plan change',
    async (answer) => {
      const storage = new UnreliableStorage();
      const { meter, charged } = listened(storage);
      storage.next = answer;
      expect((await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' })).plan).toBe('hobby');
      storage.next = answer;
      expect((await meter.reserve(ask('r1', 'gpt-4o-mini'))).replayed).toBe(false);
      storage.next = answer;
      expect((await meter.settle({ workspaceId: 'ws', replyId: 'r1' })).replayed).toBe(false);
      expect(charged).toEqual(['r1']);
      storage.next = answer;
      expect((await meter.changePlan({ workspaceId: 'ws', plan: 'pro' })).effective).toBe('now');
      const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
      expect(entries.map((entry) => entry.kind)).toEqual(['grant', 'reply', 'plan_change']);
    },
  );

  it.each(['conflict', 'lost'] as const)(
    'answering %s, and another server wrote before the meter could check: the reply record it wrote tells, charged once with one event',
    async (answer) => {
      const storage = new UnreliableStorage();
      const { meter, charged } = listened(storage);
      const other = new CreditMeter({ storage });
      await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
      await meter.reserve(ask('r1', 'gpt-4o-mini'));
      const commit = storage.commit.bind(storage);
      // The settle lands, its answer is lost, and before the meter can look another server writes.
      let once = true;
      storage.commit = async (commits) => {
        if (!once) return commit(commits);
        once = false;
        storage.next = answer;
        const results = await commit(commits).catch(async (error: unknown) => {
          await other.addCredits({ workspaceId: 'ws', credits: 5, grantId: 'g1' });
          throw error;
        });
        await other.addCredits({ workspaceId: 'ws', credits: 5, grantId: 'g1' });
        return results;
      };
      const settlement = await meter.settle({ workspaceId: 'ws', replyId: 'r1' });
      expect(settlement.replayed).toBe(false);
      expect(charged).toEqual(['r1']);
      const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
      expect(entries.map((entry) => entry.kind)).toEqual(['grant', 'reply', 'topup']);
    },
  );

  it('when another server rewrote the record since, the batch is applied again to what is stored: a replay, never a second hold', async () => {
    const storage = new UnreliableStorage();
    const meter = new CreditMeter({ storage });
    const other = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    const commit = storage.commit.bind(storage);
    // The reserve lands and answers conflict; before the meter reloads, another server settles that reply.
    let once = true;
    storage.commit = async (commits) => {
      const results = await commit(commits);
      if (!once) return results;
      once = false;
      await other.settle({ workspaceId: 'ws', replyId: 'r1' });
      return results.map(() => 'conflict');
    };
    const reservation = await meter.reserve(ask('r1', 'gpt-4o-mini'));
    expect(reservation).toMatchObject({ replayed: true, status: 'settled' });
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
    expect(entries.filter((entry) => entry.kind === 'reply')).toHaveLength(1);
    expect((await meter.getWorkspace('ws')).held.toString()).toBe('0');
  });

  it('retried inside the store lock, whose transaction committed but whose answer was lost: charged once with one event', async () => {
    const inner = new MemoryStorage();
    let losing = false;
    const storage = wrapStorage(inner, {
      // Commits outside the lock lose the race, so the third try takes the lock.
      commit: async (commits) => (losing ? commits.map(() => 'conflict') : inner.commit(commits)),
      lock: async (workspaceId, work) => {
        const result = await inner.lock(workspaceId, work);
        if (!losing) return result;
        losing = false;
        throw new Error('connection lost after COMMIT');
      },
    });
    const { meter, charged } = listened(storage);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await meter.reserve(ask('r1', 'gpt-4o-mini'));
    losing = true;
    const settlement = await meter.settle({ workspaceId: 'ws', replyId: 'r1' });
    expect(losing).toBe(false);
    expect(settlement.replayed).toBe(false);
    expect(charged).toEqual(['r1']);
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
    expect(entries.map((entry) => entry.kind)).toEqual(['grant', 'reply']);
  });

  it.each([
    ['its first run committed', false],
    ['its first run dropped before committing', true],
  ])('inside a store lock that runs the work again after the connection dropped (%s): charged once with one event', async (_, early) => {
    const inner = new MemoryStorage();
    let losing = false;
    let runs = 0;
    const storage = wrapStorage(inner, {
      // Commits outside the lock lose the race, so the third try takes the lock.
      commit: async (commits) => (losing ? commits.map(() => 'conflict') : inner.commit(commits)),
      lock: async (workspaceId, work) => {
        if (!losing) return inner.lock(workspaceId, work);
        losing = false;
        // The first run's answer is lost; as a store would on a fresh connection, run the work again.
        await inner
          .lock(workspaceId, (locked) => {
            runs++;
            return work(early ? { ...locked, commit: () => Promise.reject(new Error('connection lost')) } : locked);
          })
          .catch(() => undefined);
        return inner.lock(workspaceId, (locked) => {
          runs++;
          return work(locked);
        });
      },
    });
    const { meter, charged } = listened(storage);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await meter.reserve(ask('r1', 'gpt-4o-mini'));
    losing = true;
    const settlement = await meter.settle({ workspaceId: 'ws', replyId: 'r1' });
    expect(runs).toBe(2);
    expect(settlement.replayed).toBe(false);
    expect(charged).toEqual(['r1']);
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
    expect(entries.map((entry) => entry.kind)).toEqual(['grant', 'reply']);
  });

  it('answering conflict, then the retry carrying commands that joined fails: the landed ones stand with their event, the others fail', async () => {
    const storage = new UnreliableStorage();
    const { meter, charged } = listened(storage);
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    await meter.reserve(ask('r1', 'gpt-4o-mini'));
    await meter.reserve(ask('r2', 'gpt-4o-mini'));
    const commit = storage.commit.bind(storage);
    let joined: Promise<unknown> | undefined;
    storage.commit = async (commits) => {
      if (joined) {
        // The retry, r1's landed settle found by a load and r2's settle applied anew, fails before landing.
        storage.next = 'refused';
        return commit(commits);
      }
      storage.next = 'conflict';
      // r2's settle arrives while r1's commit is in flight: it joins the retry.
      joined = meter.settle({ workspaceId: 'ws', replyId: 'r2' });
      return commit(commits);
    };
    const settled = await meter.settle({ workspaceId: 'ws', replyId: 'r1' });
    expect(settled).toMatchObject({ replyId: 'r1', replayed: false });
    await expect(joined).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect(charged).toEqual(['r1']);
    const { entries } = await meter.ledger({ workspaceId: 'ws', limit: 100 });
    expect(entries.map((entry) => [entry.kind, entry.replyId])).toEqual([
      ['grant', undefined],
      ['reply', 'r1'],
    ]);
  });

  it('one that did not land still fails with STORAGE_ERROR and writes nothing', async () => {
    const storage = new UnreliableStorage();
    const meter = new CreditMeter({ storage });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    storage.next = 'refused';
    await expect(meter.reserve(ask('r1', 'gpt-4o-mini'))).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    expect((await storage.load({ workspaceId: 'ws', keys: ['reply:r1'], now: Date.now() })).records).toEqual([]);
    expect((await meter.getWorkspace('ws')).held.toString()).toBe('0');
  });

  it('one that outlived storageTimeoutMs fails without another call to the store', async () => {
    const storage = new UnreliableStorage();
    const meter = new CreditMeter({ storage, storageTimeoutMs: 50 });
    await meter.createWorkspace({ workspaceId: 'ws', plan: 'hobby' });
    const commit = storage.commit.bind(storage);
    let loadsAtCommit = -1;
    storage.commit = async (commits) => {
      loadsAtCommit = storage.loads;
      await new Promise((resolve) => setTimeout(resolve, 100));
      return commit(commits);
    };
    await expect(meter.addCredits({ workspaceId: 'ws', credits: 5, grantId: 'g1' })).rejects.toMatchObject({ code: 'STORAGE_ERROR' });
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(loadsAtCommit).toBeGreaterThanOrEqual(0);
    expect(storage.loads).toBe(loadsAtCommit);
  });
});

describe('a commit that lost the race to another server', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('is applied again even when the winner reached the same version and the same balances: both replies held, both charged', async () => {
    // Both meters draw the same version step (a chance of 2⁻¹⁶ per race, forced here).
    vi.spyOn(Math, 'random').mockReturnValue(0.5);
    const inner = new MemoryStorage();
    let arrived = 0;
    let release!: () => void;
    const bothSent = new Promise<void>((resolve) => {
      release = resolve;
    });
    // The two reserves' commits are both made from the same version before either lands.
    const storage = wrapStorage(inner, {
      commit: async (commits) => {
        arrived += 1;
        if (arrived === 3) release();
        if (arrived === 2 || arrived === 3) await bothSent;
        return inner.commit(commits);
      },
    });
    const first = new CreditMeter({ storage });
    const second = new CreditMeter({ storage });
    await first.createWorkspace({ workspaceId: 'ws', plan: 'pro' });
    // The same agent, conversation and model: the two commits write the same balances.
    const holds = await Promise.all([first.reserve(ask('r1', 'gpt-4o-mini')), second.reserve(ask('r2', 'gpt-4o-mini'))]);
    expect(holds.map((hold) => hold.replayed)).toEqual([false, false]);
    expect(arrived).toBeGreaterThan(3);
    const fresh = new CreditMeter({ storage: inner });
    expect(Number((await fresh.getWorkspace('ws')).held)).toBe(2);
    await first.settle({ workspaceId: 'ws', replyId: 'r1' });
    await second.settle({ workspaceId: 'ws', replyId: 'r2' });
    const { entries } = await fresh.ledger({ workspaceId: 'ws', limit: 100 });
    expect(
      entries
        .filter((entry) => entry.kind === 'reply')
        .map((entry) => entry.replyId)
        .sort(),
    ).toEqual(['r1', 'r2']);
  });
});
