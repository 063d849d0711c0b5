import { StorageError } from '../core/errors.js';
import type { StoredRecord, WorkspaceState } from '../core/state.js';
import {
  adjustmentKey,
  type Command,
  type CoreEvent,
  lapsedHolds,
  type Outcome,
  type Rules,
  refundKey,
  replyKey,
  Transition,
  topUpKey,
} from '../core/transition.js';
import type { CommitResult, CreditStorage, LoadedWorkspace, LoadRequest, LockedWorkspace, WorkspaceCommit } from '../storage/storage.js';

/** What the batcher needs from the meter: the time, the rules and the store. */
export interface BatchContext {
  readonly rules: Rules;
  now(): number;
  load(request: LoadRequest): Promise<LoadedWorkspace>;
  commit(commit: WorkspaceCommit): Promise<CommitResult>;
  /** The store's {@link CreditStorage.lock}, when it has one. */
  lock?<T>(workspaceId: string, work: (workspace: LockedWorkspace) => Promise<T>): Promise<T>;
  /**
   * Whether a commit that failed with `error` may have landed all the same (its answer lost),
   * so that a load is worth making to find out. Not after a timeout: a store too slow to answer
   * gets no more calls.
   */
  mayHaveLanded(error: unknown): boolean;
  /** The store's {@link CreditStorage.maxCommitItems}, when it has one. */
  readonly maxCommitItems?: number;
}

/** A command's outcome, the events it raised and the instant it was applied at. */
export interface Applied {
  readonly outcome: Outcome;
  readonly events: readonly CoreEvent[];
  readonly at: number;
}

interface Pending {
  readonly command: Command;
  readonly resolve: (applied: Applied) => void;
  readonly reject: (error: unknown) => void;
}

/** A record a batch reads; `fresh` when its command creates it (a new reply or top-up id). */
interface Needed {
  readonly key: string;
  readonly fresh: boolean;
}

/**
 * What this meter last committed for a workspace. While the stored version is unchanged the
 * store holds exactly this state, so a batch may start from it instead of loading; the
 * commit's version guard (and `absentKeys` for ids this meter has not seen) proves it.
 */
interface Committed {
  readonly version: number;
  readonly state: WorkspaceState;
  /** Open holds this meter has seen, by key; any other record it must load or prove absent. */
  readonly holds: Map<string, StoredRecord>;
  /** Load again from this instant on: a hold this meter has not seen could lapse then. */
  readonly reloadAt: number;
}

/** One try of a batch: the outcomes, and the commit with the store's answer when it changed something. */
interface Tried {
  readonly results: Applied[];
  readonly loaded: LoadedWorkspace;
  readonly commit?: WorkspaceCommit;
  /** The number the commit's state and reply records carry ({@link WorkspaceState.writtenBy}). */
  readonly writtenBy: number;
  /** Events of a commit that only caught up with lapsed holds: announced with the next outcome. */
  readonly events?: readonly CoreEvent[];
  result?: CommitResult;
}

// A commit that keeps losing the race to other writers gives up after this many tries.
const MAX_ATTEMPTS = 64;
// Bounds the size of one commit (one transaction, one script).
const MAX_BATCH = 1024;
// Bounds the memory of what is kept: workspaces (least recently committed go first), holds each.
const MAX_KEPT_WORKSPACES = 10_000;
const MAX_KEPT_HOLDS = 4_096;
// With a store that has `lock`, a batch that lost a race (or whose workspace lost one lately) is
// retried inside the lock when it carries this many commands: redoing it again would cost more
// than the lock's few round trips, during which the other servers' commits to the workspace wait.
// A small batch just reloads and retries; from this attempt on, any batch takes the lock.
const LOCK_BATCH = 16;
const LOCK_ATTEMPT = 3;
// After a kept state turned out stale (another meter wrote), load first for this many batches
// at most, doubling from one each time it happens again: several meters on one hot workspace
// then rarely waste a commit.
const MAX_LOAD_FIRST = 64;
// With a store that has no `lock`, a batch that lost the race twice waits a random while before
// its next try, up to a window that doubles from this with every loss (full jitter) up to the
// cap: servers that keep meeting on a hot workspace spread out instead of racing until some
// give up, and the commands that arrive meanwhile join the batch.
const BACKOFF_MS = 1;
const MAX_BACKOFF_MS = 512;

