import type { Decimal } from 'decimal.js';
import type { CreditsInput } from '../core/credits.js';
import type { PlanCatalog } from '../core/plan-catalog.js';
import type { ModelPriceTable } from '../core/price-table.js';
import type { MeterMode } from '../core/route.js';
import type { LedgerKind, Route, UsageGroupBy } from '../core/state.js';
import type { CreditStorage } from '../storage/storage.js';
import type { EventErrorHandler } from './events.js';
import type { ByoKeyResolver, ReplyProvider } from './provider.js';

/** Options of {@link CreditMeter}. Validated and frozen at construction. */
export interface CreditMeterOptions {
  /**
   * Where credits, holds and the ledger live.
   * @default new MemoryStorage()
   */
  storage?: CreditStorage;
  /**
   * `cloud` charges and blocks; `self-hosted` records every reply with 0 credits and never blocks.
   * @default 'cloud'
   */
  mode?: MeterMode;
  /**
   * The price table.
   * @default DEFAULT_MODEL_PRICES
   */
  models?: ModelPriceTable;
  /**
   * The plan catalog.
   * @default DEFAULT_PLANS
   */
  plans?: PlanCatalog;
  /** Providers by provider id (`openai`, `anthropic`, `bookbag`, ...), used by `reply`. */
  providers?: Readonly<Record<string, ReplyProvider>>;
  /** Finds a workspace's own key for a provider; a key makes provider-backed replies free. */
  byoKeys?: ByoKeyResolver;
  /**
   * The clock that decides periods and hold expiry. With several app servers, this clock
   * (not the database's) decides, so keep servers in sync; every store operation is
   * conditional, so skew only moves a reply across a boundary, never charges twice.
   * @default () => new Date()
   */
  clock?: () => Date;
  /**
   * How long a hold lives before its credits return, if neither settled nor released
   * (a process that died mid-reply).
   * @default 900000 (15 minutes)
   */
  holdTtlMs?: number;
  /**
   * Shares of the period's allotment whose crossing emits `balance.low`, once per period each.
   * @default [0.8, 1]
   */
  lowBalanceThresholds?: readonly number[];
  /**
   * Available balances, in credits, whose crossing downwards (available ≤ level) emits
   * `balance.below`, once per period each: an alert at an absolute level beside the shares of
   * the allotment.
   * @default []
   */
  lowBalanceLevels?: readonly CreditsInput[];
  /**
   * Charges the customer for an automatic recharge (see `setRecharge`). Called once per
   * crossing, however many servers see it; when it resolves, the meter adds the credits with
   * `rechargeId` as the top-up's `grantId`, so the grant lands once. A rejection is reported
   * as a `recharge.failed` event and the recharge re-arms once the balance is back above the
   * threshold.
   * @default undefined (recharges are announced as `recharge.requested` events only)
   */
  onRecharge?: RechargeHandler;
  /**
   * What `reply` does when the store fails or times out: `refuse` throws `STORAGE_ERROR`
   * (no free replies); `allow` calls the provider unmetered and marks the result
   * `metered: false`. Only for hosts that prefer availability over billing accuracy.
   * @default 'refuse'
   */
  onStorageFailure?: 'refuse' | 'allow';
  /**
   * Gives up on a store call after this many milliseconds with `STORAGE_ERROR`.
   * The call may still complete in the store; retrying the same `replyId` heals it.
   * @default undefined (no limit)
   */
  storageTimeoutMs?: number;
  /**
   * Receives errors thrown by event handlers (which never break a reply).
   * @default logs the error and the event type to `console.error`
   */
  onEventError?: EventErrorHandler;
  /**
   * Makes reply ids when the caller gives none.
   * @default 128 random bits per meter (base64url) followed by a counter: `<random>-<n>`
   */
  generateReplyId?: () => string;
}

/** Charges the customer for an automatic recharge; the meter adds the credits when it resolves. */
export type RechargeHandler = (request: {
  readonly workspaceId: string;
  /** Idempotency key of this recharge: charge your customer once per key. */
  readonly rechargeId: string;
  readonly credits: Decimal;
}) => void | Promise<void>;

