import { MAX_MICROS } from '../core/credits.js';
import type {
  Allocation,
  ChangePlanCommand,
  ChangePlanOutcome,
  ClaimAlertCommand,
  CreateWorkspaceCommand,
  CreateWorkspaceOutcome,
  CreditStorage,
  GrantCommand,
  GrantOutcome,
  GrantRecord,
  LedgerQuery,
  LedgerRow,
  LedgerRowInput,
  ReleaseCommand,
  ReleaseOutcome,
  RenewCommand,
  RenewOutcome,
  ReplyRecord,
  ReserveCommand,
  ReserveOutcome,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceRecord,
  WorkspaceState,
} from './storage.js';
import { allotmentGrant, chargeRow, compareGrants, copyWorkspace, DAY_MS, expiryRow, takeFromGrants } from './storage-helpers.js';

/**
 * What the store keeps per replyId, one map entry so the hot path does one lookup: the
 * current record (replaced, never mutated, so a record handed out stays as it was) or, once
 * settled, only the ledger row it rebuilds from (a settled reply lives as long as the ledger,
 * so keeping one object instead of two halves what the heap retains per charge); and, while
 * a hold with credits is open, the grants its credits came from.
 */
interface Entry {
  record: ReplyRecord | null;
  row: LedgerRow | null;
  createdAt: number;
  expiresAt: number;
  allocations: Allocation[] | null;
}

interface Slot {
  record: WorkspaceRecord;
  /** Grants that have not expired, in spending order (some may have nothing left). */
  live: GrantRecord[];
  /** Every grant ever made, for idempotency and for returning released holds. */
  grants: Map<string, GrantRecord>;
  available: number;
  held: number;
  /** Earliest `expiresAt` among `live`, so the sweep costs one comparison when idle. */
  nextGrantExpiry: number;
  /** Holds in the order they were taken; lapsed ones are swept from the front. */
  holdQueue: Entry[];
  holdHead: number;
  ledger: LedgerRow[];
  /** False once a row was appended with an earlier `at` than its predecessor (a clock went back). */
  ledgerInTimeOrder: boolean;
  alerts: Set<string>;
}

/**
 * The default, embedded store: everything in this process's memory, nothing persisted.
 * Right for tests, demos and single-process hosts that rebuild state on start; use the
 * SQLite, PostgreSQL or Redis store for anything that must survive a restart.
 *
 * Each method runs synchronously to completion before it returns its promise, so each is
 * atomic within the process.
 *
 * @example
 * ```ts
 * const meter = new CreditMeter({ storage: new MemoryStorage() });
 * ```
 */
export class MemoryStorage implements CreditStorage {
  readonly #workspaces = new Map<string, Slot>();
  readonly #replies = new Map<string, Entry>();
  // Ledger rows of workspaces without a record (self-hosted mode) live here.
  readonly #orphanLedgers = new Map<string, { rows: LedgerRow[]; inTimeOrder: boolean }>();
  #sequence = 0;

  /** Nothing to migrate: present so every store has the same life cycle. */
  async migrate(): Promise<void> {}

  /** Nothing to close. */
  async close(): Promise<void> {}

