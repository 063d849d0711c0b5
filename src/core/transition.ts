/**
 * The transition core: every credit rule, written once. A {@link Transition} takes a
 * workspace as loaded (state, records, lapsed holds), applies commands to a private draft
 * of it in order, and hands back what changed: the new state, the ledger rows to append,
 * the records to write and the events to emit. No I/O, no clock, no randomness: the caller
 * passes the time, and the same inputs always give the same outputs.
 */
import { periodBounds, periodIndexAt } from './billing-period.js';
import { MAX_MICROS } from './credits.js';
import { availableOf, copyGrant, holdFromGrants, insertGrant } from './grants.js';
import { type LedgerRowFields, ledgerRow } from './ledger-row.js';
import type { PlanCatalog } from './plan-catalog.js';
import type {
  AccountState,
  AdjustmentRecord,
  AgentState,
  Allocation,
  GrantKind,
  GrantState,
  LedgerKind,
  LedgerRow,
  RefundRecord,
  ReplyRecord,
  Route,
  StoredRecord,
  TokenUsage,
  TopUpRecord,
  WorkspaceState,
} from './state.js';
import { dayOf } from './usage-aggregate.js';

/** The host's settings the rules depend on. */
export interface Rules {
  readonly plans: PlanCatalog;
  /** Shares of the allotment whose crossing is announced once per period, ascending. */
  readonly thresholds: readonly number[];
  /** Available balances (micro-credits) whose crossing downwards is announced once per period. */
  readonly levels: readonly number[];
}

/** A reply as the meter priced it, before it is held. */
export interface ReplyDraft {
  replyId: string;
  agentId: string;
  conversationId: string;
  model: string;
  route: Route;
  amount: number;
  priceVersion: string;
}

/** The model that produced a reply, priced, when it differs from the one held for. */
export interface ChargeAt {
  model: string;
  amount: number;
  priceVersion: string;
}

/** What can be asked of a workspace. */
export type Command =
  | { type: 'create'; plan: string; allotment: number; anchor: number }
  | { type: 'read' }
  | { type: 'reserve'; reply: ReplyDraft; ttlMs: number; requireAccount: boolean }
  | { type: 'settle'; replyId: string; chargeAt?: ChargeAt | undefined; usage?: TokenUsage | undefined }
  | { type: 'release'; replyId: string }
  | { type: 'extend'; replyId: string; ttlMs: number }
  | { type: 'changePlan'; plan: string; allotment: number }
  | { type: 'topUp'; grantId: string; amount: number; expiresAt: number | null }
  | { type: 'refund'; refundId: string; replyId: string; amount: number | null; reason: string }
  | { type: 'adjust'; adjustmentId: string; amount: number; reason: string; expiresAt: number | null }
  | { type: 'setAgentLimit'; agentId: string; limit: number | null; models: string[] | null }
  | { type: 'setRecharge'; recharge: { below: number; amount: number } | null }
  | { type: 'close' };

/** A workspace's money as of a command. */
export interface Snapshot {
  account: AccountState;
  /** Micro-credits that can be spent now. */
  available: number;
}

/** What a command did. */
export type Outcome =
  | { status: 'workspace_not_found' }
  | { status: 'exists' }
  | { status: 'created'; snapshot: Snapshot }
  | { status: 'ok'; snapshot: Snapshot }
  | { status: 'reserved'; record: ReplyRecord; available: number }
  | { status: 'replay'; record: ReplyRecord }
  | { status: 'insufficient'; record: ReplyRecord; available: number; renewsAt: number }
  | { status: 'settled'; record: ReplyRecord; replayed: boolean; account: AccountState | null }
  | { status: 'released'; record: ReplyRecord; replayed: boolean }
  | { status: 'extended'; record: ReplyRecord }
  | { status: 'reply_not_found' }
  | { status: 'reply_state'; record: ReplyRecord }
  | { status: 'plan_changed'; immediate: boolean; increase: number; snapshot: Snapshot }
  | { status: 'overflow' }
  | { status: 'granted'; snapshot: Snapshot }
  | { status: 'topup_exists'; topUp: TopUpRecord; snapshot: Snapshot }
  | { status: 'agent_limited'; record: ReplyRecord; agent: AgentState; renewsAt: number }
  | { status: 'model_not_allowed'; record: ReplyRecord; agent: AgentState }
  | { status: 'refunded'; refund: RefundRecord; reply: ReplyRecord; replayed: boolean; snapshot: Snapshot | null }
  | { status: 'refund_too_large'; refundable: number }
  | { status: 'conflict'; field: string }
  | { status: 'adjusted'; adjustment: AdjustmentRecord; replayed: boolean; snapshot: Snapshot }
  | { status: 'debit_too_large'; required: number; available: number; renewsAt: number }
  | { status: 'settings_changed'; snapshot: Snapshot }
  | { status: 'closed'; existed: boolean };

