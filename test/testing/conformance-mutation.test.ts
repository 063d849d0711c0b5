/**
 * A mutation test of the conformance kit: each store below is the memory store with one
 * deliberate, realistic bug on the load/commit seam. The kit must fail every one of them,
 * in the cases named, and pass the sound stores.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../src/index.js';
import type {
  CommitResult,
  CreditStorage,
  EraseRequest,
  LedgerQuery,
  LedgerRow,
  LoadedWorkspace,
  LoadRequest,
  LockedWorkspace,
  UsageAggregate,
  UsageQuery,
  WorkspaceCommit,
} from '../../src/storage/index.js';
import { ledgerRow, UsageAccumulator, versionAfter } from '../../src/storage/index.js';
import {
  type ConformanceContext,
  conformanceCases,
  runConformanceCase,
  runStorageConformance,
  type StorageConformanceOptions,
} from '../../src/testing/index.js';

/** The memory store plus a `usage` that sums in the store, as a SQL store would. */
class SummingStorage extends MemoryStorage {
  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const sum = new UsageAccumulator(query.groupBy, query.byDay);
    for (const row of await this.ledger({ workspaceId: query.workspaceId, limit: Number.MAX_SAFE_INTEGER })) {
      if (row.at >= query.from && row.at < query.to) sum.add(row);
    }
    return sum.totals();
  }
}

/** Never answers `conflict`: the `WHERE version = $expected` guard was forgotten (last writer wins). */
class IgnoresVersion extends MemoryStorage {
  override async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const results: CommitResult[] = [];
    for (const commit of commits) {
      let result: CommitResult = 'conflict';
      // Retried while another commit slips in between; a record named in absentKeys keeps it a conflict.
      for (let attempt = 0; result === 'conflict' && attempt < 100; attempt++) {
        const { version } = await this.load({ workspaceId: commit.workspaceId, keys: [], now: 0 });
        [result] = (await super.commit([{ ...commit, expectedVersion: version }])) as [CommitResult];
      }
      results.push(result);
    }
    return results;
  }
}

/** Appends the rows before checking the version, outside the transaction: a conflicting commit still leaves its rows. */
class RowsOutsideCommit extends MemoryStorage {
  readonly #stray = new Map<string, LedgerRow[]>();

  override async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const results = await super.commit(commits);
    results.forEach((result, i) => {
      const commit = commits[i]!;
      if (result === 'conflict' && commit.ledger.length > 0)
        this.#stray.set(commit.workspaceId, [...(this.#stray.get(commit.workspaceId) ?? []), ...commit.ledger]);
    });
    return results;
  }

  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const rows = await super.ledger(query);
    const stray = (this.#stray.get(query.workspaceId) ?? []).filter((row) => row.seq > (query.afterSeq ?? 0));
    return [...rows, ...stray].sort((a, b) => a.seq - b.seq).slice(0, query.limit);
  }
}

/** A multi-row upsert that writes only the first record of each commit: the others are lost. */
class LosesRecords extends MemoryStorage {
  override commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    return super.commit(commits.map((commit) => ({ ...commit, records: commit.records.slice(0, 1) })));
  }
}

/** Drops `absentKeys`: an id the meter never saw overwrites the record that has it. */
class IgnoresAbsentKeys extends MemoryStorage {
  override commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    return super.commit(commits.map(({ absentKeys: _, ...commit }) => commit));
  }
}

/** Says no hold is open, always: a meter that kept its state never learns that one lapsed. */
class NoNextLapse extends MemoryStorage {
  override async load(request: LoadRequest): Promise<LoadedWorkspace> {
    return { ...(await super.load(request)), nextLapseAt: null };
  }
}

/** Numbers versions from 0 again after `erase`, as a store that deletes the version with the workspace would. */
class ResetsVersionOnErase extends MemoryStorage {
  readonly #offsets = new Map<string, number>();