/** Input of {@link CreditMeter.createWorkspace}. */
export interface CreateWorkspaceInput {
  workspaceId: string;
  plan: string;
  /** Credits per period for a plan without `monthlyCredits` (Enterprise); refused for other plans. */
  allotment?: CreditsInput;
  /**
   * The subscription start: the anchor of every monthly period.
   * @default now
   */
  startsAt?: Date | string;
}

/** A grant with credits left, as shown in a workspace summary. */
export interface GrantSummary {
  /**
   * `period:<n>` for the plan allotment, the host's grantId for a top-up,
   * `adjustment:<id>` and `refund:<id>` for credits from adjustments and refunds.
   */
  readonly grantId: string;
  readonly kind: 'allotment' | 'topup' | 'adjustment' | 'refund';
  readonly remaining: Decimal;
  readonly expiresAt: Date | undefined;
}

/** A workspace's balance and period, as of the call. */
export interface WorkspaceSummary {
  readonly workspaceId: string;
  readonly plan: string;
  /** A downgrade that takes effect at the next renewal. */
  readonly pendingPlan: string | undefined;
  /** Credits that can be spent now: every live grant, minus live holds. */
  readonly balance: Decimal;
  /** Credits held by replies in flight. The ledger sums to `balance + held`. */
  readonly held: Decimal;
  /** This period's plan allotment (upgrades included). */
  readonly allotment: Decimal;
  /** Credits charged by replies this period. */
  readonly usedThisPeriod: Decimal;
  /** Credits left in top-ups (part of `balance`). */
  readonly topUpBalance: Decimal;
  readonly periodStart: Date;
  readonly periodEnd: Date;
  /** When the allotment renews (= `periodEnd`). */
  readonly renewsAt: Date;
  /**
   * How many more replies each model can afford from `balance` (rounded down); `null` for a
   * model that costs no credits.
   */
  readonly repliesLeft: Readonly<Record<string, number | null>>;
  /** Live grants in spending order. */
  readonly grants: readonly GrantSummary[];
  /** Agents that spent this period or have a cap. */
  readonly agents: readonly AgentSummary[];
  /** The automatic recharge, when one is set. */
  readonly recharge: { readonly below: Decimal; readonly credits: Decimal } | undefined;
}

/** One agent's spending this period and its cap. */
export interface AgentSummary {
  readonly agentId: string;
  /** Credits charged to its replies this period, net of refunds. */
  readonly spent: Decimal;
  /** Credits its replies in flight hold. */
  readonly held: Decimal;
  /** Its cap per period, or undefined for none. */
  readonly limit: Decimal | undefined;
  /** Models it may use, or undefined for any. */
  readonly models: readonly string[] | undefined;
}

/** Input of {@link CreditMeter.quote}. */
export interface QuoteInput {
  workspaceId: string;
  model: string;
  /** The agent that would reply, to take its cap and models into account. */
  agentId?: string;
  /** Accepted (and not used) so the identity a host reserves with can be quoted first. */
  conversationId?: string;
  /** Accepted (and not used) so the identity a host reserves with can be quoted first. */
  replyId?: string;
}

/** What a reply would cost, by which route, and whether it would be allowed. Free to ask. */
export interface Quote {
  readonly workspaceId: string;
  readonly model: string;
  /** Credits the reply would be charged: the model's price on `credits`, else 0. */
  readonly credits: Decimal;
  /** The model's price per reply. */
  readonly price: Decimal;
  readonly route: Route;
  /** True when a reply now would go through. */
  readonly allowed: boolean;
  /** Credits available, or undefined in self-hosted mode. */
  readonly available: Decimal | undefined;
  readonly renewsAt: Date | undefined;
  readonly priceVersion: string;
  /** Why `allowed` is false: `credits`, the agent's `agent-limit`, or a `model` the agent may not use. */
  readonly blockedBy: 'credits' | 'agent-limit' | 'model' | undefined;
}

/** Identifies one reply. */
export interface ReplyIdentity {
  workspaceId: string;
  agentId: string;
  conversationId: string;
  model: string;
  /**
   * The idempotency key of the reply: a retry with the same id never charges twice. Unique
   * across the store (use a UUID or your message id).
   * @default a new unique id (see `generateReplyId`)
   */
  replyId?: string;
}