/** Something the host hears about, in micro-credits. */
export type CoreEvent =
  | {
      type: 'period.renewed';
      workspaceId: string;
      plan: string;
      periodStart: number;
      periodEnd: number;
      allotment: number;
      expired: number;
      carried: number;
    }
  | { type: 'balance.low'; workspaceId: string; threshold: number; used: number; allotment: number; periodStart: number; periodEnd: number }
  | { type: 'balance.below'; workspaceId: string; level: number; available: number; periodStart: number; periodEnd: number }
  | { type: 'recharge.requested'; workspaceId: string; rechargeId: string; amount: number; below: number; available: number };

/** What a transition changed: the share of one workspace in a commit. */
export interface TransitionResult {
  state: WorkspaceState;
  ledger: LedgerRow[];
  records: StoredRecord[];
}

/** Reply ids and grant ids live in one key space per workspace. */
export const replyKey = (replyId: string): string => `reply:${replyId}`;
export const topUpKey = (grantId: string): string => `topup:${grantId}`;
export const refundKey = (refundId: string): string => `refund:${refundId}`;
export const adjustmentKey = (adjustmentId: string): string => `adjustment:${adjustmentId}`;
export const ledgerDayKey = (day: number): string => `ledgerday:${day}`;

/**
 * The held replies among lapsed records, in the order the core ends them: by lapse time, then
 * reply id. Ending the first of them at the last one's instant, then the others, gives what
 * ending all of them at once gives.
 */
export function lapsedHolds(lapsed: readonly StoredRecord[]): ReplyRecord[] {
  return lapsed
    .map((record) => record.value)
    .filter((value): value is ReplyRecord => value.type === 'reply' && value.status === 'held')
    .sort((a, b) => a.expiresAt - b.expiresAt || (a.replyId < b.replyId ? -1 : 1));
}

const NO_EVENTS: readonly CoreEvent[] = Object.freeze([]);

/**
 * Applies commands to one workspace. Create it from what the store loaded, call
 * {@link Transition.apply} for each command in arrival order, then commit
 * {@link Transition.result} if {@link Transition.changed}.
 */
export class Transition {
  readonly #rules: Rules;
  readonly #now: number;
  readonly #writtenBy: number;
  readonly #state: WorkspaceState;
  readonly #records = new Map<string, StoredRecord>();
  readonly #written = new Map<string, StoredRecord>();
  readonly #rows: LedgerRow[] = [];
  #events: CoreEvent[] = [];
  #changed = false;
  readonly #ownAgents = new Set<AgentState>();

  /**
   * @param writtenBy the number the state and every reply record this transition writes carry
   *   ({@link ReplyRecord.writtenBy}): the meter draws one per commit
   */
  constructor(
    workspaceId: string,
    loaded: { state: WorkspaceState | null; records: readonly StoredRecord[]; lapsed: readonly StoredRecord[] },
    now: number,
    rules: Rules,
    writtenBy: number,
  ) {
    this.#rules = rules;
    this.#now = now;
    this.#writtenBy = writtenBy;
    this.#state = loaded.state ? copyState(loaded.state) : { workspaceId, account: null, ledgerSeq: 0, ledgerMarks: 0 };
    for (const record of loaded.records) this.#records.set(record.key, record);
    for (const record of loaded.lapsed) this.#records.set(record.key, record);
    this.#advance(loaded.lapsed);
  }

  /** True when something must be committed. */
  get changed(): boolean {
    return this.#changed;
  }

  /** Items {@link Transition.result} would carry: the state, each ledger row and each record. */
  get size(): number {
    return 1 + this.#rows.length + this.#written.size;
  }

