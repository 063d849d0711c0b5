import type { LedgerRow, StoredRecord, WorkspaceState } from '../core/state.js';
import { HoldHeap } from './hold-heap.js';
import type {
  CommitResult,
  CreditStorage,
  EraseRequest,
  LedgerQuery,
  ListQuery,
  LoadedWorkspace,
  LoadRequest,
  LockedWorkspace,
  WorkspaceCommit,
} from './storage.js';
import { versionAfter } from './version-after.js';

interface Slot {
  version: number;
  /** Null once erased: the version stays, so it is never reused. */
  state: WorkspaceState | null;
  records: Map<string, StoredRecord>;
  /** Open holds by lapse time; entries whose record moved on are skipped when met. */
  holds: HoldHeap;
  ledger: LedgerRow[];
  /** False once a row was appended with an earlier `at` than its predecessor (a clock went back). */
  inTimeOrder: boolean;
}

/**
 * The default, embedded store: everything in this process's memory, nothing persisted.
 * Right for tests, demos and single-process hosts; use the SQLite, PostgreSQL, MySQL or
 * Redis store for anything that must survive a restart. Each write runs to completion
 * synchronously (after waiting for a workspace's `lock`), so each is atomic within the
 * process. The core never changes an object after handing it over, so the store keeps what it
 * is given without copying.
 *
 * @example
 * ```ts
 * const meter = new CreditMeter({ storage: new MemoryStorage() });
 * ```
 */
export class MemoryStorage implements CreditStorage {
  readonly #slots = new Map<string, Slot>();
  /** Per locked workspace, the end of the queue of `lock` calls. */
  readonly #locks = new Map<string, Promise<void>>();

  /** Nothing to migrate: present so every store has the same life cycle. */
  async migrate(): Promise<void> {}

  /** Nothing to close. */
  async close(): Promise<void> {}

  async load(request: LoadRequest): Promise<LoadedWorkspace> {
    const slot = this.#slots.get(request.workspaceId);
    if (!slot) return { version: 0, state: null, records: [], lapsed: [], nextLapseAt: null };
    const records: StoredRecord[] = [];
    for (const key of request.keys) {
      const record = slot.records.get(key);
      if (record) records.push(record);
    }
    const lapsed = slot.holds.due(slot.records, request.now);
    return { version: slot.version, state: slot.state, records, lapsed, nextLapseAt: slot.holds.earliest(slot.records) };
  }

  async commit(commits: readonly WorkspaceCommit[]): Promise<CommitResult[]> {
    if (this.#locks.size > 0) for (const { workspaceId } of commits) await this.#unlocked(workspaceId);
    return commits.map((commit) => (this.#check(commit) === 'committed' ? this.#write(commit) : 'conflict'));
  }

  /** Queues `work` behind earlier locks of the workspace; what it commits is written when it resolves. */
  async lock<T>(workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>): Promise<T> {
    const previous = this.#locks.get(workspaceId);
    let unlock!: () => void;
    const mine = new Promise<void>((resolve) => {
      unlock = resolve;
    });
    const tail = previous ? previous.then(() => mine) : mine;
    this.#locks.set(workspaceId, tail);
    await previous;
    try {
      let staged: WorkspaceCommit | undefined;
      const result = await work({
        load: (request) => this.load(request),
        commit: async (commit) => {
          const checked = this.#check(commit);
          if (checked === 'committed') staged = commit;
          return checked;
        },
      });
      if (staged) this.#write(staged);
      return result;
    } finally {
      if (this.#locks.get(workspaceId) === tail) this.#locks.delete(workspaceId);
      unlock();
    }
  }

  async #unlocked(workspaceId: string): Promise<void> {
    for (let held = this.#locks.get(workspaceId); held; held = this.#locks.get(workspaceId)) await held;
  }

  #check(commit: WorkspaceCommit): CommitResult {
    const slot = this.#slots.get(commit.workspaceId);
    if ((slot?.version ?? 0) !== commit.expectedVersion) return 'conflict';
    return slot && commit.absentKeys?.some((key) => slot.records.has(key)) ? 'conflict' : 'committed';
  }

  #write(commit: WorkspaceCommit): 'committed' {
    let slot = this.#slots.get(commit.workspaceId);
    if (!slot) {
      slot = { version: 0, state: commit.state, records: new Map(), holds: new HoldHeap(), ledger: [], inTimeOrder: true };
      this.#slots.set(commit.workspaceId, slot);
    }
    slot.version = versionAfter(commit);
    slot.state = commit.state;
    for (const record of commit.records) {
      slot.records.set(record.key, record);
      if (record.holdExpiresAt !== null) slot.holds.push(record.holdExpiresAt, record.key);
    }
    for (const row of commit.ledger) {
      const last = slot.ledger[slot.ledger.length - 1];
      if (last && last.at > row.at) slot.inTimeOrder = false;
      slot.ledger.push(row);
    }
    return 'committed';
  }

  async ledger(query: LedgerQuery): Promise<LedgerRow[]> {
    const slot = this.#slots.get(query.workspaceId);
    if (!slot) return [];
    const rows = slot.ledger;
    const from = query.from ?? -Infinity;
    const to = query.to ?? Infinity;
    // Rows are numbered 1, 2, 3, … so row `seq` sits at index seq − 1.
    let start = query.afterSeq ?? 0;
    if (query.from !== undefined && slot.inTimeOrder) start = Math.max(start, lowerBound(rows, from));
    const page: LedgerRow[] = [];
    for (let i = start; i < rows.length && page.length < query.limit; i++) {
      const row = rows[i]!;
      if (row.at >= to) {
        if (slot.inTimeOrder) break;
        continue;
      }
      if (row.at < from) continue;
      if (query.agentId !== undefined && row.agentId !== query.agentId) continue;
      if (query.kinds !== undefined && !query.kinds.includes(row.kind)) continue;
      page.push(row);
    }
    return page;
  }

  async listWorkspaces(query: ListQuery): Promise<string[]> {
    const ids: string[] = [];
    for (const [id, slot] of this.#slots) if (slot.state && (query.afterId === undefined || id > query.afterId)) ids.push(id);
    return ids.sort().slice(0, query.limit);
  }

  async erase(request: EraseRequest): Promise<void> {
    await this.#unlocked(request.workspaceId);
    const slot = this.#slots.get(request.workspaceId);
    if (!slot) return;
    slot.version += 1;
    slot.records = new Map();
    slot.holds = new HoldHeap();
    if (request.keepLedger) slot.ledger = slot.ledger.map((row) => ({ ...row, agentId: null, conversationId: null }));
    else Object.assign(slot, { state: null, ledger: [], inTimeOrder: true });
  }
}

function lowerBound(rows: readonly LedgerRow[], at: number): number {
  let lo = 0;
  let hi = rows.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (rows[mid]!.at < at) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