  async createWorkspace(command: CreateWorkspaceCommand): Promise<CreateWorkspaceOutcome> {
    if (this.#workspaces.has(command.workspace.workspaceId)) return { status: 'exists' };
    const grant = { ...command.grant };
    const slot: Slot = {
      record: { ...command.workspace },
      live: [grant],
      grants: new Map([[grant.grantId, grant]]),
      available: grant.remaining,
      held: 0,
      nextGrantExpiry: grant.expiresAt ?? Infinity,
      holdQueue: [],
      holdHead: 0,
      ledger: [],
      ledgerInTimeOrder: true,
      alerts: new Set(),
    };
    // Rows written before the workspace existed (self-hosted mode) stay part of its ledger.
    const earlier = this.#orphanLedgers.get(command.workspace.workspaceId);
    if (earlier) {
      slot.ledger = earlier.rows;
      slot.ledgerInTimeOrder = earlier.inTimeOrder;
      this.#orphanLedgers.delete(command.workspace.workspaceId);
    }
    this.#workspaces.set(command.workspace.workspaceId, slot);
    this.#append(slot, command.entry);
    return { status: 'created', state: this.#state(slot) };
  }

  async getWorkspace(workspaceId: string, now: number): Promise<WorkspaceState | undefined> {
    const slot = this.#workspaces.get(workspaceId);
    if (!slot) return undefined;
    if (now < slot.record.periodEnd) this.#sweep(slot, now, true);
    return this.#state(slot);
  }

  async reserve(command: ReserveCommand): Promise<ReserveOutcome> {
    const { reply: input, now } = command;
    const existing = this.#replies.get(input.replyId);
    if (existing) return { status: 'exists', reply: recordOf(existing) };
    if (!command.requireWorkspace) {
      const reply = held(input);
      this.#replies.set(reply.replyId, entryOf(reply));
      return { status: 'reserved', reply, available: 0 };
    }
    const slot = this.#workspaces.get(input.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (now >= slot.record.periodEnd) return { status: 'renewal_due', workspace: copyWorkspace(slot.record) };
    this.#sweep(slot, now, false);
    if (slot.available < input.amount) {
      this.#sweep(slot, now, true);
      if (slot.available < input.amount) {
        const reply = record(input, 'refused', now, null);
        this.#replies.set(reply.replyId, entryOf(reply));
        return { status: 'insufficient', reply, available: slot.available, workspace: copyWorkspace(slot.record) };
      }
    }
    const reply = held(input);
    const entry = entryOf(reply);
    this.#replies.set(reply.replyId, entry);
    if (input.amount > 0) {
      entry.allocations = takeFromGrants(slot.live, input.amount);
      slot.available -= input.amount;
      slot.held += input.amount;
      slot.holdQueue.push(entry);
    }
    return { status: 'reserved', reply, available: slot.available };
  }

  async settle(command: SettleCommand): Promise<SettleOutcome> {
    const found = this.#replies.get(command.replyId);
    if (!found || workspaceOf(found) !== command.workspaceId) return { status: 'not_found' };
    const reply = recordOf(found);
    const slot = this.#workspaces.get(reply.workspaceId);
    switch (reply.status) {
      case 'settled':
        return { status: 'settled', reply, entry: found.row!, replayed: true, workspace: slot ? copyWorkspace(slot.record) : null };
      case 'held':
        if (reply.expiresAt <= command.now) return { status: 'expired', reply: this.#finishHold(found, 'expired', command.now) };
        break;
      default:
        return { status: reply.status, reply };
    }
    const entry = this.#push(slot, reply.workspaceId, chargeRow(this.#nextId(), reply, command.now));
    const settled = record(reply, 'settled', command.now, entry.id);
    found.record = null;
    found.row = entry;
    found.allocations = null;
    if (slot && reply.amount > 0) {
      slot.held -= reply.amount;
      slot.record.usedThisPeriod += reply.amount;
    }
    return { status: 'settled', reply: settled, entry, replayed: false, workspace: slot ? copyWorkspace(slot.record) : null };
  }

  async release(command: ReleaseCommand): Promise<ReleaseOutcome> {
    const found = this.#replies.get(command.replyId);
    if (!found || workspaceOf(found) !== command.workspaceId) return { status: 'not_found' };
    const reply = recordOf(found);
    if (reply.status === 'released') return { status: 'released', reply, replayed: true };
    if (reply.status !== 'held') return { status: reply.status, reply };
    if (reply.expiresAt <= command.now) return { status: 'expired', reply: this.#finishHold(found, 'expired', command.now) };
    return { status: 'released', reply: this.#finishHold(found, 'released', command.now), replayed: false };
  }

  async renew(command: RenewCommand): Promise<RenewOutcome> {
    const slot = this.#workspaces.get(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: copyWorkspace(slot.record) };
    const { now } = command;
    this.#lapseHolds(slot, now, true);
    let ending = 0;
    for (const grant of slot.live) if (grant.kind === 'allotment') ending += grant.remaining;
    const carried = Math.min(ending, command.rolloverCap);
    let toCarry = carried;
    for (const grant of slot.live) {
      if (grant.kind !== 'allotment' || grant.remaining === 0) continue;
      const kept = Math.min(grant.remaining, toCarry);
      toCarry -= kept;
      this.#expireGrant(slot, grant, grant.remaining - kept, now);
      slot.available -= grant.remaining;
      grant.remaining = 0;
    }
    slot.live = slot.live.filter((grant) => grant.kind !== 'allotment');
    this.#expireGrants(slot, now);
    const grant: GrantRecord = {
      ...command.grant,
      amount: command.grant.amount + carried,
      remaining: command.grant.remaining + carried,
    };
    slot.record = { ...command.workspace };
    this.#addGrant(slot, grant);
    this.#append(slot, command.entry);
    return { status: 'renewed', state: this.#state(slot), expired: ending - carried, carried };
  }

  async changePlan(command: ChangePlanCommand): Promise<ChangePlanOutcome> {
    const slot = this.#workspaces.get(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: copyWorkspace(slot.record) };
    if (slot.available + slot.held + command.allotmentIncrease > MAX_MICROS) return { status: 'overflow' };
    if (command.allotmentIncrease > 0) {
      const grant = slot.grants.get(`period:${slot.record.periodIndex}`);
      if (grant && slot.live.includes(grant)) {
        grant.amount += command.allotmentIncrease;
        grant.remaining += command.allotmentIncrease;
        slot.available += command.allotmentIncrease;
      } else {
        this.#addGrant(slot, allotmentGrant(slot.record.periodIndex, command.allotmentIncrease, slot.record.periodEnd, command.now));
      }
    }
    slot.record = { ...command.workspace };
    this.#append(slot, command.entry);
    return { status: 'changed', state: this.#state(slot) };
  }

  async grant(command: GrantCommand): Promise<GrantOutcome> {
    const slot = this.#workspaces.get(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    const existing = slot.grants.get(command.grant.grantId);
    if (existing) return { status: 'exists', grant: { ...existing } };
    if (slot.available + slot.held + command.grant.amount > MAX_MICROS) return { status: 'overflow' };
    this.#addGrant(slot, { ...command.grant });
    this.#append(slot, command.entry);
    return { status: 'granted', state: this.#state(slot) };
  }

  async claimAlert(command: ClaimAlertCommand): Promise<boolean> {
    const slot = this.#workspaces.get(command.workspaceId);
    if (!slot) return false;
    const key = `${command.periodIndex}:${command.threshold}`;
    if (slot.alerts.has(key)) return false;
    slot.alerts.add(key);
    return true;
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const rows = this.#ledgerOf(query.workspaceId);
    const from = query.from ?? -Infinity;
    const to = query.to ?? Infinity;
    let start = 0;
    if (query.afterId !== undefined) start = upperBound(rows, Number(query.afterId), (row) => Number(row.id));
    else if (query.from !== undefined && this.#inTimeOrder(query.workspaceId)) start = lowerBound(rows, from, (row) => row.at);
    const page: LedgerRow[] = [];
    for (let i = start; i < rows.length && page.length < query.limit; i++) {
      const row = rows[i]!;
      if (row.at < from || row.at >= to) continue;
      if (query.agentId !== undefined && row.agentId !== query.agentId) continue;
      page.push(row);
    }
    return page;
  }

  async usage(query: UsageQuery): Promise<UsageAggregate[]> {
    const rows = this.#ledgerOf(query.workspaceId);
    const ordered = this.#inTimeOrder(query.workspaceId);
    const start = ordered ? lowerBound(rows, query.from, (row) => row.at) : 0;
    const field = query.groupBy === 'agent' ? 'agentId' : query.groupBy === 'model' ? 'model' : 'conversationId';
    const groups = new Map<string, UsageAggregate>();
    for (let i = start; i < rows.length; i++) {
      const row = rows[i]!;
      if (row.at >= query.to) {
        if (ordered) break;
        continue;
      }
      if (row.kind !== 'reply' || row.at < query.from) continue;
      const key = row[field] ?? '';
      const day = query.byDay ? row.at - (((row.at % DAY_MS) + DAY_MS) % DAY_MS) : undefined;
      const id = day === undefined ? key : `${day}\u0000${key}`;
      let group = groups.get(id);
      if (!group) {
        group = day === undefined ? { key, amount: 0, replies: 0 } : { key, day, amount: 0, replies: 0 };
        groups.set(id, group);
      }
      group.amount -= row.amount;
      group.replies += 1;
    }
    return [...groups.values()];
  }

  async getReply(replyId: string): Promise<ReplyRecord | undefined> {
    const found = this.#replies.get(replyId);
    return found ? recordOf(found) : undefined;
  }

  // ─── internals ──────────────────────────────────────────────────────────


  #ledgerOf(workspaceId: string): LedgerRow[] {
    return this.#workspaces.get(workspaceId)?.ledger ?? this.#orphanLedgers.get(workspaceId)?.rows ?? [];
  }

  #inTimeOrder(workspaceId: string): boolean {
    return this.#workspaces.get(workspaceId)?.ledgerInTimeOrder ?? this.#orphanLedgers.get(workspaceId)?.inTimeOrder ?? true;
  }

  #append(slot: Slot, input: LedgerRowInput): LedgerRow {
    return this.#push(slot, slot.record.workspaceId, { id: this.#nextId(), ...input });
  }

  #nextId(): string {
    return String(++this.#sequence);
  }

  #push(slot: Slot | undefined, workspaceId: string, row: LedgerRow): LedgerRow {
    if (slot) {
      const last = slot.ledger[slot.ledger.length - 1];
      if (last && last.at > row.at) slot.ledgerInTimeOrder = false;
      slot.ledger.push(row);
      return row;
    }
    const target = this.#orphanLedgers.get(workspaceId) ?? { rows: [], inTimeOrder: true };
    this.#orphanLedgers.set(workspaceId, target);
    const last = target.rows[target.rows.length - 1];
    if (last && last.at > row.at) target.inTimeOrder = false;
    target.rows.push(row);
    return row;
  }

  /** Lapses holds that expired and expires grants that expired. `full` scans every hold. */
  #sweep(slot: Slot, now: number, full: boolean): void {
    this.#lapseHolds(slot, now, full);
    if (now >= slot.nextGrantExpiry) this.#expireGrants(slot, now);
  }

  #lapseHolds(slot: Slot, now: number, full: boolean): void {
    const queue = slot.holdQueue;
    while (slot.holdHead < queue.length) {
      const entry = queue[slot.holdHead]!;
      const open = entry.allocations !== null;
      if (open && entry.expiresAt > now) break;
      if (open) this.#finishHold(entry, 'expired', now);
      slot.holdHead++;
    }
    if (full) {
      // Holds with different TTLs can lapse out of queue order: look behind the head too.
      const rest: Entry[] = [];
      for (let i = slot.holdHead; i < queue.length; i++) {
        const entry = queue[i]!;
        if (entry.allocations === null) continue;
        if (entry.expiresAt <= now) this.#finishHold(entry, 'expired', now);
        else rest.push(entry);
      }
      slot.holdQueue = rest;
      slot.holdHead = 0;
    } else if (slot.holdHead > 1024 && slot.holdHead * 2 > queue.length) {
      slot.holdQueue = queue.slice(slot.holdHead);
      slot.holdHead = 0;
    }
  }

  /** Ends a hold without a charge, returning its credits to the grants they came from. */
  #finishHold(entry: Entry, status: 'released' | 'expired', now: number): ReplyRecord {
    const reply = entry.record!;
    const finished = record(reply, status, now, null);
    const allocations = entry.allocations;
    entry.record = finished;
    entry.allocations = null;
    const slot = this.#workspaces.get(reply.workspaceId);
    if (allocations && slot) {
      slot.held -= reply.amount;
      // A lapsed hold gave its credits back when it lapsed, not when someone noticed.
      const returnedAt = status === 'expired' ? Math.min(now, reply.expiresAt) : now;
      for (const { grantId, amount } of allocations) {
        const grant = slot.grants.get(grantId)!;
        grant.remaining += amount;
        if (slot.live.includes(grant) && (grant.expiresAt === null || grant.expiresAt > returnedAt)) {
          slot.available += amount;
        } else {
          // The grant ran out of time while the credits were held: they expire now.
          this.#expireGrant(slot, grant, amount, now);
          grant.remaining -= amount;
        }
      }
    }
    return finished;
  }

  #addGrant(slot: Slot, grant: GrantRecord): void {
    slot.grants.set(grant.grantId, grant);
    let index = slot.live.length;
    while (index > 0 && compareGrants(slot.live[index - 1]!, grant) > 0) index--;
    slot.live.splice(index, 0, grant);
    slot.available += grant.remaining;
    if (grant.expiresAt !== null && grant.expiresAt < slot.nextGrantExpiry) slot.nextGrantExpiry = grant.expiresAt;
  }

  #expireGrants(slot: Slot, now: number): void {
    let next = Infinity;
    slot.live = slot.live.filter((grant) => {
      if (grant.expiresAt === null || grant.expiresAt > now) {
        if (grant.expiresAt !== null && grant.expiresAt < next) next = grant.expiresAt;
        return true;
      }
      slot.available -= grant.remaining;
      this.#expireGrant(slot, grant, grant.remaining, now);
      grant.remaining = 0;
      return false;
    });
    slot.nextGrantExpiry = next;
  }