  override async load(request: LoadRequest): Promise<LoadedWorkspace> {
    const loaded = await super.load(request);
    return { ...loaded, version: loaded.version - (this.#offsets.get(request.workspaceId) ?? 0) };
  }

  override commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    return super.commit(
      commits.map((c) => {
        const offset = this.#offsets.get(c.workspaceId) ?? 0;
        return { ...c, expectedVersion: c.expectedVersion + offset, nextVersion: versionAfter(c) + offset };
      }),
    );
  }

  override async erase(request: EraseRequest): Promise<void> {
    await super.erase(request);
    if (!request.keepLedger)
      this.#offsets.set(request.workspaceId, (await super.load({ workspaceId: request.workspaceId, keys: [], now: 0 })).version);
  }
}

/** A `lock` that takes no lock: other writers' commits land between its load and its commit. */
class LockWithoutLock extends MemoryStorage {
  override lock<T>(_workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>): Promise<T> {
    return work({ load: (request) => this.load(request), commit: async (commit) => (await this.commit([commit]))[0]! });
  }
}

/** Commits what the locked work wrote even when the work then fails (a COMMIT in `finally`). */
class LockCommitsOnFailure extends MemoryStorage {
  override lock<T>(workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>): Promise<T> {
    let failure: unknown;
    const committing = super.lock(workspaceId, (workspace) =>
      work(workspace).catch((error: unknown) => {
        failure = error;
        return undefined as T;
      }),
    );
    return committing.then((result) => (failure === undefined ? result : Promise.reject(failure)));
  }
}

/** Forgets the lapsed-hold listing: nobody learns of a hold whose server died. */
class ForgetsLapsed extends MemoryStorage {
  override async load(request: LoadRequest): Promise<LoadedWorkspace> {
    return { ...(await super.load(request)), lapsed: [] };
  }
}

/** Never removes a hold from its lapse index when the record is rewritten (a ZREM or index update left out). */
class StaleLapseIndex extends MemoryStorage {
  readonly #firstLapse = new Map<string, Map<string, number>>();

  override async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    const results = await super.commit(commits);
    results.forEach((result, i) => {
      const commit = commits[i]!;
      if (result !== 'committed') return;
      const index = this.#firstLapse.get(commit.workspaceId) ?? new Map<string, number>();
      for (const record of commit.records)
        if (record.holdExpiresAt !== null && !index.has(record.key)) index.set(record.key, record.holdExpiresAt);
      this.#firstLapse.set(commit.workspaceId, index);
    });
    return results;
  }

  override async load(request: LoadRequest): Promise<LoadedWorkspace> {
    const loaded = await super.load(request);
    const keys = [...(this.#firstLapse.get(request.workspaceId) ?? [])].filter(([, at]) => at <= request.now).map(([key]) => key);
    const extra = (await super.load({ ...request, keys })).records.filter(
      (record) => !loaded.lapsed.some((lapsed) => lapsed.key === record.key),
    );
    return { ...loaded, lapsed: [...loaded.lapsed, ...extra] };
  }
}

/** Orders the ledger by time instead of by sequence number. */
class OrdersByTime extends MemoryStorage {
  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const rows = await super.ledger({ ...query, limit: Number.MAX_SAFE_INTEGER });
    return rows.sort((a, b) => a.at - b.at || a.seq - b.seq).slice(0, query.limit);
  }
}

/** Keeps amounts as credits with two decimals (a DECIMAL(20,2) column): small and huge amounts drift. */
class LosesPrecision extends MemoryStorage {
  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    return (await super.ledger(query)).map((row) => ({ ...row, amount: Math.round(row.amount / 10_000) * 10_000 }));
  }
}

/** Filters by `workspace_id LIKE $1 || '%'`: rows of workspaces whose id starts with the one asked for leak in. */
class LeaksWorkspaces extends MemoryStorage {
  readonly #ids = new Set<string>();

  override commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    for (const commit of commits) this.#ids.add(commit.workspaceId);
    return super.commit(commits);
  }

  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const rows: LedgerRow[] = [];
    for (const id of this.#ids) if (id.startsWith(query.workspaceId)) rows.push(...(await super.ledger({ ...query, workspaceId: id })));
    return rows.sort((a, b) => a.seq - b.seq).slice(0, query.limit);
  }
}