/**
 * Group commit for every store: commands on one workspace that arrive while a commit is in
 * flight wait, then are applied in arrival order to one state and committed together. Each
 * still gets its own outcome: a refused reserve never fails its neighbours. When the store
 * says the version moved (another meter wrote), the batch is loaded and applied again; the
 * transition core is pure, so applying twice is safe. Unless the load shows the batch's own
 * commit, by the number its state and reply records carry: then that commit had landed (its
 * answer was lost and a re-send met it), and its outcomes stand. With a store that has `lock`, a large
 * batch that lost a race (and any batch on its third try) is retried inside the lock, so app
 * servers on a hot workspace take turns instead of redoing their batches until one gives up;
 * without one, a batch that lost twice waits a random, doubling while before its next try.
 *
 * With a store that reports `nextLapseAt`, a batch that writes starts from the state this
 * meter committed last, without a `load`, until a hold could lapse: one round trip instead of
 * two. A batch that writes nothing (a read, a refused settle) always answers from a load.
 *
 * With a store that declares `maxCommitItems`, a batch commits its longest run of commands that
 * fits and leaves the rest at the head of the queue, and lapsed holds beyond what fits end first,
 * a few at a time, in commits without commands.
 */
export class WorkspaceBatcher {
  readonly #context: BatchContext;
  readonly #queues = new Map<string, Pending[]>();
  readonly #committed = new Map<string, Committed>();
  readonly #loadFirst = new Map<string, { left: number; next: number }>();
  /** Events of commits that landed without commands, per workspace, to go with the next outcome. */
  readonly #carried = new Map<string, CoreEvent[]>();

  constructor(context: BatchContext) {
    this.#context = context;
  }

  /** Applies a command to a workspace as part of the next batch. */
  submit(workspaceId: string, command: Command): Promise<Applied> {
    return new Promise<Applied>((resolve, reject) => {
      const queue = this.#queues.get(workspaceId);
      if (queue) {
        queue.push({ command, resolve, reject });
        return;
      }
      this.#queues.set(workspaceId, [{ command, resolve, reject }]);
      queueMicrotask(() => void this.#drain(workspaceId));
    });
  }

  /** Drops what is kept of a workspace, e.g. after the store erased it behind the batcher. */
  forget(workspaceId: string): void {
    this.#committed.delete(workspaceId);
  }

  async #drain(workspaceId: string): Promise<void> {
    const queue = this.#queues.get(workspaceId)!;
    while (queue.length > 0) {
      const batch = queue.splice(0, MAX_BATCH);
      const landed: Applied[] = [];
      try {
        const results = this.#withCarried(workspaceId, await this.#run(workspaceId, batch, queue, landed));
        for (let i = 0; i < batch.length; i++) batch[i]!.resolve(results[i]!);
      } catch (error) {
        this.#committed.delete(workspaceId);
        this.#withCarried(workspaceId, landed);
        // The first commands' commit had landed (its answer lost) before a later try failed: they stand.
        for (let i = 0; i < batch.length; i++) {
          if (i < landed.length) batch[i]!.resolve(landed[i]!);
          else batch[i]!.reject(error);
        }
      }
    }
    this.#queues.delete(workspaceId);
  }

