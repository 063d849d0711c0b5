/**
 * What every case file shares: the public option and context types, the plans and models the
 * cases use, and helpers to build seam values, drive `CreditMeter` instances and read a store.
 */
import { expect } from 'vitest';
import { periodBounds } from '../core/billing-period.js';
import { CreditsError } from '../core/errors.js';
import { ledgerRow } from '../core/ledger-row.js';
import { definePlans } from '../core/plan-catalog.js';
import { defineModelPrices } from '../core/price-table.js';
import type { AccountState, GrantState, LedgerKind, LedgerRow, ReplyRecord, StoredRecord, WorkspaceState } from '../core/state.js';
import { CreditMeter } from '../meter/credit-meter.js';
import type { CreditMeterOptions, WorkspaceSummary } from '../meter/types.js';
import type { CreditStorage, LoadedWorkspace } from '../storage/storage.js';
import { FakeProvider } from './fake-provider.js';

// ─── public types ─────────────────────────────────────────────────────────

/** Sizes of the concurrency cases. Lower them for a slow test database, never to zero. */
export interface ConformanceConcurrency {
  /**
   * CreditMeter instances sharing the store (as several app servers would).
   * @default 5
   */
  meters?: number;
  /**
   * Concurrent calls in each race.
   * @default 500
   */
  requests?: number;
  /**
   * Replies the balance covers in the overspend races (must be below `requests`).
   * @default 100
   */
  affordable?: number;
}

/** Options of {@link runStorageConformance} and {@link runConformanceCase}. */
export interface StorageConformanceOptions {
  /** Names the suite in the report, e.g. `postgres`. */
  name: string;
  /**
   * Makes a fresh, empty, isolated store. Called once per case: a SQL store should use a
   * new schema or table prefix per call, a Redis store a new key prefix. The kit calls
   * `migrate()` on it before the case.
   */
  create: () => CreditStorage | Promise<CreditStorage>;
  /**
   * Disposes of a store after its case (drop the schema, delete the keys, close it).
   * @default calls `storage.close()`
   */
  cleanup?: (storage: CreditStorage) => Promise<void>;
  /** Sizes of the concurrency cases; see {@link ConformanceConcurrency}. */
  concurrency?: ConformanceConcurrency;
  /**
   * Names of cases to skip (they show as skipped). An unknown name throws, so a typo never
   * silently runs a case you meant to skip.
   * @default []
   */
  skip?: readonly string[];
  /**
   * Cases of your own (e.g. for options only your store has), run after the kit's, each on a
   * fresh store and followed by the same invariant check. Names follow `"<operation> - <behaviour>"`.
   * @default []
   */
  cases?: readonly ConformanceCase[];
  /**
   * Per-case timeout in ms, passed to `it`.
   * @default vitest's `testTimeout`
   */
  timeout?: number;
  /**
   * Seed of the random operations of the `differential` case. A failure names the seed it ran
   * with: pass it here to run the same operations again.
   * @default a new random seed per run
   */
  seed?: number;
}

/** What a case receives: a fresh store, a controllable clock, and id and tracking helpers. */
export interface ConformanceContext {
  /** The store under test, fresh and migrated. */
  readonly storage: CreditStorage;
  /** The concurrency sizes in force, defaults filled in. */
  readonly concurrency: Readonly<Required<ConformanceConcurrency>>;
  /** The case's clock, for `CreditMeter({ clock })`: returns {@link ConformanceContext.now}. */
  readonly clock: () => Date;
  /** The current instant of the case's clock, epoch ms. Starts at {@link CONFORMANCE_EPOCH}. */
  now(): number;
  /** Moves the clock to an instant, epoch ms. */
  setNow(at: number): void;
  /** Moves the clock forward by `ms`. */
  advance(ms: number): void;
  /** An id unique to this case run, e.g. `ws_k3x9_1`, so stores shared across cases never collide. */
  id(prefix: string): string;
  /** Seed for a case's random choices: {@link StorageConformanceOptions.seed}, or random per run. */
  readonly seed: number;
  /** Adds a workspace to those whose invariants are checked when the case ends. */
  track(workspaceId: string): void;
  /** Workspaces tracked so far. */
  readonly tracked: ReadonlySet<string>;
}