/** Pages with `seq >= afterSeq` instead of `seq > afterSeq`: each page repeats the previous page's last row. */
class InclusiveCursor extends MemoryStorage {
  override ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    return super.ledger(query.afterSeq === undefined ? query : { ...query, afterSeq: Math.max(0, query.afterSeq - 1) });
  }
}

/** Drops the ledger's upper time bound. */
class LedgerIgnoresTo extends MemoryStorage {
  override ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const { to: _to, ...rest } = query;
    return super.ledger(rest);
  }
}

/** Drops the kinds filter. */
class LedgerIgnoresKinds extends MemoryStorage {
  override ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const { kinds: _kinds, ...rest } = query;
    return super.ledger(rest);
  }
}

/** Sums usage over a closed window: `at <= to`. */
class ClosedUsageWindow extends SummingStorage {
  override usage(query: UsageQuery): Promise<UsageAggregate[]> {
    return super.usage({ ...query, to: query.to + 1 });
  }
}

/** Sums usage over every kind of row, top-ups and expiries included. */
class UsageOfEveryKind extends MemoryStorage {
  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const sum = new UsageAccumulator(query.groupBy, query.byDay);
    for (const row of await this.ledger({ workspaceId: query.workspaceId, from: query.from, to: query.to, limit: Number.MAX_SAFE_INTEGER }))
      sum.add({ ...row, kind: 'reply' });
    return sum.totals();
  }
}

/** Compares agent ids as a case- and accent-insensitive collation would (MySQL's utf8mb4_general_ci): 'Agent-e' and 'agent-é' are 'agent-e'. */
class FoldsAgentIds extends SummingStorage {
  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    if (query.agentId === undefined) return super.ledger(query);
    const fold = (id: string | null) => id?.normalize('NFD').replace(/\p{M}/gu, '').toLowerCase().trimEnd();
    const { agentId, ...rest } = query;
    const rows = await super.ledger({ ...rest, limit: Number.MAX_SAFE_INTEGER });
    return rows.filter((row) => fold(row.agentId) === fold(agentId)).slice(0, query.limit);
  }
}

interface Mutant {
  readonly name: string;
  readonly create: () => CreditStorage;
  /** Cases that must fail against this store (more may). */
  readonly caughtBy: readonly string[];
}

