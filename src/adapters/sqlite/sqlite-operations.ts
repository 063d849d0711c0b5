import { MAX_MICROS } from '../../core/credits.js';
import type {
  Allocation,
  ChangePlanCommand,
  ChangePlanOutcome,
  ClaimAlertCommand,
  CreateWorkspaceCommand,
  CreateWorkspaceOutcome,
  GrantCommand,
  GrantKind,
  GrantOutcome,
  GrantRecord,
  LedgerKind,
  LedgerQuery,
  LedgerRow,
  LedgerRowInput,
  ReleaseCommand,
  ReleaseOutcome,
  RenewCommand,
  RenewOutcome,
  ReplyRecord,
  ReplyStatus,
  ReserveCommand,
  ReserveOutcome,
  Route,
  SettleCommand,
  SettleOutcome,
  UsageAggregate,
  UsageQuery,
  WorkspaceRecord,
  WorkspaceState,
} from '../../storage/storage.js';
import { compareGrants, DAY_MS, expiryRow, replyChargeRow, takeFromGrants } from '../../storage/storage-helpers.js';
import type { SqliteDatabase, SqliteStatement } from './sqlite-driver.js';

interface WorkspaceRow {
  workspace_id: string;
  plan: string;
  allotment: number;
  pending_plan: string | null;
  pending_allotment: number | null;
  anchor: number;
  period_index: number;
  period_start: number;
  period_end: number;
  used_this_period: number;
  version: number;
  created_at: number;
  held: number;
}

interface GrantRow {
  grant_id: string;
  kind: GrantKind;
  amount: number;
  remaining: number;
  expires_at: number | null;
  created_at: number;
  live: number;
}

interface ReplyRow {
  reply_id: string;
  workspace_id: string;
  agent_id: string;
  conversation_id: string;
  model: string;
  route: Route;
  amount: number;
  price_version: string;
  status: ReplyStatus;
  created_at: number;
  expires_at: number;
  finished_at: number | null;
  entry_id: number | null;
  allocations: string | null;
}

interface LedgerDbRow {
  id: number;
  workspace_id: string;
  kind: LedgerKind;
  amount: number;
  at: number;
  reply_id: string | null;
  agent_id: string | null;
  conversation_id: string | null;
  model: string | null;
  route: Route | null;
  price_version: string | null;
  grant_id: string | null;
  plan: string | null;
}

/**
 * A workspace as cached for one batch transaction: its record, its live grants in spending
 * order, its held total and a lower bound on when its next hold lapses. The batch holds the
 * write lock, so nobody else can change these rows until it commits; hot-path changes
 * (balances, held, used) stay here and are written once, just before the COMMIT.
 */
interface Slot {
  record: WorkspaceRecord;
  live: GrantRecord[];
  held: number;
  /** No hold of this workspace lapses before this instant (a lower bound). */
  holdFloor: number;
  dirty: boolean;
}

/** Implemented by the operations so the group commit can keep their batch cache coherent. */
export interface BatchHooks {
  /** A batch transaction began. */
  batchStarted(): void;
  /** An operation is about to run inside its savepoint. */
  operationStarted(): void;
  /** The operation threw and its savepoint was rolled back: undo its cached changes. */
  operationFailed(): void;
  /** Writes what the batch changed in its cache; runs just before COMMIT. */
  beforeCommit(): void;
  /** The batch committed or rolled back: forget the cache. */
  batchEnded(): void;
}

const WORKSPACE_COLUMNS = `workspace_id, plan, allotment, pending_plan, pending_allotment, anchor, period_index,
  period_start, period_end, used_this_period, version, created_at, held`;
const REPLY_COLUMNS = `reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version, status,
  created_at, expires_at, finished_at, entry_id, allocations`;
const LEDGER_COLUMNS = `id, workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
  price_version, grant_id, plan`;

