import { type CreditsInput, fromMicros, MICROS_PER_CREDIT, toMicros } from '../core/credits.js';
import {
  AgentLimitError,
  CreditsError,
  IdempotencyConflictError,
  InsufficientCreditsError,
  InvalidInputError,
  ModelNotAllowedError,
  ProviderError,
  ProviderNotFoundError,
  ReplyStateError,
  StorageError,
  WorkspaceExistsError,
  WorkspaceNotFoundError,
} from '../core/errors.js';
import type { Plan, PlanCatalog } from '../core/plan-catalog.js';
import type { ModelPrice, ModelPriceTable } from '../core/price-table.js';
import { type MeterMode, resolveRoute, routeCost } from '../core/route.js';
import { scrubError } from '../core/secrets.js';
import type { ReplyRecord, Route } from '../core/state.js';
import type { Command, CoreEvent, Outcome } from '../core/transition.js';
import { parseInput } from '../core/validation.js';
import { MemoryStorage } from '../storage/memory-storage.js';
import { once } from '../storage/once.js';
import type { CreditStorage, LockedWorkspace } from '../storage/storage.js';
import { raceAbort } from './abort.js';
import {
  adjustSchema,
  agentLimitSchema,
  deleteWorkspaceSchema,
  listWorkspacesSchema,
  rechargeSchema,
  refundSchema,
  toSignedMicros,
} from './billing-inputs.js';
import { CommitGroup } from './commit-group.js';
import { type CreditEventHandler, type CreditEventName, EventBus } from './events.js';
import { keepHoldAlive } from './hold-keeper.js';
import {
  addCreditsSchema,
  changePlanSchema,
  createWorkspaceSchema,
  ledgerSchema,
  parseReplyInput,
  parseReplyRef,
  parseReserveInput,
  parseSettleInput,
  quoteSchema,
  usageSchema,
  workspaceIdSchema,
} from './inputs.js';
import { seqBefore } from './ledger-start.js';
import { parseMeterOptions } from './options.js';
import type { ByoKeyResolver, ProviderResult, ReplyContext, ReplyProvider, ReplyRequest } from './provider.js';
import { createReplyStream, settledStream } from './reply-stream.js';
import { ledgerEntryOf, releaseOf, replyNotFound, replyResultOf, reservationOf, settlementOf, stateError, summaryOf } from './results.js';
import type {
  AddCreditsInput,
  AdjustInput,
  Adjustment,
  AgentLimitInput,
  ChangePlanInput,
  CreateWorkspaceInput,
  CreditMeterOptions,
  DeleteWorkspaceInput,
  HoldExtension,
  LedgerInput,
  LedgerPage,
  ListWorkspacesInput,
  PlanChange,
  Quote,
  QuoteInput,
  RechargeHandler,
  RechargeInput,
  Refund,
  RefundInput,
  Release,
  ReplyIdentity,
  ReplyInput,
  ReplyRef,
  ReplyResult,
  ReplyStream,
  Reservation,
  ReserveInput,
  SettleInput,
  Settlement,
  TopUp,
  UsageInput,
  UsageReport,
  WorkspaceDeletion,
  WorkspacePage,
  WorkspaceSummary,
} from './types.js';
import { bucketUsage, sumLedger } from './usage-report.js';
import { WorkspaceBatcher } from './workspace-batcher.js';

interface Routed {
  route: Route;
  apiKey: string | undefined;
}

interface Prepared {
  identity: Required<ReplyIdentity>;
  model: ModelPrice;
  route: Route;
  apiKey: string | undefined;
}

/**
 * Meters AI replies in credits: charges each reply its model's price, refuses replies the
 * balance cannot cover, lets bring-your-own-key replies through for free, and records
 * everything in an append-only ledger.
 *
 * Every rule lives in the transition core; the meter validates input, resolves routes and
 * keys, runs the reply lifecycle around the provider, and sends commands through a
 * per-workspace batcher, so concurrent calls on one workspace share one commit (and at most one load).
 *
 * @example
 * ```ts
 * const meter = new CreditMeter({ providers: { openai, anthropic, bookbag } });
 * await meter.createWorkspace({ workspaceId: 'ws_1', plan: 'hobby' });
 * const { output, credits } = await meter.reply({
 *   workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9', model: 'gpt-4o-mini',
 *   input: [{ role: 'user', content: 'Where is my order?' }],
 * });
 * ```
 */
export class CreditMeter {
  /** The store in use. */
  readonly storage: CreditStorage;
  /** `cloud` or `self-hosted`. */
  readonly mode: MeterMode;
  /** The price table in use. */
  readonly models: ModelPriceTable;
  /** The plan catalog in use. */
  readonly plans: PlanCatalog;
  /** Hold lifetime in milliseconds. */
  readonly holdTtlMs: number;

  readonly #providers: ReadonlyMap<string, ReplyProvider>;
  readonly #byoKeys: ByoKeyResolver | undefined;
  readonly #clock: (() => Date) | undefined;
  readonly #failOpen: boolean;
  readonly #timeoutMs: number | undefined;
  readonly #newReplyId: () => string;
  readonly #events: EventBus;
  readonly #batcher: WorkspaceBatcher;
  readonly #onRecharge: RechargeHandler | undefined;
  // The store's migration, shared by concurrent first calls and retried after a failure (its
  // progress lives in the closure, since the meter itself is frozen).
  readonly #migration = once(() => this.storage.migrate());