  /**
   * Applies a batch until it commits; `waiting` joins it after a conflict (arrival order holds).
   * `landed` gets the outcomes of the batch's first commands when their commit landed though it
   * answered `conflict`: they stand even when a later try fails.
   */
  async #run(workspaceId: string, batch: Pending[], waiting: Pending[], landed: Applied[]): Promise<Applied[]> {
    let mayReuse = true;
    // The last try whose commit answered `conflict`.
    let refused: Tried | undefined;
    // The try whose commit is in flight, for when the call fails.
    let sending: Tried | undefined;
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      // Under contention, commits that land carry more commands each: fewer rounds on the hot row.
      if (attempt > 0 && waiting.length > 0 && batch.length < MAX_BATCH) batch.push(...waiting.splice(0, MAX_BATCH - batch.length));
      const pending = landed.length === 0 ? batch : batch.slice(landed.length);
      const needed = neededBy(pending);
      const now = this.#context.now();
      const contended = attempt > 0 || (this.#loadFirst.get(workspaceId)?.left ?? 0) > 0;
      const locked = this.#context.lock !== undefined && ((contended && pending.length >= LOCK_BATCH) || attempt >= LOCK_ATTEMPT);
      const kept = mayReuse ? this.#reusable(workspaceId, needed, now) : undefined;
      mayReuse = false;
      sending = undefined;
      // The refused try that the load showed had landed, when it did.
      let found: Tried | undefined;
      let tried: Tried | undefined;
      let failure: { error: unknown } | undefined;
      try {
        if (kept) {
          tried = this.#apply(workspaceId, pending, now, ...fromKept(kept, needed));
          sending = tried;
          if (tried.commit) tried.result = await this.#context.commit(tried.commit);
        } else {
          const request: LoadRequest = { workspaceId, keys: needed.map((need) => need.key), now };
          // Safe to run again (a store's `lock` may, on a fresh connection after one dropped): it
          // only assigns, and a run whose commit had landed is found by the next run's load.
          const tryOnce = async (store: Pick<BatchContext, 'load' | 'commit'>): Promise<Tried> => {
            const loaded = await store.load(request);
            if (sending?.commit && landedIn(sending, loaded)) return Object.assign(sending, { result: 'committed' as const });
            // A commit sent again after an error (a grouped call that failed, a dropped connection)
            // answers `conflict` when its first try had landed: the store then holds what it wrote,
            // and its commands' outcomes stand as first applied.
            found = refused && landedIn(refused, loaded) ? refused : undefined;
            const applied = this.#apply(workspaceId, found ? pending.slice(found.results.length) : pending, now, loaded);
            sending = applied;
            if (applied.commit) applied.result = await store.commit(applied.commit);
            return applied;
          };
          // Another writer got in first: queue on its lock rather than race it again.
          tried = await (locked ? this.#context.lock!(workspaceId, tryOnce) : tryOnce(this.#context));
        }
      } catch (error) {
        failure = { error };
      }
      if (found) {
        this.#carry(workspaceId, found);
        landed.push(...found.results);
      }
      if (failure || !tried) {
        const error = failure?.error;
        // A commit that failed may have landed before its answer was lost; inside a lock too,
        // when the transaction committed and the answer to its COMMIT was lost.
        if (!sending?.commit || !(await this.#landedDespite(error, workspaceId, sending, now))) {
          // Only the commands of the commit that failed fail; those it left out wait for the next
          // batch. All of them when it carried none (it ended lapsed holds): they cannot go without it.
          if (sending?.results.length) fitted(batch, waiting, landed.concat(sending.results));
          throw error;
        }
        this.#carry(workspaceId, sending);
        return fitted(batch, waiting, landed.concat(sending.results));
      }
      // Nothing to commit proves nothing about a kept state: answer from a load.
      if (!tried.commit) {
        if (kept) continue;
        return landed.concat(tried.results);
      }
      if (tried.result === 'committed') {
        this.#carry(workspaceId, tried);
        this.#keep(workspaceId, tried.commit, kept ?? tried.loaded);
        if (kept) this.#loadFirst.delete(workspaceId);
        return fitted(batch, waiting, landed.concat(tried.results));
      }
      refused = tried;
      if (kept) this.#distrust(workspaceId);
      if (!this.#context.lock && attempt > 0) await backoff(attempt);
    }
    if (refused?.results.length) fitted(batch, waiting, landed.concat(refused.results));
    throw new StorageError('commit', new Error('the workspace kept changing; try again'));
  }

  /**
   * Whether a commit that failed with `error` landed all the same, its answer lost (see
   * {@link landedIn}). Not asked after a timeout.
   */
  async #landedDespite(error: unknown, workspaceId: string, tried: Tried, now: number): Promise<boolean> {
    if (!this.#context.mayHaveLanded(error)) return false;
    const keys = tried.commit!.records.flatMap((record) => (record.value.type === 'reply' ? [record.key] : []));
    try {
      return landedIn(tried, await this.#context.load({ workspaceId, keys, now }));
    } catch {
      return false;
    }
  }

  /** Applies a batch to what was loaded (or kept): the outcomes, and the commit when it changed something. */
  #apply(workspaceId: string, batch: readonly Pending[], now: number, loaded: LoadedWorkspace, absentKeys?: string[]): Tried {
    const writtenBy = randomWriter();
    const max = this.#context.maxCommitItems;
    const lapsed = max === undefined || loaded.lapsed.length === 0 ? undefined : lapsedHolds(loaded.lapsed);
    const fit = Math.floor(((max ?? 0) - 1) / 2);
    if (lapsed && lapsed.length > fit) {
      // More holds lapsed than the store's commit takes: the first of them end in a commit of their
      // own, at the last one's instant, before any command; the batch waits for the next try.
      const first = lapsed.slice(0, fit).map((value) => ({ key: replyKey(value.replyId), holdExpiresAt: value.expiresAt, value }));
      const at = first[first.length - 1]!.holdExpiresAt;
      const transition = new Transition(workspaceId, { ...loaded, records: [], lapsed: first }, at, this.#context.rules, writtenBy);
      return { results: [], loaded, writtenBy, events: transition.takeEvents(), commit: this.#commitOf(workspaceId, transition, loaded) };
    }
    const transition = new Transition(workspaceId, loaded, now, this.#context.rules, writtenBy);
    const results: Applied[] = [];
    const unseen = max !== undefined && absentKeys?.length ? new Set(absentKeys) : undefined;
    let absent = 0;
    for (const pending of batch) {
      results.push({ outcome: transition.apply(pending.command), events: transition.takeEvents(), at: now });
      if (max === undefined) continue;
      if (unseen) for (const { key } of neededBy([pending])) if (unseen.delete(key)) absent += 1;
      // Over the store's limit: the commands before this one go now, this one leads the next batch.
      // The core is pure, so applying them again gives what they gave, which fitted.
      if (results.length > 1 && transition.size + absent > max) {
        const fitting = batch.slice(0, results.length - 1);
        const keys = new Set(neededBy(fitting).map((need) => need.key));
        return this.#apply(
          workspaceId,
          fitting,
          now,
          loaded,
          absentKeys?.filter((key) => keys.has(key)),
        );
      }
    }
    if (!transition.changed) return { results, loaded, writtenBy };
    const commit = this.#commitOf(workspaceId, transition, loaded);
    if (absentKeys?.length) commit.absentKeys = absentKeys;
    return { results, loaded, commit, writtenBy };
  }

  /** The commit of what `transition` changed, from `loaded`'s version to a new one. */
  #commitOf(workspaceId: string, transition: Transition, loaded: LoadedWorkspace): WorkspaceCommit {
    const { state, ledger, records } = transition.result();
    this.#committed.delete(workspaceId);
    return { workspaceId, expectedVersion: loaded.version, nextVersion: loaded.version + versionStep(), state, ledger, records };
  }

  /** Keeps the events of a commit without commands that landed, for the next outcome. */
  #carry(workspaceId: string, tried: Tried): void {
    if (tried.events?.length) this.#carried.set(workspaceId, [...(this.#carried.get(workspaceId) ?? []), ...tried.events]);
  }

  /** `results`, the first of them with the events carried for the workspace, if any. */
  #withCarried(workspaceId: string, results: Applied[]): Applied[] {
    const carried = this.#carried.get(workspaceId);
    if (carried && results.length > 0) {
      results[0] = { ...results[0]!, events: [...carried, ...results[0]!.events] };
      this.#carried.delete(workspaceId);
    }
    return results;
  }

  /** The kept state, when a batch that needs these records may start from it at `now`. */
  #reusable(workspaceId: string, needed: readonly Needed[], now: number): Committed | undefined {
    const kept = this.#committed.get(workspaceId);
    if (!kept || now >= kept.reloadAt) return undefined;
    const loadFirst = this.#loadFirst.get(workspaceId);
    if (loadFirst && loadFirst.left > 0) {
      loadFirst.left -= 1;
      return undefined;
    }
    for (const { key, fresh } of needed) if (!fresh && !kept.holds.has(key)) return undefined;
    return kept;
  }