/** One conformance case: a name `"<operation> - <behaviour>"` and what it runs. */
export interface ConformanceCase {
  /** `"<operation> - <behaviour>"`, unique in the kit; the name `skip` takes. */
  readonly name: string;
  /** The operation (the part of the name before ` - `), used to group cases. */
  readonly group: string;
  /** Runs the case; throws (a failed `expect`) when the store does not conform. */
  readonly run: (context: ConformanceContext) => Promise<void>;
}

/** The instant every case's clock starts at: 2026-01-15T12:00:00Z. */
export const CONFORMANCE_EPOCH = Date.UTC(2026, 0, 15, 12);

export const DEFAULT_CONCURRENCY: Required<ConformanceConcurrency> = { meters: 5, requests: 500, affordable: 100 };

/** Builds a list of cases, checking each name's `"<operation> - <behaviour>"` shape. */
export function defineCases(entries: readonly (readonly [string, (ctx: ConformanceContext) => Promise<void>])[]): ConformanceCase[] {
  return entries.map(([name, run]) => {
    const separator = name.indexOf(' - ');
    if (separator <= 0) throw new Error(`conformance case "${name}" must be named "<operation> - <behaviour>"`);
    return Object.freeze({ name, group: name.slice(0, separator), run });
  });
}

// ─── units, plans, models ─────────────────────────────────────────────────

/** Micro-credits in a credit. */
export const C = 1_000_000;
export const MINUTE = 60_000;
export const HOUR = 60 * MINUTE;
export const DAY = 24 * HOUR;
export const PERIOD0 = periodBounds(CONFORMANCE_EPOCH, 0);

/** Models of the kit's price table: the name says the price in credits. */
export const ONE = 'one-credit';
export const TWO = 'two-credits';
export const THREE = 'three-credits';
export const FOUR = 'four-credits';
/** Served by a third party: free with a workspace's own key (the byo route). */
export const BYO = 'byo-model';
export const PRICE_VERSION = 'conformance-prices';

export const CONFORMANCE_MODELS = defineModelPrices(
  [
    { id: ONE, name: 'One', provider: 'bookbag', credits: 1, providerBacked: false },
    { id: TWO, name: 'Two', provider: 'bookbag', credits: 2, providerBacked: false },
    { id: THREE, name: 'Three', provider: 'bookbag', credits: 3, providerBacked: false },
    { id: FOUR, name: 'Four', provider: 'bookbag', credits: 4, providerBacked: false },
    { id: BYO, name: 'Byo', provider: 'openai', credits: 2, providerBacked: true },
  ],
  { version: PRICE_VERSION },
);

export const CONFORMANCE_PLANS = definePlans([
  { id: 'starter', name: 'Starter', monthlyCredits: 10 },
  { id: 'team', name: 'Team', monthlyCredits: 30 },
  { id: 'custom', name: 'Custom', monthlyCredits: null },
  { id: 'rollover', name: 'Rollover', monthlyCredits: 10, rolloverCap: 5 },
  { id: 'rollover-all', name: 'Rollover all', monthlyCredits: 10, rolloverCap: 100 },
]);

// ─── meters ───────────────────────────────────────────────────────────────

/** Options of a meter on the case's store and clock, with the kit's plans, models and fake providers. */
export function meterOptions(ctx: ConformanceContext, extra: Partial<CreditMeterOptions> = {}): CreditMeterOptions {
  return {
    storage: ctx.storage,
    clock: ctx.clock,
    plans: CONFORMANCE_PLANS,
    models: CONFORMANCE_MODELS,
    providers: { bookbag: new FakeProvider(), openai: new FakeProvider() },
    onEventError: () => undefined,
    ...extra,
  };
}

export function newMeter(ctx: ConformanceContext, extra: Partial<CreditMeterOptions> = {}): CreditMeter {
  return new CreditMeter(meterOptions(ctx, extra));
}

/** Several meters sharing the store, as several app servers would. */
export function meters(ctx: ConformanceContext, count: number, extra: Partial<CreditMeterOptions> = {}): CreditMeter[] {
  return Array.from({ length: Math.max(1, count) }, () => newMeter(ctx, extra));
}

/**
 * The store as a meter sees it, with a pause after each `load`: every meter's load lands
 * before any of them commits, so their commits race on one version on any store, however
 * fast. A store that ignores the version lets a stale batch through and overspends here.
 * It hides `nextLapseAt`, so the meters load before every batch instead of starting from the
 * state they kept (`meters()` races those).
 */