/**
 * The contract's operations as synchronous code over prepared statements. Each writing
 * method runs inside a batch transaction opened by the group commit, in a savepoint of its
 * own; this class never begins or ends one. It mirrors MemoryStorage step by step, so both
 * stores write the same ledger rows in the same order.
 */
export class SqliteOperations implements BatchHooks {
  readonly #db: SqliteDatabase;
  readonly #p: string;
  readonly #statements = new Map<string, SqliteStatement>();
  /** Workspaces read in this batch (null: known not to exist). */
  readonly #cache = new Map<string, Slot | null>();
  /** What the running operation found in the cache before touching it, to undo on failure. */
  readonly #undo = new Map<string, Slot | null | undefined>();

  readonly #workspaceGet: SqliteStatement;
  readonly #workspaceInsert: SqliteStatement;
  readonly #workspaceReplace: SqliteStatement;
  readonly #grantsLive: SqliteStatement;
  readonly #grantGet: SqliteStatement;
  readonly #grantUpsert: SqliteStatement;
  readonly #grantResize: SqliteStatement;
  readonly #grantRetire: SqliteStatement;
  readonly #replyGet: SqliteStatement;
  readonly #replyInsert: SqliteStatement;
  readonly #replyFinish: SqliteStatement;
  readonly #replySettle: SqliteStatement;
  readonly #holdsLapsed: SqliteStatement;
  readonly #holdFloor: SqliteStatement;
  readonly #ledgerInsert: SqliteStatement;
  readonly #ledgerGet: SqliteStatement;
  readonly #alertClaim: SqliteStatement;

  constructor(db: SqliteDatabase, prefix: string) {
    this.#db = db;
    this.#p = prefix;
    const p = prefix;
    this.#workspaceGet = this.#prepare(`SELECT ${WORKSPACE_COLUMNS} FROM ${p}workspaces WHERE workspace_id = ?`);
    this.#workspaceInsert = this.#prepare(
      `INSERT INTO ${p}workspaces (${WORKSPACE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
    );
    this.#workspaceReplace = this.#prepare(
      `UPDATE ${p}workspaces SET plan = ?, allotment = ?, pending_plan = ?, pending_allotment = ?, anchor = ?,
        period_index = ?, period_start = ?, period_end = ?, used_this_period = ?, version = ?, created_at = ?, held = ?
       WHERE workspace_id = ?`,
    );
    this.#grantsLive = this.#prepare(
      `SELECT grant_id, kind, amount, remaining, expires_at, created_at, live FROM ${p}grants
       WHERE workspace_id = ? AND live = 1`,
    );
    this.#grantGet = this.#prepare(
      `SELECT grant_id, kind, amount, remaining, expires_at, created_at, live FROM ${p}grants
       WHERE workspace_id = ? AND grant_id = ?`,
    );
    this.#grantUpsert = this.#prepare(
      `INSERT INTO ${p}grants (workspace_id, grant_id, kind, amount, remaining, expires_at, created_at, live)
       VALUES (?, ?, ?, ?, ?, ?, ?, 1)
       ON CONFLICT (workspace_id, grant_id) DO UPDATE SET kind = excluded.kind, amount = excluded.amount,
         remaining = excluded.remaining, expires_at = excluded.expires_at, created_at = excluded.created_at, live = 1`,
    );
    this.#grantResize = this.#prepare(`UPDATE ${p}grants SET amount = ?, remaining = ? WHERE workspace_id = ? AND grant_id = ?`);
    this.#grantRetire = this.#prepare(`UPDATE ${p}grants SET remaining = 0, live = 0 WHERE workspace_id = ? AND grant_id = ?`);
    this.#replyGet = this.#prepare(`SELECT ${REPLY_COLUMNS} FROM ${p}replies WHERE reply_id = ?`);
    this.#replyInsert = this.#prepare(
      `INSERT INTO ${p}replies (${REPLY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)
       ON CONFLICT (reply_id) DO NOTHING`,
    );
    this.#replyFinish = this.#prepare(`UPDATE ${p}replies SET status = ?, finished_at = ?, allocations = NULL WHERE reply_id = ?`);
    this.#replySettle = this.#prepare(
      `UPDATE ${p}replies SET status = 'settled', finished_at = ?, entry_id = ?, allocations = NULL WHERE reply_id = ?`,
    );
    // Only holds with allocations lapse by sweep (as in MemoryStorage): free holds just expire at settle.
    this.#holdsLapsed = this.#prepare(
      `SELECT ${REPLY_COLUMNS} FROM ${p}replies
       WHERE workspace_id = ? AND status = 'held' AND expires_at <= ? AND allocations IS NOT NULL ORDER BY rowid`,
    );
    this.#holdFloor = this.#prepare(
      `SELECT MIN(expires_at) AS floor FROM ${p}replies WHERE workspace_id = ? AND status = 'held' AND allocations IS NOT NULL`,
    );
    this.#ledgerInsert = this.#prepare(
      `INSERT INTO ${p}ledger (workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
        price_version, grant_id, plan) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    );
    this.#ledgerGet = this.#prepare(`SELECT ${LEDGER_COLUMNS} FROM ${p}ledger WHERE id = ?`);
    this.#alertClaim = this.#prepare(`INSERT INTO ${p}alerts (workspace_id, alert_key) VALUES (?, ?) ON CONFLICT DO NOTHING`);
  }