  #distrust(workspaceId: string): void {
    const previous = this.#loadFirst.get(workspaceId);
    const next = Math.min(MAX_LOAD_FIRST, previous ? previous.next * 2 : 1);
    this.#loadFirst.delete(workspaceId);
    this.#loadFirst.set(workspaceId, { left: next, next });
    if (this.#loadFirst.size > MAX_KEPT_WORKSPACES) this.#loadFirst.delete(this.#loadFirst.keys().next().value!);
  }

  /** Remembers a commit that landed, on top of what it started from. */
  #keep(workspaceId: string, commit: WorkspaceCommit, base: Committed | LoadedWorkspace): void {
    let reloadAt: number;
    let holds: Map<string, StoredRecord>;
    if ('reloadAt' in base) {
      reloadAt = base.reloadAt;
      holds = base.holds;
    } else {
      // A store that does not say when its next hold lapses is loaded every time.
      if (base.nextLapseAt === undefined) return;
      reloadAt = base.nextLapseAt ?? Number.POSITIVE_INFINITY;
      holds = new Map();
      for (const record of [...base.records, ...base.lapsed]) if (record.holdExpiresAt !== null) holds.set(record.key, record);
    }
    for (const record of commit.records) {
      if (record.holdExpiresAt === null) holds.delete(record.key);
      else {
        holds.delete(record.key);
        holds.set(record.key, record);
        reloadAt = Math.min(reloadAt, record.holdExpiresAt);
      }
    }
    while (holds.size > MAX_KEPT_HOLDS) holds.delete(holds.keys().next().value!);
    this.#committed.set(workspaceId, { version: commit.nextVersion!, state: commit.state, holds, reloadAt });
    if (this.#committed.size > MAX_KEPT_WORKSPACES) this.#committed.delete(this.#committed.keys().next().value!);
  }
}