/** Input of {@link CreditMeter.reserve}. */
export type ReserveInput = ReplyIdentity;

/** A hold on a reply's cost. */
export interface Reservation {
  readonly replyId: string;
  readonly workspaceId: string;
  readonly model: string;
  readonly route: Route;
  /** Credits held (charged at settle). */
  readonly credits: Decimal;
  /** When the hold lapses if not settled. */
  readonly expiresAt: Date;
  /** `held` for a live hold; `settled` when this replyId was charged before (a retry). */
  readonly status: 'held' | 'settled';
  /** True when the reply existed before this call. */
  readonly replayed: boolean;
}

/** Input of {@link CreditMeter.release} and {@link CreditMeter.extend}. */
export interface ReplyRef {
  workspaceId: string;
  replyId: string;
}

/** Input of {@link CreditMeter.settle}. */
export interface SettleInput extends ReplyRef {
  /**
   * The model that produced the reply, when it is not the one held for (a fallback). The
   * reply is charged that model's price: a cheaper one returns the difference, a dearer one
   * takes the difference as far as the balance covers it (the balance never goes negative).
   * @default the model held for
   */
  model?: string;
  /** Token counts the provider reported, kept on the ledger row. */
  usage?: TokenUsage;
}

/** Token counts a provider reported for a reply. */
export interface TokenUsage {
  inputTokens?: number;
  outputTokens?: number;
}

/** A hold kept alive by {@link CreditMeter.extend}. */
export interface HoldExtension {
  readonly replyId: string;
  readonly workspaceId: string;
  /** When the hold now lapses if not settled. */
  readonly expiresAt: Date;
}

/** A charged reply. */
export interface Settlement {
  readonly replyId: string;
  readonly workspaceId: string;
  readonly agentId: string;
  readonly conversationId: string;
  readonly model: string;
  readonly route: Route;
  /** Credits charged (0 on byo and unmetered). */
  readonly credits: Decimal;
  readonly entryId: string;
  readonly at: Date;
  readonly priceVersion: string;
  /** True when the charge happened in an earlier call (no second charge). */
  readonly replayed: boolean;
}

/** A released hold. */
export interface Release {
  readonly replyId: string;
  readonly workspaceId: string;
  /** Credits returned to the balance. */
  readonly credits: Decimal;
  /** True when it was released in an earlier call. */
  readonly replayed: boolean;
}

/** Input of {@link CreditMeter.reply}. */
export interface ReplyInput extends ReplyIdentity {
  /** Passed to the provider untouched. */
  input: unknown;
  /**
   * Aborts the reply: the call rejects with the signal's reason at once, whatever the
   * provider does. An abort before any output charges nothing.
   */
  signal?: AbortSignal;
  /**
   * Runs this reply on this provider instead of the one registered for the model's
   * provider id (the AI SDK middleware uses it to run the SDK's own call inside the hold).
   * @default the provider registered in `providers` for the model's provider id
   */
  provider?: ReplyProvider;
}

/** A generated and charged reply. */
export interface ReplyResult extends Settlement {
  /** What the provider returned; `undefined` on a replay (the meter keeps no reply content). */
  readonly output: unknown;
  /** False only when the store failed and `onStorageFailure: 'allow'` let the reply through. */
  readonly metered: boolean;
}

/** A streamed reply: iterate it for chunks; it is settled once when the stream ends. */
export interface ReplyStream extends AsyncIterable<unknown> {
  readonly replyId: string;
  readonly route: Route;
  /** Credits the reply costs if any output is delivered. */
  readonly credits: Decimal;
  /** False only when the store failed and `onStorageFailure: 'allow'` let the reply through. */
  readonly metered: boolean;
  /**
   * Settles when the stream ended: the charge, or the error that released it
   * (`REPLY_RELEASED` when it was cancelled before any output).
   */
  readonly result: Promise<Settlement>;
  /**
   * Ends the stream now and closes the upstream request: charged when output was delivered,
   * released when not. Resolves once that is recorded; `result` tells which. Breaking out of
   * a `for await` loop does the same.
   */
  cancel(): Promise<void>;
}