  // ─── batch hooks ────────────────────────────────────────────────────────

  batchStarted(): void {
    this.#cache.clear();
    this.#undo.clear();
  }

  operationStarted(): void {
    this.#undo.clear();
  }

  operationFailed(): void {
    for (const [workspaceId, before] of this.#undo) {
      if (before === undefined) this.#cache.delete(workspaceId);
      else this.#cache.set(workspaceId, before);
    }
    this.#undo.clear();
  }

  beforeCommit(): void {
    for (const slot of this.#cache.values()) {
      if (!slot?.dirty) continue;
      this.#saveRecord(slot);
      for (const grant of slot.live) this.#grantResize.run(grant.amount, grant.remaining, slot.record.workspaceId, grant.grantId);
      slot.dirty = false;
    }
  }

  batchEnded(): void {
    this.#cache.clear();
    this.#undo.clear();
  }

  // ─── the contract, one savepoint each ───────────────────────────────────

  createWorkspace(command: CreateWorkspaceCommand): CreateWorkspaceOutcome {
    const w = command.workspace;
    if (this.#slot(w.workspaceId)) return { status: 'exists' };
    this.#workspaceInsert.run(
      w.workspaceId,
      w.plan,
      w.allotment,
      w.pendingPlan,
      w.pendingAllotment,
      w.anchor,
      w.periodIndex,
      w.periodStart,
      w.periodEnd,
      w.usedThisPeriod,
      w.version,
      w.createdAt,
    );
    const slot: Slot = { record: { ...w }, live: [], held: 0, holdFloor: Infinity, dirty: false };
    this.#cache.set(w.workspaceId, slot);
    this.#addGrant(slot, { ...command.grant });
    this.#append(command.entry);
    return { status: 'created', state: stateOf(slot) };
  }

  getWorkspace(workspaceId: string, now: number): WorkspaceState | undefined {
    const slot = this.#slot(workspaceId);
    if (!slot) return undefined;
    if (now < slot.record.periodEnd) this.#sweep(slot, now);
    return stateOf(slot);
  }