const mutants: readonly Mutant[] = [
  {
    name: 'commit without the version guard',
    create: () => new IgnoresVersion(),
    caughtBy: [
      'commit - a second create at version 0 conflicts and writes nothing',
      'commit - a stale expectedVersion conflicts and writes nothing: no state, no rows, no records',
      'commit - concurrent commits at one version: exactly one wins, and only its writes land',
      'concurrency - replies from several meters never overspend',
      'concurrency - reserves from several meters hold exactly the affordable amount',
      'renew - exactly once when several meters read after the period end',
    ],
  },
  {
    name: 'ledger rows appended outside the commit',
    create: () => new RowsOutsideCommit(),
    caughtBy: [
      'commit - a stale expectedVersion conflicts and writes nothing: no state, no rows, no records',
      'commit - concurrent commits at one version: exactly one wins, and only its writes land',
      'renew - exactly once when several meters read after the period end',
      'concurrency - settles of one replyId from several meters charge once',
    ],
  },
  {
    name: 'records lost from a multi-record commit',
    create: () => new LosesRecords(),
    caughtBy: [
      'records - upsert by key and come back unchanged',
      'concurrency - replies from several meters never overspend',
      'concurrency - reserves from several meters hold exactly the affordable amount',
    ],
  },
  {
    name: 'commit without the absentKeys check',
    create: () => new IgnoresAbsentKeys(),
    caughtBy: [
      'commit - absentKeys: when one of them exists the commit conflicts whole and writes nothing',
      'reserve - a meter that kept its state replays a replyId another meter settled before',
    ],
  },
  {
    name: 'no open hold ever reported',
    create: () => new NoNextLapse(),
    caughtBy: [
      'load - nextLapseAt, when reported, is the earliest hold of the workspace, lapsed ones included',
      'hold expiry - a meter that kept its state still sees a hold of another meter lapse',
    ],
  },
  {
    name: 'versions numbered afresh after erase',
    create: () => new ResetsVersionOnErase(),
    // The meter's random version steps keep a meter that kept the old workspace from writing it
    // over the new one even here, so only the erase case sees the versions go back.
    caughtBy: ['erase - removes a workspace, or keeps its ledger with agent and conversation ids erased'],
  },
  {
    name: 'a lock that takes no lock',
    create: () => new LockWithoutLock(),
    caughtBy: ['lock - commits of other writers wait for it, then meet the version its commit wrote'],
  },
  {
    name: 'a lock that commits what its failed work wrote',
    create: () => new LockCommitsOnFailure(),
    caughtBy: ['lock - when its work fails nothing it committed lands, and the workspace is free again'],
  },
  {
    name: 'no lapsed-hold listing',
    create: () => new ForgetsLapsed(),
    caughtBy: [
      'load - lapsed lists exactly the records whose holdExpiresAt is at or before now',
      'hold expiry - a lapsed hold returns its credits on the next getWorkspace',
      'hold expiry - a hold a dead server left returns its credits on another meter after holdTtlMs',
    ],
  },
  {
    name: 'a lapse index never cleaned up',
    create: () => new StaleLapseIndex(),
    caughtBy: [
      'load - a record rewritten without a hold stops being lapsed; one rewritten with a later lapse moves',
      'hold expiry - a hold once swept is no longer listed as lapsed',
    ],
  },
  {
    name: 'ledger ordered by time',
    create: () => new OrdersByTime(),
    caughtBy: ['ledger - keeps seq order even when the clock goes back'],
  },
  {
    name: 'amounts kept with two decimals of a credit',
    create: () => new LosesPrecision(),
    caughtBy: ['ledger - big, negative and zero amounts and every column round-trip exactly'],
  },
  {
    name: 'ledger rows of other workspaces leak in',
    create: () => new LeaksWorkspaces(),
    caughtBy: [
      'ledger - shows only the rows of the workspace asked for',
      'ledger - through CreditMeter, entries of another workspace never show',
    ],
  },
  {
    name: 'inclusive ledger cursor',
    create: () => new InclusiveCursor(),
    caughtBy: [
      'ledger - limit and afterSeq page through every row exactly once, in seq order',
      'ledger - through CreditMeter, a cursor pages through every entry exactly once',
    ],
  },
  {
    name: 'ledger without the upper bound',
    create: () => new LedgerIgnoresTo(),
    caughtBy: [
      'ledger - from is inclusive and to is exclusive',
      'ledger - through CreditMeter, from is inclusive, to exclusive, and agentId filters, also across pages',
    ],
  },
  {
    name: 'ledger without the kinds filter',
    create: () => new LedgerIgnoresKinds(),
    caughtBy: ['ledger - agentId and kinds filter, and combine with windows and paging'],
  },
  {
    name: 'closed usage window',
    create: () => new ClosedUsageWindow(),
    caughtBy: ['usage - equals UsageAccumulator over the same rows, per group and per UTC day', 'usage - the window is half-open'],
  },
  {
    name: 'agent ids compared without case or accents',
    create: () => new FoldsAgentIds(),
    caughtBy: ['differential - random operations answer as on the memory store: outcomes, every ledger page, usage, summaries'],
  },
  {
    name: 'usage of every kind of row',
    create: () => new UsageOfEveryKind(),
    caughtBy: [
      'usage - equals UsageAccumulator over the same rows, per group and per UTC day',
      "usage - the store's sums equal the meter's ledger fallback",
    ],
  },
];

// Small races keep the mutation run fast; they are still large enough to expose each race.
const concurrency = { meters: 3, requests: 60, affordable: 20 };

function options(name: string, create: () => CreditStorage): StorageConformanceOptions {
  return { name, create, concurrency };
}

/** Runs every case against a store; returns the names that failed, with their first message. */
async function failures(store: StorageConformanceOptions): Promise<Map<string, string>> {
  const failed = new Map<string, string>();
  for (const testCase of conformanceCases) {
    try {
      await runConformanceCase(store, testCase);
    } catch (error) {
      // A crash in the kit is not a catch: only assertion failures and the meter's own errors count.
      expect(error, `"${testCase.name}" crashed instead of failing an assertion`).not.toBeInstanceOf(TypeError);
      expect(error).not.toBeInstanceOf(ReferenceError);
      failed.set(testCase.name, error instanceof Error ? error.message.split('\n')[0]! : String(error));
    }
  }
  return failed;
}

