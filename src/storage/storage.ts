/**
 * The storage seam: what a store implements. The core decides every credit rule; a store
 * keeps three things per workspace and commits changes to them atomically:
 *
 * - one **state document** ({@link WorkspaceState}) with a version number,
 * - **records** by key ({@link StoredRecord}: one per reply and per top-up), with the
 *   lapse time of open holds indexed,
 * - an append-only **ledger** ({@link LedgerRow}), numbered per workspace.
 *
 * No method applies a rule. `commit` is the only write, and it is all-or-nothing per
 * workspace, guarded by the version the core loaded (or by a row lock the store takes).
 */
import type { LedgerKind, LedgerRow, StoredRecord, UsageGroupBy, WorkspaceState } from '../core/state.js';

/** Input of {@link CreditStorage.load}. */
export interface LoadRequest {
  workspaceId: string;
  /** Records to return if they exist. */
  keys: readonly string[];
  /** Also return every record whose `holdExpiresAt` is at or before this instant. */
  now: number;
}

/** What {@link CreditStorage.load} returns. */
export interface LoadedWorkspace {
  /** The stored version: 0 when nothing was ever committed; `erase` adds one and keeps it. */
  version: number;
  /** The state document, or null when there is none. */
  state: WorkspaceState | null;
  /** The records asked for by key that exist, in any order. */
  records: StoredRecord[];
  /** Every record with `holdExpiresAt !== null && holdExpiresAt <= now`, in any order. */
  lapsed: StoredRecord[];
  /**
   * The earliest `holdExpiresAt` of any of the workspace's records (lapsed ones included), or
   * null when none has one. Optional: a store that reports it lets the meter keep the state it
   * last committed and skip `load` for later batches until that instant (it then commits with
   * {@link WorkspaceCommit.absentKeys}, which every store must honour).
   */
  nextLapseAt?: number | null;
}

/** One workspace's share of a {@link CreditStorage.commit}. */
export interface WorkspaceCommit {
  workspaceId: string;
  /**
   * The version the core loaded. Apply only if the stored version still equals it (0: no
   * state may exist yet), then store {@link WorkspaceCommit.nextVersion}. A workspace's version
   * only ever grows (`erase` adds one too), so the meter may keep a state it committed and trust
   * it while the stored version is unchanged.
   */
  expectedVersion: number;
  /**
   * The version to store when the commit applies: above `expectedVersion`, by a random step the
   * meter chose. When a store loses acknowledged writes (a Redis failover or crash under
   * `appendfsync everysec`, SQLite `synchronous=NORMAL` on power loss), the versions written
   * after it would otherwise repeat the lost ones, and a meter still holding a lost state would
   * commit it over the new ones; random steps make such a repeat all but impossible. Absent in
   * hand-made commits: then store `expectedVersion + 1`. `versionAfter(commit)` gives either.
   */
  nextVersion?: number;
  /** The new state document, replacing the old one. */
  state: WorkspaceState;
  /** Rows to append (their `seq` numbers are given and new). */
  ledger: readonly LedgerRow[];
  /** Records to insert or replace by key. */
  records: readonly StoredRecord[];
  /**
   * Keys of records that must not exist yet: when one does, answer `conflict` and write
   * nothing, as for a moved version. The meter sends them when it applied a batch to the
   * state it committed last instead of loading, for new reply, top-up, refund and adjustment
   * ids it has not seen.
   */
  absentKeys?: readonly string[];
}

/** The outcome of one {@link WorkspaceCommit}: written, or refused because the version moved. */
export type CommitResult = 'committed' | 'conflict';

/** Input of {@link CreditStorage.ledger}. */
export interface LedgerQuery {
  workspaceId: string;
  /** Rows with a `seq` above this one (the previous page's last). */
  afterSeq?: number;
  /** Inclusive lower bound on `at`. */
  from?: number;
  /** Exclusive upper bound on `at`. */
  to?: number;
  agentId?: string;
  /** Only rows of these kinds (an empty list matches none). */
  kinds?: readonly LedgerKind[];
  /** At most this many rows, in `seq` order. */
  limit: number;
}

/** Input of {@link CreditStorage.usage}. */
export interface UsageQuery {
  workspaceId: string;
  /** Inclusive, epoch ms. */
  from: number;
  /** Exclusive, epoch ms. */
  to: number;
  groupBy: UsageGroupBy;
  /** When true, split by UTC day (`day` = epoch ms of 00:00 UTC). */
  byDay: boolean;
}

/** Usage of one group (and UTC day) over the `reply` rows in a window. */
export interface UsageAggregate {
  /** The agent, model or conversation id (`''` when the row has none). */
  key: string;
  /** Epoch ms of the UTC day, when `byDay`. */
  day?: number;
  /** Micro-credits charged: the negated sum of the rows' amounts. */
  amount: number;
  /** Rows counted. */
  replies: number;
}