  /** The changes to commit; the state carries the commit's number ({@link WorkspaceState.writtenBy}). */
  result(): TransitionResult {
    this.#state.writtenBy = this.#writtenBy;
    return { state: this.#state, ledger: this.#rows, records: [...this.#written.values()] };
  }

  /** Events raised since the last call (the first call also gets those of catching up in time). */
  takeEvents(): readonly CoreEvent[] {
    const events = this.#events;
    // Most commands raise none: one shared empty list instead of an array each.
    if (events.length === 0) return NO_EVENTS;
    this.#events = [];
    return events;
  }

  /** Applies one command at the transition's time. */
  apply(command: Command): Outcome {
    const account = this.#state.account;
    const before = account ? availableOf(account.grants) : undefined;
    const outcome = this.#dispatch(command);
    if (account && before !== undefined && this.#state.account === account) this.#watchBalance(account, before);
    return outcome;
  }

  #dispatch(command: Command): Outcome {
    switch (command.type) {
      case 'create':
        return this.#create(command.plan, command.allotment, command.anchor);
      case 'read':
        return this.#state.account ? { status: 'ok', snapshot: this.#snapshot(this.#state.account) } : { status: 'workspace_not_found' };
      case 'reserve':
        return this.#reserve(command.reply, command.ttlMs, command.requireAccount);
      case 'settle':
        return this.#settle(command.replyId, command.chargeAt, command.usage);
      case 'release':
        return this.#release(command.replyId);
      case 'extend':
        return this.#extend(command.replyId, command.ttlMs);
      case 'changePlan':
        return this.#changePlan(command.plan, command.allotment);
      case 'topUp':
        return this.#topUp(command.grantId, command.amount, command.expiresAt);
      case 'refund':
        return this.#refund(command.refundId, command.replyId, command.amount, command.reason);
      case 'adjust':
        return this.#adjust(command.adjustmentId, command.amount, command.reason, command.expiresAt);
      case 'setAgentLimit':
        return this.#setAgentLimit(command.agentId, command.limit, command.models);
      case 'setRecharge':
        return this.#setRecharge(command.recharge);
      case 'close':
        return this.#close();
    }
  }

  // ─── commands ───────────────────────────────────────────────────────────

  #create(plan: string, allotment: number, anchor: number): Outcome {
    if (this.#state.account) return { status: 'exists' };
    const now = this.#now;
    // A past start begins in the period that contains now: there is no history to replay.
    const bounds = periodBounds(anchor, periodIndexAt(anchor, now));
    const account: AccountState = {
      plan,
      allotment,
      pendingPlan: null,
      pendingAllotment: null,
      anchor,
      periodIndex: bounds.index,
      periodStart: bounds.start,
      periodEnd: bounds.end,
      usedThisPeriod: 0,
      grants: [],
      held: 0,
      alerts: [],
      agents: [],
      recharge: null,
      createdAt: now,
    };
    this.#state.account = account;
    this.#grantAllotment(account, allotment, now);
    return { status: 'created', snapshot: this.#snapshot(account) };
  }

  #reserve(draft: ReplyDraft, ttlMs: number, requireAccount: boolean): Outcome {
    const existing = this.#reply(draft.replyId);
    if (existing) return { status: 'replay', record: existing };
    const account = this.#state.account;
    if (requireAccount && !account) return { status: 'workspace_not_found' };
    const now = this.#now;
    const record: ReplyRecord = {
      type: 'reply',
      replyId: draft.replyId,
      workspaceId: this.#state.workspaceId,
      agentId: draft.agentId,
      conversationId: draft.conversationId,
      model: draft.model,
      heldModel: draft.model,
      route: draft.route,
      amount: draft.amount,
      priceVersion: draft.priceVersion,
      status: 'held',
      createdAt: now,
      expiresAt: now + ttlMs,
      finishedAt: null,
      entrySeq: null,
      allocations: [],
      paidFrom: [],
      refunded: 0,
      refusedFor: null,
    };
    const agent = account ? agentOf(account, draft.agentId) : undefined;
    if (account && agent?.models && !agent.models.includes(draft.model)) {
      this.#refuse(record, 'model');
      return { status: 'model_not_allowed', record, agent: { ...agent } };
    }
    if (account && agent && agent.limit !== null && draft.amount > 0 && agent.spent + agent.held + draft.amount > agent.limit) {
      this.#refuse(record, 'agent-limit');
      return { status: 'agent_limited', record, agent: { ...agent }, renewsAt: account.periodEnd };
    }
    if (account && draft.amount > 0) {
      const available = availableOf(account.grants);
      if (available < draft.amount) {
        this.#refuse(record, 'credits');
        return { status: 'insufficient', record, available, renewsAt: account.periodEnd };
      }
      record.allocations = holdFromGrants(account.grants, draft.amount);
      account.held += draft.amount;
      this.#agent(account, draft.agentId, true)!.held += draft.amount;
      this.#write(record);
      return { status: 'reserved', record, available: available - draft.amount };
    }
    this.#write(record);
    return { status: 'reserved', record, available: account ? availableOf(account.grants) : 0 };
  }

  #settle(replyId: string, chargeAt: ChargeAt | undefined, usage: TokenUsage | undefined): Outcome {
    const found = this.#reply(replyId);
    if (!found) return { status: 'reply_not_found' };
    if (found.status === 'settled') return { status: 'settled', record: found, replayed: true, account: this.#state.account };
    if (found.status !== 'held') return { status: 'reply_state', record: found };
    const account = this.#state.account;
    const record: ReplyRecord = { ...found, allocations: [] };
    if (chargeAt && chargeAt.model !== found.model) {
      record.model = chargeAt.model;
      record.priceVersion = chargeAt.priceVersion;
      if (found.route === 'credits' && account) {
        // Cheaper: the difference goes back. Dearer: the difference is taken only as far as
        // the balance reaches, so the balance never goes negative.
        const wanted = chargeAt.amount - found.amount;
        record.amount = found.amount + (wanted <= 0 ? wanted : Math.min(wanted, availableOf(account.grants)));
      }
    }
    if (account) record.paidFrom = this.#charge(account, found, record.amount);
    record.status = 'settled';
    record.finishedAt = this.#now;
    const row = this.#append('reply', 0 - record.amount, this.#now, {
      replyId: record.replyId,
      agentId: record.agentId,
      conversationId: record.conversationId,
      model: record.model,
      route: record.route,
      priceVersion: record.priceVersion,
      inputTokens: usage?.inputTokens ?? null,
      outputTokens: usage?.outputTokens ?? null,
    });
    record.entrySeq = row.seq;
    this.#write(record);
    if (account && record.amount > 0) {
      const before = account.usedThisPeriod;
      account.usedThisPeriod += record.amount;
      this.#agent(account, record.agentId, true)!.spent += record.amount;
      this.#announceThresholds(account, before);
    }
    return { status: 'settled', record, replayed: false, account };
  }

  /**
   * Turns a hold into a charge of `amount`, taken from the grants live now in spending order:
   * the hold's credits go back first, so a release since the hold was taken never strands
   * purchased credits behind an allotment that expires sooner. Credits held from a grant that
   * has expired since stay spent (they were set aside for this reply); any of them the charge
   * does not need expire now. Returns the grants that paid.
   */
  #charge(account: AccountState, hold: ReplyRecord, amount: number): Allocation[] {
    const paid: Allocation[] = [];
    let setAside = 0;
    for (const { grantId, amount: part } of hold.allocations) {
      const grant = account.grants.find((candidate) => candidate.grantId === grantId);
      if (grant) {
        grant.held -= part;
        grant.remaining += part;
        continue;
      }
      const used = Math.min(part, amount - setAside);
      if (used > 0) paid.push({ grantId, amount: used });
      if (part > used) this.#append('expiry', used - part, this.#now, { grantId });
      setAside += used;
    }
    account.held -= hold.amount;
    const agent = this.#agent(account, hold.agentId, false);
    if (agent) agent.held -= hold.amount;
    for (const allocation of takeFromGrants(account.grants, amount - setAside)) paid.push(allocation);
    prune(account);
    return paid;
  }

  #release(replyId: string): Outcome {
    const found = this.#reply(replyId);
    if (!found) return { status: 'reply_not_found' };
    if (found.status === 'released') return { status: 'released', record: found, replayed: true };
    if (found.status !== 'held') return { status: 'reply_state', record: found };
    return { status: 'released', record: this.#endHold(found, 'released', this.#now), replayed: false };
  }

  #extend(replyId: string, ttlMs: number): Outcome {
    const found = this.#reply(replyId);
    if (!found) return { status: 'reply_not_found' };
    if (found.status !== 'held') return { status: 'reply_state', record: found };
    const expiresAt = this.#now + ttlMs;
    if (expiresAt <= found.expiresAt) return { status: 'extended', record: found };
    const record = { ...found, expiresAt };
    this.#write(record);
    return { status: 'extended', record };
  }

  #changePlan(plan: string, allotment: number): Outcome {
    const account = this.#state.account;
    if (!account) return { status: 'workspace_not_found' };
    const immediate = allotment >= account.allotment;
    const increase = immediate ? allotment - account.allotment : 0;
    if (this.#total(account) + increase > MAX_MICROS) return { status: 'overflow' };
    if (immediate) {
      account.plan = plan;
      account.allotment = allotment;
      account.pendingPlan = null;
      account.pendingAllotment = null;
      if (increase > 0) {
        const current = account.grants.find((grant) => grant.grantId === periodGrantId(account.periodIndex));
        if (current) {
          current.amount += increase;
          current.remaining += increase;
        } else {
          insertGrant(account.grants, allotmentGrant(account, increase, this.#now));
        }
      }
    } else {
      account.pendingPlan = plan;
      account.pendingAllotment = allotment;
    }
    this.#append('plan_change', increase, this.#now, { plan });
    return { status: 'plan_changed', immediate, increase, snapshot: this.#snapshot(account) };
  }

  #topUp(grantId: string, amount: number, expiresAt: number | null): Outcome {
    const account = this.#state.account;
    if (!account) return { status: 'workspace_not_found' };
    const key = topUpKey(grantId);
    const existing = this.#records.get(key);
    if (existing) return { status: 'topup_exists', topUp: existing.value as TopUpRecord, snapshot: this.#snapshot(account) };
    if (this.#total(account) + amount > MAX_MICROS) return { status: 'overflow' };
    const now = this.#now;
    const topUp: TopUpRecord = { type: 'topup', grantId, amount, expiresAt, createdAt: now };
    this.#put({ key, holdExpiresAt: null, value: topUp });
    insertGrant(account.grants, newGrant(key, 'topup', amount, expiresAt, now));
    this.#append('topup', amount, now, { grantId: key });
    return { status: 'granted', snapshot: this.#snapshot(account) };
  }

  #refund(refundId: string, replyId: string, amount: number | null, reason: string): Outcome {
    const key = refundKey(refundId);
    const existing = this.#records.get(key)?.value as RefundRecord | undefined;
    const reply = this.#reply(replyId);
    if (existing) {
      if (existing.replyId !== replyId) return { status: 'conflict', field: 'replyId' };
      if (amount !== null && existing.amount !== amount) return { status: 'conflict', field: 'credits' };
      return { status: 'refunded', refund: existing, reply: reply!, replayed: true, snapshot: this.#maybeSnapshot() };
    }
    if (!reply || reply.status === 'refused') return { status: 'reply_not_found' };
    if (reply.status !== 'settled') return { status: 'reply_state', record: reply };
    const refundable = reply.amount - reply.refunded;
    const credits = amount ?? refundable;
    if (credits <= 0 || credits > refundable) return { status: 'refund_too_large', refundable };
    const account = this.#state.account!;
    const now = this.#now;
    // Back to the grants that paid while they are live, the latest-expiring first; the rest
    // becomes a grant that expires with the current period.
    let left = credits;
    for (let i = reply.paidFrom.length - 1; i >= 0 && left > 0; i--) {
      const grant = account.grants.find((candidate) => candidate.grantId === reply.paidFrom[i]!.grantId);
      if (!grant) continue;
      const part = Math.min(left, reply.paidFrom[i]!.amount);
      grant.remaining += part;
      left -= part;
    }
    if (left > 0) insertGrant(account.grants, newGrant(key, 'refund', left, account.periodEnd, now));
    const refund: RefundRecord = { type: 'refund', refundId, replyId, amount: credits, reason, createdAt: now };
    this.#put({ key, holdExpiresAt: null, value: refund });
    const refunded: ReplyRecord = { ...reply, refunded: reply.refunded + credits };
    this.#write(refunded);
    this.#append('refund', credits, now, {
      replyId,
      agentId: reply.agentId,
      conversationId: reply.conversationId,
      model: reply.model,
      route: reply.route,
      priceVersion: reply.priceVersion,
      grantId: left > 0 ? key : null,
      reason,
    });
    account.usedThisPeriod -= Math.min(credits, account.usedThisPeriod);
    const agent = this.#agent(account, reply.agentId, false);
    if (agent) agent.spent -= Math.min(credits, agent.spent);
    return { status: 'refunded', refund, reply: refunded, replayed: false, snapshot: this.#snapshot(account) };
  }

  #adjust(adjustmentId: string, amount: number, reason: string, expiresAt: number | null): Outcome {
    const account = this.#state.account;
    if (!account) return { status: 'workspace_not_found' };
    const key = adjustmentKey(adjustmentId);
    const existing = this.#records.get(key)?.value as AdjustmentRecord | undefined;
    if (existing) {
      if (existing.amount !== amount) return { status: 'conflict', field: 'credits' };
      if (existing.expiresAt !== expiresAt) return { status: 'conflict', field: 'expiresAt' };
      return { status: 'adjusted', adjustment: existing, replayed: true, snapshot: this.#snapshot(account) };
    }
    const now = this.#now;
    if (amount > 0) {
      if (this.#total(account) + amount > MAX_MICROS) return { status: 'overflow' };
      insertGrant(account.grants, newGrant(key, 'adjustment', amount, expiresAt, now));
    } else {
      const available = availableOf(account.grants);
      if (available < -amount) return { status: 'debit_too_large', required: -amount, available, renewsAt: account.periodEnd };
      takeFromGrants(account.grants, -amount);
      prune(account);
    }
    const adjustment: AdjustmentRecord = { type: 'adjustment', adjustmentId, amount, reason, expiresAt, createdAt: now };
    this.#put({ key, holdExpiresAt: null, value: adjustment });
    this.#append('adjustment', amount, now, { grantId: amount > 0 ? key : null, reason });
    return { status: 'adjusted', adjustment, replayed: false, snapshot: this.#snapshot(account) };
  }

  #setAgentLimit(agentId: string, limit: number | null, models: string[] | null): Outcome {
    const account = this.#state.account;
    if (!account) return { status: 'workspace_not_found' };
    const agent = this.#agent(account, agentId, true)!;
    agent.limit = limit;
    agent.models = models;
    this.#changed = true;
    return { status: 'settings_changed', snapshot: this.#snapshot(account) };
  }

  #setRecharge(recharge: { below: number; amount: number } | null): Outcome {
    const account = this.#state.account;
    if (!account) return { status: 'workspace_not_found' };
    const count = account.recharge?.count ?? 0;
    account.recharge = recharge && { below: recharge.below, amount: recharge.amount, armed: true, count };
    this.#changed = true;
    return { status: 'settings_changed', snapshot: this.#snapshot(account) };
  }

  /**
   * Ends a workspace's account: its plan, grants and settings go; the ledger numbering stays,
   * so a ledger kept after erasure never collides with the rows of a workspace created afresh
   * under the same id.
   */
  #close(): Outcome {
    const account = this.#state.account;
    if (account) {
      // What was left (held credits included: their replies go with the workspace) is written
      // off, so a kept ledger still sums to the balance: zero, until the id is created afresh.
      const left = availableOf(account.grants) + account.held;
      if (left > 0) this.#append('expiry', -left, this.#now, { reason: 'workspace deleted' });
      this.#state.account = null;
      this.#changed = true;
    }
    // Erasing takes the records, day marks included, and may keep the rows (of self-hosted
    // replies too, with no account): they are unmarked from here on.
    if (this.#state.ledgerSeq > 0 && this.#state.ledgerMarks !== null) {
      this.#state.ledgerMarks = null;
      this.#changed = true;
    }
    return { status: 'closed', existed: account !== null };
  }

  // ─── watching the balance: absolute alerts and recharges ────────────────

  #watchBalance(account: AccountState, before: number): void {
    const after = availableOf(account.grants);
    if (after === before) return;
    for (const level of this.#rules.levels) {
      const key = `level:${level}`;
      if (before <= level || after > level || account.alerts.includes(key)) continue;
      account.alerts.push(key);
      this.#changed = true;
      this.#events.push({
        type: 'balance.below',
        workspaceId: this.#state.workspaceId,
        level,
        available: after,
        periodStart: account.periodStart,
        periodEnd: account.periodEnd,
      });
    }
    const recharge = account.recharge;
    if (!recharge) return;
    if (recharge.armed && after < recharge.below) {
      // One crossing, one recharge: the flag is part of the state every writer is guarded on.
      recharge.armed = false;
      recharge.count += 1;
      this.#changed = true;
      this.#events.push({
        type: 'recharge.requested',
        workspaceId: this.#state.workspaceId,
        rechargeId: `recharge:${recharge.count}`,
        amount: recharge.amount,
        below: recharge.below,
        available: after,
      });
    } else if (!recharge.armed && after >= recharge.below) {
      recharge.armed = true;
      this.#changed = true;
    }
  }

  // ─── time: lapsed holds, expired grants, renewals, each as of its own instant ──

  #advance(lapsed: readonly StoredRecord[]): void {
    const now = this.#now;
    const holds = lapsedHolds(lapsed);
    let next = 0;
    for (;;) {
      const account = this.#state.account;
      const lapseAt = next < holds.length ? holds[next]!.expiresAt : Infinity;
      const renewAt = account && account.periodEnd <= now ? account.periodEnd : Infinity;
      const expireAt = account ? firstExpiry(account.grants, now) : Infinity;
      const at = Math.min(lapseAt, renewAt, expireAt);
      if (at === Infinity) return;
      // At one instant: the period turns first (so rollover sees the ending allotment),
      // then grants expire, then holds lapse into whatever is still live.
      if (account && at === renewAt) this.#renew(account, at);
      else if (account && at === expireAt) this.#expireGrants(account, at);
      else this.#endHold(holds[next++]!, 'expired', at);
    }
  }

  #renew(account: AccountState, at: number): void {
    const ending = this.#rules.plans.get(account.plan);
    let unused = 0;
    for (const grant of account.grants) if (grant.kind === 'allotment') unused += grant.remaining;
    const carried = Math.min(unused, ending?.rolloverCapMicros ?? 0);
    let toCarry = carried;
    for (const grant of account.grants) {
      if (grant.kind !== 'allotment') continue;
      const kept = Math.min(grant.remaining, toCarry);
      toCarry -= kept;
      if (grant.remaining > kept) this.#append('expiry', kept - grant.remaining, at, { grantId: grant.grantId });
    }
    account.grants = account.grants.filter((grant) => grant.kind !== 'allotment');
    const plan = account.pendingPlan ?? account.plan;
    const allotment = account.pendingAllotment ?? this.#rules.plans.get(plan)?.monthlyMicros ?? account.allotment;
    const bounds = periodBounds(account.anchor, account.periodIndex + 1);
    account.plan = plan;
    account.allotment = allotment;
    account.pendingPlan = null;
    account.pendingAllotment = null;
    account.periodIndex = bounds.index;
    account.periodStart = bounds.start;
    account.periodEnd = bounds.end;
    account.usedThisPeriod = 0;
    account.alerts = [];
    account.agents = account.agents
      .filter((agent) => agent.limit !== null || agent.models !== null || agent.held > 0)
      .map((agent) => ({ ...agent, spent: 0 }));
    this.#grantAllotment(account, allotment, bounds.start, carried);
    this.#events.push({
      type: 'period.renewed',
      workspaceId: this.#state.workspaceId,
      plan,
      periodStart: bounds.start,
      periodEnd: bounds.end,
      allotment,
      expired: unused - carried,
      carried,
    });
  }

  #expireGrants(account: AccountState, at: number): void {
    account.grants = account.grants.filter((grant) => {
      if (grant.expiresAt === null || grant.expiresAt > at) return true;
      if (grant.remaining > 0) this.#append('expiry', -grant.remaining, at, { grantId: grant.grantId });
      return false;
    });
  }

  /** Ends a hold without a charge, returning its credits as of `at`. */
  #endHold(found: ReplyRecord, status: 'released' | 'expired', at: number): ReplyRecord {
    const account = this.#state.account;
    if (account) this.#closeHold(account, found, found.amount, at);
    const record: ReplyRecord = { ...found, status, finishedAt: at, allocations: [] };
    this.#write(record);
    return record;
  }

  /**
   * Takes a hold's credits off the grants' `held` and gives `returned` of them back, in
   * reverse spending order, to the grants they came from. A grant that has expired since
   * expires them at once.
   */
  #closeHold(account: AccountState, hold: ReplyRecord, returned: number, at: number): void {
    let back = returned;
    for (let i = hold.allocations.length - 1; i >= 0; i--) {
      const { grantId, amount } = hold.allocations[i]!;
      const part = Math.min(amount, back);
      back -= part;
      const grant = account.grants.find((candidate) => candidate.grantId === grantId);
      if (grant) {
        grant.held -= amount;
        grant.remaining += part;
      } else if (part > 0) {
        this.#append('expiry', -part, at, { grantId });
      }
    }
    account.held -= hold.amount;
    const agent = this.#agent(account, hold.agentId, false);
    if (agent) agent.held -= hold.amount;
    prune(account);
  }

  // ─── plumbing ───────────────────────────────────────────────────────────

  /** Grants a period's allotment; credits carried over join the grant but were never spent, so they get no row. */
  #grantAllotment(account: AccountState, allotment: number, at: number, carried = 0): void {
    insertGrant(account.grants, allotmentGrant(account, allotment + carried, at));
    this.#append('grant', allotment, at, { grantId: periodGrantId(account.periodIndex), plan: account.plan });
  }

  #announceThresholds(account: AccountState, before: number): void {
    if (account.allotment === 0) return;
    for (const threshold of this.#rules.thresholds) {
      const line = threshold * account.allotment;
      const key = `share:${threshold}`;
      if (before >= line || account.usedThisPeriod < line || account.alerts.includes(key)) continue;
      account.alerts.push(key);
      this.#events.push({
        type: 'balance.low',
        workspaceId: this.#state.workspaceId,
        threshold,
        used: account.usedThisPeriod,
        allotment: account.allotment,
        periodStart: account.periodStart,
        periodEnd: account.periodEnd,
      });
    }
  }

  #reply(replyId: string): ReplyRecord | undefined {
    const found = this.#records.get(replyKey(replyId));
    if (found?.value.type !== 'reply') return undefined;
    const record = found.value;
    // A hold past its expiry has lapsed, whether or not the store listed it as lapsed.
    if (record.status === 'held' && record.expiresAt <= this.#now) return this.#endHold(record, 'expired', record.expiresAt);
    return record;
  }

  /**
   * An agent's entry to change, copied on its first change in this transition (the loaded
   * state's objects are never written), and made when `create` and it has none yet.
   */
  #agent(account: AccountState, agentId: string, create: boolean): AgentState | undefined {
    const index = account.agents.findIndex((agent) => agent.agentId === agentId);
    if (index < 0) {
      if (!create) return undefined;
      const made: AgentState = { agentId, spent: 0, held: 0, limit: null, models: null };
      account.agents.push(made);
      this.#ownAgents.add(made);
      return made;
    }
    let agent = account.agents[index]!;
    if (!this.#ownAgents.has(agent)) {
      agent = { agentId: agent.agentId, spent: agent.spent, held: agent.held, limit: agent.limit, models: agent.models };
      account.agents[index] = agent;
      this.#ownAgents.add(agent);
    }
    return agent;
  }

  /** Spends the id: a reply the user was told is blocked never charges later. */
  #refuse(record: ReplyRecord, why: 'credits' | 'agent-limit' | 'model'): void {
    record.status = 'refused';
    record.refusedFor = why;
    record.finishedAt = this.#now;
    this.#write(record);
  }

  #maybeSnapshot(): Snapshot | null {
    return this.#state.account ? this.#snapshot(this.#state.account) : null;
  }

  /** Puts a reply record this transition made (a new object, never one it was handed), marked as this commit's. */
  #write(record: ReplyRecord): void {
    record.writtenBy = this.#writtenBy;
    this.#put({ key: replyKey(record.replyId), holdExpiresAt: record.status === 'held' ? record.expiresAt : null, value: record });
  }

  #put(record: StoredRecord): void {
    this.#records.set(record.key, record);
    this.#written.set(record.key, record);
    this.#changed = true;
  }

  #append(kind: LedgerKind, amount: number, at: number, fields: LedgerRowFields): LedgerRow {
    const row = ledgerRow(this.#state.workspaceId, ++this.#state.ledgerSeq, kind, amount, at, fields);
    if (this.#rows.length === 0) this.#markDay(row.seq);
    this.#rows.push(row);
    this.#changed = true;
    return row;
  }

  /** Marks where today begins in the ledger, if this is the first change of a day later than the last one marked. */
  #markDay(firstSeq: number): void {
    const marked = this.#state.ledgerMarks;
    const day = dayOf(this.#now);
    if (typeof marked !== 'number' || day <= marked) return;
    this.#state.ledgerMarks = day;
    this.#put({ key: ledgerDayKey(day), holdExpiresAt: null, value: { type: 'ledgerDay', day, firstSeq } });
  }

  #total(account: AccountState): number {
    return availableOf(account.grants) + account.held;
  }

  #snapshot(account: AccountState): Snapshot {
    const copy = copyAccount(account);
    copy.agents = copy.agents.map((agent) => ({
      agentId: agent.agentId,
      spent: agent.spent,
      held: agent.held,
      limit: agent.limit,
      models: agent.models,
    }));
    return { account: copy, available: availableOf(account.grants) };
  }
}

