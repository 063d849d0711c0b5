/**
 * A mutation test of the conformance kit: each store below is MemoryStorage with one
 * deliberate, realistic bug. The kit must fail every one of them, in the cases named.
 */
import { describe, expect, it } from 'vitest';
import { MemoryStorage } from '../../src/index.js';
import type {
  ClaimAlertCommand,
  CreditStorage,
  GrantCommand,
  GrantOutcome,
  LedgerQuery,
  LedgerRow,
  RenewCommand,
  RenewOutcome,
  ReserveCommand,
  ReplyRecord,
  ReserveOutcome,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceState,
} from '../../src/index.js';
import { conformanceCases, runConformanceCase, type ConformanceContext, type StorageConformanceOptions } from '../../src/testing/index.js';
import { ledgerRowInput } from '../../src/storage/storage-helpers.js';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * Reads the balance, awaits a tick, then writes whatever the stale read allowed: the
 * read-then-write race of a naive SQL adapter (`SELECT balance` … `UPDATE`). Where the
 * stale read said "enough" but the store no longer has it, the hold goes through anyway,
 * as an unguarded UPDATE would (modelled as an overdraft grant so the ledger stays summable).
 */
class ReadThenWriteReserve extends MemoryStorage {
  override async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    if (!command.requireWorkspace) return super.reserve(command);
    const seen = await this.getWorkspace(command.reply.workspaceId, command.now);
    await tick();
    if (!seen || seen.available < command.reply.amount) return super.reserve(command);
    const current = await this.getWorkspace(command.reply.workspaceId, command.now);
    const shortfall = command.reply.amount - (current?.available ?? 0);
    if (shortfall > 0 && !(await this.getReply(command.reply.replyId))) {
      const grantId = `topup:overdraft:${command.reply.replyId}`;
      await super.grant({
        workspaceId: command.reply.workspaceId,
        grant: { grantId, kind: 'topup', amount: shortfall, remaining: shortfall, expiresAt: null, createdAt: command.now },
        entry: { ...ledgerRowInput(command.reply.workspaceId, 'topup', shortfall, command.now), grantId },
        now: command.now,
      });
    }
    return super.reserve(command);
  }
}

/** Settles a replayed reply again: a retry charges twice (no "already settled" check). */
class DoubleChargeOnReplay extends MemoryStorage {
  override async settle(command: SettleCommand): Promise<SettleOutcome> {
    const outcome = await super.settle(command);
    if (outcome.status !== 'settled' || !outcome.replayed) return outcome;
    const { reply } = outcome;
    const again = await super.reserve({
      reply: { ...reply, replyId: `${reply.replyId}:again:${command.now}:${Math.random()}`, createdAt: command.now, expiresAt: command.now + 60_000 },
      now: command.now,
      requireWorkspace: outcome.workspace !== null,
    });
    if (again.status !== 'reserved') return outcome;
    const charged = await super.settle({ ...command, replyId: again.reply.replyId });
    if (charged.status !== 'settled') return outcome;
    return { ...charged, reply, replayed: false };
  }
}

/** Renews whatever the version: the `WHERE version = $expected` guard was forgotten. */
class UnguardedRenew extends MemoryStorage {
  override async renew(command: RenewCommand): Promise<RenewOutcome> {
    const outcome = await super.renew(command);
    if (outcome.status !== 'stale') return outcome;
    const { workspace } = outcome;
    const next = workspace.periodIndex + 1;
    return super.renew({ ...command, expectedVersion: workspace.version, workspace: { ...command.workspace, version: workspace.version + 1 }, grant: { ...command.grant, grantId: `period:${next}` }, entry: { ...command.entry, grantId: `period:${next}` } });
  }
}

/** Settles with the hold's creation time: a lapsed hold is still charged. */
class SettlesLapsedHolds extends MemoryStorage {
  override async settle(command: SettleCommand): Promise<SettleOutcome> {
    const reply = await this.getReply(command.replyId);
    return super.settle(reply?.status === 'held' ? { ...command, now: Math.min(command.now, reply.createdAt) } : command);
  }
}