describe('conformance kit mutation test', () => {
  it('the unbroken memory store passes every case', async () => {
    expect([...(await failures(options('memory', () => new MemoryStorage())))]).toEqual([]);
  });

  it('a memory store that sums usage itself passes every case', async () => {
    expect([...(await failures(options('summing', () => new SummingStorage())))]).toEqual([]);
  });

  for (const mutant of mutants) {
    it(`catches: ${mutant.name}`, async () => {
      for (const name of mutant.caughtBy)
        expect(
          conformanceCases.map((c) => c.name),
          'a case named in caughtBy',
        ).toContain(name);
      const failed = await failures(options(mutant.name, mutant.create));
      for (const name of mutant.caughtBy) expect(failed.has(name), `"${name}" must fail against "${mutant.name}"`).toBe(true);
    });
  }

  it('runConformanceCase rejects on the broken store and resolves on the sound one', async () => {
    const name = 'concurrency - replies from several meters never overspend';
    await expect(
      runConformanceCase(
        options('unguarded', () => new IgnoresVersion()),
        name,
      ),
    ).rejects.toThrow();
    await expect(
      runConformanceCase(
        options('memory', () => new MemoryStorage()),
        name,
      ),
    ).resolves.toBeUndefined();
  });

  it('runs a case of the caller, with the invariant check after it', async () => {
    const leaky = {
      name: 'custom - a store that invents credits fails the invariant check',
      group: 'custom',
      run: async (ctx: ConformanceContext) => {
        const workspaceId = ctx.id('ws');
        const at = ctx.now();
        const state = {
          workspaceId,
          ledgerSeq: 1,
          account: {
            plan: 'custom',
            allotment: 5,
            pendingPlan: null,
            pendingAllotment: null,
            anchor: at,
            periodIndex: 0,
            periodStart: at,
            periodEnd: at + 1_000_000,
            usedThisPeriod: 0,
            grants: [
              {
                grantId: 'period:0',
                kind: 'allotment' as const,
                amount: 5,
                remaining: 5,
                held: 0,
                expiresAt: at + 1_000_000,
                createdAt: at,
              },
            ],
            held: 0,
            alerts: [],
            agents: [],
            recharge: null,
            createdAt: at,
          },
        };
        // The ledger row disagrees with the grant: the invariant check must notice.
        const row = ledgerRow(workspaceId, 1, 'grant', 4, at, { grantId: 'period:0', plan: 'custom' });
        await ctx.storage.commit([{ workspaceId, expectedVersion: 0, state: state as never, ledger: [row], records: [] }]);
        ctx.track(workspaceId);
      },
    };
    const store = { ...options('memory', () => new MemoryStorage()), cases: [leaky] };
    await expect(runConformanceCase(store, leaky.name)).rejects.toThrow(/invariants: ledger sum/);
  });

  it('an unknown case name is an error, and so are a bad skip and bad sizes', async () => {
    await expect(
      runConformanceCase(
        options('memory', () => new MemoryStorage()),
        'reserve - no such case',
      ),
    ).rejects.toThrow(/no conformance case/);
    expect(() => runStorageConformance({ ...options('memory', () => new MemoryStorage()), skip: ['reserve - no such case'] })).toThrow(
      /skip: no conformance case/,
    );
    expect(() =>
      runStorageConformance({ name: 'memory', create: () => new MemoryStorage(), concurrency: { requests: 10, affordable: 10 } }),
    ).toThrow(/affordable/);
    expect(() => runStorageConformance({ name: 'memory', create: () => new MemoryStorage(), concurrency: { meters: 0 } })).toThrow(
      /meters/,
    );
  });

  it('every case is named "<operation> - <behaviour>", once', () => {
    const names = conformanceCases.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    for (const testCase of conformanceCases) expect(testCase.name.startsWith(`${testCase.group} - `)).toBe(true);
  });
});
