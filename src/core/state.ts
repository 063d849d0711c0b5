/**
 * The data the transition core reads and writes, and a store keeps. Every amount is an
 * integer count of micro-credits (credits × 10⁶) in a JS number, at most 2⁵³ − 1; every
 * instant is epoch milliseconds. A store never looks inside these values beyond the fields
 * its interface names: it keeps them and gives them back.
 */

/** How a reply was paid for. */
export type Route = 'credits' | 'byo' | 'unmetered';

/** Kinds of ledger entries. */
export type LedgerKind = 'grant' | 'topup' | 'reply' | 'expiry' | 'plan_change' | 'refund' | 'adjustment';

/** What usage rows are grouped by. */
export type UsageGroupBy = 'agent' | 'model' | 'conversation';

/**
 * Where a grant's credits came from: the plan's allotment, a purchased top-up, an adjustment by
 * support or finance, or a refund that could not go back to the grants that paid.
 */
export type GrantKind = 'allotment' | 'topup' | 'adjustment' | 'refund';

/** A bucket of credits with an optional expiry. Spent soonest-expiring first. */
export interface GrantState {
  /** Unique within the workspace: `period:<index>` for allotments, `topup:<grantId>` for top-ups. */
  grantId: string;
  kind: GrantKind;
  /** Micro-credits granted (an upgrade adds to the current allotment's). */
  amount: number;
  /** Micro-credits that can still be spent. */
  remaining: number;
  /** Micro-credits of this grant held by replies in flight. */
  held: number;
  /** When it can no longer be spent, or null for never. */
  expiresAt: number | null;
  createdAt: number;
}

/** A workspace's plan, period and live grants. */
export interface AccountState {
  plan: string;
  /** Micro-credits granted for the current period. */
  allotment: number;
  /** A downgrade that takes effect at the next renewal, or null. */
  pendingPlan: string | null;
  /** The allotment that comes with `pendingPlan`, or null. */
  pendingAllotment: number | null;
  /** Subscription start: the anchor of every monthly period. */
  anchor: number;
  /** The current period is [periodStart, periodEnd). */
  periodIndex: number;
  periodStart: number;
  periodEnd: number;
  /** Micro-credits charged by replies this period. */
  usedThisPeriod: number;
  /** Grants that have not expired and still have credits left or held, in spending order. */
  grants: GrantState[];
  /** Micro-credits held by replies in flight. */
  held: number;
  /** Alerts already announced this period: `share:<fraction>` and `level:<micro-credits>`. */
  alerts: string[];
  /** Agents that replied this period or have a cap, with what they spent and hold. */
  agents: AgentState[];
  /** Automatic recharge, when set. */
  recharge: RechargeState | null;
  createdAt: number;
}

/** One agent's spending this period, and its cap. */
export interface AgentState {
  agentId: string;
  /** Micro-credits charged to the agent's replies this period (net of refunds). */
  spent: number;
  /** Micro-credits held by the agent's replies in flight. */
  held: number;
  /** Most micro-credits the agent may spend per period, or null for no cap. */
  limit: number | null;
  /** Models the agent may use, or null for any. */
  models: string[] | null;
}

/** "When available credits fall below `below`, recharge `amount`." */
export interface RechargeState {
  below: number;
  amount: number;
  /** False after a recharge was asked for, until the balance is back at or above `below`. */
  armed: boolean;
  /** Recharges asked for so far: the next one's key is `recharge:<count + 1>`. */
  count: number;
}

/**
 * The state document of one workspace: what every commit rewrites. It stays small: open
 * holds and history live in records and ledger rows, never here.
 */
export interface WorkspaceState {
  workspaceId: string;
  /** Null for a workspace known only from self-hosted replies: no plan, no balance. */
  account: AccountState | null;
  /** The sequence number of the last ledger row written; rows are numbered 1, 2, 3, … per workspace. */
  ledgerSeq: number;
  /**
   * The latest UTC day (epoch ms of its midnight) a {@link LedgerDayRecord} marks, 0 before the
   * first. Absent, or null once the workspace was closed (its records go, its rows may stay),
   * when the workspace's rows are not marked.
   */
  ledgerMarks?: number | null;
  /**
   * The number the meter drew for the commit that wrote this version of the state (as
   * {@link ReplyRecord.writtenBy}). A meter whose commit answered `conflict` or failed tells its
   * own landed commit from another server's by it: two commits can reach the same version and
   * the same balances. Absent from states written before it was added.
   */
  writtenBy?: number;
}