/**
 * The store behind a `CreditMeter`. Implement it to keep credits in your own database and
 * prove it with `runStorageConformance` from `@bookbag/credits/testing`; `docs/storage.md`
 * walks through a complete adapter.
 */
export interface CreditStorage {
  /** Creates or upgrades the schema. Idempotent; the meter runs it before first use. */
  migrate(): Promise<void>;
  /** Releases connections the store opened itself. */
  close(): Promise<void>;
  /**
   * Reads a workspace's state and version, the records asked for and the lapsed holds. It
   * need not be one snapshot, but it must read the state and version **first**: records
   * read after it can only be as new or newer, and a commit based on anything newer than the
   * version it carries is refused by the version guard. (Records read before the state could
   * be older than a state that passes the guard.)
   */
  load(request: LoadRequest): Promise<LoadedWorkspace>;
  /**
   * Applies each workspace's changes atomically: the state, the rows and the records all
   * land, or none does. A workspace whose version moved answers `conflict` and changes
   * nothing; the others are unaffected. Commits are applied in the order given (two of one
   * workspace at one version: the first lands, the second conflicts) and results come back in
   * that order.
   */
  commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]>;
  /** Ledger rows of a workspace in `seq` order, filtered and paged. */
  ledger(query: LedgerQuery): Promise<LedgerRow[]>;
  /**
   * Optional: sums `reply` rows in a window inside the database. Without it the meter pages
   * through `ledger` and sums in memory, which is exact but slower on long histories.
   */
  usage?(query: UsageQuery): Promise<UsageAggregate[]>;
  /**
   * Optional, for `meter.listWorkspaces()`: ids of the workspaces that have a state document,
   * in the store's ascending order of ids, after `afterId`, at most `limit`.
   */
  listWorkspaces?(query: ListQuery): Promise<string[]>;
  /**
   * Optional, for `meter.deleteWorkspace()`: removes a workspace's records and either its whole
   * ledger and state document (`keepLedger: false`: afterwards `load` finds no state, no
   * records and no rows) or, with `keepLedger: true`, keeps the ledger rows with `agentId` and
   * `conversationId` set to null and leaves the state document alone (the meter has just
   * written one without an account). Either way it adds one to the version and keeps it, so
   * no version is ever reused for a different state. Atomic; a workspace never committed is
   * left alone.
   */
  erase?(request: EraseRequest): Promise<void>;
  /**
   * Optional: runs `work` holding a lock on the workspace that other writers' commits wait for
   * (a row lock, `SELECT … FOR UPDATE`, in one transaction), and lends it a `load` and a
   * `commit` of that workspace that run inside the lock. What `work` committed lands when this
   * resolves and not before; when `work` or the store fails, none of it does. The meter uses it
   * for a batch that lost a race to another app server, so servers on a hot workspace queue on
   * the lock instead of each loading and redoing its batch again and again. The version guard
   * still applies inside: the lock makes progress, the version keeps it correct. When the
   * connection drops on the way, a store may run it all again on a fresh one, `work` included:
   * the meter's work finds by its load whether a first run's commit landed.
   */
  lock?<T>(workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>): Promise<T>;
  /**
   * Optional: the most items one {@link WorkspaceCommit} may carry, for a database whose
   * transactions take a bounded number of writes (DynamoDB's `TransactWriteItems` takes 100).
   * An item is the state, each ledger row, each record and each of `absentKeys`: a commit
   * carries `1 + ledger.length + records.length + (absentKeys?.length ?? 0)`. The meter then
   * commits a hot workspace's batch in as many commits as it takes, each in arrival order,
   * instead of one, and ends holds that lapsed (an app server died with replies in flight) a
   * few at a time, in commits of their own before the commands; only a command that exceeds the
   * limit on its own (a renewal that expires more grants than fit) is still sent alone, and a
   * store that cannot take it throws. At least 8. Without it a commit carries up to 1,024
   * commands' rows and records, and every lapsed hold.
   */
  readonly maxCommitItems?: number;
}

/** What {@link CreditStorage.lock} lends its work: the workspace's load and commit, inside the lock. */
export interface LockedWorkspace {
  /** As {@link CreditStorage.load}, for the locked workspace. */
  load(request: LoadRequest): Promise<LoadedWorkspace>;
  /** As {@link CreditStorage.commit} of one commit of the locked workspace; called at most once, last. */
  commit(commit: WorkspaceCommit): Promise<CommitResult>;
}

/** Input of {@link CreditStorage.listWorkspaces}. */
export interface ListQuery {
  /** Ids after this one (the previous page's last). */
  afterId?: string;
  limit: number;
}

/** Input of {@link CreditStorage.erase}. */
export interface EraseRequest {
  workspaceId: string;
  keepLedger: boolean;
}