  #expireGrant(slot: Slot, grant: GrantRecord, amount: number, now: number): void {
    if (amount > 0) this.#append(slot, expiryRow(slot.record.workspaceId, grant.grantId, amount, now));
  }

  #state(slot: Slot): WorkspaceState {
    return {
      workspace: copyWorkspace(slot.record),
      grants: slot.live.filter((grant) => grant.remaining > 0).map((grant) => ({ ...grant })),
      available: slot.available,
      held: slot.held,
    };
  }
}

function entryOf(record: ReplyRecord): Entry {
  return { record, row: null, createdAt: record.createdAt, expiresAt: record.expiresAt, allocations: null };
}

function workspaceOf(entry: Entry): string {
  return entry.record === null ? entry.row!.workspaceId : entry.record.workspaceId;
}

/** The reply's record; a settled one is rebuilt from its ledger row. */
function recordOf(entry: Entry): ReplyRecord {
  if (entry.record !== null) return entry.record;
  const row = entry.row!;
  return {
    replyId: row.replyId!,
    workspaceId: row.workspaceId,
    agentId: row.agentId!,
    conversationId: row.conversationId!,
    model: row.model!,
    route: row.route!,
    amount: 0 - row.amount,
    priceVersion: row.priceVersion!,
    status: 'settled',
    createdAt: entry.createdAt,
    expiresAt: entry.expiresAt,
    finishedAt: row.at,
    entryId: row.id,
  };
}

function held(input: ReserveCommand['reply']): ReplyRecord {
  return record(input, 'held', null, null);
}

// Every record is built with the same literal shape, which keeps V8's hot path monomorphic.
function record(from: ReserveCommand['reply'], status: ReplyRecord['status'], finishedAt: number | null, entryId: string | null): ReplyRecord {
  return {
    replyId: from.replyId,
    workspaceId: from.workspaceId,
    agentId: from.agentId,
    conversationId: from.conversationId,
    model: from.model,
    route: from.route,
    amount: from.amount,
    priceVersion: from.priceVersion,
    status,
    createdAt: from.createdAt,
    expiresAt: from.expiresAt,
    finishedAt,
    entryId,
  };
}

function lowerBound<T>(items: readonly T[], value: number, key: (item: T) => number): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (key(items[mid]!) < value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function upperBound<T>(items: readonly T[], value: number, key: (item: T) => number): number {
  let lo = 0;
  let hi = items.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (key(items[mid]!) <= value) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
