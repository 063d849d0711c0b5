/**
 * The storage contract. The core decides; a store does the arithmetic atomically.
 *
 * Every amount here is an integer count of micro-credits (credits × 10⁶) held in a JS
 * number, at most 2⁵³ − 1. Every instant is epoch milliseconds. Every method is one
 * atomic step: one SQL transaction, one Redis script, or one synchronous run of JS code.
 * No method may read, then decide in JS, then write in a second step.
 *
 * A store never applies a business rule of its own: prices, plans, periods, routes and
 * thresholds arrive as parameters. What a store does decide, it decides from its own
 * rows inside the step: whether a balance covers an amount, which grant expires first.
 */

/** How a reply was paid for. */
export type Route = 'credits' | 'byo' | 'unmetered';

/** Kinds of ledger entries. */
export type LedgerKind = 'grant' | 'topup' | 'reply' | 'expiry' | 'plan_change';

/** The lifecycle state of a reply record. */
export type ReplyStatus = 'held' | 'settled' | 'released' | 'expired' | 'refused';

/** A workspace as stored. */
export interface WorkspaceRecord {
  workspaceId: string;
  plan: string;
  /** Micro-credits granted for the current period. */
  allotment: number;
  /** A plan change that takes effect at the next renewal (a downgrade), or null. */
  pendingPlan: string | null;
  /** The allotment that comes with `pendingPlan`, or null. */
  pendingAllotment: number | null;
  /** Period anchor (subscription start), epoch ms. */
  anchor: number;
  /** Current period: [periodStart, periodEnd). */
  periodIndex: number;
  periodStart: number;
  periodEnd: number;
  /** Micro-credits charged by replies settled since the current period began. */
  usedThisPeriod: number;
  /** Bumped by every change of plan or period; guards `renew` and `changePlan`. */
  version: number;
  createdAt: number;
}

/** Where a grant's credits came from. */
export type GrantKind = 'allotment' | 'topup';

/** A bucket of credits with an optional expiry. Spent soonest-expiring first. */
export interface GrantRecord {
  /** Unique within the workspace. Allotments use `period:<index>`; top-ups `topup:<grantId>`. */
  grantId: string;
  kind: GrantKind;
  /** Micro-credits originally granted (an upgrade adds to the current allotment's). */
  amount: number;
  /** Micro-credits not yet spent, held or expired. */
  remaining: number;
  /** Epoch ms at which it can no longer be spent, or null for never. */
  expiresAt: number | null;
  createdAt: number;
}

/** The micro-credits a hold took from one grant. */
export interface Allocation {
  grantId: string;
  amount: number;
}

/** Everything known about one reply. */
export interface ReplyRecord {
  replyId: string;
  workspaceId: string;
  agentId: string;
  conversationId: string;
  model: string;
  route: Route;
  /** Micro-credits held, then charged. 0 on the byo and unmetered routes. */
  amount: number;
  priceVersion: string;
  status: ReplyStatus;
  createdAt: number;
  /** When an unsettled hold lapses. */
  expiresAt: number;
  /** When it was settled, released, expired or refused. */
  finishedAt: number | null;
  /** Id of the ledger entry written at settle. */
  entryId: string | null;
}

/** One append-only ledger row. The signed sum of a workspace's rows is its balance plus holds. */
export interface LedgerRow {
  /**
   * Store-assigned: decimal digits (at most 20), numerically increasing in append order.
   * `CreditMeter` hands ids out as page cursors.
   */
  id: string;
  workspaceId: string;
  kind: LedgerKind;
  /** Signed micro-credits: grants +, charges and expiries −, 0 for free replies. */
  amount: number;
  at: number;
  replyId: string | null;
  agentId: string | null;
  conversationId: string | null;
  model: string | null;
  route: Route | null;
  priceVersion: string | null;
  /** The grant this row created or expired, if any. */
  grantId: string | null;
  /** The plan in force after a grant or plan change, if any. */
  plan: string | null;
}

/** A ledger row before the store gives it an id. */
export type LedgerRowInput = Omit<LedgerRow, 'id'>;

/** A workspace with its live money, as seen at `now` after expired holds and grants were swept. */
export interface WorkspaceState {
  workspace: WorkspaceRecord;
  /** Grants with credits left that can still be spent, in spending order. */
  grants: GrantRecord[];
  /** Micro-credits that can be spent now: the sum of live grants' `remaining`. */
  available: number;
  /** Micro-credits held by unsettled, unexpired replies. */
  held: number;
}

// ─── commands and outcomes ────────────────────────────────────────────────

/** Input of {@link CreditStorage.createWorkspace}. */
export interface CreateWorkspaceCommand {
  workspace: WorkspaceRecord;
  /** The first period's allotment grant, with its ledger row. */
  grant: GrantRecord;
  entry: LedgerRowInput;
}