function periodGrantId(index: number): string {
  return `period:${index}`;
}

function allotmentGrant(account: AccountState, amount: number, at: number): GrantState {
  return {
    grantId: periodGrantId(account.periodIndex),
    kind: 'allotment',
    amount,
    remaining: amount,
    held: 0,
    expiresAt: account.periodEnd,
    createdAt: at,
  };
}

/** The earliest grant expiry at or before `now`, or Infinity. */
function firstExpiry(grants: readonly GrantState[], now: number): number {
  let first = Infinity;
  for (const grant of grants) if (grant.expiresAt !== null && grant.expiresAt <= now && grant.expiresAt < first) first = grant.expiresAt;
  return first;
}

/** Takes `amount` from the grants' `remaining` in spending order and says where it came from (the caller checked it fits). */
function takeFromGrants(grants: readonly GrantState[], amount: number): Allocation[] {
  const taken: Allocation[] = [];
  let left = amount;
  for (const grant of grants) {
    if (left === 0) break;
    const part = Math.min(grant.remaining, left);
    if (part === 0) continue;
    grant.remaining -= part;
    taken.push({ grantId: grant.grantId, amount: part });
    left -= part;
  }
  return taken;
}

function newGrant(grantId: string, kind: GrantKind, amount: number, expiresAt: number | null, at: number): GrantState {
  return { grantId, kind, amount, remaining: amount, held: 0, expiresAt, createdAt: at };
}