/** Drops a top-up's expiry on write (a column left out of the INSERT). */
class ForgetsGrantExpiry extends MemoryStorage {
  override grant(command: GrantCommand): Promise<GrantOutcome> {
    return super.grant({ ...command, grant: { ...command.grant, expiresAt: null } });
  }
}

/** Claims an alert every time: the unique key on (workspace, period, threshold) is missing. */
class AlertsEveryTime extends MemoryStorage {
  override async claimAlert(command: ClaimAlertCommand): Promise<boolean> {
    await super.claimAlert(command);
    return true;
  }
}

/** Pages with `id >= afterId` instead of `id > afterId`: each page repeats the previous page's last row. */
class InclusiveCursor extends MemoryStorage {
  override async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    if (query.afterId === undefined) return super.ledger(query);
    const { afterId, ...rest } = query;
    const all = await super.ledger({ ...rest, limit: Number.MAX_SAFE_INTEGER });
    return all.filter((row) => BigInt(row.id) >= BigInt(afterId)).slice(0, query.limit);
  }
}

/** Treats the usage window as closed: `at <= to`. */
class ClosedUsageWindow extends MemoryStorage {
  override usage(query: UsageQuery): Promise<UsageAggregate[]> {
    return super.usage({ ...query, to: query.to + 1 });
  }
}

/** Reads without sweeping: lapsed holds and expired grants are only cleaned up by writes. */
class ReadsWithoutSweeping extends MemoryStorage {
  override getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined> {
    return super.getWorkspace(workspaceId, Number.MIN_SAFE_INTEGER);
  }
}

/** Checks the balance first and answers `insufficient` without writing the refused record. */
class ForgetsRefusals extends MemoryStorage {
  override async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    const current = command.requireWorkspace ? await super.getWorkspace(command.reply.workspaceId, command.now) : undefined;
    const known = await this.getReply(command.reply.replyId);
    if (current && !known && command.now < current.workspace.periodEnd && current.available < command.reply.amount) {
      const reply: ReplyRecord = { ...command.reply, status: 'refused', finishedAt: command.now, entryId: null };
      return { status: 'insufficient', reply, available: current.available, workspace: current.workspace };
    }
    return super.reserve(command);
  }
}

/** Settles by replyId alone: the `AND workspace_id = $2` was left out. */
class SettlesAnyWorkspace extends MemoryStorage {
  override async settle(command: SettleCommand): Promise<SettleOutcome> {
    const reply = await this.getReply(command.replyId);
    return super.settle(reply ? { ...command, workspaceId: reply.workspaceId } : command);
  }
}