/** Result of {@link CreditStorage.createWorkspace}. */
export type CreateWorkspaceOutcome = { status: 'created'; state: WorkspaceState } | { status: 'exists' };

/** Input of {@link CreditStorage.reserve}. */
export interface ReserveCommand {
  reply: Omit<ReplyRecord, 'status' | 'finishedAt' | 'entryId'>;
  now: number;
  /**
   * When false (self-hosted mode), no workspace row is needed and nothing is checked
   * against a balance; the reply record alone is written.
   */
  requireWorkspace: boolean;
}

/** Result of {@link CreditStorage.reserve}. */
export type ReserveOutcome =
  /** The hold is in place; `available` is what is left after it. */
  | { status: 'reserved'; reply: ReplyRecord; available: number }
  /** A reply with this id exists already (any workspace): nothing changed. */
  | { status: 'exists'; reply: ReplyRecord }
  | { status: 'workspace_not_found' }
  /** `now` is at or past the period end: renew first, nothing changed. */
  | { status: 'renewal_due'; workspace: WorkspaceRecord }
  /** The balance cannot cover it: a `refused` record was written so the id never charges later. */
  | { status: 'insufficient'; reply: ReplyRecord; available: number; workspace: WorkspaceRecord };

/** Input of {@link CreditStorage.settle}. */
export interface SettleCommand {
  replyId: string;
  workspaceId: string;
  now: number;
}

/** Result of {@link CreditStorage.settle}. */
export type SettleOutcome =
  /** Charged now (`replayed: false`) or earlier (`replayed: true`). */
  | { status: 'settled'; reply: ReplyRecord; entry: LedgerRow; replayed: boolean; workspace: WorkspaceRecord | null }
  | { status: 'not_found' }
  /** The reply cannot be settled from this state (the hold lapsed now if `expired`). */
  | { status: 'expired' | 'released' | 'refused'; reply: ReplyRecord };

/** Input of {@link CreditStorage.release}. */
export interface ReleaseCommand {
  replyId: string;
  workspaceId: string;
  now: number;
}

/** Result of {@link CreditStorage.release}. */
export type ReleaseOutcome =
  /** The hold was returned now (`replayed: false`) or earlier. */
  | { status: 'released'; reply: ReplyRecord; replayed: boolean }
  | { status: 'not_found' }
  | { status: 'settled' | 'expired' | 'refused'; reply: ReplyRecord };

/** Input of {@link CreditStorage.renew}. */
export interface RenewCommand {
  workspaceId: string;
  /** Applied only if the workspace is still at this version (a racing renewal wins once). */
  expectedVersion: number;
  /** The workspace after renewal (period fields, plan, allotment, pending cleared, version + 1). */
  workspace: WorkspaceRecord;
  /**
   * Unused credits of the ending allotment carried over, at most this many micro-credits.
   * The rest of the ending allotment expires with an `expiry` row.
   */
  rolloverCap: number;
  /** The new period's allotment grant (`amount`/`remaining` before rollover is added). */
  grant: GrantRecord;
  /** The `grant` ledger row for the new allotment. */
  entry: LedgerRowInput;
  now: number;
}

/** Result of {@link CreditStorage.renew}. */
export type RenewOutcome =
  | { status: 'renewed'; state: WorkspaceState; expired: number; carried: number }
  /** Someone else changed the workspace first; nothing changed. */
  | { status: 'stale'; workspace: WorkspaceRecord }
  | { status: 'workspace_not_found' };

/** Input of {@link CreditStorage.changePlan}. */
export interface ChangePlanCommand {
  workspaceId: string;
  expectedVersion: number;
  /** The workspace after the change (version + 1). */
  workspace: WorkspaceRecord;
  /** Micro-credits added to the current period's allotment grant now (an upgrade), or 0. */
  allotmentIncrease: number;
  /** The `plan_change` ledger row (amount = allotmentIncrease). */
  entry: LedgerRowInput;
  now: number;
}

/** Result of {@link CreditStorage.changePlan}. */
export type ChangePlanOutcome =
  | { status: 'changed'; state: WorkspaceState }
  | { status: 'stale'; workspace: WorkspaceRecord }
  | { status: 'workspace_not_found' }
  /** The balance would pass the largest amount a store holds: nothing changed. */
  | { status: 'overflow' };

/** Input of {@link CreditStorage.grant}. */
export interface GrantCommand {
  workspaceId: string;
  grant: GrantRecord;
  /** The `topup` ledger row. */
  entry: LedgerRowInput;
  now: number;
}

/** Result of {@link CreditStorage.grant}. */
export type GrantOutcome =
  | { status: 'granted'; state: WorkspaceState }
  /** A grant with this id exists (a replay or a conflict: compare it); nothing changed. */
  | { status: 'exists'; grant: GrantRecord }
  | { status: 'workspace_not_found' }
  | { status: 'overflow' };