/** The lifecycle state of a reply. */
export type ReplyStatus = 'held' | 'settled' | 'released' | 'expired' | 'refused';

/** Micro-credits a hold took from one grant. */
export interface Allocation {
  grantId: string;
  amount: number;
}

/** Token counts a provider reported for a reply. */
export interface TokenUsage {
  inputTokens?: number;
  outputTokens?: number;
}

/** Everything known about one reply: the value of a `reply:<replyId>` record. */
export interface ReplyRecord {
  type: 'reply';
  replyId: string;
  workspaceId: string;
  agentId: string;
  conversationId: string;
  /** The model charged: the one held for, or the one that produced the reply. */
  model: string;
  /** The model the reply was held for (what a retry must ask for again). */
  heldModel: string;
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
  /** Sequence number of the ledger row written at settle. */
  entrySeq: number | null;
  /** Where the held credits came from, while held. */
  allocations: Allocation[];
  /** Once settled: the grants that paid, in spending order. */
  paidFrom: Allocation[];
  /** Micro-credits refunded so far. */
  refunded: number;
  /** Why a refused reply was refused, so a retry hears the same reason. */
  refusedFor: 'credits' | 'agent-limit' | 'model' | null;
  /**
   * A random number the meter drew for the commit that wrote this version of the record. A meter
   * whose commit answered `conflict` or failed finds its number here when that commit landed
   * after all, even after another server wrote to the workspace. Absent from records written
   * before it was added.
   */
  writtenBy?: number;
}

/** A refund as first made: the value of a `refund:<refundId>` record. */
export interface RefundRecord {
  type: 'refund';
  refundId: string;
  replyId: string;
  amount: number;
  reason: string;
  createdAt: number;
}

/** An adjustment as first made: the value of an `adjustment:<adjustmentId>` record. */
export interface AdjustmentRecord {
  type: 'adjustment';
  adjustmentId: string;
  /** Signed micro-credits: + a credit, − a debit. */
  amount: number;
  reason: string;
  expiresAt: number | null;
  createdAt: number;
}

/** A top-up as first added: the value of a `topup:<grantId>` record, kept for idempotency. */
export interface TopUpRecord {
  type: 'topup';
  grantId: string;
  amount: number;
  expiresAt: number | null;
  createdAt: number;
}

/**
 * Where a UTC day begins in the ledger: the value of a `ledgerday:<day>` record, written with the
 * first rows a workspace gets from a change made on that day or later (by the clock of the meter
 * that made it). Every row stamped at or after the day's midnight has a `seq` of at least
 * `firstSeq`, whatever the meters' clocks, because a row is never stamped later than the change
 * that wrote it. So a ledger page from an instant can start there instead of at the first row.
 */
export interface LedgerDayRecord {
  type: 'ledgerDay';
  /** Epoch ms of the day's midnight (UTC). */
  day: number;
  firstSeq: number;
}

/**
 * A record kept by key within its workspace: one per reply and one per top-up. A store
 * upserts it by `key` and indexes `holdExpiresAt` to find holds that have lapsed.
 */
export interface StoredRecord {
  /** `reply:<replyId>`, `topup:<grantId>`, `refund:<refundId>`, `ledgerday:<day>`, …; unique within the workspace. */
  key: string;
  /** While the record is an open hold, when it lapses; otherwise null. */
  holdExpiresAt: number | null;
  /** Opaque to a store: keep it (as JSON, say) and return it unchanged. */
  value: ReplyRecord | TopUpRecord | RefundRecord | AdjustmentRecord | LedgerDayRecord;
}

/** One append-only ledger row. The signed sum of a workspace's rows is its balance plus holds. */
export interface LedgerRow {
  workspaceId: string;
  /** 1, 2, 3, … within the workspace, in append order. */
  seq: number;
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
  /** Tokens the provider reported for a reply, if any. */
  inputTokens: number | null;
  outputTokens: number | null;
  /** Why a refund or an adjustment was made, if any. */
  reason: string | null;
}