/**
 * The outcomes of a batch's first commands, when the store's `maxCommitItems` let only those
 * into its commit: the rest leave the batch and go back to the head of the queue, in order.
 * Also when that commit failed: the rest were not in it.
 */
function fitted(batch: Pending[], waiting: Pending[], results: Applied[]): Applied[] {
  if (results.length < batch.length) waiting.unshift(...batch.splice(results.length));
  return results;
}

/**
 * How far a commit moves the version: 1 to 2¹⁶, at random. Versions then stay unique even when
 * a store loses its last commits (see {@link WorkspaceCommit.nextVersion}): a meter still
 * holding a lost state meets another version, not a repeat of its own (a repeat has a chance
 * of about 2⁻¹⁵). Larger steps would make a repeat rarer but use the versions up sooner: at
 * 2¹⁵ a step on average, a workspace has 2³⁸ commits before its version passes 2⁵³, 87 years
 * of 100 commits a second (each commit writes something, so the store fills up first).
 */
function versionStep(): number {
  return 1 + Math.floor(Math.random() * 2 ** 16);
}

/** Waits a random time below a window that doubles with every lost race (`attempt` counts from 0). */
function backoff(attempt: number): Promise<void> {
  const window = Math.min(MAX_BACKOFF_MS, BACKOFF_MS * 2 ** (attempt - 1));
  return new Promise((resolve) => setTimeout(resolve, Math.random() * window));
}

