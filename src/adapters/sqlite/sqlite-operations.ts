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
import { allotmentGrant, compareGrants, copyWorkspace, DAY_MS, expiryRow, replyChargeRow, takeFromGrants } from '../../storage/storage-helpers.js';
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

/**
 * Implemented by the operations so the group commit can keep their batch cache coherent.
 *
 * A batch runs in one of two modes. Fast: the operations run one after another with no
 * savepoints, their reply and ledger writes buffered and written by
 * {@link BatchHooks.beforeCommit} (ledger rows several to a statement); if anything throws, the group commit rolls the whole
 * transaction back and runs the batch again in safe mode. Safe: each operation runs in its
 * own savepoint and {@link BatchHooks.operationDone} writes everything it changed before the
 * savepoint is released, so a failed operation is undone by SQLite and by forgetting the cache.
 */
export interface BatchHooks {
  /**
   * A batch transaction began (after BEGIN IMMEDIATE). Optimistic: reserves may skip the
   * lookup of their id (see {@link ReplyIdClash}).
   */
  batchStarted(optimistic?: boolean): void;
  /** Reads the reply rows of these ids in a few queries, so operations find them cached. */
  prefetch(replyIds: readonly string[]): void;
  /** Safe mode: the operation succeeded; write what it changed (inside its savepoint). */
  operationDone(): void;
  /** Safe mode: the operation threw and its savepoint was rolled back; forget the cache. */
  operationFailed(): void;
  /** Writes what the batch changed in its cache; runs just before COMMIT. */
  beforeCommit(): void;
  /** The batch committed (called after COMMIT, before {@link BatchHooks.batchEnded}). */
  batchCommitted(): void;
  /** The batch committed or rolled back: forget the cache. */
  batchEnded(): void;
}

/** Rows per multi-row statement (prefetch and ledger writes). */
const CHUNK = 64;
/** The most held replies remembered across batches (oldest forgotten first). */
const KEPT_MAX = 100_000;

const WORKSPACE_COLUMNS = `workspace_id, plan, allotment, pending_plan, pending_allotment, anchor, period_index,
  period_start, period_end, used_this_period, version, created_at, held`;
const REPLY_COLUMNS = `reply_id, workspace_id, agent_id, conversation_id, model, route, amount, price_version, status,
  created_at, expires_at, finished_at, entry_id, allocations`;
const LEDGER_INSERT_COLUMNS = `workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
  price_version, grant_id, plan`;
const LEDGER_COLUMNS = `id, workspace_id, kind, amount, at, reply_id, agent_id, conversation_id, model, route,
  price_version, grant_id, plan`;

/**
 * The contract's operations as synchronous code over prepared statements. Each writing
 * method runs inside a batch transaction opened by the group commit (see {@link BatchHooks}
 * for its two modes); this class never begins or ends one. Reply and ledger writes are
 * buffered in the batch and ledger ids assigned here (one more than the largest, as SQLite
 * would), so results are known before the rows are written. It mirrors MemoryStorage step by
 * step, so both stores write the same ledger rows in the same order.
 */