  reserve(command: ReserveCommand): ReserveOutcome {
    const { reply: input, now } = command;
    if (!command.requireWorkspace) {
      const reply: ReplyRecord = { ...input, status: 'held', finishedAt: null, entryId: null };
      return this.#insertReply(reply, null) ? { status: 'reserved', reply, available: 0 } : this.#exists(input.replyId);
    }
    const slot = this.#slot(input.workspaceId);
    // Fast path: nothing to sweep, so nothing is written before the reply row, whose insert
    // tells whether the id exists. Otherwise look the id up first, as the contract orders.
    const quiet = slot !== undefined && now < slot.record.periodEnd && !this.#sweepDue(slot, now);
    if (!quiet) {
      const existing = this.#replyGet.get(input.replyId) as ReplyRow | undefined;
      if (existing) return { status: 'exists', reply: replyOf(existing) };
      if (!slot) return { status: 'workspace_not_found' };
      if (now >= slot.record.periodEnd) return { status: 'renewal_due', workspace: { ...slot.record } };
      this.#sweep(slot, now);
    }
    const available = availableOf(slot!);
    if (available < input.amount) {
      const reply: ReplyRecord = { ...input, status: 'refused', finishedAt: now, entryId: null };
      if (!this.#insertReply(reply, null)) return this.#exists(input.replyId);
      return { status: 'insufficient', reply, available, workspace: { ...slot!.record } };
    }
    const reply: ReplyRecord = { ...input, status: 'held', finishedAt: null, entryId: null };
    if (input.amount === 0) return this.#insertReply(reply, null) ? { status: 'reserved', reply, available } : this.#exists(input.replyId);
    const before = slot!.live.map((grant) => grant.remaining);
    const allocations = takeFromGrants(slot!.live, input.amount);
    if (!this.#insertReply(reply, JSON.stringify(allocations))) {
      slot!.live.forEach((grant, index) => (grant.remaining = before[index]!));
      return this.#exists(input.replyId);
    }
    slot!.held += input.amount;
    slot!.dirty = true;
    if (input.expiresAt < slot!.holdFloor) slot!.holdFloor = input.expiresAt;
    return { status: 'reserved', reply, available: available - input.amount };
  }

  settle(command: SettleCommand): SettleOutcome {
    const row = this.#replyGet.get(command.replyId) as ReplyRow | undefined;
    if (!row || row.workspace_id !== command.workspaceId) return { status: 'not_found' };
    const reply = replyOf(row);
    switch (row.status) {
      case 'settled': {
        const slot = this.#slot(row.workspace_id);
        return { status: 'settled', reply, entry: this.#entryOf(reply), replayed: true, workspace: slot ? { ...slot.record } : null };
      }
      case 'held':
        if (row.expires_at <= command.now) return { status: 'expired', reply: this.#finishHold(row, 'expired', command.now) };
        break;
      default:
        return { status: row.status, reply };
    }
    const entry = this.#append(replyChargeRow(reply, command.now));
    this.#replySettle.run(command.now, Number(entry.id), row.reply_id);
    const settled: ReplyRecord = { ...reply, status: 'settled', finishedAt: command.now, entryId: entry.id };
    const slot = this.#slot(row.workspace_id);
    if (slot && row.amount > 0) {
      slot.held -= row.amount;
      slot.record.usedThisPeriod += row.amount;
      slot.dirty = true;
    }
    return { status: 'settled', reply: settled, entry, replayed: false, workspace: slot ? { ...slot.record } : null };
  }

  release(command: ReleaseCommand): ReleaseOutcome {
    const row = this.#replyGet.get(command.replyId) as ReplyRow | undefined;
    if (!row || row.workspace_id !== command.workspaceId) return { status: 'not_found' };
    if (row.status === 'released') return { status: 'released', reply: replyOf(row), replayed: true };
    if (row.status !== 'held') return { status: row.status, reply: replyOf(row) };
    if (row.expires_at <= command.now) return { status: 'expired', reply: this.#finishHold(row, 'expired', command.now) };
    return { status: 'released', reply: this.#finishHold(row, 'released', command.now), replayed: false };
  }

  renew(command: RenewCommand): RenewOutcome {
    const slot = this.#slot(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: { ...slot.record } };
    const { now } = command;
    this.#lapseHolds(slot, now);
    let ending = 0;
    for (const grant of slot.live) if (grant.kind === 'allotment') ending += grant.remaining;
    const carried = Math.min(ending, command.rolloverCap);
    let toCarry = carried;
    for (const grant of slot.live) {
      if (grant.kind !== 'allotment') continue;
      if (grant.remaining > 0) {
        const kept = Math.min(grant.remaining, toCarry);
        toCarry -= kept;
        this.#appendExpiry(slot.record.workspaceId, grant.grantId, grant.remaining - kept, now);
        grant.remaining = 0;
      }
      this.#grantRetire.run(slot.record.workspaceId, grant.grantId);
    }
    slot.live = slot.live.filter((grant) => grant.kind !== 'allotment');
    this.#expireGrants(slot, now);
    slot.record = { ...command.workspace };
    this.#saveRecord(slot);
    this.#addGrant(slot, {
      ...command.grant,
      amount: command.grant.amount + carried,
      remaining: command.grant.remaining + carried,
    });
    this.#append(command.entry);
    return { status: 'renewed', state: stateOf(slot), expired: ending - carried, carried };
  }

  changePlan(command: ChangePlanCommand): ChangePlanOutcome {
    const slot = this.#slot(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: { ...slot.record } };
    if (availableOf(slot) + slot.held + command.allotmentIncrease > MAX_MICROS) return { status: 'overflow' };
    if (command.allotmentIncrease > 0) {
      const grantId = `period:${slot.record.periodIndex}`;
      const grant = slot.live.find((candidate) => candidate.grantId === grantId);
      if (grant) {
        grant.amount += command.allotmentIncrease;
        grant.remaining += command.allotmentIncrease;
        this.#grantResize.run(grant.amount, grant.remaining, slot.record.workspaceId, grantId);
      } else {
        this.#addGrant(slot, {
          grantId,
          kind: 'allotment',
          amount: command.allotmentIncrease,
          remaining: command.allotmentIncrease,
          expiresAt: slot.record.periodEnd,
          createdAt: command.now,
        });
      }
    }
    slot.record = { ...command.workspace };
    this.#saveRecord(slot);
    this.#append(command.entry);
    return { status: 'changed', state: stateOf(slot) };
  }

  grant(command: GrantCommand): GrantOutcome {
    const slot = this.#slot(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    const cached = slot.live.find((candidate) => candidate.grantId === command.grant.grantId);
    if (cached) return { status: 'exists', grant: { ...cached } };
    const existing = this.#grantGet.get(command.workspaceId, command.grant.grantId) as GrantRow | undefined;
    if (existing) return { status: 'exists', grant: grantOf(existing) };
    if (availableOf(slot) + slot.held + command.grant.amount > MAX_MICROS) return { status: 'overflow' };
    this.#addGrant(slot, { ...command.grant });
    this.#append(command.entry);
    return { status: 'granted', state: stateOf(slot) };
  }

  claimAlert(command: ClaimAlertCommand): boolean {
    if (!this.#slot(command.workspaceId)) return false;
    return this.#alertClaim.run(command.workspaceId, `${command.periodIndex}:${command.threshold}`).changes === 1;
  }

  // ─── reads (no transaction needed) ──────────────────────────────────────

  ledger(query: LedgerQuery): LedgerRow[] {
    const limit = Number.isFinite(query.limit) ? Math.max(0, Math.ceil(query.limit)) : query.limit > 0 ? -1 : 0;
    if (limit === 0) return [];
    const after = query.afterId === undefined ? undefined : Number(query.afterId);
    const conditions = ['workspace_id = ?'];
    const params: unknown[] = [query.workspaceId];
    let shape = '';
    if (after !== undefined && !Number.isNaN(after)) {
      conditions.push('id > ?');
      params.push(after);
      shape += 'a';
    }
    if (query.from !== undefined) {
      conditions.push('at >= ?');
      params.push(query.from);
      shape += 'f';
    }
    if (query.to !== undefined) {
      conditions.push('at < ?');
      params.push(query.to);
      shape += 't';
    }
    if (query.agentId !== undefined) {
      conditions.push('agent_id = ?');
      params.push(query.agentId);
      shape += 'g';
    }
    params.push(limit);
    const statement = this.#cached(
      `ledger:${shape}`,
      () => `SELECT ${LEDGER_COLUMNS} FROM ${this.#p}ledger WHERE ${conditions.join(' AND ')} ORDER BY id LIMIT ?`,
    );
    return (statement.all(...params) as LedgerDbRow[]).map(ledgerRowOf);
  }

  usage(query: UsageQuery): UsageAggregate[] {
    const column = query.groupBy === 'agent' ? 'agent_id' : query.groupBy === 'model' ? 'model' : 'conversation_id';
    const statement = this.#cached(`usage:${column}:${query.byDay}`, () => {
      const key = `COALESCE(${column}, '')`;
      // ((at % D) + D) % D is the time of day also for instants before 1970.
      const day = `at - (((at % ${DAY_MS}) + ${DAY_MS}) % ${DAY_MS})`;
      const select = query.byDay ? `${key} AS key, ${day} AS day` : `${key} AS key`;
      const group = query.byDay ? `${day}, ${key}` : key;
      return `SELECT ${select}, -SUM(amount) AS amount, COUNT(*) AS replies FROM ${this.#p}ledger
        WHERE workspace_id = ? AND at >= ? AND at < ? AND kind = 'reply'
        GROUP BY ${group} ORDER BY MIN(id)`;
    });
    const rows = statement.all(query.workspaceId, query.from, query.to) as { key: string; day?: number; amount: number; replies: number }[];
    return rows.map((row) =>
      query.byDay
        ? { key: row.key, day: row.day!, amount: row.amount, replies: row.replies }
        : { key: row.key, amount: row.amount, replies: row.replies },
    );
  }

  getReply(replyId: string): ReplyRecord | undefined {
    const row = this.#replyGet.get(replyId) as ReplyRow | undefined;
    return row ? replyOf(row) : undefined;
  }

  // ─── internals ──────────────────────────────────────────────────────────

  #prepare(source: string): SqliteStatement {
    const statement = this.#db.prepare(source);
    statement.safeIntegers(false);
    return statement;
  }

  #cached(key: string, source: () => string): SqliteStatement {
    let statement = this.#statements.get(key);
    if (!statement) {
      statement = this.#prepare(source());
      this.#statements.set(key, statement);
    }
    return statement;
  }

  /**
   * The workspace from the batch cache, read on first use. Remembers what the cache held
   * before the running operation touched it, so a failed operation leaves no trace.
   */
  #slot(workspaceId: string): Slot | undefined {
    const cached = this.#cache.get(workspaceId);
    if (!this.#undo.has(workspaceId)) this.#undo.set(workspaceId, cached === undefined ? undefined : copySlot(cached));
    if (cached !== undefined) return cached ?? undefined;
    const row = this.#workspaceGet.get(workspaceId) as WorkspaceRow | undefined;
    if (!row) {
      this.#cache.set(workspaceId, null);
      return undefined;
    }
    const live = (this.#grantsLive.all(workspaceId) as GrantRow[]).map(grantOf);
    if (live.length > 1) live.sort(compareGrants);
    const floor = (this.#holdFloor.get(workspaceId) as { floor: number | null }).floor;
    const slot: Slot = { record: recordOf(row), live, held: row.held, holdFloor: floor ?? Infinity, dirty: false };
    this.#cache.set(workspaceId, slot);
    return slot;
  }

  #saveRecord(slot: Slot): void {
    const w = slot.record;
    this.#workspaceReplace.run(
      w.plan,
      w.allotment,
      w.pendingPlan,
      w.pendingAllotment,
      w.anchor,
      w.periodIndex,
      w.periodStart,
      w.periodEnd,
      w.usedThisPeriod,
      w.version,
      w.createdAt,
      slot.held,
      w.workspaceId,
    );
  }

  /** Inserts the reply unless its id exists; false when it does. */
  #insertReply(reply: ReplyRecord, allocations: string | null): boolean {
    return (
      this.#replyInsert.run(
        reply.replyId,
        reply.workspaceId,
        reply.agentId,
        reply.conversationId,
        reply.model,
        reply.route,
        reply.amount,
        reply.priceVersion,
        reply.status,
        reply.createdAt,
        reply.expiresAt,
        reply.finishedAt,
        allocations,
      ).changes === 1
    );
  }

  #exists(replyId: string): ReserveOutcome {
    return { status: 'exists', reply: replyOf(this.#replyGet.get(replyId) as ReplyRow) };
  }

  #append(input: LedgerRowInput): LedgerRow {
    const { lastInsertRowid } = this.#ledgerInsert.run(
      input.workspaceId,
      input.kind,
      input.amount,
      input.at,
      input.replyId,
      input.agentId,
      input.conversationId,
      input.model,
      input.route,
      input.priceVersion,
      input.grantId,
      input.plan,
    );
    return {
      id: String(lastInsertRowid),
      workspaceId: input.workspaceId,
      kind: input.kind,
      amount: input.amount,
      at: input.at,
      replyId: input.replyId,
      agentId: input.agentId,
      conversationId: input.conversationId,
      model: input.model,
      route: input.route,
      priceVersion: input.priceVersion,
      grantId: input.grantId,
      plan: input.plan,
    };
  }

  #entryOf(reply: ReplyRecord): LedgerRow {
    const row = this.#ledgerGet.get(Number(reply.entryId)) as LedgerDbRow | undefined;
    if (!row) throw new Error(`ledger row ${String(reply.entryId)} of reply ${reply.replyId} is missing`);
    return ledgerRowOf(row);
  }

  #sweepDue(slot: Slot, now: number): boolean {
    return now >= slot.holdFloor || slot.live.some((grant) => grant.expiresAt !== null && grant.expiresAt <= now);
  }

  /** Lapses every hold whose time is up, then expires every grant whose time is up. */
  #sweep(slot: Slot, now: number): void {
    if (now >= slot.holdFloor) this.#lapseHolds(slot, now);
    if (slot.live.some((grant) => grant.expiresAt !== null && grant.expiresAt <= now)) this.#expireGrants(slot, now);
  }

  #lapseHolds(slot: Slot, now: number): void {
    const workspaceId = slot.record.workspaceId;
    const lapsed = this.#holdsLapsed.all(workspaceId, now) as ReplyRow[];
    for (const row of lapsed) this.#finishHold(row, 'expired', now);
    slot.holdFloor = (this.#holdFloor.get(workspaceId) as { floor: number | null }).floor ?? Infinity;
  }

  /**
   * Ends a hold without a charge, returning its credits to the grants they came from; a
   * grant that ran out of time meanwhile expires them at once.
   */
  #finishHold(row: ReplyRow, status: 'released' | 'expired', now: number): ReplyRecord {
    this.#replyFinish.run(status, now, row.reply_id);
    const finished: ReplyRecord = { ...replyOf(row), status, finishedAt: now };
    if (row.allocations === null) return finished;
    const slot = this.#slot(row.workspace_id);
    if (!slot) return finished;
    // A lapsed hold gave its credits back when it lapsed, not when someone noticed.
    const returnedAt = status === 'expired' ? Math.min(now, row.expires_at) : now;
    for (const { grantId, amount } of JSON.parse(row.allocations) as Allocation[]) {
      const grant = slot.live.find((candidate) => candidate.grantId === grantId);
      if (grant && (grant.expiresAt === null || grant.expiresAt > returnedAt)) {
        grant.remaining += amount;
      } else {
        // The grant ran out of time while the credits were held: they expire now.
        this.#appendExpiry(slot.record.workspaceId, grantId, amount, now);
      }
    }
    slot.held -= row.amount;
    slot.dirty = true;
    return finished;
  }

  #addGrant(slot: Slot, grant: GrantRecord): void {
    this.#grantUpsert.run(
      slot.record.workspaceId,
      grant.grantId,
      grant.kind,
      grant.amount,
      grant.remaining,
      grant.expiresAt,
      grant.createdAt,
    );
    slot.live = slot.live.filter((candidate) => candidate.grantId !== grant.grantId);
    let index = slot.live.length;
    while (index > 0 && compareGrants(slot.live[index - 1]!, grant) > 0) index--;
    slot.live.splice(index, 0, grant);
    slot.dirty = true;
  }

  #expireGrants(slot: Slot, now: number): void {
    slot.live = slot.live.filter((grant) => {
      if (grant.expiresAt === null || grant.expiresAt > now) return true;
      this.#appendExpiry(slot.record.workspaceId, grant.grantId, grant.remaining, now);
      grant.remaining = 0;
      this.#grantRetire.run(slot.record.workspaceId, grant.grantId);
      return false;
    });
    slot.dirty = true;
  }

  #appendExpiry(workspaceId: string, grantId: string, amount: number, now: number): void {
    if (amount > 0) this.#append(expiryRow(workspaceId, grantId, amount, now));
  }
}