  constructor(options: CreditMeterOptions = {}) {
    const config = parseMeterOptions(options);
    this.storage = config.storage ?? new MemoryStorage();
    this.mode = config.mode;
    this.models = config.models;
    this.plans = config.plans;
    this.holdTtlMs = config.holdTtlMs;
    this.#providers = new Map(Object.entries(config.providers));
    this.#byoKeys = config.byoKeys;
    this.#clock = config.clock;
    this.#failOpen = config.onStorageFailure === 'allow';
    this.#timeoutMs = config.storageTimeoutMs;
    this.#newReplyId = config.generateReplyId;
    this.#onRecharge = config.onRecharge;
    const onEventError = config.onEventError;
    // A handler's error may quote whatever the handler touched: hosts get a scrubbed copy.
    this.#events = new EventBus((error, event) => onEventError(scrubError(error), event));
    // A call that outlived storageTimeoutMs is not followed by more: the store is struggling.
    const answered = (error: unknown) => !(error instanceof StorageError && error.cause instanceof StorageTimeout);
    const commits = new CommitGroup((group) => this.#store('commit', (storage) => storage.commit(group)), answered);
    this.#batcher = new WorkspaceBatcher({
      rules: { plans: this.plans, thresholds: config.lowBalanceThresholds, levels: config.lowBalanceLevels },
      now: () => this.#now(),
      load: (request) => this.#store('load', (storage) => storage.load(request)),
      commit: (commit) => commits.commit(commit),
      mayHaveLanded: answered,
      ...(this.storage.maxCommitItems !== undefined && { maxCommitItems: this.storage.maxCommitItems }),
      ...(this.storage.lock && {
        lock: <T>(workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>) =>
          this.#store('commit', (storage) => storage.lock!(workspaceId, work)),
      }),
    });
    Object.freeze(this);
  }

  /**
   * Listens to an event. Handlers run before the call that caused the event resolves;
   * one that throws is reported to `onEventError` and never breaks the reply.
   * Returns a function that removes the handler.
   *
   * @example
   * ```ts
   * meter.on('balance.low', async ({ workspaceId, threshold }) => notifyOwner(workspaceId, threshold));
   * ```
   */
  on<K extends CreditEventName>(name: K, handler: CreditEventHandler<K>): () => void {
    return this.#events.on(name, handler);
  }

  /**
   * Creates a workspace on a plan and grants its first allotment at once.
   *
   * @example
   * ```ts
   * await meter.createWorkspace({ workspaceId: 'ws_1', plan: 'hobby' });
   * await meter.createWorkspace({ workspaceId: 'ws_2', plan: 'enterprise', allotment: 250_000 });
   * ```
   */
  async createWorkspace(input: CreateWorkspaceInput): Promise<WorkspaceSummary> {
    const parsed = parseInput(createWorkspaceSchema, input);
    const plan = this.plans.require(parsed.plan);
    const allotment = planAllotment(plan, parsed.allotment);
    const now = this.#now();
    const anchor = parsed.startsAt?.getTime() ?? now;
    if (anchor > now) throw new InvalidInputError([{ path: 'startsAt', message: 'must not be in the future' }]);
    const outcome = await this.#apply(parsed.workspaceId, { type: 'create', plan: plan.id, allotment, anchor });
    if (outcome.status === 'exists') throw new WorkspaceExistsError(parsed.workspaceId);
    return summaryOf(parsed.workspaceId, expect(outcome, 'created').snapshot, this.models);
  }

  /**
   * The workspace's balance, holds, allotment, period and replies left per model. Renews
   * the period first if it has ended.
   *
   * @example
   * ```ts
   * const { balance, renewsAt, repliesLeft } = await meter.getWorkspace('ws_1');
   * ```
   */
  async getWorkspace(workspaceId: string): Promise<WorkspaceSummary> {
    const id = parseInput(workspaceIdSchema, workspaceId, 'workspaceId');
    return summaryOf(id, await this.#read(id), this.models);
  }

  /**
   * What a reply would cost, by which route, and whether it would be allowed, without
   * calling the model or charging anything.
   *
   * @example
   * ```ts
   * const { credits, route, allowed } = await meter.quote({ workspaceId: 'ws_1', model: 'gpt-4o' });
   * ```
   */
  async quote(input: QuoteInput): Promise<Quote> {
    const parsed = parseInput(quoteSchema, input);
    const model = this.models.require(parsed.model);
    const { route } = await this.#route(parsed.workspaceId, model);
    const credits = routeCost(route, model);
    const base = {
      workspaceId: parsed.workspaceId,
      model: model.id,
      credits: fromMicros(credits),
      price: model.credits,
      route,
      priceVersion: this.models.version,
    };
    if (this.mode === 'self-hosted') return { ...base, allowed: true, available: undefined, renewsAt: undefined, blockedBy: undefined };
    const { account, available } = await this.#read(parsed.workspaceId);
    const agent = parsed.agentId === undefined ? undefined : account.agents.find((candidate) => candidate.agentId === parsed.agentId);
    const blockedBy =
      agent?.models && !agent.models.includes(model.id)
        ? 'model'
        : agent && agent.limit !== null && credits > 0 && agent.spent + agent.held + credits > agent.limit
          ? 'agent-limit'
          : available < credits
            ? 'credits'
            : undefined;
    return {
      ...base,
      allowed: blockedBy === undefined,
      available: fromMicros(available),
      renewsAt: new Date(account.periodEnd),
      blockedBy,
    };
  }

  /**
   * Holds a reply's cost, for hosts that call their LLM themselves; follow with `settle`
   * (charge) or `release` (no charge), and `extend` a hold that must outlive `holdTtlMs`.
   * Throws `INSUFFICIENT_CREDITS` when the balance cannot cover it. A retry with the same
   * `replyId` returns the same hold, or `status: 'settled'` when it was charged already.
   *
   * @example
   * ```ts
   * const hold = await meter.reserve({ workspaceId, agentId, conversationId, model: 'gpt-4o' });
   * try {
   *   const answer = await callMyModel();
   *   await meter.settle({ workspaceId, replyId: hold.replyId });
   * } catch (error) {
   *   await meter.release({ workspaceId, replyId: hold.replyId });
   *   throw error;
   * }
   * ```
   */
  async reserve(input: ReserveInput): Promise<Reservation> {
    const prepared = this.#prepare(parseReserveInput(input));
    const { record, replayed } = await this.#hold(prepared instanceof Promise ? await prepared : prepared, false);
    return reservationOf(record, replayed);
  }

  /**
   * Charges a held reply, exactly once: a retry returns the first charge with `replayed: true`.
   * Give `model` when another model produced the reply, to charge that model's price.
   * Throws `HOLD_EXPIRED` when the hold lapsed, `REPLY_RELEASED` after a release.
   *
   * @example
   * ```ts
   * const { credits } = await meter.settle({ workspaceId: 'ws_1', replyId: hold.replyId });
   * await meter.settle({ workspaceId: 'ws_1', replyId: other.replyId, model: 'gpt-4o-mini' }); // a fallback answered
   * ```
   */
  async settle(input: SettleInput): Promise<Settlement> {
    const parsed = parseSettleInput(input);
    return this.#settle(parsed.workspaceId, parsed.replyId, parsed.model, parsed.usage);
  }

  /**
   * Returns a held reply's credits without charging. A second release is a no-op
   * (`replayed: true`); releasing a settled reply throws `REPLY_SETTLED`.
   *
   * @example
   * ```ts
   * await meter.release({ workspaceId: 'ws_1', replyId: hold.replyId });
   * ```
   */
  async release(input: ReplyRef): Promise<Release> {
    const ref = parseReplyRef(input);
    const outcome = await this.#apply(ref.workspaceId, { type: 'release', replyId: ref.replyId });
    switch (outcome.status) {
      case 'released':
        return releaseOf(outcome.record, outcome.replayed);
      case 'reply_state':
        throw stateError(outcome.record);
      default:
        throw replyNotFound(ref.workspaceId, ref.replyId);
    }
  }

  /**
   * Keeps a hold alive for another `holdTtlMs` from now, for hosts that call their LLM
   * themselves and may take longer than the TTL. `reply`, `replyStream` and the provider
   * integrations do this on their own while the provider runs.
   *
   * @example
   * ```ts
   * const timer = setInterval(() => meter.extend({ workspaceId, replyId: hold.replyId }), 60_000);
   * ```
   */
  async extend(input: ReplyRef): Promise<HoldExtension> {
    const ref = parseReplyRef(input);
    const outcome = await this.#apply(ref.workspaceId, { type: 'extend', replyId: ref.replyId, ttlMs: this.holdTtlMs });
    switch (outcome.status) {
      case 'extended':
        return { replyId: ref.replyId, workspaceId: ref.workspaceId, expiresAt: new Date(outcome.record.expiresAt) };
      case 'reply_state':
        throw stateError(outcome.record);
      default:
        throw replyNotFound(ref.workspaceId, ref.replyId);
    }
  }

  /**
   * Runs a whole reply: checks the balance, holds the cost, calls the provider (with the
   * workspace's own key on the byo route) while keeping the hold alive, then charges the
   * model that produced the reply. A provider error or an abort releases the hold and
   * charges nothing; an abort rejects at once with the signal's reason, even if the
   * provider ignores it. A retry with a settled `replyId` returns the first charge without
   * calling the provider again.
   *
   * @example
   * ```ts
   * const { output, credits, route } = await meter.reply({
   *   workspaceId: 'ws_1', agentId: 'support', conversationId: 'c_9',
   *   model: 'claude-haiku-4-5', input: messages, replyId: message.id,
   * });
   * ```
   */
  async reply(input: ReplyInput): Promise<ReplyResult> {
    const parsed = parseReplyInput(input);
    parsed.signal?.throwIfAborted();
    const prepared = await this.#prepare(parsed);
    const provider = parsed.provider ?? this.#provider(prepared.model);
    const request = requestOf(prepared, parsed.input);
    const context = contextOf(prepared.apiKey, parsed.signal);
    let record: ReplyRecord;
    try {
      ({ record } = await this.#hold(prepared, true));
    } catch (error) {
      if (!(this.#failOpen && error instanceof StorageError)) throw error;
      const result = await this.#unmetered(prepared, () => provider.generate(request, context), parsed.signal);
      return replyResultOf(this.#unmeteredSettlement(prepared), checkResult(result, prepared).output, false);
    }
    if (record.status === 'settled') return replyResultOf(settlementOf(record, true), undefined);
    const stopKeepAlive = this.#keepAlive(record);
    let result: ProviderResult;
    try {
      parsed.signal?.throwIfAborted();
      result = checkResult(await raceAbort(provider.generate(request, context), parsed.signal), prepared);
    } catch (error) {
      stopKeepAlive();
      await this.#releaseQuietly(record);
      if (parsed.signal?.aborted) throw parsed.signal.reason;
      throw CreditsError.is(error) && error.code === 'PROVIDER_ERROR'
        ? error
        : new ProviderError(record.replyId, prepared.model.provider, error, [prepared.apiKey]);
    }
    stopKeepAlive();
    const settlement = await this.#settle(record.workspaceId, record.replyId, this.#producedBy(result, prepared), result.usage);
    return replyResultOf(settlement, result.output);
  }

  /**
   * Streams a reply. The cost is held before the provider is called and kept alive while the
   * stream runs; the reply is charged once when the stream ends, or when the caller stops
   * early (`break`, `cancel()`, an abort) after any output. An error, cancel or abort before
   * the first chunk charges nothing.
   *
   * @example
   * ```ts
   * const stream = await meter.replyStream({ workspaceId, agentId, conversationId, model, input });
   * for await (const chunk of stream) res.write(chunk);
   * const { credits } = await stream.result;
   * ```
   */
  async replyStream(input: ReplyInput): Promise<ReplyStream> {
    const parsed = parseReplyInput(input);
    parsed.signal?.throwIfAborted();
    const prepared = await this.#prepare(parsed);
    const provider = parsed.provider ?? this.#provider(prepared.model);
    const request = requestOf(prepared, parsed.input);
    const context = contextOf(prepared.apiKey, parsed.signal);
    const open = (): AsyncIterable<unknown> =>
      provider.stream
        ? provider.stream(request, context)
        : (async function* () {
            yield checkResult(await provider.generate(request, context), prepared).output;
          })();
    const failure = (replyId: string) => (error: unknown) =>
      CreditsError.is(error) && error.code === 'PROVIDER_ERROR'
        ? error
        : new ProviderError(replyId, prepared.model.provider, error, [prepared.apiKey]);
    let record: ReplyRecord;
    try {
      ({ record } = await this.#hold(prepared, true));
    } catch (error) {
      if (!(this.#failOpen && error instanceof StorageError)) throw error;
      const settlement = this.#unmeteredSettlement(prepared);
      return createReplyStream({
        replyId: settlement.replyId,
        route: prepared.route,
        credits: settlement.credits,
        metered: false,
        signal: parsed.signal,
        open,
        settle: async () => settlement,
        release: async () => undefined,
        failure: failure(settlement.replyId),
        keepAlive: () => () => undefined,
      });
    }
    if (record.status === 'settled') return settledStream(settlementOf(record, true));
    const held = record;
    return createReplyStream({
      replyId: held.replyId,
      route: held.route,
      credits: fromMicros(held.amount),
      metered: true,
      signal: parsed.signal,
      open,
      settle: () => this.#settle(held.workspaceId, held.replyId, undefined, undefined),
      release: () => this.#releaseQuietly(held),
      failure: failure(held.replyId),
      keepAlive: () => this.#keepAlive(held),
    });
  }

  /**
   * Changes a workspace's plan. An upgrade takes effect at once and adds the difference
   * between the allotments to this period (the anchor is kept); a downgrade takes effect
   * at the next renewal.
   *
   * @example
   * ```ts
   * await meter.changePlan({ workspaceId: 'ws_1', plan: 'pro' });
   * ```
   */
  async changePlan(input: ChangePlanInput): Promise<PlanChange> {
    const parsed = parseInput(changePlanSchema, input);
    const plan = this.plans.require(parsed.plan);
    const allotment = planAllotment(plan, parsed.allotment);
    const applied = await this.#applied(parsed.workspaceId, { type: 'changePlan', plan: plan.id, allotment });
    const outcome = applied.outcome;
    if (outcome.status === 'overflow') throw overflow('allotment');
    const changed = expect(outcome, 'plan_changed');
    return {
      workspaceId: parsed.workspaceId,
      plan: changed.snapshot.account.plan,
      effective: changed.immediate ? 'now' : 'next-period',
      effectiveAt: new Date(changed.immediate ? applied.at : changed.snapshot.account.periodEnd),
      creditsAdded: fromMicros(changed.increase),
      workspace: summaryOf(parsed.workspaceId, changed.snapshot, this.models),
    };
  }

  /**
   * Adds purchased credits. They survive renewals (unless given an expiry) and are spent
   * after grants that expire sooner. Idempotent by `grantId`.
   *
   * @example
   * ```ts
   * await meter.addCredits({ workspaceId: 'ws_1', credits: 5_000, grantId: 'stripe_pi_123' });
   * ```
   */
  async addCredits(input: AddCreditsInput): Promise<TopUp> {
    const parsed = parseInput(addCreditsSchema, input);
    const amount = toMicros(parsed.credits, 'credits');
    if (amount === 0) throw new InvalidInputError([{ path: 'credits', message: 'must be greater than 0' }]);
    const expiresAt = parsed.expiresAt?.getTime() ?? null;
    if (expiresAt !== null && expiresAt <= this.#now()) {
      throw new InvalidInputError([{ path: 'expiresAt', message: 'must be in the future' }]);
    }
    const outcome = await this.#apply(parsed.workspaceId, { type: 'topUp', grantId: parsed.grantId, amount, expiresAt });
    const base = {
      workspaceId: parsed.workspaceId,
      grantId: parsed.grantId,
      credits: fromMicros(amount),
      expiresAt: expiresAt === null ? undefined : new Date(expiresAt),
    };
    switch (outcome.status) {
      case 'granted':
        return { ...base, replayed: false, workspace: summaryOf(parsed.workspaceId, outcome.snapshot, this.models) };
      case 'topup_exists':
        if (outcome.topUp.amount !== amount) throw new IdempotencyConflictError(`grantId ${parsed.grantId}`, 'credits');
        if (outcome.topUp.expiresAt !== expiresAt) throw new IdempotencyConflictError(`grantId ${parsed.grantId}`, 'expiresAt');
        return { ...base, replayed: true, workspace: summaryOf(parsed.workspaceId, outcome.snapshot, this.models) };
      case 'overflow':
        throw overflow('credits');
      default:
        throw new WorkspaceNotFoundError(parsed.workspaceId);
    }
  }

  /**
   * Gives credits back for a charged reply (a bad answer, a support gesture): all of it, or
   * `credits` of it, never more than was charged in total. Idempotent by `refundId`. The
   * credits go back to the grants that paid while they are live; the rest becomes a grant that
   * expires with the current period. A `refund` ledger row points at the reply and keeps the
   * reason.
   *
   * @example
   * ```ts
   * await meter.refund({ workspaceId: 'ws_1', replyId: 'msg_42', refundId: 'ticket_981', reason: 'wrong answer' });
   * ```
   */
  async refund(input: RefundInput): Promise<Refund> {
    const parsed = parseInput(refundSchema, input);
    const amount = parsed.credits === undefined ? null : toMicros(parsed.credits, 'credits');
    if (amount === 0) throw new InvalidInputError([{ path: 'credits', message: 'must be greater than 0' }]);
    const outcome = await this.#apply(parsed.workspaceId, {
      type: 'refund',
      refundId: parsed.refundId,
      replyId: parsed.replyId,
      amount,
      reason: parsed.reason,
    });
    switch (outcome.status) {
      case 'refunded':
        return {
          workspaceId: parsed.workspaceId,
          replyId: outcome.refund.replyId,
          refundId: outcome.refund.refundId,
          credits: fromMicros(outcome.refund.amount),
          reason: outcome.refund.reason,
          replayed: outcome.replayed,
          workspace: outcome.snapshot ? summaryOf(parsed.workspaceId, outcome.snapshot, this.models) : undefined,
        };
      case 'refund_too_large':
        throw new InvalidInputError([
          {
            path: 'credits',
            message: `must be more than 0 and at most the ${fromMicros(outcome.refundable).toString()} credits not refunded yet`,
          },
        ]);
      case 'conflict':
        throw new IdempotencyConflictError(`refundId ${parsed.refundId}`, outcome.field);
      case 'reply_state':
        throw stateError(outcome.record);
      default:
        throw replyNotFound(parsed.workspaceId, parsed.replyId);
    }
  }

  /**
   * A manual correction by support or finance, with a reason: a credit (`credits > 0`) is a
   * grant (with an optional expiry); a debit (`credits < 0`) is taken from the balance in the
   * spending order and never takes it below zero (`INSUFFICIENT_CREDITS` otherwise). Idempotent
   * by `adjustmentId`; an `adjustment` ledger row keeps the reason.
   *
   * @example
   * ```ts
   * await meter.adjust({ workspaceId: 'ws_1', adjustmentId: 'fin-2026-11-3', credits: -250, reason: 'duplicate top-up' });
   * ```
   */
  async adjust(input: AdjustInput): Promise<Adjustment> {
    const parsed = parseInput(adjustSchema, input);
    const amount = toSignedMicros(parsed.credits, 'credits');
    if (amount === 0) throw new InvalidInputError([{ path: 'credits', message: 'must not be 0' }]);
    const expiresAt = parsed.expiresAt?.getTime() ?? null;
    if (expiresAt !== null && amount < 0)
      throw new InvalidInputError([{ path: 'expiresAt', message: 'applies only to a credit (credits > 0)' }]);
    if (expiresAt !== null && expiresAt <= this.#now())
      throw new InvalidInputError([{ path: 'expiresAt', message: 'must be in the future' }]);
    const outcome = await this.#apply(parsed.workspaceId, {
      type: 'adjust',
      adjustmentId: parsed.adjustmentId,
      amount,
      reason: parsed.reason,
      expiresAt,
    });
    switch (outcome.status) {
      case 'adjusted':
        return {
          workspaceId: parsed.workspaceId,
          adjustmentId: parsed.adjustmentId,
          credits: fromMicros(amount),
          reason: outcome.adjustment.reason,
          expiresAt: expiresAt === null ? undefined : new Date(expiresAt),
          replayed: outcome.replayed,
          workspace: summaryOf(parsed.workspaceId, outcome.snapshot, this.models),
        };
      case 'debit_too_large':
        throw new InsufficientCreditsError({
          workspaceId: parsed.workspaceId,
          model: `(adjustment ${parsed.adjustmentId})`,
          replyId: '',
          required: fromMicros(outcome.required),
          available: fromMicros(outcome.available),
          renewsAt: new Date(outcome.renewsAt),
        });
      case 'conflict':
        throw new IdempotencyConflictError(`adjustmentId ${parsed.adjustmentId}`, outcome.field);
      case 'overflow':
        throw overflow('credits');
      default:
        throw new WorkspaceNotFoundError(parsed.workspaceId);
    }
  }

  /**
   * Caps what one agent may spend per period (holds in flight count), and optionally which
   * models it may use. A reply over the cap is refused before the model is called with
   * `AGENT_LIMIT_REACHED`; a model it may not use with `MODEL_NOT_ALLOWED`. `credits: null`
   * lifts the cap. The cap resets with the period.
   *
   * @example
   * ```ts
   * await meter.setAgentLimit({ workspaceId: 'ws_1', agentId: 'sales', credits: 500, models: ['gpt-4o-mini'] });
   * ```
   */
  async setAgentLimit(input: AgentLimitInput): Promise<WorkspaceSummary> {
    const parsed = parseInput(agentLimitSchema, input);
    const limit = parsed.credits === null ? null : toMicros(parsed.credits, 'credits');
    const models = parsed.models ? [...new Set(parsed.models)] : null;
    models?.forEach((model, i) => {
      if (!this.models.get(model)) throw new InvalidInputError([{ path: `models.${i}`, message: `unknown model "${model}"` }]);
    });
    const outcome = await this.#apply(parsed.workspaceId, { type: 'setAgentLimit', agentId: parsed.agentId, limit, models });
    return summaryOf(parsed.workspaceId, expect(outcome, 'settings_changed').snapshot, this.models);
  }

  /**
   * Sets (or, with `recharge: null`, removes) an automatic recharge: when available credits fall
   * below `below`, `onRecharge` is called once for that crossing with an idempotency key, and
   * when it resolves `credits` are added as a top-up under that key.
   *
   * @example
   * ```ts
   * await meter.setRecharge({ workspaceId: 'ws_1', recharge: { below: 200, credits: 2_000 } });
   * ```
   */
  async setRecharge(input: RechargeInput): Promise<WorkspaceSummary> {
    const parsed = parseInput(rechargeSchema, input);
    const recharge = parsed.recharge && {
      below: toMicros(parsed.recharge.below, 'recharge.below'),
      amount: toMicros(parsed.recharge.credits, 'recharge.credits'),
    };
    if (recharge && recharge.amount === 0) throw new InvalidInputError([{ path: 'recharge.credits', message: 'must be greater than 0' }]);
    const outcome = await this.#apply(parsed.workspaceId, { type: 'setRecharge', recharge });
    return summaryOf(parsed.workspaceId, expect(outcome, 'settings_changed').snapshot, this.models);
  }

  /**
   * Removes a workspace: its plan, balance, settings, reply records and ledger, or, with
   * `keepLedger: true`, everything but the ledger, whose agent and conversation ids are erased.
   * Idempotent; the id may then be created afresh. Needs a store with `erase` (every shipped
   * store has it).
   *
   * @example
   * ```ts
   * await meter.deleteWorkspace({ workspaceId: 'ws_1', keepLedger: true }); // a customer left; finance keeps the books
   * ```
   */
  async deleteWorkspace(input: DeleteWorkspaceInput): Promise<WorkspaceDeletion> {
    const parsed = parseInput(deleteWorkspaceSchema, input);
    const keepLedger = parsed.keepLedger ?? false;
    if (!this.storage.erase)
      throw new StorageError('deleteWorkspace', new Error('this store cannot erase workspaces (it has no erase method)'));
    const applied = await this.#batcher.submit(parsed.workspaceId, { type: 'close' });
    const { existed } = expect(applied.outcome, 'closed');
    await this.#store('erase', (storage) => storage.erase!({ workspaceId: parsed.workspaceId, keepLedger }));
    this.#batcher.forget(parsed.workspaceId);
    return { workspaceId: parsed.workspaceId, existed, keptLedger: keepLedger };
  }

  /**
   * Workspace ids, a page at a time, for admin pages and batch jobs.
   *
   * @example
   * ```ts
   * let page = await meter.listWorkspaces({ limit: 500 });
   * while (page.nextCursor) page = await meter.listWorkspaces({ cursor: page.nextCursor, limit: 500 });
   * ```
   */
  async listWorkspaces(input: ListWorkspacesInput = {}): Promise<WorkspacePage> {
    const parsed = parseInput(listWorkspacesSchema, input);
    const limit = parsed.limit ?? 100;
    if (!this.storage.listWorkspaces)
      throw new StorageError('listWorkspaces', new Error('this store cannot list workspaces (it has no listWorkspaces method)'));
    const ids = await this.#store('listWorkspaces', (storage) =>
      storage.listWorkspaces!({ limit: limit + 1, ...(parsed.cursor !== undefined && { afterId: parsed.cursor }) }),
    );
    const page = ids.slice(0, limit);
    return ids.length > limit ? { workspaces: page, nextCursor: page[page.length - 1]! } : { workspaces: page };
  }

  /**
   * Ledger entries of a workspace, oldest first, a page at a time.
   *
   * @example
   * ```ts
   * let page = await meter.ledger({ workspaceId: 'ws_1', limit: 500 });
   * while (page.nextCursor) page = await meter.ledger({ workspaceId: 'ws_1', cursor: page.nextCursor });
   * ```
   */
  async ledger(input: LedgerInput): Promise<LedgerPage> {
    const parsed = parseInput(ledgerSchema, input);
    const limit = parsed.limit ?? 100;
    const rows = await this.#store('ledger', async (storage) => {
      const start = parsed.from
        ? await seqBefore(storage, parsed.workspaceId, parsed.from.getTime(), parsed.to?.getTime(), this.#now())
        : undefined;
      const cursor = parsed.cursor === undefined ? undefined : Number(parsed.cursor);
      const afterSeq = start === undefined ? cursor : Math.max(start, cursor ?? 0);
      return storage.ledger({
        workspaceId: parsed.workspaceId,
        limit: limit + 1,
        ...(parsed.from && { from: parsed.from.getTime() }),
        ...(parsed.to && { to: parsed.to.getTime() }),
        ...(parsed.agentId !== undefined && { agentId: parsed.agentId }),
        ...(afterSeq !== undefined && { afterSeq }),
      });
    });
    const page = rows.slice(0, limit).map(ledgerEntryOf);
    const last = page[page.length - 1];
    return rows.length > limit && last ? { entries: page, nextCursor: last.id } : { entries: page };
  }

  /**
   * Credits and reply counts per agent, model or conversation over [from, to), optionally
   * split by UTC day, ISO week or month. Replies on the byo and unmetered routes count with
   * 0 credits.
   *
   * @example
   * ```ts
   * const { rows } = await meter.usage({
   *   workspaceId: 'ws_1', from: '2026-11-01T00:00:00Z', to: '2026-12-01T00:00:00Z',
   *   groupBy: 'agent', interval: 'day',
   * });
   * ```
   */
  async usage(input: UsageInput): Promise<UsageReport> {
    const parsed = parseInput(usageSchema, input);
    if (parsed.to.getTime() < parsed.from.getTime()) {
      throw new InvalidInputError([{ path: 'to', message: 'must not be before from' }]);
    }
    const query = {
      workspaceId: parsed.workspaceId,
      from: parsed.from.getTime(),
      to: parsed.to.getTime(),
      groupBy: parsed.groupBy,
      byDay: parsed.interval !== undefined,
    };
    // A store without its own aggregation is paged through, from where the window's rows begin;
    // refunds (rare) always are.
    const start = await this.#store('usage', (storage) => seqBefore(storage, query.workspaceId, query.from, query.to, this.#now()));
    const aggregates = await this.#store('usage', (storage) =>
      storage.usage ? storage.usage(query) : sumLedger(storage, query, 'reply', start),
    );
    const refunds = await this.#store('usage', (storage) => sumLedger(storage, query, 'refund', start));
    return bucketUsage(parsed, aggregates, refunds);
  }

  // ─── the reply lifecycle ─────────────────────────────────────────────────

  /**
   * Prices a reply and resolves its route. Synchronous unless a BYO key must be looked up,
   * so calls without a resolver reach the batcher in the order they were made.
   */
  #prepare(input: ReplyIdentity): Prepared | Promise<Prepared> {
    const model = this.models.require(input.model);
    const identity = {
      workspaceId: input.workspaceId,
      agentId: input.agentId,
      conversationId: input.conversationId,
      model: input.model,
      replyId: input.replyId ?? this.#newReplyId(),
    };
    const routed = this.#route(input.workspaceId, model);
    if (!(routed instanceof Promise)) return { identity, model, route: routed.route, apiKey: routed.apiKey };
    return routed.then(({ route, apiKey }) => ({ identity, model, route, apiKey }));
  }

  #route(workspaceId: string, model: ModelPrice): Routed | Promise<Routed> {
    if (!this.#byoKeys || !(model.providerBacked || this.mode === 'self-hosted')) {
      return { route: resolveRoute(this.mode, model, false), apiKey: undefined };
    }
    return this.#lookUpKey(workspaceId, model);
  }

  async #lookUpKey(workspaceId: string, model: ModelPrice): Promise<Routed> {
    let apiKey: string | undefined;
    try {
      const key = await this.#byoKeys!({ workspaceId, provider: model.provider });
      apiKey = typeof key === 'string' && key.length > 0 ? key : undefined;
    } catch {
      // The resolver's error may quote the key: report only that it failed.
      throw new ProviderError('(none)', model.provider, new Error(`the BYO key lookup for "${model.provider}" failed`));
    }
    return { route: resolveRoute(this.mode, model, apiKey !== undefined), apiKey };
  }

  /** Places the hold (renewing the period first when it has ended). */
  async #hold(prepared: Prepared, forReply: boolean): Promise<{ record: ReplyRecord; replayed: boolean }> {
    const { identity, model, route } = prepared;
    const applied = await this.#applied(identity.workspaceId, {
      type: 'reserve',
      reply: {
        replyId: identity.replyId,
        agentId: identity.agentId,
        conversationId: identity.conversationId,
        model: model.id,
        route,
        amount: routeCost(route, model),
        priceVersion: this.models.version,
      },
      ttlMs: this.holdTtlMs,
      requireAccount: this.mode === 'cloud',
    });
    const outcome = applied.outcome;
    switch (outcome.status) {
      case 'reserved':
        return { record: outcome.record, replayed: false };
      case 'replay':
        return { record: this.#replay(outcome.record, identity, forReply), replayed: true };
      case 'insufficient':
        throw await this.#blocked(outcome.record, outcome.available, outcome.renewsAt, applied.at);
      case 'agent_limited': {
        const { agent } = outcome;
        throw new AgentLimitError(
          identity.workspaceId,
          agent.agentId,
          identity.replyId,
          fromMicros(agent.limit ?? 0),
          fromMicros(agent.spent + agent.held),
          fromMicros(outcome.record.amount),
          new Date(outcome.renewsAt),
        );
      }
      case 'model_not_allowed':
        throw new ModelNotAllowedError(identity.workspaceId, identity.agentId, model.id, identity.replyId);
      default:
        throw new WorkspaceNotFoundError(identity.workspaceId);
    }
  }

  #replay(existing: ReplyRecord, identity: Required<ReplyIdentity>, forReply: boolean): ReplyRecord {
    const asked = { model: existing.heldModel, agentId: existing.agentId, conversationId: existing.conversationId };
    for (const field of ['model', 'agentId', 'conversationId'] as const) {
      if (asked[field] !== identity[field]) throw new IdempotencyConflictError(`replyId ${identity.replyId}`, field);
    }
    switch (existing.status) {
      case 'settled':
        return existing;
      case 'held':
        if (forReply)
          throw new ReplyStateError('REPLY_IN_PROGRESS', existing.replyId, `Reply ${existing.replyId} is in progress elsewhere`);
        return existing;
      case 'refused':
        if (existing.refusedFor === 'model')
          throw new ModelNotAllowedError(existing.workspaceId, existing.agentId, existing.model, existing.replyId);
        if (existing.refusedFor === 'agent-limit') {
          throw new AgentLimitError(
            existing.workspaceId,
            existing.agentId,
            existing.replyId,
            undefined,
            undefined,
            fromMicros(existing.amount),
            undefined,
          );
        }
        throw new InsufficientCreditsError({
          workspaceId: existing.workspaceId,
          model: existing.model,
          replyId: existing.replyId,
          required: fromMicros(existing.amount),
          available: fromMicros(0),
          renewsAt: undefined,
        });
      default:
        throw stateError(existing);
    }
  }

  async #blocked(record: ReplyRecord, available: number, renewsAt: number, at: number): Promise<InsufficientCreditsError> {
    const error = new InsufficientCreditsError({
      workspaceId: record.workspaceId,
      model: record.model,
      replyId: record.replyId,
      required: fromMicros(record.amount),
      available: fromMicros(available),
      renewsAt: new Date(renewsAt),
    });
    if (this.#events.has('reply.blocked')) {
      await this.#events.emit({
        type: 'reply.blocked',
        workspaceId: record.workspaceId,
        agentId: record.agentId,
        conversationId: record.conversationId,
        model: record.model,
        replyId: record.replyId,
        required: error.required,
        available: error.available,
        renewsAt: error.renewsAt,
        at: new Date(at),
      });
    }
    return error;
  }

  /** Charges a held reply; ids already validated. */
  async #settle(workspaceId: string, replyId: string, model: string | undefined, usage: SettleInput['usage']): Promise<Settlement> {
    const price = model === undefined ? undefined : this.models.require(model);
    const outcome = await this.#apply(workspaceId, {
      type: 'settle',
      replyId,
      chargeAt: price && { model: price.id, amount: price.micros, priceVersion: this.models.version },
      usage,
    });
    switch (outcome.status) {
      case 'settled': {
        const settlement = settlementOf(outcome.record, outcome.replayed);
        if (!outcome.replayed && this.#events.has('reply.charged')) {
          await this.#events.emit({
            type: 'reply.charged',
            workspaceId: settlement.workspaceId,
            agentId: settlement.agentId,
            conversationId: settlement.conversationId,
            model: settlement.model,
            replyId: settlement.replyId,
            route: settlement.route,
            credits: settlement.credits,
            entryId: settlement.entryId,
            at: settlement.at,
          });
        }
        return settlement;
      }
      case 'reply_state':
        throw stateError(outcome.record);
      default:
        throw replyNotFound(workspaceId, replyId);
    }
  }

  async #releaseQuietly(record: ReplyRecord): Promise<void> {
    try {
      await this.release({ workspaceId: record.workspaceId, replyId: record.replyId });
    } catch {
      // The hold lapses after holdTtlMs anyway; the caller needs the provider's error, not this one.
    }
  }

  #keepAlive(record: ReplyRecord): () => void {
    return keepHoldAlive(this.holdTtlMs, () =>
      this.#apply(record.workspaceId, { type: 'extend', replyId: record.replyId, ttlMs: this.holdTtlMs }),
    );
  }

  /** The price-table model that produced the reply, when the provider named another one. */
  #producedBy(result: ProviderResult, prepared: Prepared): string | undefined {
    if (result.model === undefined || result.model === prepared.model.id) return undefined;
    return this.models.get(result.model)?.id;
  }

  async #unmetered(prepared: Prepared, call: () => Promise<ProviderResult>, signal: AbortSignal | undefined): Promise<ProviderResult> {
    try {
      return await raceAbort(call(), signal);
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      throw new ProviderError(prepared.identity.replyId, prepared.model.provider, error, [prepared.apiKey]);
    }
  }

  #unmeteredSettlement(prepared: Prepared): Settlement {
    const { identity } = prepared;
    return {
      replyId: identity.replyId,
      workspaceId: identity.workspaceId,
      agentId: identity.agentId,
      conversationId: identity.conversationId,
      model: identity.model,
      route: prepared.route,
      credits: fromMicros(0),
      entryId: '',
      at: new Date(this.#now()),
      priceVersion: this.models.version,
      replayed: false,
    };
  }

  #provider(model: ModelPrice): ReplyProvider {
    const provider = this.#providers.get(model.provider);
    if (!provider) throw new ProviderNotFoundError(model.provider);
    return provider;
  }

  // ─── plumbing ──────────────────────────────────────────────────────────

  /** The workspace as of now; throws when it does not exist. */
  async #read(workspaceId: string) {
    return expect(await this.#apply(workspaceId, { type: 'read' }), 'ok').snapshot;
  }

  async #apply(workspaceId: string, command: Command): Promise<Outcome> {
    return (await this.#applied(workspaceId, command)).outcome;
  }

  /** Runs a command through the batcher and announces what it raised before returning. */
  async #applied(workspaceId: string, command: Command) {
    const applied = await this.#batcher.submit(workspaceId, command);
    if (applied.outcome.status === 'workspace_not_found') throw new WorkspaceNotFoundError(workspaceId);
    for (const event of applied.events) await this.#announce(event, applied.at);
    return applied;
  }

  async #announce(event: CoreEvent, at: number): Promise<void> {
    switch (event.type) {
      case 'period.renewed':
        if (!this.#events.has(event.type)) return;
        return this.#events.emit({
          type: 'period.renewed',
          workspaceId: event.workspaceId,
          plan: event.plan,
          periodStart: new Date(event.periodStart),
          periodEnd: new Date(event.periodEnd),
          allotment: fromMicros(event.allotment),
          expired: fromMicros(event.expired),
          carried: fromMicros(event.carried),
          at: new Date(at),
        });
      case 'balance.low':
        if (!this.#events.has(event.type)) return;
        return this.#events.emit({
          type: 'balance.low',
          workspaceId: event.workspaceId,
          threshold: event.threshold,
          used: fromMicros(event.used),
          allotment: fromMicros(event.allotment),
          periodStart: new Date(event.periodStart),
          renewsAt: new Date(event.periodEnd),
          at: new Date(at),
        });
      case 'balance.below':
        if (!this.#events.has(event.type)) return;
        return this.#events.emit({
          type: 'balance.below',
          workspaceId: event.workspaceId,
          level: fromMicros(event.level),
          available: fromMicros(event.available),
          periodStart: new Date(event.periodStart),
          renewsAt: new Date(event.periodEnd),
          at: new Date(at),
        });
      case 'recharge.requested':
        return this.#recharge(event, at);
    }
  }

  /** Announces a recharge, charges the customer through `onRecharge`, then adds the credits once. */
  async #recharge(event: Extract<CoreEvent, { type: 'recharge.requested' }>, at: number): Promise<void> {
    const credits = fromMicros(event.amount);
    await this.#events.emit({
      type: 'recharge.requested',
      workspaceId: event.workspaceId,
      rechargeId: event.rechargeId,
      credits,
      below: fromMicros(event.below),
      available: fromMicros(event.available),
      at: new Date(at),
    });
    if (!this.#onRecharge) return;
    try {
      await this.#onRecharge({ workspaceId: event.workspaceId, rechargeId: event.rechargeId, credits });
      await this.#apply(event.workspaceId, { type: 'topUp', grantId: event.rechargeId, amount: event.amount, expiresAt: null });
    } catch (error) {
      await this.#events.emit({
        type: 'recharge.failed',
        workspaceId: event.workspaceId,
        rechargeId: event.rechargeId,
        credits,
        error: scrubError(error),
        at: new Date(at),
      });
    }
  }

  #now(): number {
    if (!this.#clock) return Date.now();
    const at = this.#clock();
    const ms = at instanceof Date ? at.getTime() : Number.NaN;
    if (!Number.isFinite(ms)) throw new InvalidInputError([{ path: 'clock', message: 'must return a valid Date' }]);
    return ms;
  }

  /** Runs a store call, migrating first, turning driver failures into `STORAGE_ERROR`. */
  async #store<T>(operation: string, call: (storage: CreditStorage) => Promise<T>): Promise<T> {
    try {
      if (!this.#migration.done) await this.#migration();
      const pending = call(this.storage);
      return this.#timeoutMs === undefined ? await pending : await withTimeout(pending, this.#timeoutMs, operation);
    } catch (error) {
      if (CreditsError.is(error)) throw error;
      throw new StorageError(operation, error);
    }
  }
}