/** Input of {@link CreditStorage.claimAlert}. */
export interface ClaimAlertCommand {
  workspaceId: string;
  periodIndex: number;
  /** Threshold as a fraction of the allotment, e.g. 0.8. */
  threshold: number;
}

/** Input of {@link CreditStorage.ledger}. */
export interface LedgerQuery {
  workspaceId: string;
  /** Inclusive lower bound on `at`. */
  from?: number;
  /** Exclusive upper bound on `at`. */
  to?: number;
  agentId?: string;
  /** Rows with an id after this one (the previous page's last id). */
  afterId?: string;
  limit: number;
}

/** What usage rows are grouped by. */
export type UsageGroupBy = 'agent' | 'model' | 'conversation';

/** Input of {@link CreditStorage.usage}. */
export interface UsageQuery {
  workspaceId: string;
  /** Inclusive, epoch ms. */
  from: number;
  /** Exclusive, epoch ms. */
  to: number;
  groupBy: UsageGroupBy;
  /** When true, rows are split by UTC day (`day` = epoch ms of 00:00 UTC). */
  byDay: boolean;
}

/** Usage of one group (and one UTC day when asked) over `reply` rows in the window. */
export interface UsageAggregate {
  key: string;
  /** Epoch ms of the UTC day, when `byDay`. */
  day?: number;
  /** Micro-credits charged (positive). */
  amount: number;
  /** Replies counted, on every route. */
  replies: number;
}

/**
 * The store behind a {@link CreditMeter}. Implement it to keep credits in your own
 * database; prove it with `runStorageConformance` from `@bookbag/credits/testing`.
 */
export interface CreditStorage {
  /** Creates or upgrades the schema. Idempotent; also run on first use. */
  migrate(): Promise<void>;
  /** Releases connections the store opened itself. */
  close(): Promise<void>;

  /** Inserts a workspace with its first allotment, unless the id exists. */
  createWorkspace(command: CreateWorkspaceCommand): Promise<CreateWorkspaceOutcome>;
  /**
   * The workspace at `now`: first lapses holds whose `expiresAt` ≤ now (status
   * `expired`, credits back to their grants as of the hold's `expiresAt`: a grant that was
   * still live then takes them back, even if it expired since) and expires grants whose `expiresAt` ≤ now
   * (an `expiry` row for what they had left). When now ≥ periodEnd nothing is swept (the
   * caller renews first, so rollover sees the ending allotment). Undefined when there is
   * no such workspace.
   */
  getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined>;

  /**
   * Holds `reply.amount` in one step. In order: an existing record with this replyId →
   * `exists`; no workspace (when required) → `workspace_not_found`; now ≥ periodEnd →
   * `renewal_due`; sweep lapsed holds and expired grants as in `getWorkspace` (a store may
   * leave a lapsed hold for later while the balance covers the amount, but must sweep every
   * lapsed hold before refusing); if the live grants cannot cover the amount → write a
   * `refused` record, `insufficient`;
   * else take the amount from live grants soonest-expiring first (never-expiring last,
   * ties by creation time then grantId) and write a `held` record.
   */
  reserve(command: ReserveCommand): Promise<ReserveOutcome>;
  /**
   * Charges a held reply once: status `settled`, one `reply` ledger row of −amount
   * (0 for free routes), `usedThisPeriod` += amount. A settled reply → the same row with
   * `replayed: true`. A hold past its `expiresAt` lapses now → `expired`.
   */
  settle(command: SettleCommand): Promise<SettleOutcome>;
  /**
   * Returns a held reply's credits to the grants it came from (a grant that has expired
   * meanwhile expires them at once with an `expiry` row): status `released`.
   */
  release(command: ReleaseCommand): Promise<ReleaseOutcome>;
  /** Moves a workspace into its next period, if still at `expectedVersion`. */
  renew(command: RenewCommand): Promise<RenewOutcome>;
  /** Applies a plan change, if the workspace is still at `expectedVersion`. */
  changePlan(command: ChangePlanCommand): Promise<ChangePlanOutcome>;
  /** Adds a top-up grant, idempotent by `grant.grantId`. */
  grant(command: GrantCommand): Promise<GrantOutcome>;
  /** Records that an alert fired; true only for the first claim of (workspace, period, threshold). */
  claimAlert(command: ClaimAlertCommand): Promise<boolean>;
  /** Ledger rows of a workspace in append order. */
  ledger(query: LedgerQuery): Promise<LedgerRow[]>;
  /** Sums `reply` rows in a window by group (and UTC day). */
  usage(query: UsageQuery): Promise<UsageAggregate[]>;
  /** The reply record, or undefined. */
  getReply(replyId: string): Promise<ReplyRecord | undefined>;
}