function copySlot(slot: Slot | null): Slot | null {
  if (slot === null) return null;
  return { ...slot, record: { ...slot.record }, live: slot.live.map((grant) => ({ ...grant })) };
}

function availableOf(slot: Slot): number {
  let available = 0;
  for (const grant of slot.live) available += grant.remaining;
  return available;
}

function stateOf(slot: Slot): WorkspaceState {
  return {
    workspace: { ...slot.record },
    grants: slot.live.filter((grant) => grant.remaining > 0).map((grant) => ({ ...grant })),
    available: availableOf(slot),
    held: slot.held,
  };
}

function recordOf(row: WorkspaceRow): WorkspaceRecord {
  return {
    workspaceId: row.workspace_id,
    plan: row.plan,
    allotment: row.allotment,
    pendingPlan: row.pending_plan,
    pendingAllotment: row.pending_allotment,
    anchor: row.anchor,
    periodIndex: row.period_index,
    periodStart: row.period_start,
    periodEnd: row.period_end,
    usedThisPeriod: row.used_this_period,
    version: row.version,
    createdAt: row.created_at,
  };
}

function grantOf(row: GrantRow): GrantRecord {
  return {
    grantId: row.grant_id,
    kind: row.kind,
    amount: row.amount,
    remaining: row.remaining,
    expiresAt: row.expires_at,
    createdAt: row.created_at,
  };
}

function replyOf(row: ReplyRow): ReplyRecord {
  return {
    replyId: row.reply_id,
    workspaceId: row.workspace_id,
    agentId: row.agent_id,
    conversationId: row.conversation_id,
    model: row.model,
    route: row.route,
    amount: row.amount,
    priceVersion: row.price_version,
    status: row.status,
    createdAt: row.created_at,
    expiresAt: row.expires_at,
    finishedAt: row.finished_at,
    entryId: row.entry_id === null ? null : String(row.entry_id),
  };
}

function ledgerRowOf(row: LedgerDbRow): LedgerRow {
  return {
    id: String(row.id),
    workspaceId: row.workspace_id,
    kind: row.kind,
    amount: row.amount,
    at: row.at,
    replyId: row.reply_id,
    agentId: row.agent_id,
    conversationId: row.conversation_id,
    model: row.model,
    route: row.route,
    priceVersion: row.price_version,
    grantId: row.grant_id,
    plan: row.plan,
  };
}