/** Narrows an outcome the caller knows it must be (workspace_not_found was thrown already). */
function expect<S extends Outcome['status']>(outcome: Outcome, status: S): Extract<Outcome, { status: S }> {
  if (outcome.status !== status) throw new StorageError('apply', new Error(`unexpected outcome ${outcome.status}`));
  return outcome as Extract<Outcome, { status: S }>;
}

const RESULT_KEYS = new Set(['output', 'model', 'usage']);

/** A provider's answer must be `{ output, model?, usage? }`; anything else is its failure. */
function checkResult(value: unknown, prepared: Prepared): ProviderResult {
  const fail = (why: string) =>
    new ProviderError(prepared.identity.replyId, prepared.model.provider, new Error(`the provider returned ${why}`));
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw fail('no result object');
  if (!Object.hasOwn(value, 'output')) throw fail('a result without `output`');
  const result = value as Record<string, unknown>;
  for (const key of Object.keys(result)) if (!RESULT_KEYS.has(key)) throw fail(`a result with an unknown field "${key}"`);
  if (result.model !== undefined && typeof result.model !== 'string') throw fail('a `model` that is not a string');
  if (result.usage !== undefined) {
    const usage = result.usage as Record<string, unknown> | null;
    if (typeof usage !== 'object' || usage === null) throw fail('a `usage` that is not an object');
    for (const key of ['inputTokens', 'outputTokens']) {
      const count = usage[key];
      if (count !== undefined && !(Number.isSafeInteger(count) && (count as number) >= 0))
        throw fail(`a \`usage.${key}\` that is not a count`);
    }
    return {
      output: result.output,
      ...(result.model !== undefined && { model: result.model as string }),
      usage: {
        ...(usage.inputTokens !== undefined && { inputTokens: usage.inputTokens as number }),
        ...(usage.outputTokens !== undefined && { outputTokens: usage.outputTokens as number }),
      },
    };
  }
  return result as unknown as ProviderResult;
}