export class SqliteOperations implements BatchHooks {
  readonly #db: SqliteDatabase;
  readonly #p: string;
  readonly #statements = new Map<string, SqliteStatement>();
  /** Workspaces read in this batch (null: known not to exist). */
  readonly #cache = new Map<string, Slot | null>();
  /**
   * Reply rows read or written in this batch, as they stand including buffered writes
   * (null: known not to exist). Every buffered reply write is reflected here, so a miss can
   * be read from the database without flushing first.
   */
  readonly #replies = new Map<string, ReplyRow | null>();
  /** Replies created in this batch and not yet written, in creation order. */
  readonly #newReplies = new Map<string, ReplyRow>();
  /** Existing replies changed in this batch and not yet written. */
  readonly #changedReplies = new Map<string, ReplyRow>();
  /** Ledger rows appended in this batch and not yet written; ids are consecutive. */
  #newLedger: LedgerRow[] = [];
  /** Id of the next ledger row (0: not read yet in this batch). */
  #nextLedgerId = 0;
  /**
   * Optimistic mode (the first run of a batch): a reserve whose id was not read assumes it
   * is new instead of looking it up; the insert then checks, and a clash fails the batch
   * with {@link ReplyIdClash} so it runs again with every id looked up.
   */
  #optimistic = false;
  /**
   * Held replies this store created, remembered across batches so a settle or release
   * needs no read. Valid only while no one else writes: checked at every batch start
   * against `data_version` (another connection committed) and `total_changes()` (someone
   * else wrote through this connection), and forgotten whenever a batch or an operation is
   * rolled back.
   */
  readonly #kept = new Map<string, ReplyRow>();
  /** `data_version` and `total_changes()` after this store's last commit. */
  #stamp = '';
  #committed = false;
  readonly #stampGet: SqliteStatement;

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
  readonly #replyUpdate: SqliteStatement;
  readonly #holdsLapsed: SqliteStatement;
  readonly #holdFloor: SqliteStatement;
  readonly #ledgerMaxId: SqliteStatement;
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
      `INSERT INTO ${p}replies (${REPLY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (reply_id) DO NOTHING`,
    );
    this.#replyUpdate = this.#prepare(
      `UPDATE ${p}replies SET status = ?, finished_at = ?, entry_id = ?, allocations = NULL WHERE reply_id = ?`,
    );
    // Only holds with allocations lapse by sweep (as in MemoryStorage): free holds just expire at settle.
    this.#holdsLapsed = this.#prepare(
      `SELECT ${REPLY_COLUMNS} FROM ${p}replies
       WHERE workspace_id = ? AND status = 'held' AND expires_at <= ? AND allocations IS NOT NULL ORDER BY rowid`,
    );
    // ORDER BY … LIMIT 1 walks the hold index in expiry order and stops at the first match;
    // MIN() with the extra condition would visit every held row.
    this.#holdFloor = this.#prepare(
      `SELECT expires_at AS floor FROM ${p}replies
       WHERE workspace_id = ? AND status = 'held' AND allocations IS NOT NULL ORDER BY expires_at LIMIT 1`,
    );
    this.#ledgerMaxId = this.#prepare(`SELECT MAX(id) AS id FROM ${p}ledger`);
    this.#stampGet = this.#prepare('SELECT (SELECT data_version FROM pragma_data_version) AS version, total_changes() AS changes');
    this.#ledgerGet = this.#prepare(`SELECT ${LEDGER_COLUMNS} FROM ${p}ledger WHERE id = ?`);
    this.#alertClaim = this.#prepare(`INSERT INTO ${p}alerts (workspace_id, alert_key) VALUES (?, ?) ON CONFLICT DO NOTHING`);
  }

  // ─── batch hooks ────────────────────────────────────────────────────────

  batchStarted(optimistic = false): void {
    this.#forget();
    this.#optimistic = optimistic;
    this.#committed = false;
    if (this.#kept.size > 0 && this.#readStamp() !== this.#stamp) this.#kept.clear();
  }

  prefetch(replyIds: readonly string[]): void {
    const wanted: string[] = [];
    for (const replyId of replyIds) {
      if (typeof replyId === 'string' && !this.#replies.has(replyId) && !this.#kept.has(replyId)) wanted.push(replyId);
    }
    if (wanted.length === 0) return;
    for (let start = 0; start < wanted.length; start += CHUNK) {
      const size = Math.min(CHUNK, wanted.length - start);
      // Fixed statement sizes (padded with a repeated id) keep the number of prepared statements small.
      const width = size === 1 ? 1 : size <= 8 ? 8 : CHUNK;
      const params = wanted.slice(start, start + size);
      while (params.length < width) params.push(params[0]!);
      const statement = this.#cached(
        `prefetch:${width}`,
        () => `SELECT ${REPLY_COLUMNS} FROM ${this.#p}replies WHERE reply_id IN (${placeholders(width)})`,
      );
      for (const row of statement.all(...params) as ReplyRow[]) this.#replies.set(row.reply_id, row);
    }
    for (const replyId of wanted) if (!this.#replies.has(replyId)) this.#replies.set(replyId, null);
  }

  operationDone(): void {
    this.#writeBuffered();
    this.#writeSlots();
  }

  operationFailed(): void {
    this.#forget();
    this.#kept.clear();
  }

  beforeCommit(): void {
    this.#writeBuffered();
    this.#writeSlots();
  }

  batchCommitted(): void {
    try {
      this.#stamp = this.#readStamp();
      this.#committed = true;
    } catch {
      this.#stamp = '';
      this.#kept.clear();
    }
  }

  batchEnded(): void {
    if (!this.#committed) this.#kept.clear();
    this.#committed = false;
    this.#forget();
    this.#optimistic = false;
  }

  // ─── the contract ──────────────────────────────────────────────────────

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
    const replyId = input.replyId;
    const existing = this.#optimistic && !this.#replies.has(replyId) && !this.#kept.has(replyId) ? undefined : this.#reply(replyId);
    if (existing) return { status: 'exists', reply: replyOf(existing) };
    if (!command.requireWorkspace) {
      const reply = replyRecord(input, 'held', null, null);
      this.#insertReply(reply, null);
      return { status: 'reserved', reply, available: 0 };
    }
    const slot = this.#slot(input.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (now >= slot.record.periodEnd) return { status: 'renewal_due', workspace: copyWorkspace(slot.record) };
    if (this.#sweepDue(slot, now)) this.#sweep(slot, now);
    const available = availableOf(slot);
    if (available < input.amount) {
      const reply = replyRecord(input, 'refused', now, null);
      this.#insertReply(reply, null);
      return { status: 'insufficient', reply, available, workspace: copyWorkspace(slot.record) };
    }
    const reply = replyRecord(input, 'held', null, null);
    if (input.amount === 0) {
      this.#insertReply(reply, null);
      return { status: 'reserved', reply, available };
    }
    const allocations = takeFromGrants(slot.live, input.amount);
    this.#insertReply(reply, JSON.stringify(allocations));
    slot.held += input.amount;
    slot.dirty = true;
    if (input.expiresAt < slot.holdFloor) slot.holdFloor = input.expiresAt;
    return { status: 'reserved', reply, available: available - input.amount };
  }

  settle(command: SettleCommand): SettleOutcome {
    const row = this.#reply(command.replyId);
    if (!row || row.workspace_id !== command.workspaceId) return { status: 'not_found' };
    const reply = replyOf(row);
    switch (row.status) {
      case 'settled': {
        const slot = this.#slot(row.workspace_id);
        return { status: 'settled', reply, entry: this.#entryOf(reply), replayed: true, workspace: slot ? copyWorkspace(slot.record) : null };
      }
      case 'held':
        if (row.expires_at <= command.now) return { status: 'expired', reply: this.#finishHold(row, 'expired', command.now) };
        break;
      default:
        return { status: row.status, reply };
    }
    const entry = this.#append(replyChargeRow(reply, command.now));
    this.#updateReply(row, 'settled', command.now, Number(entry.id));
    const settled = replyRecord(reply, 'settled', command.now, entry.id);
    const slot = this.#slot(row.workspace_id);
    if (slot && row.amount > 0) {
      slot.held -= row.amount;
      slot.record.usedThisPeriod += row.amount;
      slot.dirty = true;
    }
    return { status: 'settled', reply: settled, entry, replayed: false, workspace: slot ? copyWorkspace(slot.record) : null };
  }

  release(command: ReleaseCommand): ReleaseOutcome {
    const row = this.#reply(command.replyId);
    if (!row || row.workspace_id !== command.workspaceId) return { status: 'not_found' };
    if (row.status === 'released') return { status: 'released', reply: replyOf(row), replayed: true };
    if (row.status !== 'held') return { status: row.status, reply: replyOf(row) };
    if (row.expires_at <= command.now) return { status: 'expired', reply: this.#finishHold(row, 'expired', command.now) };
    return { status: 'released', reply: this.#finishHold(row, 'released', command.now), replayed: false };
  }

  renew(command: RenewCommand): RenewOutcome {
    const slot = this.#slot(command.workspaceId);
    if (!slot) return { status: 'workspace_not_found' };
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: copyWorkspace(slot.record) };
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
    if (slot.record.version !== command.expectedVersion) return { status: 'stale', workspace: copyWorkspace(slot.record) };
    if (availableOf(slot) + slot.held + command.allotmentIncrease > MAX_MICROS) return { status: 'overflow' };
    if (command.allotmentIncrease > 0) {
      const grantId = `period:${slot.record.periodIndex}`;
      const grant = slot.live.find((candidate) => candidate.grantId === grantId);
      if (grant) {
        grant.amount += command.allotmentIncrease;
        grant.remaining += command.allotmentIncrease;
        this.#grantResize.run(grant.amount, grant.remaining, slot.record.workspaceId, grantId);
      } else {
        this.#addGrant(slot, allotmentGrant(slot.record.periodIndex, command.allotmentIncrease, slot.record.periodEnd, command.now));
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
   * The workspace from the batch cache, read on first use. Its hold floor comes from the
   * committed rows: buffered changes only end holds (raising the true floor) or add holds
   * of workspaces already cached, so it stays a lower bound.
   */
  #slot(workspaceId: string): Slot | undefined {
    const cached = this.#cache.get(workspaceId);
    if (cached !== undefined) return cached ?? undefined;
    const row = this.#workspaceGet.get(workspaceId) as WorkspaceRow | undefined;
    if (!row) {
      this.#cache.set(workspaceId, null);
      return undefined;
    }
    const live = (this.#grantsLive.all(workspaceId) as GrantRow[]).map(grantOf);
    if (live.length > 1) live.sort(compareGrants);
    const floor = (this.#holdFloor.get(workspaceId) as { floor: number } | undefined)?.floor;
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

  /** Forgets every cached and buffered change (the transaction ended or was rolled back). */
  #forget(): void {
    this.#cache.clear();
    this.#replies.clear();
    this.#newReplies.clear();
    this.#changedReplies.clear();
    this.#newLedger = [];
    this.#nextLedgerId = 0;
  }

  #readStamp(): string {
    const { version, changes } = this.#stampGet.get() as { version: number; changes: number };
    return `${version}:${changes}`;
  }

  /** The reply row as it stands in this batch, read on first use. */
  #reply(replyId: string): ReplyRow | undefined {
    const cached = this.#replies.get(replyId);
    if (cached !== undefined) return cached ?? undefined;
    const kept = this.#kept.get(replyId);
    if (kept) {
      this.#replies.set(replyId, kept);
      return kept;
    }
    const row = (this.#replyGet.get(replyId) as ReplyRow | undefined) ?? null;
    this.#replies.set(replyId, row);
    return row ?? undefined;
  }

  /** Buffers a new reply row; the caller checked that its id does not exist. */
  #insertReply(reply: ReplyRecord, allocations: string | null): void {
    const row: ReplyRow = {
      reply_id: reply.replyId,
      workspace_id: reply.workspaceId,
      agent_id: reply.agentId,
      conversation_id: reply.conversationId,
      model: reply.model,
      route: reply.route,
      amount: reply.amount,
      price_version: reply.priceVersion,
      status: reply.status,
      created_at: reply.createdAt,
      expires_at: reply.expiresAt,
      finished_at: reply.finishedAt,
      entry_id: null,
      allocations,
    };
    this.#replies.set(row.reply_id, row);
    this.#newReplies.set(row.reply_id, row);
    if (row.status === 'held') {
      this.#kept.set(row.reply_id, row);
      if (this.#kept.size > KEPT_MAX) this.#kept.delete(this.#kept.keys().next().value!);
    }
  }

  /** Ends a reply (its allocations go) in the batch; written with the batch. */
  #updateReply(row: ReplyRow, status: ReplyStatus, finishedAt: number, entryId: number | null): void {
    row.status = status;
    row.finished_at = finishedAt;
    if (entryId !== null) row.entry_id = entryId;
    row.allocations = null;
    this.#kept.delete(row.reply_id);
    if (!this.#newReplies.has(row.reply_id)) this.#changedReplies.set(row.reply_id, row);
  }

  #append(input: LedgerRowInput): LedgerRow {
    if (this.#nextLedgerId === 0) this.#nextLedgerId = ((this.#ledgerMaxId.get() as { id: number | null }).id ?? 0) + 1;
    const row: LedgerRow = {
      id: String(this.#nextLedgerId++),
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
    this.#newLedger.push(row);
    return copyLedgerRow(row);
  }

  /** Writes the buffered reply and ledger rows. */
  #writeBuffered(): void {
    if (this.#newReplies.size > 0) {
      let written = 0;
      for (const row of this.#newReplies.values()) {
        written += this.#replyInsert.run(
          row.reply_id,
          row.workspace_id,
          row.agent_id,
          row.conversation_id,
          row.model,
          row.route,
          row.amount,
          row.price_version,
          row.status,
          row.created_at,
          row.expires_at,
          row.finished_at,
          row.entry_id,
          row.allocations,
        ).changes;
      }
      const expected = this.#newReplies.size;
      this.#newReplies.clear();
      // Only an optimistic reserve can meet an existing id (the others looked it up).
      if (written !== expected) throw new ReplyIdClash();
    }
    if (this.#changedReplies.size > 0) {
      for (const row of this.#changedReplies.values()) this.#replyUpdate.run(row.status, row.finished_at, row.entry_id, row.reply_id);
      this.#changedReplies.clear();
    }
    if (this.#newLedger.length > 0) {
      const rows = this.#newLedger;
      this.#newLedger = [];
      this.#writeLedger(rows);
    }
  }

  /**
   * Inserts ledger rows, up to {@link CHUNK} per statement. (Reply rows go one per
   * statement: multi-row inserts into the replies table measured about twice as slow per
   * row here, while for the ledger they are a little faster.)
   */
  #writeLedger(rows: readonly LedgerRow[]): void {
    let start = 0;
    while (start < rows.length) {
      const left = rows.length - start;
      const size = left >= CHUNK ? CHUNK : left >= 8 ? 8 : 1;
      const statement = this.#cached(`insert:ledger:${size}`, () => {
        const row = `(${placeholders(13)})`;
        return `INSERT INTO ${this.#p}ledger (id, ${LEDGER_INSERT_COLUMNS}) VALUES ${Array.from({ length: size }, () => row).join(', ')}`;
      });
      const params: unknown[] = [];
      for (let index = start; index < start + size; index++) {
        const row = rows[index]!;
        params.push(
          Number(row.id),
          row.workspaceId,
          row.kind,
          row.amount,
          row.at,
          row.replyId,
          row.agentId,
          row.conversationId,
          row.model,
          row.route,
          row.priceVersion,
          row.grantId,
          row.plan,
        );
      }
      statement.run(...params);
      start += size;
    }
  }

  /** Writes the cached workspaces (record, held, live grants) the batch changed. */
  #writeSlots(): void {
    for (const slot of this.#cache.values()) {
      if (!slot?.dirty) continue;
      this.#saveRecord(slot);
      for (const grant of slot.live) this.#grantResize.run(grant.amount, grant.remaining, slot.record.workspaceId, grant.grantId);
      slot.dirty = false;
    }
  }

  #entryOf(reply: ReplyRecord): LedgerRow {
    const pending = this.#newLedger.find((candidate) => candidate.id === reply.entryId);
    if (pending) return copyLedgerRow(pending);
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
    // These queries read reply rows by status: the buffered changes must be in the table.
    this.#writeBuffered();
    const lapsed = this.#holdsLapsed.all(workspaceId, now) as ReplyRow[];
    for (const found of lapsed) this.#finishHold(this.#cachedRow(found), 'expired', now);
    this.#writeBuffered();
    slot.holdFloor = (this.#holdFloor.get(workspaceId) as { floor: number } | undefined)?.floor ?? Infinity;
  }

  /**
   * Ends a hold without a charge, returning its credits to the grants they came from; a
   * grant that ran out of time meanwhile expires them at once.
   */
  #finishHold(row: ReplyRow, status: 'released' | 'expired', now: number): ReplyRecord {
    const allocations = row.allocations;
    this.#updateReply(row, status, now, null);
    const finished = replyOf(row);
    if (allocations === null) return finished;
    const slot = this.#slot(row.workspace_id);
    if (!slot) return finished;
    // A lapsed hold gave its credits back when it lapsed, not when someone noticed.
    const returnedAt = status === 'expired' ? Math.min(now, row.expires_at) : now;
    for (const { grantId, amount } of JSON.parse(allocations) as Allocation[]) {
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

  /** The batch's copy of a row just read by a query (after a flush, so they agree). */
  #cachedRow(found: ReplyRow): ReplyRow {
    const cached = this.#replies.get(found.reply_id) ?? this.#kept.get(found.reply_id);
    if (cached) return cached;
    this.#replies.set(found.reply_id, found);
    return found;
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

/** An optimistic reserve met an existing reply id: the batch runs again with ids looked up. */
export class ReplyIdClash extends Error {
  constructor() {
    super('a reply id reserved optimistically exists');
    this.name = 'ReplyIdClash';
  }
}

// Hot-path copies are spelled out: on Node 20, `{ ...object, extra: value }` costs
// microseconds per call (measured 2–15 µs), an explicit literal a fraction of one.

function replyRecord(
  input: Omit<ReplyRecord, 'status' | 'finishedAt' | 'entryId'>,
  status: ReplyStatus,
  finishedAt: number | null,
  entryId: string | null,
): ReplyRecord {
  return {
    replyId: input.replyId,
    workspaceId: input.workspaceId,
    agentId: input.agentId,
    conversationId: input.conversationId,
    model: input.model,
    route: input.route,
    amount: input.amount,
    priceVersion: input.priceVersion,
    status,
    createdAt: input.createdAt,
    expiresAt: input.expiresAt,
    finishedAt,
    entryId,
  };
}

function copyLedgerRow(row: LedgerRow): LedgerRow {
  return {
    id: row.id,
    workspaceId: row.workspaceId,
    kind: row.kind,
    amount: row.amount,
    at: row.at,
    replyId: row.replyId,
    agentId: row.agentId,
    conversationId: row.conversationId,
    model: row.model,
    route: row.route,
    priceVersion: row.priceVersion,
    grantId: row.grantId,
    plan: row.plan,
  };
}

function placeholders(count: number): string {
  return Array.from({ length: count }, () => '?').join(', ');
}

function availableOf(slot: Slot): number {
  let available = 0;
  for (const grant of slot.live) available += grant.remaining;
  return available;
}

function stateOf(slot: Slot): WorkspaceState {
  return {
    workspace: copyWorkspace(slot.record),
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