function agentOf(account: AccountState, agentId: string): AgentState | undefined {
  for (const agent of account.agents) if (agent.agentId === agentId) return agent;
  return undefined;
}

/** Drops grants with nothing left and nothing held: they can never matter again. */
function prune(account: AccountState): void {
  if (account.grants.some((grant) => grant.remaining === 0 && grant.held === 0)) {
    account.grants = account.grants.filter((grant) => grant.remaining > 0 || grant.held > 0);
  }
}

// Field by field: object spread is slow on Node 20's hot path, and this runs once per batch.
function copyAccount(account: AccountState): AccountState {
  return {
    plan: account.plan,
    allotment: account.allotment,
    pendingPlan: account.pendingPlan,
    pendingAllotment: account.pendingAllotment,
    anchor: account.anchor,
    periodIndex: account.periodIndex,
    periodStart: account.periodStart,
    periodEnd: account.periodEnd,
    usedThisPeriod: account.usedThisPeriod,
    grants: account.grants.map(copyGrant),
    held: account.held,
    alerts: account.alerts.slice(),
    // Agents are copied when first changed (see #agent), not on every load.
    agents: account.agents.slice(),
    recharge: account.recharge && { ...account.recharge },
    createdAt: account.createdAt,
  };
}

function copyState(state: WorkspaceState): WorkspaceState {
  const copy: WorkspaceState = {
    workspaceId: state.workspaceId,
    account: state.account ? copyAccount(state.account) : null,
    ledgerSeq: state.ledgerSeq,
  };
  if (state.ledgerMarks !== undefined) copy.ledgerMarks = state.ledgerMarks;
  return copy;
}
