/**
 * The data the transition core reads and writes, and a store keeps. Every amount is an
 * integer count of micro-credits (credits × 10⁶) in a JS number, at most 2⁵³ − 1; every
 * instant is epoch milliseconds. A store never looks inside these values beyond the fields
 * its interface names: it keeps them and gives them back.
 */

/** How a reply was paid for. */
export type Route = 'credits' | 'byo' | 'unmetered';

/** Kinds of ledger entries. */
export type LedgerKind = 'grant' | 'topup' | 'reply' | 'expiry' | 'plan_change';

/** What usage rows are grouped by. */
export type UsageGroupBy = 'agent' | 'model' | 'conversation';

/** Where a grant's credits came from. */
export type GrantKind = 'allotment' | 'topup';

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
  /** Low-balance thresholds already announced this period. */
  alerts: number[];
  createdAt: number;
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
 * A record kept by key within its workspace: one per reply and one per top-up. A store
 * upserts it by `key` and indexes `holdExpiresAt` to find holds that have lapsed.
 */
export interface StoredRecord {
  /** `reply:<replyId>` or `topup:<grantId>`; unique within the workspace. */
  key: string;
  /** While the record is an open hold, when it lapses; otherwise null. */
  holdExpiresAt: number | null;
  /** Opaque to a store: keep it (as JSON, say) and return it unchanged. */
  value: ReplyRecord | TopUpRecord;
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
}