/** Input of {@link CreditMeter.changePlan}. */
export interface ChangePlanInput {
  workspaceId: string;
  plan: string;
  /** Credits per period, for a plan without `monthlyCredits` (Enterprise). */
  allotment?: CreditsInput;
}

/** The outcome of a plan change. */
export interface PlanChange {
  readonly workspaceId: string;
  /** The plan in force now. */
  readonly plan: string;
  /** `now` for an upgrade (or a same-size change), `next-period` for a downgrade. */
  readonly effective: 'now' | 'next-period';
  /** When it takes (or took) effect. */
  readonly effectiveAt: Date;
  /** Credits added to this period (an upgrade's difference). */
  readonly creditsAdded: Decimal;
  readonly workspace: WorkspaceSummary;
}

/** Input of {@link CreditMeter.addCredits}. */
export interface AddCreditsInput {
  workspaceId: string;
  /** Credits purchased, > 0. */
  credits: CreditsInput;
  /** Idempotency key: the same grantId adds credits once. */
  grantId: string;
  /** When the credits lapse; omitted: never (they survive renewals). */
  expiresAt?: Date | string;
}

/** The outcome of a top-up. */
export interface TopUp {
  readonly workspaceId: string;
  readonly grantId: string;
  readonly credits: Decimal;
  readonly expiresAt: Date | undefined;
  /** True when this grantId was added before (nothing added now). */
  readonly replayed: boolean;
  readonly workspace: WorkspaceSummary;
}

/** Input of {@link CreditMeter.ledger}. */
export interface LedgerInput {
  workspaceId: string;
  /** Inclusive. */
  from?: Date | string;
  /** Exclusive. */
  to?: Date | string;
  agentId?: string;
  /**
   * Entries per page, 1–1,000.
   * @default 100
   */
  limit?: number;
  /** `nextCursor` of the previous page. */
  cursor?: string;
}

/** One ledger entry. */
export interface LedgerEntry {
  readonly id: string;
  readonly workspaceId: string;
  readonly kind: LedgerKind;
  /** Signed: grants and top-ups +, charges and expiries −. */
  readonly credits: Decimal;
  readonly at: Date;
  readonly replyId?: string;
  readonly agentId?: string;
  readonly conversationId?: string;
  readonly model?: string;
  readonly route?: Route;
  readonly priceVersion?: string;
  readonly grantId?: string;
  readonly plan?: string;
  /** Tokens the provider reported for the reply, when it did. */
  readonly inputTokens?: number;
  readonly outputTokens?: number;
}

/** A page of ledger entries, oldest first. */
export interface LedgerPage {
  readonly entries: readonly LedgerEntry[];
  /** Pass as `cursor` for the next page; absent on the last page. */
  readonly nextCursor?: string;
}

/** Calendar buckets for usage, in UTC; weeks start on Monday (ISO). */
export type UsageInterval = 'day' | 'week' | 'month';

/** Input of {@link CreditMeter.usage}. */
export interface UsageInput {
  workspaceId: string;
  /** Inclusive. */
  from: Date | string;
  /** Exclusive. */
  to: Date | string;
  groupBy: UsageGroupBy;
  /** Split each group by calendar bucket. */
  interval?: UsageInterval;
}

/** Credits and replies of one group (and bucket). */
export interface UsageRow {
  /** The agent, model or conversation id. */
  readonly key: string;
  /** Credits charged (gross: before refunds). */
  readonly credits: Decimal;
  /** Credits refunded for replies of the group, by refunds made in the window. */
  readonly refunded: Decimal;
  /** `credits − refunded`. */
  readonly net: Decimal;
  /** Replies on every route (byo and unmetered count with 0 credits). */
  readonly replies: number;
  /** Start of the bucket, when an interval was asked. */
  readonly bucket?: Date;
}