export function interleaved(storage: CreditStorage): CreditStorage {
  const pause = () => new Promise((resolve) => setImmediate(resolve));
  return overriding(storage, {
    load: async (request) => {
      const { nextLapseAt: _, ...loaded } = await storage.load(request);
      await pause();
      return loaded;
    },
  });
}

/**
 * The store as a meter of a case sees it, with some methods replaced. `close` does nothing (the
 * kit closes the store), and `lock` is left out: a wrapper would have to lend its own load and
 * commit, so meters on it load and commit as stores without a lock do.
 */
export function overriding(storage: CreditStorage, overrides: Partial<CreditStorage>): CreditStorage {
  const { usage, listWorkspaces, erase, maxCommitItems } = storage;
  return {
    ...(maxCommitItems !== undefined && { maxCommitItems }),
    migrate: () => storage.migrate(),
    close: async () => undefined,
    load: (request) => storage.load(request),
    commit: (commits) => storage.commit(commits),
    ledger: (query) => storage.ledger(query),
    ...(usage && { usage: (query) => usage.call(storage, query) }),
    ...(listWorkspaces && { listWorkspaces: (query) => listWorkspaces.call(storage, query) }),
    ...(erase && { erase: (request) => erase.call(storage, request) }),
    ...overrides,
  };
}

/** Meters racing on one store, their loads and commits interleaved. */
export function racingMeters(ctx: ConformanceContext, extra: Partial<CreditMeterOptions> = {}): CreditMeter[] {
  return meters(ctx, ctx.concurrency.meters, { storage: interleaved(ctx.storage), ...extra });
}

/** Creates a tracked workspace on a custom plan with `credits` (or on `plan`), starting now. */
export async function newWorkspace(
  ctx: ConformanceContext,
  meter: CreditMeter,
  credits: number,
  options: { plan?: string; startsAt?: number; workspaceId?: string } = {},
): Promise<string> {
  const workspaceId = options.workspaceId ?? ctx.id('ws');
  const plan = options.plan ?? 'custom';
  await meter.createWorkspace({
    workspaceId,
    plan,
    ...(plan === 'custom' && { allotment: credits }),
    ...(options.startsAt !== undefined && { startsAt: new Date(options.startsAt) }),
  });
  ctx.track(workspaceId);
  return workspaceId;
}

/** A reply's identity for `reserve` and `reply`, with defaults. */
export function ask(workspaceId: string, model = ONE, extra: { replyId?: string; agentId?: string; conversationId?: string } = {}) {
  return {
    workspaceId,
    agentId: extra.agentId ?? 'agent_a',
    conversationId: extra.conversationId ?? 'conv_1',
    model,
    ...(extra.replyId !== undefined && { replyId: extra.replyId }),
  };
}

/** Credits of a summary field as a number. */
export const num = (value: { toString(): string }): number => Number(value.toString());

/** The balance and held credits of a workspace, as numbers. */
export async function money(
  meter: CreditMeter,
  workspaceId: string,
): Promise<{ balance: number; held: number; used: number; summary: WorkspaceSummary }> {
  const summary = await meter.getWorkspace(workspaceId);
  return { balance: num(summary.balance), held: num(summary.held), used: num(summary.usedThisPeriod), summary };
}

export function codeOf(error: unknown): string {
  return CreditsError.is(error) ? error.code : `unexpected error: ${String(error)}`;
}

/** The error code a promise rejects with. */
export async function rejection(pending: Promise<unknown>): Promise<string> {
  try {
    await pending;
  } catch (error) {
    return codeOf(error);
  }
  return 'resolved';
}

/** Runs `count` calls of `task` at once and sorts the results into successes and error codes. */
export async function race<T>(count: number, task: (index: number) => Promise<T>): Promise<{ ok: T[]; errors: string[] }> {
  const settled = await Promise.allSettled(Array.from({ length: count }, (_, index) => task(index)));
  const ok: T[] = [];
  const errors: string[] = [];
  for (const result of settled) {
    if (result.status === 'fulfilled') ok.push(result.value);
    else errors.push(codeOf(result.reason));
  }
  return { ok, errors };
}

// ─── reading the store ────────────────────────────────────────────────────