function planAllotment(plan: Plan, allotment: CreditsInput | undefined): number {
  if (plan.monthlyMicros !== null) {
    if (allotment !== undefined) {
      throw new InvalidInputError([
        { path: 'allotment', message: `plan "${plan.id}" has a fixed allotment; give one only for a custom plan` },
      ]);
    }
    return plan.monthlyMicros;
  }
  if (allotment === undefined) {
    throw new InvalidInputError([{ path: 'allotment', message: `plan "${plan.id}" is custom: an allotment is required` }]);
  }
  return toMicros(allotment, 'allotment');
}

function requestOf(prepared: Prepared, input: unknown): ReplyRequest {
  const { identity } = prepared;
  return {
    model: identity.model,
    input,
    workspaceId: identity.workspaceId,
    agentId: identity.agentId,
    conversationId: identity.conversationId,
  };
}

function contextOf(apiKey: string | undefined, signal: AbortSignal | undefined): ReplyContext {
  if (apiKey === undefined) return signal === undefined ? {} : { signal };
  return signal === undefined ? { apiKey } : { apiKey, signal };
}

function overflow(field: string): InvalidInputError {
  return new InvalidInputError([
    {
      path: field,
      message: `would take the balance past the largest amount a store holds (${Math.floor(Number.MAX_SAFE_INTEGER / MICROS_PER_CREDIT)} credits)`,
    },
  ]);
}

/** A store call that outlived `storageTimeoutMs`. */
class StorageTimeout extends Error {}

async function withTimeout<T>(pending: Promise<T>, ms: number, operation: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new StorageTimeout(`${operation} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([pending, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