/** Usage over a window. */
export interface UsageReport {
  readonly workspaceId: string;
  readonly from: Date;
  readonly to: Date;
  readonly groupBy: UsageGroupBy;
  readonly interval?: UsageInterval;
  /** By bucket (oldest first), then by credits (most first), then by key. */
  readonly rows: readonly UsageRow[];
  /** Credits charged (gross). */
  readonly totalCredits: Decimal;
  /** Credits refunded in the window. */
  readonly totalRefunded: Decimal;
  /** `totalCredits − totalRefunded`. */
  readonly totalNet: Decimal;
  readonly totalReplies: number;
}

/** Input of {@link CreditMeter.refund}. */
export interface RefundInput {
  workspaceId: string;
  /** The charged reply to refund. */
  replyId: string;
  /** Idempotency key: the same refundId refunds once. */
  refundId: string;
  /** Why, kept on the ledger row (support tickets, "bad answer"). */
  reason: string;
  /**
   * Credits to give back, at most what the reply was charged minus earlier refunds.
   * @default everything not refunded yet
   */
  credits?: CreditsInput;
}

/** A refund. */
export interface Refund {
  readonly workspaceId: string;
  readonly replyId: string;
  readonly refundId: string;
  readonly credits: Decimal;
  readonly reason: string;
  /** True when this refundId was made before (nothing given back now). */
  readonly replayed: boolean;
  /** The workspace after the refund; undefined for a workspace without a plan (self-hosted). */
  readonly workspace: WorkspaceSummary | undefined;
}

/** Input of {@link CreditMeter.adjust}. */
export interface AdjustInput {
  workspaceId: string;
  /** Idempotency key: the same adjustmentId applies once. */
  adjustmentId: string;
  /** Signed credits: a credit (> 0) is a grant, a debit (< 0) never takes the balance below zero. */
  credits: CreditsInput;
  /** Why, kept on the ledger row. */
  reason: string;
  /** For a credit: when its credits lapse. Omitted: never. */
  expiresAt?: Date | string;
}

/** An adjustment. */
export interface Adjustment {
  readonly workspaceId: string;
  readonly adjustmentId: string;
  /** Signed credits. */
  readonly credits: Decimal;
  readonly reason: string;
  readonly expiresAt: Date | undefined;
  /** True when this adjustmentId was applied before. */
  readonly replayed: boolean;
  readonly workspace: WorkspaceSummary;
}

/** Input of {@link CreditMeter.setAgentLimit}. */
export interface AgentLimitInput {
  workspaceId: string;
  agentId: string;
  /** Most credits the agent may spend per period (holds in flight count); `null` lifts the cap. */
  credits: CreditsInput | null;
  /**
   * Models the agent may use; `null` or omitted: any.
   * @default null
   */
  models?: readonly string[] | null;
}

/** Input of {@link CreditMeter.setRecharge}. */
export interface RechargeInput {
  workspaceId: string;
  /** "When available credits fall below `below`, recharge `credits`"; `null` turns it off. */
  recharge: { below: CreditsInput; credits: CreditsInput } | null;
}

/** Input of {@link CreditMeter.deleteWorkspace}. */
export interface DeleteWorkspaceInput {
  workspaceId: string;
  /**
   * Keep the ledger (for accounting) with agent and conversation ids erased, instead of
   * removing it with everything else.
   * @default false
   */
  keepLedger?: boolean;
}

/** The outcome of {@link CreditMeter.deleteWorkspace}. */
export interface WorkspaceDeletion {
  readonly workspaceId: string;
  /** False when there was no workspace with a plan to delete (a repeated call, say). */
  readonly existed: boolean;
  readonly keptLedger: boolean;
}

/** Input of {@link CreditMeter.listWorkspaces}. */
export interface ListWorkspacesInput {
  /** `nextCursor` of the previous page. */
  cursor?: string;
  /**
   * Ids per page, 1–1,000.
   * @default 100
   */
  limit?: number;
}

/** A page of workspace ids. */
export interface WorkspacePage {
  /** Ids in the store's order: every workspace with a state, including ones known only from self-hosted replies. */
  readonly workspaces: readonly string[];
  /** Pass as `cursor` for the next page; absent on the last page. */
  readonly nextCursor?: string;
}