/** Every ledger row of a workspace, read a page at a time through `afterSeq`. */
export async function allRows(storage: CreditStorage, workspaceId: string, pageSize = 1000): Promise<LedgerRow[]> {
  const rows: LedgerRow[] = [];
  let afterSeq: number | undefined;
  for (;;) {
    const page = await storage.ledger({ workspaceId, limit: pageSize, ...(afterSeq !== undefined && { afterSeq }) });
    rows.push(...page);
    if (page.length < pageSize) return rows;
    afterSeq = page[page.length - 1]!.seq;
  }
}

/** Ledger rows of one kind. */
export async function rowsOf(ctx: ConformanceContext, workspaceId: string, kind: LedgerKind): Promise<LedgerRow[]> {
  return (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === kind);
}

/** A reply's record as the store keeps it, or undefined. */
export async function replyRecord(ctx: ConformanceContext, workspaceId: string, replyId: string): Promise<ReplyRecord | undefined> {
  const loaded = await ctx.storage.load({ workspaceId, keys: [`reply:${replyId}`], now: ctx.now() });
  const found = loaded.records.find((record) => record.key === `reply:${replyId}`);
  return found?.value.type === 'reply' ? found.value : undefined;
}

export const sum = (values: readonly number[]): number => values.reduce((total, value) => total + value, 0);
// -0 and 0 are the same amount; `toBe` would tell them apart.
export const n = (value: number): number => value + 0;

// ─── seam values ──────────────────────────────────────────────────────────

/** A state document with one allotment grant of `amount` micro-credits, as the core would write it. */
export function stateDoc(workspaceId: string, ledgerSeq: number, amount = 10 * C, extra: Partial<AccountState> = {}): WorkspaceState {
  const grant: GrantState = {
    grantId: 'period:0',
    kind: 'allotment',
    amount,
    remaining: amount,
    held: 0,
    expiresAt: PERIOD0.end,
    createdAt: PERIOD0.start,
  };
  return {
    workspaceId,
    ledgerSeq,
    account: {
      plan: 'custom',
      allotment: amount,
      pendingPlan: null,
      pendingAllotment: null,
      anchor: PERIOD0.start,
      periodIndex: 0,
      periodStart: PERIOD0.start,
      periodEnd: PERIOD0.end,
      usedThisPeriod: 0,
      grants: [grant],
      held: 0,
      alerts: [],
      // Fields the core added later ride along as the core writes them (empty).
      agents: [],
      recharge: null,
      createdAt: PERIOD0.start,
      ...extra,
    } as AccountState,
  };
}

/** A ledger row with every optional column null. */
export const row = ledgerRow;

/** A reply record under `reply:<replyId>`; held (with `holdExpiresAt`) unless a status is given. */
export function replyStored(workspaceId: string, replyId: string, at: number, fields: Partial<ReplyRecord> = {}): StoredRecord {
  const value: ReplyRecord = {
    type: 'reply',
    replyId,
    workspaceId,
    agentId: 'agent_a',
    conversationId: 'conv_1',
    model: ONE,
    heldModel: ONE,
    route: 'credits',
    amount: C,
    priceVersion: PRICE_VERSION,
    status: 'held',
    createdAt: at,
    expiresAt: at + 15 * MINUTE,
    finishedAt: null,
    entrySeq: null,
    allocations: [{ grantId: 'period:0', amount: C }],
    paidFrom: [],
    refunded: 0,
    refusedFor: null,
    ...fields,
  } as ReplyRecord;
  return { key: `reply:${replyId}`, holdExpiresAt: value.status === 'held' ? value.expiresAt : null, value };
}

/** Sorts records by key, for comparing `load` results (which come in any order). */
export function byKey(records: readonly StoredRecord[]): StoredRecord[] {
  return [...records].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

/**
 * A load of a workspace with no open hold, as plain data to compare whole: its
 * `nextLapseAt`, when the store reports one, must be null.
 */
export function holdFree(loaded: LoadedWorkspace): Omit<LoadedWorkspace, 'nextLapseAt'> {
  const { nextLapseAt, ...rest } = loaded;
  expect(nextLapseAt ?? null, 'nextLapseAt of a workspace with no open hold').toBeNull();
  return rest;
}

/** Asserts a meter call rejects with a code. */
export async function expectCode(pending: Promise<unknown>, code: string, message?: string): Promise<void> {
  expect(await rejection(pending), message).toBe(code);
}