/**
 * A number for {@link WorkspaceState.writtenBy} and {@link ReplyRecord.writtenBy}: 52 random
 * bits, so two commits share one with a chance of 2⁻⁵². Drawn apart from the version step: a
 * commit that lost the race may well have picked the winner's step. Always 16 digits (2⁵² to
 * 2⁵³ − 1), so it does not change the length of the state: a row rewritten at the same length
 * is updated in place (InnoDB), which kept 32 servers on one MariaDB workspace at 3.6–3.7 k
 * charges/s instead of 2.8–2.9 k.
 */
function randomWriter(): number {
  // A block at a time: one call to crypto costs 1.7 µs, a fifth of a charge on the memory store.
  if (drawn === randomBits.length) {
    globalThis.crypto.getRandomValues(randomBits);
    drawn = 0;
  }
  const high = randomBits[drawn++]!;
  const low = randomBits[drawn++]!;
  return 2 ** 52 + (high % 2 ** 20) * 2 ** 32 + low;
}
const randomBits = new Uint32Array(1024);
let drawn = randomBits.length;

/** A kept state as a load would have answered it: the holds a batch needs, and the keys it must prove absent. */
function fromKept(kept: Committed, needed: readonly Needed[]): [loaded: LoadedWorkspace, absentKeys: string[]] {
  const records: StoredRecord[] = [];
  const absentKeys: string[] = [];
  for (const { key } of needed) {
    const hold = kept.holds.get(key);
    if (hold) records.push(hold);
    else absentKeys.push(key);
  }
  return [{ version: kept.version, state: kept.state, records, lapsed: [] }, absentKeys];
}

/**
 * Whether a commit landed, as `loaded` shows: the stored state carries its number, or, when
 * another server has written since, a reply record it wrote still does (commits are
 * all-or-nothing, so one record proves the whole commit). Never the version and balances
 * alone: another server's commit from the same state can reach both. A commit whose reply
 * records were all overwritten since, or that wrote none, cannot be told from another
 * server's once the state moved on.
 */
function landedIn(tried: Tried, loaded: LoadedWorkspace): boolean {
  if (loaded.version === tried.commit!.nextVersion && loaded.state?.writtenBy === tried.writtenBy) return true;
  return loaded.records.some(({ value }) => value.type === 'reply' && value.writtenBy === tried.writtenBy);
}

/** The records a batch reads, loaded with the state in the same round trip. */
function neededBy(batch: readonly Pending[]): Needed[] {
  const needed = new Map<string, boolean>();
  for (const { command } of batch) {
    switch (command.type) {
      case 'reserve':
        need(needed, replyKey(command.reply.replyId), true);
        break;
      case 'settle':
      case 'release':
      case 'extend':
        need(needed, replyKey(command.replyId), false);
        break;
      case 'topUp':
        need(needed, topUpKey(command.grantId), true);
        break;
      case 'refund':
        need(needed, replyKey(command.replyId), false);
        need(needed, refundKey(command.refundId), true);
        break;
      case 'adjust':
        need(needed, adjustmentKey(command.adjustmentId), true);
        break;
    }
  }
  return Array.from(needed, ([key, fresh]) => ({ key, fresh }));
}

/** A key is fresh only if every command that needs it may create it. */
function need(needed: Map<string, boolean>, key: string, fresh: boolean): void {
  needed.set(key, fresh && (needed.get(key) ?? true));
}