/** Drops the ledger's upper time bound. */
class LedgerIgnoresTo extends MemoryStorage {
  override ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const { to: _to, ...rest } = query;
    return super.ledger(rest);
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
    name: 'read-then-write reserve',
    create: () => new ReadThenWriteReserve(),
    caughtBy: [
      'reserve - concurrent reserves never overspend',
      'concurrency - replies from several meters never overspend',
      'concurrency - reserves from several meters hold exactly the affordable amount',
    ],
  },
  {
    name: 'double charge on a replayed settle',
    create: () => new DoubleChargeOnReplay(),
    caughtBy: [
      'settle - a replay returns the same row with replayed true and charges nothing more',
      'settle - concurrent settles of one reply charge once',
      'concurrency - settles of one replyId from several meters charge once',
    ],
  },
  {
    name: 'renew without the version guard',
    create: () => new UnguardedRenew(),
    caughtBy: [
      'renew - a stale expectedVersion returns stale and changes nothing',
      'renew - exactly once under racing callers',
      'renew - through CreditMeter, concurrent operations just after a period end renew once',
    ],
  },
  {
    name: 'settle charges a lapsed hold',
    create: () => new SettlesLapsedHolds(),
    caughtBy: ['settle - after the hold expired returns expired and returns the credits'],
  },
  {
    name: 'grant drops the expiry',
    create: () => new ForgetsGrantExpiry(),
    caughtBy: [
      'reserve - spends a grant expiring before the period end before the allotment',
      'reserve - never spends an expired grant',
      'release - credits of a grant that expired while held expire with an expiry row',
    ],
  },
  {
    name: 'claimAlert without a unique key',
    create: () => new AlertsEveryTime(),
    caughtBy: ['claimAlert - true once per workspace, period and threshold', 'claimAlert - concurrent claims succeed once'],
  },
  {
    name: 'inclusive ledger cursor',
    create: () => new InclusiveCursor(),
    caughtBy: ['ledger - limit and afterId page through every row exactly once', 'ledger - filters and windows combine with paging'],
  },
  {
    name: 'getWorkspace without the sweep',
    create: () => new ReadsWithoutSweeping(),
    caughtBy: [
      'hold expiry - a lapsed hold returns its credits on the next getWorkspace',
      'reserve - an expired grant is swept by getWorkspace with one expiry row',
      'hold expiry - through CreditMeter, a hold nobody settles returns its credits after holdTtlMs',
    ],
  },
  {
    name: 'refusal without a refused record',
    create: () => new ForgetsRefusals(),
    caughtBy: ['reserve - a refused replyId never charges later', 'reserve - refuses an amount above the balance, writes a refused record and changes nothing else'],
  },
  {
    name: 'settle without the workspace check',
    create: () => new SettlesAnyWorkspace(),
    caughtBy: ["settle - an unknown reply or another workspace's reply returns not_found"],
  },
  {
    name: 'ledger without the upper bound',
    create: () => new LedgerIgnoresTo(),
    caughtBy: ['ledger - from is inclusive and to is exclusive'],
  },
  {
    name: 'closed usage window',
    create: () => new ClosedUsageWindow(),
    caughtBy: ['usage - the window is half-open'],
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
      // A crash in the kit is not a catch: only assertion failures count.
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

  for (const mutant of mutants) {
    it(`catches: ${mutant.name}`, async () => {
      for (const name of mutant.caughtBy) expect(conformanceCases.map((c) => c.name), 'a case named in caughtBy').toContain(name);
      const failed = await failures(options(mutant.name, mutant.create));
      for (const name of mutant.caughtBy) expect(failed.has(name), `"${name}" must fail against "${mutant.name}"`).toBe(true);
    });
  }

  it('runConformanceCase rejects on the broken store and resolves on the sound one', async () => {
    const name = 'reserve - concurrent reserves never overspend';
    await expect(runConformanceCase(options('racy', () => new ReadThenWriteReserve()), name)).rejects.toThrow();
    await expect(runConformanceCase(options('memory', () => new MemoryStorage()), name)).resolves.toBeUndefined();
  });

  it('runs a case of the caller, with the invariant check after it', async () => {
    const leaky = {
      name: 'custom - a store that invents credits fails the invariant check',
      group: 'custom',
      run: async (ctx: ConformanceContext) => {
        const workspaceId = ctx.id('ws');
        const at = ctx.now();
        await ctx.storage.createWorkspace({
          workspace: { workspaceId, plan: 'p', allotment: 5, pendingPlan: null, pendingAllotment: null, anchor: at, periodIndex: 0, periodStart: at, periodEnd: at + 1_000_000, usedThisPeriod: 0, version: 0, createdAt: at },
          grant: { grantId: 'period:0', kind: 'allotment', amount: 5, remaining: 5, expiresAt: at + 1_000_000, createdAt: at },
          // The ledger row disagrees with the grant: the invariant check must notice.
          entry: { workspaceId, kind: 'grant', amount: 4, at, replyId: null, agentId: null, conversationId: null, model: null, route: null, priceVersion: null, grantId: 'period:0', plan: 'p' },
        });
        ctx.track(workspaceId);
      },
    };
    const store = { ...options('memory', () => new MemoryStorage()), cases: [leaky] };
    await expect(runConformanceCase(store, leaky.name)).rejects.toThrow(/invariants: ledger sum/);
  });

  it('an unknown case name is an error', async () => {
    await expect(runConformanceCase(options('memory', () => new MemoryStorage()), 'reserve - no such case')).rejects.toThrow(/no conformance case/);
  });
});
