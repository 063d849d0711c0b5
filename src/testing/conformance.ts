import { describe, expect, it } from 'vitest';
import { periodBounds } from '../core/billing-period.js';
import { MAX_MICROS } from '../core/credits.js';
import { definePlans } from '../core/plan-catalog.js';
import { CreditsError } from '../core/errors.js';
import { CreditMeter } from '../meter/credit-meter.js';
import type { CreditMeterOptions } from '../meter/types.js';
import type {
  CreditStorage,
  GrantOutcome,
  GrantRecord,
  LedgerRow,
  LedgerRowInput,
  ReplyRecord,
  ReserveCommand,
  ReserveOutcome,
  Route,
  UsageAggregate,
  WorkspaceRecord,
  WorkspaceState,
} from '../storage/storage.js';
import { FakeProvider } from './fake-provider.js';
import { allotmentGrant, ledgerRowInput } from '../storage/storage-helpers.js';

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

const DEFAULT_CONCURRENCY: Required<ConformanceConcurrency> = { meters: 5, requests: 500, affordable: 100 };

// ─── fixtures ─────────────────────────────────────────────────────────────

const C = 1_000_000; // micro-credits in a credit
const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TTL = 15 * MINUTE;
const PERIOD0 = periodBounds(CONFORMANCE_EPOCH, 0);
const PERIOD1 = periodBounds(CONFORMANCE_EPOCH, 1);

// Prices of the default table used through CreditMeter: bookbag-local and gpt-4o-mini cost 1 credit.
const ONE_CREDIT_MODEL = 'bookbag-local';
const CONFORMANCE_PLANS = definePlans([
  { id: 'starter', name: 'Starter', monthlyCredits: 10 },
  { id: 'team', name: 'Team', monthlyCredits: 30 },
  { id: 'custom', name: 'Custom', monthlyCredits: null },
]);

function workspaceRecord(workspaceId: string, allotment: number, overrides: Partial<WorkspaceRecord> = {}): WorkspaceRecord {
  return {
    workspaceId,
    plan: 'starter',
    allotment,
    pendingPlan: null,
    pendingAllotment: null,
    anchor: PERIOD0.start,
    periodIndex: 0,
    periodStart: PERIOD0.start,
    periodEnd: PERIOD0.end,
    usedThisPeriod: 0,
    version: 0,
    createdAt: PERIOD0.start,
    ...overrides,
  };
}

/** Creates a workspace in period 0 with `allotment` micro-credits and tracks it. */
async function newWorkspace(ctx: ConformanceContext, allotment: number, overrides: Partial<WorkspaceRecord> = {}): Promise<WorkspaceRecord> {
  const workspace = workspaceRecord(ctx.id('ws'), allotment, overrides);
  const outcome = await ctx.storage.createWorkspace({
    workspace,
    grant: allotmentGrant(0, allotment, workspace.periodEnd, workspace.createdAt),
    entry: { ...ledgerRowInput(workspace.workspaceId, 'grant', allotment, workspace.createdAt), grantId: 'period:0', plan: workspace.plan },
  });
  expect(outcome.status, 'createWorkspace of a new id').toBe('created');
  ctx.track(workspace.workspaceId);
  return workspace;
}

interface ReplyOptions {
  replyId?: string;
  agentId?: string;
  conversationId?: string;
  model?: string;
  route?: Route;
  ttl?: number;
  now?: number;
}

function replyInput(ctx: ConformanceContext, workspaceId: string, amount: number, options: ReplyOptions = {}): ReserveCommand['reply'] {
  const now = options.now ?? ctx.now();
  return {
    replyId: options.replyId ?? ctx.id('reply'),
    workspaceId,
    agentId: options.agentId ?? 'agent_a',
    conversationId: options.conversationId ?? 'conv_1',
    model: options.model ?? 'model_x',
    route: options.route ?? 'credits',
    amount,
    priceVersion: 'prices-v1',
    createdAt: now,
    expiresAt: now + (options.ttl ?? TTL),
  };
}

function reserve(ctx: ConformanceContext, workspaceId: string, amount: number, options: ReplyOptions = {}): Promise<ReserveOutcome> {
  const now = options.now ?? ctx.now();
  return ctx.storage.reserve({ reply: replyInput(ctx, workspaceId, amount, options), now, requireWorkspace: true });
}

/** Reserves and asserts the hold was placed; returns the reply. */
async function hold(ctx: ConformanceContext, workspaceId: string, amount: number, options: ReplyOptions = {}): Promise<ReplyRecord> {
  const outcome = await reserve(ctx, workspaceId, amount, options);
  if (outcome.status !== 'reserved') throw new Error(`expected reserve to hold ${amount}, got ${outcome.status}`);
  return outcome.reply;
}

/** Reserves and settles one reply at `now`; returns the ledger row. */
async function charge(ctx: ConformanceContext, workspaceId: string, amount: number, options: ReplyOptions = {}): Promise<LedgerRow> {
  const reply = await hold(ctx, workspaceId, amount, options);
  const outcome = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: options.now ?? ctx.now() });
  if (outcome.status !== 'settled') throw new Error(`expected settle to charge ${reply.replyId}, got ${outcome.status}`);
  return outcome.entry;
}

function topUp(
  ctx: ConformanceContext,
  workspaceId: string,
  amount: number,
  options: { grantId?: string; expiresAt?: number | null; now?: number } = {},
): Promise<GrantOutcome> {
  const now = options.now ?? ctx.now();
  const grantId = options.grantId ?? `topup:${ctx.id('g')}`;
  return ctx.storage.grant({
    workspaceId,
    grant: { grantId, kind: 'topup', amount, remaining: amount, expiresAt: options.expiresAt ?? null, createdAt: now },
    entry: { ...ledgerRowInput(workspaceId, 'topup', amount, now), grantId },
    now,
  });
}

async function addTopUp(ctx: ConformanceContext, workspaceId: string, amount: number, options: { grantId?: string; expiresAt?: number | null; now?: number } = {}): Promise<string> {
  const grantId = options.grantId ?? `topup:${ctx.id('g')}`;
  const outcome = await topUp(ctx, workspaceId, amount, { ...options, grantId });
  expect(outcome.status, `grant ${grantId}`).toBe('granted');
  return grantId;
}

async function state(ctx: ConformanceContext, workspaceId: string, now = ctx.now()): Promise<WorkspaceState> {
  const found = await ctx.storage.getWorkspace(workspaceId, now);
  if (!found) throw new Error(`workspace ${workspaceId} is missing`);
  return found;
}

/** Every ledger row of a workspace, read a page at a time. */
async function allRows(storage: CreditStorage, workspaceId: string, pageSize = 1000): Promise<LedgerRow[]> {
  const rows: LedgerRow[] = [];
  let afterId: string | undefined;
  for (;;) {
    const page = await storage.ledger({ workspaceId, limit: pageSize, ...(afterId !== undefined && { afterId }) });
    rows.push(...page);
    if (page.length < pageSize) return rows;
    afterId = page[page.length - 1]!.id;
  }
}

const sum = (values: readonly number[]): number => values.reduce((total, value) => total + value, 0);
// -0 and 0 are the same amount; `toBe` would tell them apart.
const n = (value: number): number => value + 0;

function remainingOf(current: WorkspaceState, grantId: string): number {
  return current.grants.find((grant) => grant.grantId === grantId)?.remaining ?? 0;
}

function sortUsage(rows: readonly UsageAggregate[]): { key: string; day: number | undefined; amount: number; replies: number }[] {
  return rows
    .map((row) => ({ key: row.key, day: row.day, amount: n(row.amount), replies: row.replies }))
    .sort((a, b) => (a.day ?? 0) - (b.day ?? 0) || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

function meterOptions(ctx: ConformanceContext, extra: Partial<CreditMeterOptions> = {}): CreditMeterOptions {
  return {
    storage: ctx.storage,
    clock: ctx.clock,
    plans: CONFORMANCE_PLANS,
    providers: { bookbag: new FakeProvider(), openai: new FakeProvider(), anthropic: new FakeProvider() },
    onEventError: () => undefined,
    ...extra,
  };
}

function meters(ctx: ConformanceContext, count: number, extra: Partial<CreditMeterOptions> = {}): CreditMeter[] {
  return Array.from({ length: Math.max(1, count) }, () => new CreditMeter(meterOptions(ctx, extra)));
}

function codeOf(error: unknown): string {
  return CreditsError.is(error) ? error.code : `unexpected error: ${String(error)}`;
}

/** Runs `count` calls of `task` at once and sorts the results into successes and error codes. */
async function race<T>(count: number, task: (index: number) => Promise<T>): Promise<{ ok: T[]; errors: string[] }> {
  const settled = await Promise.allSettled(Array.from({ length: count }, (_, index) => task(index)));
  const ok: T[] = [];
  const errors: string[] = [];
  for (const result of settled) {
    if (result.status === 'fulfilled') ok.push(result.value);
    else errors.push(codeOf(result.reason));
  }
  return { ok, errors };
}

// ─── cases ────────────────────────────────────────────────────────────────

const cases: ConformanceCase[] = [];

function define(name: string, run: (ctx: ConformanceContext) => Promise<void>): void {
  const separator = name.indexOf(' - ');
  if (separator <= 0) throw new Error(`conformance case "${name}" must be named "<operation> - <behaviour>"`);
  if (cases.some((c) => c.name === name)) throw new Error(`duplicate conformance case "${name}"`);
  cases.push(Object.freeze({ name, group: name.slice(0, separator), run }));
}

// createWorkspace ------------------------------------------------------------

define('createWorkspace - creates the workspace with its allotment and one grant row', async (ctx) => {
  const workspace = workspaceRecord(ctx.id('ws'), 10 * C);
  const grant = allotmentGrant(0, 10 * C, workspace.periodEnd, workspace.createdAt);
  const outcome = await ctx.storage.createWorkspace({
    workspace,
    grant,
    entry: { ...ledgerRowInput(workspace.workspaceId, 'grant', 10 * C, workspace.createdAt), grantId: 'period:0', plan: 'starter' },
  });
  ctx.track(workspace.workspaceId);
  expect(outcome.status).toBe('created');
  if (outcome.status !== 'created') return;
  expect(outcome.state.workspace).toEqual(workspace);
  expect(outcome.state.available).toBe(10 * C);
  expect(outcome.state.held).toBe(0);
  expect(outcome.state.grants).toEqual([grant]);
  expect(await state(ctx, workspace.workspaceId)).toEqual(outcome.state);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows).toHaveLength(1);
  expect(rows[0]).toMatchObject({ workspaceId: workspace.workspaceId, kind: 'grant', amount: 10 * C, grantId: 'period:0', plan: 'starter', at: workspace.createdAt });
});

define('createWorkspace - an existing id returns exists and changes nothing', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const before = await state(ctx, workspace.workspaceId);
  const again = workspaceRecord(workspace.workspaceId, 99 * C, { plan: 'team' });
  const outcome = await ctx.storage.createWorkspace({
    workspace: again,
    grant: allotmentGrant(0, 99 * C, again.periodEnd, again.createdAt),
    entry: { ...ledgerRowInput(again.workspaceId, 'grant', 99 * C, again.createdAt), grantId: 'period:0', plan: 'team' },
  });
  expect(outcome).toEqual({ status: 'exists' });
  expect(await state(ctx, workspace.workspaceId)).toEqual(before);
  expect(await allRows(ctx.storage, workspace.workspaceId)).toHaveLength(1);
});

define('createWorkspace - concurrent creates of one id create it once', async (ctx) => {
  const workspaceId = ctx.id('ws');
  const outcomes = await Promise.all(
    Array.from({ length: 10 }, (_, i) => {
      const workspace = workspaceRecord(workspaceId, (i + 1) * C);
      return ctx.storage.createWorkspace({
        workspace,
        grant: allotmentGrant(0, (i + 1) * C, workspace.periodEnd, workspace.createdAt),
        entry: { ...ledgerRowInput(workspaceId, 'grant', (i + 1) * C, workspace.createdAt), grantId: 'period:0', plan: 'starter' },
      });
    }),
  );
  ctx.track(workspaceId);
  expect(outcomes.filter((o) => o.status === 'created')).toHaveLength(1);
  expect(outcomes.filter((o) => o.status === 'exists')).toHaveLength(9);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
});

define('createWorkspace - ids with any characters round-trip and never collide', async (ctx) => {
  // Quotes, SQL and LIKE metacharacters, key separators, non-ASCII, and the longest id accepted (255).
  const base = ctx.id('ws');
  const suffixes = [`'"; DROP TABLE ledger; --`, ':a', ':a:b', '%_\\*?[]{x}', ' wś 漢字 🙂', '.'];
  const ids = suffixes.map((suffix) => base + suffix);
  ids.push(base + 'x'.repeat(255 - base.length));
  for (const [index, workspaceId] of ids.entries()) {
    const workspace = workspaceRecord(workspaceId, (index + 1) * C);
    const outcome = await ctx.storage.createWorkspace({
      workspace,
      grant: allotmentGrant(0, (index + 1) * C, workspace.periodEnd, workspace.createdAt),
      entry: { ...ledgerRowInput(workspaceId, 'grant', (index + 1) * C, workspace.createdAt), grantId: 'period:0', plan: 'starter' },
    });
    expect(outcome.status, `createWorkspace(${JSON.stringify(workspaceId)})`).toBe('created');
    ctx.track(workspaceId);
  }
  for (const [index, workspaceId] of ids.entries()) {
    const agentId = `agent ${suffixes[index % suffixes.length]}`;
    const replyId = `${ctx.id('reply')}${suffixes[index % suffixes.length]}`;
    const entry = await charge(ctx, workspaceId, 1 * C, { replyId, agentId, conversationId: `conv${suffixes[index % suffixes.length]}`, model: `model ${index} ✓` });
    expect(entry).toMatchObject({ workspaceId, replyId, agentId });
    expect((await ctx.storage.getReply(replyId))?.workspaceId).toBe(workspaceId);
  }
  for (const [index, workspaceId] of ids.entries()) {
    const current = await state(ctx, workspaceId);
    expect(current.workspace.workspaceId).toBe(workspaceId);
    expect(current.available, `available of ${JSON.stringify(workspaceId)}`).toBe(index * C);
    const rows = await allRows(ctx.storage, workspaceId);
    expect(rows.map((row) => row.workspaceId)).toEqual([workspaceId, workspaceId]);
    const usage = await ctx.storage.usage({ workspaceId, from: ctx.now(), to: ctx.now() + 1, groupBy: 'model', byDay: false });
    expect(usage.map((row) => row.key)).toEqual([`model ${index} ✓`]);
  }
  expect(await ctx.storage.getWorkspace(`${base}:a:`, ctx.now())).toBeUndefined();
});

// getWorkspace ---------------------------------------------------------------

define('getWorkspace - an unknown workspace is undefined', async (ctx) => {
  expect(await ctx.storage.getWorkspace(ctx.id('missing'), ctx.now())).toBeUndefined();
});

define('getWorkspace - lists live grants with credits left in spending order', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const forever = await addTopUp(ctx, workspaceId, 5 * C);
  const promo = await addTopUp(ctx, workspaceId, 2 * C, { expiresAt: ctx.now() + DAY });
  const empty = await addTopUp(ctx, workspaceId, 1 * C, { expiresAt: ctx.now() + 2 * DAY });
  await charge(ctx, workspaceId, 3 * C); // 2 from promo, 1 from the next grant to expire
  const current = await state(ctx, workspaceId);
  expect(current.grants.map((g) => g.grantId)).toEqual(['period:0', forever]);
  expect(current.grants.find((g) => g.grantId === promo)).toBeUndefined();
  expect(current.grants.find((g) => g.grantId === empty)).toBeUndefined();
  expect(current.available).toBe(sum(current.grants.map((g) => g.remaining)));
  expect(current.available).toBe(15 * C);
});

define('getWorkspace - sweeps nothing at or after the period end', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const at = workspace.periodEnd - 10 * MINUTE;
  const reply = await hold(ctx, workspace.workspaceId, 4 * C, { now: at, ttl: MINUTE });
  // The hold lapsed before the period end, but the renewal must see the period as it ended.
  for (const now of [workspace.periodEnd, workspace.periodEnd + DAY]) {
    const current = await state(ctx, workspace.workspaceId, now);
    expect(current.held).toBe(4 * C);
    expect(current.available).toBe(6 * C);
    expect(current.grants.map((g) => g.grantId)).toEqual(['period:0']);
  }
  expect((await ctx.storage.getReply(reply.replyId))?.status).toBe('held');
  expect(await allRows(ctx.storage, workspace.workspaceId)).toHaveLength(1);
  // Before the end, the same read sweeps the lapsed hold.
  const before = await state(ctx, workspace.workspaceId, workspace.periodEnd - 1);
  expect(before.held).toBe(0);
  expect(before.available).toBe(10 * C);
});

define('getReply - an unknown reply is undefined', async (ctx) => {
  expect(await ctx.storage.getReply(ctx.id('nope'))).toBeUndefined();
});

define('migrate - running it again keeps every record', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 2 * C);
  const entry = await charge(ctx, workspaceId, 1 * C);
  const before = await state(ctx, workspaceId);
  await ctx.storage.migrate();
  await ctx.storage.migrate();
  expect(await state(ctx, workspaceId)).toEqual(before);
  expect(await ctx.storage.getReply(reply.replyId)).toEqual(reply);
  expect((await allRows(ctx.storage, workspaceId)).map((row) => row.id)).toContain(entry.id);
  expect((await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() })).status).toBe('settled');
});

// reserve --------------------------------------------------------------------

define('reserve - holds the amount when the balance covers it', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const input = replyInput(ctx, workspaceId, 3 * C);
  const outcome = await ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: true });
  expect(outcome).toEqual({ status: 'reserved', reply: { ...input, status: 'held', finishedAt: null, entryId: null }, available: 7 * C });
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(7 * C);
  expect(current.held).toBe(3 * C);
  expect(await ctx.storage.getReply(input.replyId)).toEqual({ ...input, status: 'held', finishedAt: null, entryId: null });
  // A hold is not a ledger row: the ledger sums to available + held.
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
});

define('reserve - holds an amount equal to the whole balance', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 4 * C);
  const outcome = await reserve(ctx, workspaceId, 4 * C);
  expect(outcome.status).toBe('reserved');
  if (outcome.status === 'reserved') expect(outcome.available).toBe(0);
  expect((await state(ctx, workspaceId)).available).toBe(0);
});

define('reserve - refuses an amount above the balance, writes a refused record and changes nothing else', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 4 * C);
  await hold(ctx, workspaceId, 1 * C);
  const before = await state(ctx, workspaceId);
  const input = replyInput(ctx, workspaceId, 3 * C + 1);
  const outcome = await ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: true });
  expect(outcome.status).toBe('insufficient');
  if (outcome.status !== 'insufficient') return;
  expect(outcome.available).toBe(3 * C);
  expect(outcome.reply).toEqual({ ...input, status: 'refused', finishedAt: ctx.now(), entryId: null });
  expect(outcome.workspace).toEqual(before.workspace);
  expect(await ctx.storage.getReply(input.replyId)).toEqual(outcome.reply);
  expect(await state(ctx, workspaceId)).toEqual(before);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
});

define('reserve - a refused replyId never charges later', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 1 * C);
  const replyId = ctx.id('reply');
  expect((await reserve(ctx, workspaceId, 2 * C, { replyId })).status).toBe('insufficient');
  await addTopUp(ctx, workspaceId, 10 * C);
  const retry = await reserve(ctx, workspaceId, 2 * C, { replyId });
  expect(retry.status).toBe('exists');
  if (retry.status === 'exists') expect(retry.reply.status).toBe('refused');
  const settle = await ctx.storage.settle({ replyId, workspaceId, now: ctx.now() });
  expect(settle.status).toBe('refused');
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(11 * C);
  expect(current.held).toBe(0);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(0);
});

define('reserve - an existing replyId returns exists, in any workspace', async (ctx) => {
  const a = await newWorkspace(ctx, 10 * C);
  const b = await newWorkspace(ctx, 10 * C);
  const first = await hold(ctx, a.workspaceId, 2 * C);
  const same = await reserve(ctx, a.workspaceId, 2 * C, { replyId: first.replyId });
  expect(same).toEqual({ status: 'exists', reply: first });
  const other = await reserve(ctx, b.workspaceId, 5 * C, { replyId: first.replyId });
  expect(other).toEqual({ status: 'exists', reply: first });
  expect((await state(ctx, a.workspaceId)).held).toBe(2 * C);
  const untouched = await state(ctx, b.workspaceId);
  expect(untouched.held).toBe(0);
  expect(untouched.available).toBe(10 * C);
  // A settled reply is reported as it stands.
  await ctx.storage.settle({ replyId: first.replyId, workspaceId: a.workspaceId, now: ctx.now() });
  const afterSettle = await reserve(ctx, a.workspaceId, 2 * C, { replyId: first.replyId });
  expect(afterSettle.status).toBe('exists');
  if (afterSettle.status === 'exists') expect(afterSettle.reply.status).toBe('settled');
});

define('reserve - a missing workspace returns workspace_not_found and writes nothing', async (ctx) => {
  const input = replyInput(ctx, ctx.id('missing'), 1 * C);
  const outcome = await ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: true });
  expect(outcome).toEqual({ status: 'workspace_not_found' });
  expect(await ctx.storage.getReply(input.replyId)).toBeUndefined();
});

define('reserve - at or after the period end returns renewal_due and changes nothing', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  for (const now of [workspace.periodEnd, workspace.periodEnd + DAY]) {
    const input = replyInput(ctx, workspace.workspaceId, 1 * C, { now });
    const outcome = await ctx.storage.reserve({ reply: input, now, requireWorkspace: true });
    expect(outcome).toEqual({ status: 'renewal_due', workspace });
    expect(await ctx.storage.getReply(input.replyId)).toBeUndefined();
  }
  const current = await state(ctx, workspace.workspaceId, workspace.periodEnd - 1);
  expect(current.available).toBe(10 * C);
  expect(current.held).toBe(0);
  expect(await allRows(ctx.storage, workspace.workspaceId)).toHaveLength(1);
});

define('reserve - without requireWorkspace writes only a reply record', async (ctx) => {
  const workspaceId = ctx.id('selfhosted');
  const input = replyInput(ctx, workspaceId, 0, { route: 'unmetered' });
  const outcome = await ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: false });
  expect(outcome.status).toBe('reserved');
  if (outcome.status === 'reserved') expect(outcome.reply).toEqual({ ...input, status: 'held', finishedAt: null, entryId: null });
  expect(await ctx.storage.getWorkspace(workspaceId, ctx.now())).toBeUndefined();
  expect(await ctx.storage.getReply(input.replyId)).toMatchObject({ status: 'held', workspaceId });
  expect(await allRows(ctx.storage, workspaceId)).toEqual([]);
  const settled = await ctx.storage.settle({ replyId: input.replyId, workspaceId, now: ctx.now() });
  expect(settled.status).toBe('settled');
  if (settled.status !== 'settled') return;
  expect(settled.workspace).toBeNull();
  expect(n(settled.entry.amount)).toBe(0);
  expect(settled.entry).toMatchObject({ kind: 'reply', route: 'unmetered', replyId: input.replyId, workspaceId });
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows.map((row) => row.id)).toEqual([settled.entry.id]);
  const replay = await ctx.storage.settle({ replyId: input.replyId, workspaceId, now: ctx.now() });
  expect(replay).toMatchObject({ status: 'settled', replayed: true, entry: settled.entry });
});

define('reserve - spends the allotment before a never-expiring top-up', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 4 * C);
  const topup = await addTopUp(ctx, workspaceId, 5 * C);
  await hold(ctx, workspaceId, 3 * C);
  let current = await state(ctx, workspaceId);
  expect(remainingOf(current, 'period:0')).toBe(1 * C);
  expect(remainingOf(current, topup)).toBe(5 * C);
  await hold(ctx, workspaceId, 3 * C);
  current = await state(ctx, workspaceId);
  expect(remainingOf(current, 'period:0')).toBe(0);
  expect(remainingOf(current, topup)).toBe(3 * C);
  expect(current.grants.map((g) => g.grantId)).toEqual([topup]);
});

define('reserve - spends a grant expiring before the period end before the allotment', async (ctx) => {
  const { workspaceId, periodEnd } = await newWorkspace(ctx, 10 * C);
  const topup = await addTopUp(ctx, workspaceId, 5 * C);
  const promo = await addTopUp(ctx, workspaceId, 2 * C, { expiresAt: periodEnd - DAY });
  const later = await addTopUp(ctx, workspaceId, 2 * C, { expiresAt: periodEnd + DAY });
  expect((await state(ctx, workspaceId)).grants.map((g) => g.grantId)).toEqual([promo, 'period:0', later, topup]);
  await hold(ctx, workspaceId, 3 * C);
  const current = await state(ctx, workspaceId);
  expect(remainingOf(current, promo)).toBe(0);
  expect(remainingOf(current, 'period:0')).toBe(9 * C);
  expect(remainingOf(current, later)).toBe(2 * C);
  expect(remainingOf(current, topup)).toBe(5 * C);
});

define('reserve - breaks expiry ties by creation time, then grantId', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 0);
  const expiresAt = ctx.now() + 10 * DAY;
  const late = await addTopUp(ctx, workspaceId, 2 * C, { grantId: 'topup:a-late', expiresAt, now: ctx.now() + 2 });
  const b = await addTopUp(ctx, workspaceId, 2 * C, { grantId: 'topup:b', expiresAt, now: ctx.now() + 1 });
  const a = await addTopUp(ctx, workspaceId, 2 * C, { grantId: 'topup:a', expiresAt, now: ctx.now() + 1 });
  ctx.advance(10);
  expect((await state(ctx, workspaceId)).grants.map((g) => g.grantId)).toEqual([a, b, late]);
  await hold(ctx, workspaceId, 3 * C);
  const current = await state(ctx, workspaceId);
  expect([remainingOf(current, a), remainingOf(current, b), remainingOf(current, late)]).toEqual([0, 1 * C, 2 * C]);
});

define('reserve - never spends an expired grant', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 1 * C);
  const promo = await addTopUp(ctx, workspaceId, 5 * C, { expiresAt: ctx.now() + DAY });
  ctx.advance(DAY); // expiresAt is exclusive: at that instant the grant is gone
  const refused = await reserve(ctx, workspaceId, 3 * C);
  expect(refused.status).toBe('insufficient');
  if (refused.status === 'insufficient') expect(refused.available).toBe(1 * C);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(1 * C);
  expect(current.grants.map((g) => g.grantId)).toEqual(['period:0']);
  const expiries = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'expiry');
  expect(expiries.map((row) => ({ amount: row.amount, grantId: row.grantId }))).toEqual([{ amount: -5 * C, grantId: promo }]);
  expect((await reserve(ctx, workspaceId, 1 * C)).status).toBe('reserved');
});

define('reserve - an expired grant is swept by getWorkspace with one expiry row', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 1 * C);
  const promo = await addTopUp(ctx, workspaceId, 5 * C, { expiresAt: ctx.now() + HOUR });
  await charge(ctx, workspaceId, 2 * C);
  ctx.advance(HOUR);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(1 * C);
  await state(ctx, workspaceId); // a second sweep writes nothing
  const expiries = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'expiry');
  expect(expiries.map((row) => ({ amount: row.amount, grantId: row.grantId, at: row.at }))).toEqual([{ amount: -3 * C, grantId: promo, at: ctx.now() }]);
});

define('reserve - concurrent reserves never overspend', async (ctx) => {
  const { requests, affordable } = ctx.concurrency;
  const { workspaceId } = await newWorkspace(ctx, affordable * C);
  const outcomes = await Promise.all(Array.from({ length: requests }, () => reserve(ctx, workspaceId, 1 * C)));
  expect(outcomes.filter((o) => o.status === 'reserved')).toHaveLength(Math.min(affordable, requests));
  expect(outcomes.filter((o) => o.status === 'insufficient')).toHaveLength(Math.max(0, requests - affordable));
  for (const outcome of outcomes) if ('available' in outcome) expect(outcome.available).toBeGreaterThanOrEqual(0);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(Math.max(0, affordable - requests) * C);
  expect(current.held).toBe(Math.min(affordable, requests) * C);
});

define('reserve - concurrent reserves of one replyId create one hold', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 100 * C);
  const input = replyInput(ctx, workspaceId, 1 * C);
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: true })));
  expect(outcomes.filter((o) => o.status === 'reserved')).toHaveLength(1);
  expect(outcomes.filter((o) => o.status === 'exists')).toHaveLength(19);
  const current = await state(ctx, workspaceId);
  expect(current.held).toBe(1 * C);
  expect(current.available).toBe(99 * C);
});

define('reserve - a free reply is held even at a zero balance', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 1 * C);
  await charge(ctx, workspaceId, 1 * C);
  expect((await reserve(ctx, workspaceId, 1)).status).toBe('insufficient');
  const outcome = await reserve(ctx, workspaceId, 0, { route: 'byo' });
  expect(outcome.status).toBe('reserved');
  if (outcome.status !== 'reserved') return;
  expect(outcome.available).toBe(0);
  const settled = await ctx.storage.settle({ replyId: outcome.reply.replyId, workspaceId, now: ctx.now() });
  expect(settled.status).toBe('settled');
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(0);
  expect(current.held).toBe(0);
});

define('reserve - concurrent reserves in several workspaces stay independent', async (ctx) => {
  const workspaces = await Promise.all(Array.from({ length: 5 }, (_, i) => newWorkspace(ctx, (10 + i) * C)));
  const perWorkspace = 25;
  const outcomes = await Promise.all(
    Array.from({ length: workspaces.length * perWorkspace }, (_, i) => {
      const { workspaceId } = workspaces[i % workspaces.length]!;
      return reserve(ctx, workspaceId, 1 * C).then((outcome) => ({ workspaceId, outcome }));
    }),
  );
  for (const [i, { workspaceId }] of workspaces.entries()) {
    const mine = outcomes.filter((o) => o.workspaceId === workspaceId);
    expect(mine.filter((o) => o.outcome.status === 'reserved'), `holds in workspace ${i}`).toHaveLength(10 + i);
    const current = await state(ctx, workspaceId);
    expect(current.held).toBe((10 + i) * C);
    expect(current.available).toBe(0);
  }
});

// settle ---------------------------------------------------------------------

define('settle - charges a hold with one reply row and grows usedThisPeriod', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 3 * C, { agentId: 'agent_s', conversationId: 'conv_s', model: 'model_s' });
  ctx.advance(1000);
  const outcome = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('settled');
  if (outcome.status !== 'settled') return;
  expect(outcome.replayed).toBe(false);
  expect(outcome.entry).toEqual({
    id: outcome.entry.id,
    workspaceId,
    kind: 'reply',
    amount: -3 * C,
    at: ctx.now(),
    replyId: reply.replyId,
    agentId: 'agent_s',
    conversationId: 'conv_s',
    model: 'model_s',
    route: 'credits',
    priceVersion: 'prices-v1',
    grantId: null,
    plan: null,
  });
  expect(outcome.reply).toEqual({ ...reply, status: 'settled', finishedAt: ctx.now(), entryId: outcome.entry.id });
  expect(outcome.workspace?.usedThisPeriod).toBe(3 * C);
  expect(await ctx.storage.getReply(reply.replyId)).toEqual(outcome.reply);
  const current = await state(ctx, workspaceId);
  expect(current.workspace.usedThisPeriod).toBe(3 * C);
  expect(current.available).toBe(7 * C);
  expect(current.held).toBe(0);
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows.map((row) => row.kind)).toEqual(['grant', 'reply']);
  expect(rows[1]).toEqual(outcome.entry);
});

define('settle - a replay returns the same row with replayed true and charges nothing more', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 3 * C);
  const first = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  ctx.advance(5 * MINUTE);
  const second = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(first.status).toBe('settled');
  expect(second.status).toBe('settled');
  if (first.status !== 'settled' || second.status !== 'settled') return;
  expect(second.replayed).toBe(true);
  expect(second.entry).toEqual(first.entry);
  expect(second.reply).toEqual(first.reply);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(7 * C);
  expect(current.workspace.usedThisPeriod).toBe(3 * C);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(1);
});

define('settle - a free reply writes a zero-amount row and leaves the balance alone', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 0, { route: 'byo', model: 'model_byo' });
  const outcome = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('settled');
  if (outcome.status !== 'settled') return;
  // 0, not -0: a free reply's row must read as zero everywhere (JSON, Decimal, SQL).
  expect(outcome.entry.amount).toBe(0);
  expect(outcome.entry).toMatchObject({ kind: 'reply', route: 'byo', model: 'model_byo' });
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(10 * C);
  expect(current.workspace.usedThisPeriod).toBe(0);
});

define('settle - after the hold expired returns expired and returns the credits', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C, { ttl: MINUTE });
  ctx.advance(MINUTE); // expiresAt is the first instant the hold is gone
  const outcome = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('expired');
  if (outcome.status === 'expired') expect(outcome.reply.status).toBe('expired');
  expect((await ctx.storage.getReply(reply.replyId))?.status).toBe('expired');
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(10 * C);
  expect(current.held).toBe(0);
  expect((await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() })).status).toBe('expired');
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(0);
});

define('settle - one millisecond before the hold expires still charges', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C, { ttl: MINUTE });
  ctx.advance(MINUTE - 1);
  const outcome = await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('settled');
  expect((await state(ctx, workspaceId)).available).toBe(6 * C);
});

define('settle - a released or refused reply returns that status', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 2 * C);
  const released = await hold(ctx, workspaceId, 1 * C);
  await ctx.storage.release({ replyId: released.replyId, workspaceId, now: ctx.now() });
  const a = await ctx.storage.settle({ replyId: released.replyId, workspaceId, now: ctx.now() });
  expect(a.status).toBe('released');
  if (a.status === 'released') expect(a.reply.status).toBe('released');
  const refused = await reserve(ctx, workspaceId, 5 * C);
  expect(refused.status).toBe('insufficient');
  if (refused.status !== 'insufficient') return;
  const b = await ctx.storage.settle({ replyId: refused.reply.replyId, workspaceId, now: ctx.now() });
  expect(b.status).toBe('refused');
  expect((await state(ctx, workspaceId)).available).toBe(2 * C);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(0);
});

define("settle - an unknown reply or another workspace's reply returns not_found", async (ctx) => {
  const a = await newWorkspace(ctx, 10 * C);
  const b = await newWorkspace(ctx, 10 * C);
  expect(await ctx.storage.settle({ replyId: ctx.id('nope'), workspaceId: a.workspaceId, now: ctx.now() })).toEqual({ status: 'not_found' });
  const reply = await hold(ctx, a.workspaceId, 3 * C);
  expect(await ctx.storage.settle({ replyId: reply.replyId, workspaceId: b.workspaceId, now: ctx.now() })).toEqual({ status: 'not_found' });
  expect((await ctx.storage.getReply(reply.replyId))?.status).toBe('held');
  expect((await state(ctx, a.workspaceId)).held).toBe(3 * C);
  expect(await allRows(ctx.storage, b.workspaceId)).toHaveLength(1);
});

define('settle - concurrent settles of one reply charge once', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 3 * C);
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() })));
  const settled = outcomes.filter((o) => o.status === 'settled');
  expect(settled).toHaveLength(20);
  expect(settled.filter((o) => !o.replayed)).toHaveLength(1);
  expect(new Set(settled.map((o) => o.entry.id)).size).toBe(1);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(7 * C);
  expect(current.workspace.usedThisPeriod).toBe(3 * C);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(1);
});

// release --------------------------------------------------------------------

define('release - returns the credits to the grants they came from', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 2 * C);
  const topup = await addTopUp(ctx, workspaceId, 5 * C);
  const before = await state(ctx, workspaceId);
  const reply = await hold(ctx, workspaceId, 4 * C);
  const outcome = await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('released');
  if (outcome.status !== 'released') return;
  expect(outcome.replayed).toBe(false);
  expect(outcome.reply).toEqual({ ...reply, status: 'released', finishedAt: ctx.now() });
  const after = await state(ctx, workspaceId);
  expect(after).toEqual(before);
  expect(remainingOf(after, topup)).toBe(5 * C);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(2);
});

define('release - a second release returns replayed true', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C);
  await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  const again = await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(again.status).toBe('released');
  if (again.status === 'released') expect(again.replayed).toBe(true);
  expect((await state(ctx, workspaceId)).available).toBe(10 * C);
});

define('release - a settled reply returns settled and is not refunded', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C);
  await ctx.storage.settle({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  const outcome = await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('settled');
  expect((await state(ctx, workspaceId)).available).toBe(6 * C);
});

define('release - an expired or refused reply returns that status', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C, { ttl: MINUTE });
  const refused = await reserve(ctx, workspaceId, 7 * C);
  expect(refused.status).toBe('insufficient');
  ctx.advance(MINUTE);
  expect((await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() })).status).toBe('expired');
  if (refused.status === 'insufficient') {
    expect((await ctx.storage.release({ replyId: refused.reply.replyId, workspaceId, now: ctx.now() })).status).toBe('refused');
  }
  expect((await state(ctx, workspaceId)).available).toBe(10 * C);
});

define("release - an unknown reply or another workspace's reply returns not_found", async (ctx) => {
  const a = await newWorkspace(ctx, 10 * C);
  const b = await newWorkspace(ctx, 10 * C);
  expect(await ctx.storage.release({ replyId: ctx.id('nope'), workspaceId: a.workspaceId, now: ctx.now() })).toEqual({ status: 'not_found' });
  const reply = await hold(ctx, a.workspaceId, 3 * C);
  expect(await ctx.storage.release({ replyId: reply.replyId, workspaceId: b.workspaceId, now: ctx.now() })).toEqual({ status: 'not_found' });
  expect((await state(ctx, a.workspaceId)).held).toBe(3 * C);
});

define('release - credits of a grant that expired while held expire with an expiry row', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const promo = await addTopUp(ctx, workspaceId, 5 * C, { expiresAt: ctx.now() + HOUR });
  const reply = await hold(ctx, workspaceId, 7 * C, { ttl: 2 * HOUR }); // 5 from the promo, 2 from the allotment
  ctx.advance(90 * MINUTE);
  const outcome = await ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() });
  expect(outcome.status).toBe('released');
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(10 * C);
  expect(current.held).toBe(0);
  expect(current.grants.map((g) => g.grantId)).toEqual(['period:0']);
  const expired = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'expiry' && row.grantId === promo);
  expect(sum(expired.map((row) => row.amount))).toBe(-5 * C);
});

define('release - concurrent releases of one reply return the credits once', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 3 * C);
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => ctx.storage.release({ replyId: reply.replyId, workspaceId, now: ctx.now() })));
  expect(outcomes.filter((o) => o.status === 'released' && !o.replayed)).toHaveLength(1);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(10 * C);
  expect(current.held).toBe(0);
});

define('release - racing a settle, exactly one of them wins', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 3 * C);
  const command = { replyId: reply.replyId, workspaceId, now: ctx.now() };
  const [settled, released] = await Promise.all([ctx.storage.settle(command), ctx.storage.release(command)]);
  const settleWon = settled.status === 'settled' && !settled.replayed;
  const releaseWon = released.status === 'released' && !released.replayed;
  expect(settleWon !== releaseWon).toBe(true);
  const current = await state(ctx, workspaceId);
  expect(current.available).toBe(settleWon ? 7 * C : 10 * C);
  expect(current.held).toBe(0);
});

// hold expiry ----------------------------------------------------------------

define('hold expiry - a lapsed hold returns its credits on the next getWorkspace', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const reply = await hold(ctx, workspaceId, 4 * C, { ttl: MINUTE });
  // The process that took the hold died: nobody settles or releases it.
  ctx.advance(MINUTE - 1);
  expect((await state(ctx, workspaceId)).held).toBe(4 * C);
  ctx.advance(1);
  const current = await state(ctx, workspaceId);
  expect(current.held).toBe(0);
  expect(current.available).toBe(10 * C);
  expect(await ctx.storage.getReply(reply.replyId)).toMatchObject({ status: 'expired', finishedAt: ctx.now() });
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
});

define('hold expiry - a lapsed hold returns its credits on the next reserve', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 5 * C);
  const dead = await hold(ctx, workspaceId, 5 * C, { ttl: MINUTE });
  expect((await reserve(ctx, workspaceId, 5 * C)).status).toBe('insufficient');
  ctx.advance(MINUTE);
  const outcome = await reserve(ctx, workspaceId, 5 * C);
  expect(outcome.status).toBe('reserved');
  expect((await ctx.storage.getReply(dead.replyId))?.status).toBe('expired');
  const current = await state(ctx, workspaceId);
  expect(current.held).toBe(5 * C);
  expect(current.available).toBe(0);
});

define('hold expiry - holds with different lifetimes lapse independently', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const long = await hold(ctx, workspaceId, 2 * C, { ttl: HOUR });
  const short = await hold(ctx, workspaceId, 3 * C, { ttl: MINUTE });
  ctx.advance(MINUTE);
  // Only the short hold lapsed, though it was taken after the long one.
  const outcome = await reserve(ctx, workspaceId, 8 * C);
  expect(outcome.status).toBe('reserved');
  expect((await ctx.storage.getReply(short.replyId))?.status).toBe('expired');
  expect((await ctx.storage.getReply(long.replyId))?.status).toBe('held');
  const current = await state(ctx, workspaceId);
  expect(current.held).toBe(10 * C);
  expect(current.available).toBe(0);
});

define('hold expiry - credits of a lapsed hold from an expired grant expire with an expiry row', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const promo = await addTopUp(ctx, workspaceId, 5 * C, { expiresAt: ctx.now() + HOUR });
  const reply = await hold(ctx, workspaceId, 7 * C, { ttl: 2 * HOUR }); // 5 from the promo, 2 from the allotment
  ctx.advance(2 * HOUR);
  const current = await state(ctx, workspaceId);
  expect(current.held).toBe(0);
  expect(current.available).toBe(10 * C);
  expect((await ctx.storage.getReply(reply.replyId))?.status).toBe('expired');
  const expired = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'expiry' && row.grantId === promo);
  expect(sum(expired.map((row) => row.amount))).toBe(-5 * C);
});

define('hold expiry - through CreditMeter, a hold nobody settles returns its credits after holdTtlMs', async (ctx) => {
  const holdTtlMs = 5 * MINUTE;
  const dying = new CreditMeter(meterOptions(ctx, { holdTtlMs }));
  const workspaceId = await fundedWorkspace(ctx, dying, 3);
  // This server reserves, then dies before it settles or releases.
  const lost = await dying.reserve({ workspaceId, agentId: 'agent_a', conversationId: 'conv_1', model: ONE_CREDIT_MODEL });
  await dying.reserve({ workspaceId, agentId: 'agent_a', conversationId: 'conv_2', model: ONE_CREDIT_MODEL });
  const survivor = new CreditMeter(meterOptions(ctx, { holdTtlMs }));
  expect(Number((await survivor.getWorkspace(workspaceId)).balance)).toBe(1);
  ctx.advance(holdTtlMs - 1);
  expect(Number((await survivor.getWorkspace(workspaceId)).held)).toBe(2);
  ctx.advance(1);
  const summary = await survivor.getWorkspace(workspaceId);
  expect(Number(summary.balance)).toBe(3);
  expect(Number(summary.held)).toBe(0);
  await expect(survivor.settle({ workspaceId, replyId: lost.replyId })).rejects.toMatchObject({ code: 'HOLD_EXPIRED' });
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(0);
});

// renew ----------------------------------------------------------------------

function renewCommand(workspace: WorkspaceRecord, options: { allotment?: number; rolloverCap?: number; expectedVersion?: number; now?: number } = {}) {
  const allotment = options.allotment ?? workspace.allotment;
  const next = periodBounds(workspace.anchor, workspace.periodIndex + 1);
  const renewed: WorkspaceRecord = {
    ...workspace,
    allotment,
    periodIndex: next.index,
    periodStart: next.start,
    periodEnd: next.end,
    usedThisPeriod: 0,
    version: workspace.version + 1,
  };
  return {
    workspaceId: workspace.workspaceId,
    expectedVersion: options.expectedVersion ?? workspace.version,
    workspace: renewed,
    rolloverCap: options.rolloverCap ?? 0,
    grant: allotmentGrant(next.index, allotment, next.end, next.start),
    entry: { ...ledgerRowInput(workspace.workspaceId, 'grant', allotment, next.start), grantId: `period:${next.index}`, plan: renewed.plan },
    now: options.now ?? next.start,
  };
}

define('renew - moves to the next period with a new allotment grant and expires the old one', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  await charge(ctx, workspace.workspaceId, 3 * C);
  ctx.setNow(workspace.periodEnd);
  const command = renewCommand(workspace, { allotment: 12 * C });
  const outcome = await ctx.storage.renew(command);
  expect(outcome.status).toBe('renewed');
  if (outcome.status !== 'renewed') return;
  expect(outcome.expired).toBe(7 * C);
  expect(outcome.carried).toBe(0);
  expect(outcome.state.workspace).toEqual(command.workspace);
  expect(outcome.state.available).toBe(12 * C);
  expect(outcome.state.held).toBe(0);
  expect(outcome.state.grants).toEqual([command.grant]);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows.map((row) => [row.kind, row.amount, row.grantId])).toEqual([
    ['grant', 10 * C, 'period:0'],
    ['reply', -3 * C, null],
    ['expiry', -7 * C, 'period:0'],
    ['grant', 12 * C, 'period:1'],
  ]);
  expect(await state(ctx, workspace.workspaceId)).toEqual(outcome.state);
});

define('renew - a stale expectedVersion returns stale and changes nothing', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  ctx.setNow(workspace.periodEnd);
  const outcome = await ctx.storage.renew(renewCommand(workspace, { expectedVersion: workspace.version + 1 }));
  expect(outcome).toEqual({ status: 'stale', workspace });
  expect(await allRows(ctx.storage, workspace.workspaceId)).toHaveLength(1);
  expect((await state(ctx, workspace.workspaceId, workspace.periodEnd - 1)).available).toBe(10 * C);
});

define('renew - a missing workspace returns workspace_not_found', async (ctx) => {
  const workspace = workspaceRecord(ctx.id('missing'), C);
  expect(await ctx.storage.renew(renewCommand(workspace))).toEqual({ status: 'workspace_not_found' });
});

define('renew - exactly once under racing callers', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  ctx.setNow(workspace.periodEnd + 1);
  const racers = Math.max(2, ctx.concurrency.meters * 4);
  const outcomes = await Promise.all(Array.from({ length: racers }, () => ctx.storage.renew(renewCommand(workspace, { now: ctx.now() }))));
  expect(outcomes.filter((o) => o.status === 'renewed')).toHaveLength(1);
  expect(outcomes.filter((o) => o.status === 'stale')).toHaveLength(racers - 1);
  for (const outcome of outcomes) if (outcome.status === 'stale') expect(outcome.workspace.version).toBe(workspace.version + 1);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows.filter((row) => row.kind === 'grant' && row.grantId === 'period:1')).toHaveLength(1);
  expect(rows.filter((row) => row.kind === 'expiry')).toHaveLength(1);
  expect((await state(ctx, workspace.workspaceId)).available).toBe(10 * C);
});

define('renew - carries min(unused, cap) of the allotment over and expires the rest', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  await charge(ctx, workspace.workspaceId, 3 * C);
  ctx.setNow(workspace.periodEnd);
  const outcome = await ctx.storage.renew(renewCommand(workspace, { rolloverCap: 5 * C }));
  expect(outcome.status).toBe('renewed');
  if (outcome.status !== 'renewed') return;
  expect(outcome.carried).toBe(5 * C);
  expect(outcome.expired).toBe(2 * C);
  expect(outcome.state.available).toBe(15 * C);
  expect(outcome.state.grants).toMatchObject([{ grantId: 'period:1', amount: 15 * C, remaining: 15 * C }]);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows.filter((row) => row.kind === 'expiry').map((row) => row.amount)).toEqual([-2 * C]);
  // A cap above what is unused carries all of it, with no expiry row.
  const next = outcome.state.workspace;
  ctx.setNow(next.periodEnd);
  const again = await ctx.storage.renew(renewCommand(next, { rolloverCap: 100 * C }));
  expect(again.status).toBe('renewed');
  if (again.status !== 'renewed') return;
  expect(again.carried).toBe(15 * C);
  expect(again.expired).toBe(0);
  expect(again.state.available).toBe(25 * C);
  expect((await allRows(ctx.storage, workspace.workspaceId)).filter((row) => row.kind === 'expiry')).toHaveLength(1);
});

define('renew - credits of a hold that lapsed before the period end roll over', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  ctx.setNow(workspace.periodEnd - 10 * 60_000);
  await hold(ctx, workspace.workspaceId, 4 * C, { ttl: 60_000 });
  // Nobody reads the workspace before the period ends: the lapsed hold is swept by the renewal.
  ctx.setNow(workspace.periodEnd);
  const outcome = await ctx.storage.renew(renewCommand(workspace, { rolloverCap: 100 * C }));
  expect(outcome.status).toBe('renewed');
  if (outcome.status !== 'renewed') return;
  expect({ carried: outcome.carried, expired: outcome.expired }).toEqual({ carried: 10 * C, expired: 0 });
  expect(outcome.state.available).toBe(20 * C);
  expect((await allRows(ctx.storage, workspace.workspaceId)).filter((row) => row.kind === 'expiry')).toHaveLength(0);
});

define('renew - top-ups survive the renewal', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const topup = await addTopUp(ctx, workspace.workspaceId, 4 * C);
  await charge(ctx, workspace.workspaceId, 12 * C); // the allotment, then 2 of the top-up
  ctx.setNow(workspace.periodEnd);
  const outcome = await ctx.storage.renew(renewCommand(workspace));
  expect(outcome.status).toBe('renewed');
  if (outcome.status !== 'renewed') return;
  expect(outcome.expired).toBe(0);
  expect(outcome.state.available).toBe(12 * C);
  expect(outcome.state.grants.map((g) => [g.grantId, g.remaining])).toEqual([
    ['period:1', 10 * C],
    [topup, 2 * C],
  ]);
});

define('renew - a hold taken before the renewal still settles once', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  ctx.setNow(workspace.periodEnd - MINUTE);
  const reply = await hold(ctx, workspace.workspaceId, 4 * C);
  ctx.setNow(workspace.periodEnd);
  const renewed = await ctx.storage.renew(renewCommand(workspace));
  expect(renewed.status).toBe('renewed');
  if (renewed.status !== 'renewed') return;
  expect(renewed.expired).toBe(6 * C);
  expect(renewed.state.held).toBe(4 * C);
  const settled = await ctx.storage.settle({ replyId: reply.replyId, workspaceId: workspace.workspaceId, now: ctx.now() });
  expect(settled.status).toBe('settled');
  const current = await state(ctx, workspace.workspaceId);
  expect(current.held).toBe(0);
  expect(current.available).toBe(10 * C);
});

define('renew - a hold released after the renewal expires its old allotment credits', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  ctx.setNow(workspace.periodEnd - MINUTE);
  const reply = await hold(ctx, workspace.workspaceId, 4 * C);
  ctx.setNow(workspace.periodEnd);
  expect((await ctx.storage.renew(renewCommand(workspace))).status).toBe('renewed');
  const released = await ctx.storage.release({ replyId: reply.replyId, workspaceId: workspace.workspaceId, now: ctx.now() });
  expect(released.status).toBe('released');
  const current = await state(ctx, workspace.workspaceId);
  expect(current.held).toBe(0);
  expect(current.available).toBe(10 * C);
  const expired = (await allRows(ctx.storage, workspace.workspaceId)).filter((row) => row.kind === 'expiry' && row.grantId === 'period:0');
  expect(sum(expired.map((row) => row.amount))).toBe(-10 * C);
});

define('renew - through CreditMeter, concurrent operations just after a period end renew once', async (ctx) => {
  const fleet = meters(ctx, ctx.concurrency.meters);
  const workspaceId = ctx.id('ws');
  const summary = await fleet[0]!.createWorkspace({ workspaceId, plan: 'team' });
  ctx.track(workspaceId);
  ctx.setNow(summary.periodEnd.getTime() + 1);
  const operations = 50;
  const { errors } = await race(operations, async (i) => {
    const meter = fleet[i % fleet.length]!;
    switch (i % 4) {
      case 0:
        return meter.getWorkspace(workspaceId);
      case 1:
        return meter.reserve({ workspaceId, agentId: 'agent_a', conversationId: 'conv_1', model: ONE_CREDIT_MODEL });
      case 2:
        return meter.quote({ workspaceId, model: ONE_CREDIT_MODEL });
      default:
        return meter.reply({ workspaceId, agentId: 'agent_b', conversationId: 'conv_2', model: ONE_CREDIT_MODEL, input: 'hi' });
    }
  });
  expect(errors).toEqual([]);
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows.filter((row) => row.kind === 'grant')).toHaveLength(2);
  expect(rows.filter((row) => row.kind === 'grant' && row.grantId === 'period:1')).toHaveLength(1);
  expect(rows.filter((row) => row.kind === 'expiry')).toHaveLength(1);
  const after = await fleet[0]!.getWorkspace(workspaceId);
  expect(after.periodStart.getTime()).toBe(summary.periodEnd.getTime());
});

define('renew - through CreditMeter, catches up over several missed periods', async (ctx) => {
  const meter = new CreditMeter(meterOptions(ctx));
  const workspaceId = ctx.id('ws');
  ctx.setNow(Date.UTC(2026, 1, 1));
  await meter.createWorkspace({ workspaceId, plan: 'starter', startsAt: new Date(Date.UTC(2026, 0, 31)) });
  ctx.track(workspaceId);
  ctx.setNow(Date.UTC(2026, 4, 1));
  const summary = await meter.getWorkspace(workspaceId);
  expect(summary.periodStart.toISOString()).toBe('2026-04-30T00:00:00.000Z');
  expect(summary.periodEnd.toISOString()).toBe('2026-05-31T00:00:00.000Z');
  const grants = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'grant');
  expect(grants.map((row) => row.grantId)).toEqual(['period:0', 'period:1', 'period:2', 'period:3']);
  expect(Number(summary.balance)).toBe(10);
});

// changePlan -----------------------------------------------------------------

function planCommand(workspace: WorkspaceRecord, next: Partial<WorkspaceRecord>, allotmentIncrease: number, now: number, expectedVersion = workspace.version) {
  const changed: WorkspaceRecord = { ...workspace, ...next, version: workspace.version + 1 };
  return {
    workspaceId: workspace.workspaceId,
    expectedVersion,
    workspace: changed,
    allotmentIncrease,
    entry: { ...ledgerRowInput(workspace.workspaceId, 'plan_change', allotmentIncrease, now), plan: next.pendingPlan ?? changed.plan },
    now,
  };
}

define('changePlan - an upgrade adds to the current allotment grant', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  await charge(ctx, workspace.workspaceId, 3 * C);
  ctx.advance(DAY);
  const command = planCommand(workspace, { plan: 'team', allotment: 30 * C }, 20 * C, ctx.now());
  const outcome = await ctx.storage.changePlan(command);
  expect(outcome.status).toBe('changed');
  if (outcome.status !== 'changed') return;
  expect(outcome.state.workspace).toEqual(command.workspace);
  expect(outcome.state.available).toBe(27 * C);
  expect(outcome.state.grants).toMatchObject([{ grantId: 'period:0', amount: 30 * C, remaining: 27 * C, expiresAt: workspace.periodEnd }]);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows[rows.length - 1]).toMatchObject({ kind: 'plan_change', amount: 20 * C, plan: 'team', at: ctx.now() });
  expect(await state(ctx, workspace.workspaceId)).toEqual(outcome.state);
});

define('changePlan - a downgrade changes only the workspace record', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C, { plan: 'team' });
  const command = planCommand(workspace, { pendingPlan: 'starter', pendingAllotment: 5 * C }, 0, ctx.now());
  const outcome = await ctx.storage.changePlan(command);
  expect(outcome.status).toBe('changed');
  if (outcome.status !== 'changed') return;
  expect(outcome.state.workspace).toEqual(command.workspace);
  expect(outcome.state.available).toBe(10 * C);
  const rows = await allRows(ctx.storage, workspace.workspaceId);
  expect(rows).toHaveLength(2);
  expect(rows[1]).toMatchObject({ kind: 'plan_change', plan: 'starter' });
  expect(n(rows[1]!.amount)).toBe(0);
});

define('changePlan - a stale expectedVersion returns stale and changes nothing', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const first = await ctx.storage.changePlan(planCommand(workspace, { plan: 'team', allotment: 30 * C }, 20 * C, ctx.now()));
  expect(first.status).toBe('changed');
  const before = await state(ctx, workspace.workspaceId);
  const outcome = await ctx.storage.changePlan(planCommand(workspace, { plan: 'custom', allotment: 90 * C }, 80 * C, ctx.now()));
  expect(outcome).toEqual({ status: 'stale', workspace: before.workspace });
  expect(await state(ctx, workspace.workspaceId)).toEqual(before);
  expect(await allRows(ctx.storage, workspace.workspaceId)).toHaveLength(2);
});

define('changePlan - racing changes at one version apply once', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const outcomes = await Promise.all(
    Array.from({ length: 10 }, () => ctx.storage.changePlan(planCommand(workspace, { plan: 'team', allotment: 30 * C }, 20 * C, ctx.now()))),
  );
  expect(outcomes.filter((o) => o.status === 'changed')).toHaveLength(1);
  expect((await state(ctx, workspace.workspaceId)).available).toBe(30 * C);
});

define('changePlan - an overflow is refused and changes nothing', async (ctx) => {
  const workspace = await newWorkspace(ctx, 10 * C);
  const before = await state(ctx, workspace.workspaceId);
  const increase = MAX_MICROS - 10 * C + 1;
  const outcome = await ctx.storage.changePlan(planCommand(workspace, { plan: 'custom', allotment: MAX_MICROS + 1 }, increase, ctx.now()));
  expect(outcome).toEqual({ status: 'overflow' });
  expect(await state(ctx, workspace.workspaceId)).toEqual(before);
  // Exactly the ceiling is allowed.
  const ok = await ctx.storage.changePlan(planCommand(workspace, { plan: 'custom', allotment: MAX_MICROS }, increase - 1, ctx.now()));
  expect(ok.status).toBe('changed');
  if (ok.status === 'changed') expect(ok.state.available).toBe(MAX_MICROS);
});

define('changePlan - a missing workspace returns workspace_not_found', async (ctx) => {
  const workspace = workspaceRecord(ctx.id('missing'), C);
  expect(await ctx.storage.changePlan(planCommand(workspace, { plan: 'team' }, 0, ctx.now()))).toEqual({ status: 'workspace_not_found' });
});

// grant ----------------------------------------------------------------------

define('grant - adds a top-up with one topup row', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const grantId = `topup:${ctx.id('g')}`;
  const outcome = await topUp(ctx, workspaceId, 5 * C, { grantId });
  expect(outcome.status).toBe('granted');
  if (outcome.status !== 'granted') return;
  expect(outcome.state.available).toBe(15 * C);
  expect(outcome.state.grants).toContainEqual({ grantId, kind: 'topup', amount: 5 * C, remaining: 5 * C, expiresAt: null, createdAt: ctx.now() });
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows[1]).toMatchObject({ kind: 'topup', amount: 5 * C, grantId, at: ctx.now() });
});

define('grant - the same grantId returns exists with the stored grant and changes nothing', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const grantId = `topup:${ctx.id('g')}`;
  await addTopUp(ctx, workspaceId, 5 * C, { grantId });
  await charge(ctx, workspaceId, 12 * C);
  const before = await state(ctx, workspaceId);
  ctx.advance(MINUTE);
  const outcome = await topUp(ctx, workspaceId, 7 * C, { grantId, expiresAt: ctx.now() + DAY });
  expect(outcome.status).toBe('exists');
  if (outcome.status === 'exists') {
    expect(outcome.grant).toMatchObject({ grantId, kind: 'topup', amount: 5 * C, expiresAt: null, createdAt: ctx.now() - MINUTE });
  }
  expect(await state(ctx, workspaceId)).toEqual(before);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(3);
});

define('grant - concurrent grants with one grantId add it once', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const grantId = `topup:${ctx.id('g')}`;
  const outcomes = await Promise.all(Array.from({ length: 20 }, () => topUp(ctx, workspaceId, 5 * C, { grantId })));
  expect(outcomes.filter((o) => o.status === 'granted')).toHaveLength(1);
  expect(outcomes.filter((o) => o.status === 'exists')).toHaveLength(19);
  expect((await state(ctx, workspaceId)).available).toBe(15 * C);
});

define('grant - an overflow is refused and changes nothing', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  await hold(ctx, workspaceId, 4 * C); // held credits count toward the ceiling
  const before = await state(ctx, workspaceId);
  const outcome = await topUp(ctx, workspaceId, MAX_MICROS - 10 * C + 1);
  expect(outcome).toEqual({ status: 'overflow' });
  expect(await state(ctx, workspaceId)).toEqual(before);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(1);
  expect((await topUp(ctx, workspaceId, MAX_MICROS - 10 * C)).status).toBe('granted');
});

define('grant - a missing workspace returns workspace_not_found', async (ctx) => {
  expect(await topUp(ctx, ctx.id('missing'), C)).toEqual({ status: 'workspace_not_found' });
});

// claimAlert -----------------------------------------------------------------

define('claimAlert - true once per workspace, period and threshold', async (ctx) => {
  const a = await newWorkspace(ctx, 10 * C);
  const b = await newWorkspace(ctx, 10 * C);
  const claim = (workspaceId: string, periodIndex: number, threshold: number) => ctx.storage.claimAlert({ workspaceId, periodIndex, threshold });
  expect(await claim(a.workspaceId, 0, 0.8)).toBe(true);
  expect(await claim(a.workspaceId, 0, 0.8)).toBe(false);
  expect(await claim(a.workspaceId, 0, 1)).toBe(true);
  expect(await claim(a.workspaceId, 1, 0.8)).toBe(true);
  expect(await claim(b.workspaceId, 0, 0.8)).toBe(true);
  expect(await claim(a.workspaceId, 0, 1)).toBe(false);
  expect(await claim(a.workspaceId, 0, 0.85)).toBe(true);
});

define('claimAlert - concurrent claims succeed once', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const claims = await Promise.all(Array.from({ length: 20 }, () => ctx.storage.claimAlert({ workspaceId, periodIndex: 0, threshold: 0.8 })));
  expect(claims.filter(Boolean)).toHaveLength(1);
});

// ledger ---------------------------------------------------------------------

/** A workspace with rows at known instants: returns the rows in append order. */
async function busyWorkspace(ctx: ConformanceContext, replies = 20): Promise<{ workspaceId: string; rows: LedgerRow[] }> {
  const { workspaceId } = await newWorkspace(ctx, 1000 * C);
  for (let i = 0; i < replies; i++) {
    ctx.advance(HOUR);
    await charge(ctx, workspaceId, (1 + (i % 3)) * C, { agentId: i % 2 === 0 ? 'agent_even' : 'agent_odd', conversationId: `conv_${i % 4}` });
    if (i % 7 === 6) await addTopUp(ctx, workspaceId, 1 * C);
  }
  return { workspaceId, rows: await allRows(ctx.storage, workspaceId) };
}

define('ledger - returns rows in append order with distinct, increasing ids', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  const topup = await addTopUp(ctx, workspaceId, 5 * C);
  ctx.advance(MINUTE);
  const entry = await charge(ctx, workspaceId, 2 * C);
  ctx.advance(MINUTE);
  await ctx.storage.changePlan(planCommand(await state(ctx, workspaceId).then((s) => s.workspace), { plan: 'team', allotment: 30 * C }, 20 * C, ctx.now()));
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows.map((row) => row.kind)).toEqual(['grant', 'topup', 'reply', 'plan_change']);
  expect(rows[1]?.grantId).toBe(topup);
  expect(rows[2]).toEqual(entry);
  expect(new Set(rows.map((row) => row.id)).size).toBe(rows.length);
  // CreditMeter hands ids out as page cursors, which must be decimal digits (at most 20).
  for (const row of rows) expect(row.id).toMatch(/^\d{1,20}$/);
  const ids = rows.map((row) => BigInt(row.id));
  for (let i = 1; i < ids.length; i++) expect(ids[i]! > ids[i - 1]!).toBe(true);
  for (const row of rows) expect(row.workspaceId).toBe(workspaceId);
});

define('ledger - keeps append order even when the clock goes back', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 10 * C);
  ctx.advance(HOUR);
  const later = await charge(ctx, workspaceId, 1 * C);
  ctx.advance(-30 * MINUTE); // another server's clock runs behind
  const earlier = await charge(ctx, workspaceId, 2 * C);
  const rows = await allRows(ctx.storage, workspaceId);
  expect(rows.map((row) => row.id)).toEqual([rows[0]!.id, later.id, earlier.id]);
  const windowed = await ctx.storage.ledger({ workspaceId, from: earlier.at, limit: 10 });
  expect(windowed.map((row) => row.id)).toEqual([later.id, earlier.id]);
});

define('ledger - from is inclusive and to is exclusive', async (ctx) => {
  const { workspaceId, rows } = await busyWorkspace(ctx);
  const from = rows[3]!.at;
  const to = rows[9]!.at;
  const page = await ctx.storage.ledger({ workspaceId, from, to, limit: 1000 });
  expect(page).toEqual(rows.filter((row) => row.at >= from && row.at < to));
  expect(page[0]?.at).toBe(from);
  expect(page.some((row) => row.at === to)).toBe(false);
  expect(await ctx.storage.ledger({ workspaceId, from: to, to: to, limit: 10 })).toEqual([]);
  expect(await ctx.storage.ledger({ workspaceId, from: rows[rows.length - 1]!.at + 1, limit: 10 })).toEqual([]);
});

define('ledger - filters by agentId', async (ctx) => {
  const { workspaceId, rows } = await busyWorkspace(ctx);
  const page = await ctx.storage.ledger({ workspaceId, agentId: 'agent_odd', limit: 1000 });
  expect(page).toEqual(rows.filter((row) => row.agentId === 'agent_odd'));
  expect(page.length).toBe(10);
  expect(await ctx.storage.ledger({ workspaceId, agentId: 'agent_nobody', limit: 10 })).toEqual([]);
});

define('ledger - limit and afterId page through every row exactly once', async (ctx) => {
  const { workspaceId, rows } = await busyWorkspace(ctx);
  for (const limit of [1, 4, 7, rows.length, rows.length + 5]) {
    const seen: LedgerRow[] = [];
    let afterId: string | undefined;
    for (let guard = 0; guard <= rows.length + 1; guard++) {
      const page = await ctx.storage.ledger({ workspaceId, limit, ...(afterId !== undefined && { afterId }) });
      expect(page.length).toBeLessThanOrEqual(limit);
      seen.push(...page);
      if (page.length < limit) break;
      afterId = page[page.length - 1]!.id;
    }
    expect(seen).toEqual(rows);
  }
});

define('ledger - filters and windows combine with paging', async (ctx) => {
  const { workspaceId, rows } = await busyWorkspace(ctx);
  const from = rows[2]!.at;
  const to = rows[rows.length - 3]!.at;
  const expected = rows.filter((row) => row.at >= from && row.at < to && row.agentId === 'agent_even');
  const seen: LedgerRow[] = [];
  let afterId: string | undefined;
  for (let guard = 0; guard <= rows.length; guard++) {
    const page = await ctx.storage.ledger({ workspaceId, from, to, agentId: 'agent_even', limit: 3, ...(afterId !== undefined && { afterId }) });
    seen.push(...page);
    if (page.length < 3) break;
    afterId = page[page.length - 1]!.id;
  }
  expect(seen).toEqual(expected);
});

define('ledger - shows only the rows of the workspace asked for', async (ctx) => {
  const a = await newWorkspace(ctx, 10 * C);
  const b = await newWorkspace(ctx, 10 * C);
  await charge(ctx, a.workspaceId, 1 * C);
  await charge(ctx, b.workspaceId, 2 * C);
  const rows = await allRows(ctx.storage, a.workspaceId);
  expect(rows.map((row) => row.workspaceId)).toEqual([a.workspaceId, a.workspaceId]);
  expect(await ctx.storage.ledger({ workspaceId: ctx.id('missing'), limit: 10 })).toEqual([]);
});

// usage ----------------------------------------------------------------------

define('usage - sums credits and counts replies per agent, model and conversation', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 100 * C);
  const from = ctx.now();
  await charge(ctx, workspaceId, 1 * C, { agentId: 'a1', model: 'm1', conversationId: 'c1' });
  await charge(ctx, workspaceId, 2 * C, { agentId: 'a1', model: 'm2', conversationId: 'c1' });
  await charge(ctx, workspaceId, 4 * C, { agentId: 'a2', model: 'm2', conversationId: 'c2' });
  await addTopUp(ctx, workspaceId, 5 * C); // not a reply: never counted
  const to = ctx.now() + 1;
  const usage = async (groupBy: 'agent' | 'model' | 'conversation') => sortUsage(await ctx.storage.usage({ workspaceId, from, to, groupBy, byDay: false }));
  expect(await usage('agent')).toEqual([
    { key: 'a1', day: undefined, amount: 3 * C, replies: 2 },
    { key: 'a2', day: undefined, amount: 4 * C, replies: 1 },
  ]);
  expect(await usage('model')).toEqual([
    { key: 'm1', day: undefined, amount: 1 * C, replies: 1 },
    { key: 'm2', day: undefined, amount: 6 * C, replies: 2 },
  ]);
  expect(await usage('conversation')).toEqual([
    { key: 'c1', day: undefined, amount: 3 * C, replies: 2 },
    { key: 'c2', day: undefined, amount: 4 * C, replies: 1 },
  ]);
  for (const row of await ctx.storage.usage({ workspaceId, from, to, groupBy: 'agent', byDay: false })) expect(row.day).toBeUndefined();
});

define('usage - the window is half-open', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 100 * C);
  const at = (offset: number) => CONFORMANCE_EPOCH + offset;
  await charge(ctx, workspaceId, 1 * C, { now: at(HOUR - 1) });
  await charge(ctx, workspaceId, 2 * C, { now: at(HOUR) });
  await charge(ctx, workspaceId, 4 * C, { now: at(2 * HOUR - 1) });
  await charge(ctx, workspaceId, 8 * C, { now: at(2 * HOUR) });
  const rows = await ctx.storage.usage({ workspaceId, from: at(HOUR), to: at(2 * HOUR), groupBy: 'agent', byDay: false });
  expect(sortUsage(rows)).toEqual([{ key: 'agent_a', day: undefined, amount: 6 * C, replies: 2 }]);
  expect(await ctx.storage.usage({ workspaceId, from: at(HOUR), to: at(HOUR), groupBy: 'agent', byDay: false })).toEqual([]);
});

define('usage - byDay splits rows by UTC day', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 100 * C);
  const midnight = Date.UTC(2026, 0, 16);
  await charge(ctx, workspaceId, 1 * C, { now: midnight - 1 });
  await charge(ctx, workspaceId, 2 * C, { now: midnight });
  await charge(ctx, workspaceId, 4 * C, { now: midnight + DAY - 1 });
  await charge(ctx, workspaceId, 8 * C, { now: midnight + DAY, agentId: 'agent_b' });
  const rows = await ctx.storage.usage({ workspaceId, from: midnight - DAY, to: midnight + 2 * DAY, groupBy: 'agent', byDay: true });
  expect(sortUsage(rows)).toEqual([
    { key: 'agent_a', day: midnight - DAY, amount: 1 * C, replies: 1 },
    { key: 'agent_a', day: midnight, amount: 6 * C, replies: 2 },
    { key: 'agent_b', day: midnight + DAY, amount: 8 * C, replies: 1 },
  ]);
});

define('usage - byo and unmetered replies count with 0 credits', async (ctx) => {
  const { workspaceId } = await newWorkspace(ctx, 100 * C);
  const from = ctx.now();
  await charge(ctx, workspaceId, 2 * C, { agentId: 'a1' });
  await charge(ctx, workspaceId, 0, { agentId: 'a1', route: 'byo' });
  await charge(ctx, workspaceId, 0, { agentId: 'a2', route: 'byo' });
  const rows = await ctx.storage.usage({ workspaceId, from, to: from + 1, groupBy: 'agent', byDay: false });
  expect(sortUsage(rows)).toEqual([
    { key: 'a1', day: undefined, amount: 2 * C, replies: 2 },
    { key: 'a2', day: undefined, amount: 0, replies: 1 },
  ]);
});

define('usage - includes unmetered replies of workspaces without a record', async (ctx) => {
  const workspaceId = ctx.id('selfhosted');
  const from = ctx.now();
  for (const agentId of ['a1', 'a1', 'a2']) {
    const input = replyInput(ctx, workspaceId, 0, { agentId, route: 'unmetered' });
    expect((await ctx.storage.reserve({ reply: input, now: ctx.now(), requireWorkspace: false })).status).toBe('reserved');
    expect((await ctx.storage.settle({ replyId: input.replyId, workspaceId, now: ctx.now() })).status).toBe('settled');
  }
  const rows = await ctx.storage.usage({ workspaceId, from, to: from + 1, groupBy: 'agent', byDay: false });
  expect(sortUsage(rows)).toEqual([
    { key: 'a1', day: undefined, amount: 0, replies: 2 },
    { key: 'a2', day: undefined, amount: 0, replies: 1 },
  ]);
  expect(await allRows(ctx.storage, workspaceId)).toHaveLength(3);
});

define('usage - ignores other workspaces and empty windows', async (ctx) => {
  const a = await newWorkspace(ctx, 100 * C);
  const b = await newWorkspace(ctx, 100 * C);
  const from = ctx.now();
  await charge(ctx, a.workspaceId, 1 * C);
  await charge(ctx, b.workspaceId, 2 * C);
  expect(sortUsage(await ctx.storage.usage({ workspaceId: a.workspaceId, from, to: from + 1, groupBy: 'model', byDay: false }))).toEqual([
    { key: 'model_x', day: undefined, amount: 1 * C, replies: 1 },
  ]);
  expect(await ctx.storage.usage({ workspaceId: ctx.id('missing'), from, to: from + 1, groupBy: 'model', byDay: false })).toEqual([]);
});

// invariants -----------------------------------------------------------------

define('invariants - the ledger sums to available plus held through a mixed history', async (ctx) => {
  const workspace = await newWorkspace(ctx, 20 * C);
  await addTopUp(ctx, workspace.workspaceId, 3 * C, { expiresAt: ctx.now() + 2 * HOUR });
  await addTopUp(ctx, workspace.workspaceId, 4 * C);
  const check = async (): Promise<void> => {
    const current = await state(ctx, workspace.workspaceId);
    const rows = await allRows(ctx.storage, workspace.workspaceId);
    expect(sum(rows.map((row) => row.amount))).toBe(current.available + current.held);
    expect(current.available).toBeGreaterThanOrEqual(0);
  };
  const kept: ReplyRecord[] = [];
  for (let step = 0; step < 12; step++) {
    ctx.advance(17 * MINUTE);
    const reply = await reserve(ctx, workspace.workspaceId, ((step % 4) + 1) * C, { ttl: step % 3 === 0 ? 20 * MINUTE : HOUR });
    if (reply.status === 'reserved') kept.push(reply.reply);
    const earlier = kept[step - 2];
    if (earlier && step % 2 === 0) await ctx.storage.settle({ replyId: earlier.replyId, workspaceId: workspace.workspaceId, now: ctx.now() });
    if (earlier && step % 2 === 1) await ctx.storage.release({ replyId: earlier.replyId, workspaceId: workspace.workspaceId, now: ctx.now() });
    await check();
  }
  ctx.setNow(workspace.periodEnd);
  expect((await ctx.storage.renew(renewCommand(await state(ctx, workspace.workspaceId, workspace.periodEnd - 1).then((s) => s.workspace), { rolloverCap: 2 * C }))).status).toBe('renewed');
  await check();
});

// concurrency through CreditMeter --------------------------------------------

async function fundedWorkspace(ctx: ConformanceContext, meter: CreditMeter, credits: number): Promise<string> {
  const workspaceId = ctx.id('ws');
  await meter.createWorkspace({ workspaceId, plan: 'custom', allotment: credits });
  ctx.track(workspaceId);
  return workspaceId;
}

/** Polls the store while `work` runs and returns the lowest available balance seen. */
async function watchBalance<T>(ctx: ConformanceContext, workspaceId: string, work: Promise<T>): Promise<{ result: T; lowest: number; samples: number }> {
  let done = false;
  let lowest = Number.POSITIVE_INFINITY;
  let samples = 0;
  const watcher = (async () => {
    while (!done) {
      const current = await ctx.storage.getWorkspace(workspaceId, ctx.now());
      if (current) {
        lowest = Math.min(lowest, current.available);
        samples++;
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  })();
  try {
    return { result: await work, lowest, samples };
  } finally {
    done = true;
    await watcher;
  }
}

define('concurrency - replies from several meters never overspend', async (ctx) => {
  const { meters: count, requests, affordable } = ctx.concurrency;
  const fleet = meters(ctx, count);
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, affordable);
  const { result, lowest } = await watchBalance(
    ctx,
    workspaceId,
    race(requests, (i) =>
      fleet[i % fleet.length]!.reply({ workspaceId, agentId: `agent_${i % 3}`, conversationId: `conv_${i}`, model: ONE_CREDIT_MODEL, input: i }),
    ),
  );
  const winners = Math.min(affordable, requests);
  expect(result.ok).toHaveLength(winners);
  expect(result.errors).toEqual(Array.from({ length: requests - winners }, () => 'INSUFFICIENT_CREDITS'));
  expect(lowest).toBeGreaterThanOrEqual(0);
  const summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.balance)).toBe(affordable - winners);
  expect(Number(summary.held)).toBe(0);
  const replies = (await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply');
  expect(replies).toHaveLength(winners);
  expect(new Set(replies.map((row) => row.replyId))).toEqual(new Set(result.ok.map((r) => r.replyId)));
});

define('concurrency - reserves from several meters hold exactly the affordable amount', async (ctx) => {
  const { meters: count, requests, affordable } = ctx.concurrency;
  const fleet = meters(ctx, count);
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, affordable);
  const { result, lowest } = await watchBalance(
    ctx,
    workspaceId,
    race(requests, (i) => fleet[i % fleet.length]!.reserve({ workspaceId, agentId: 'agent_a', conversationId: `conv_${i}`, model: ONE_CREDIT_MODEL })),
  );
  const winners = Math.min(affordable, requests);
  expect(result.ok).toHaveLength(winners);
  expect(result.errors.every((code) => code === 'INSUFFICIENT_CREDITS')).toBe(true);
  expect(lowest).toBeGreaterThanOrEqual(0);
  let summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.balance)).toBe(affordable - winners);
  expect(Number(summary.held)).toBe(winners);
  // Settling every hold at once, from every meter, charges each exactly once.
  const settled = await race(result.ok.length, (i) => fleet[(i + 1) % fleet.length]!.settle({ workspaceId, replyId: result.ok[i]!.replyId }));
  expect(settled.errors).toEqual([]);
  summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.held)).toBe(0);
  expect(Number(summary.usedThisPeriod)).toBe(winners);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(winners);
});

define('concurrency - settles of one replyId from several meters charge once', async (ctx) => {
  const fleet = meters(ctx, ctx.concurrency.meters);
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, 10);
  const hold = await fleet[0]!.reserve({ workspaceId, agentId: 'agent_a', conversationId: 'conv_1', model: ONE_CREDIT_MODEL });
  const attempts = Math.max(10, ctx.concurrency.meters * 4);
  const { ok, errors } = await race(attempts, (i) => fleet[i % fleet.length]!.settle({ workspaceId, replyId: hold.replyId }));
  expect(errors).toEqual([]);
  expect(ok.filter((s) => !s.replayed)).toHaveLength(1);
  expect(new Set(ok.map((s) => s.entryId)).size).toBe(1);
  const summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.balance)).toBe(9);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(1);
});

define('concurrency - reserves of one replyId from several meters create one hold', async (ctx) => {
  const fleet = meters(ctx, ctx.concurrency.meters);
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, 10);
  const replyId = ctx.id('reply');
  const attempts = Math.max(10, ctx.concurrency.meters * 4);
  const { ok, errors } = await race(attempts, (i) =>
    fleet[i % fleet.length]!.reserve({ workspaceId, agentId: 'agent_a', conversationId: 'conv_1', model: ONE_CREDIT_MODEL, replyId }),
  );
  expect(errors).toEqual([]);
  expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
  const summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.held)).toBe(1);
  expect(Number(summary.balance)).toBe(9);
});

define('concurrency - a retried reply with one replyId charges once and calls the provider once', async (ctx) => {
  const provider = new FakeProvider({ delayMs: 5 });
  const fleet = meters(ctx, ctx.concurrency.meters, { providers: { bookbag: provider } });
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, 10);
  const replyId = ctx.id('reply');
  const ask = (i: number) => fleet[i % fleet.length]!.reply({ workspaceId, agentId: 'agent_a', conversationId: 'conv_1', model: ONE_CREDIT_MODEL, replyId, input: 'hi' });
  const { ok, errors } = await race(Math.max(10, ctx.concurrency.meters * 2), ask);
  // One caller runs the reply; the others see it in progress, or replay it once it is charged.
  expect(ok.filter((r) => !r.replayed)).toHaveLength(1);
  expect(errors.every((code) => code === 'REPLY_IN_PROGRESS')).toBe(true);
  const retry = await ask(0);
  expect(retry.replayed).toBe(true);
  expect(new Set([...ok, retry].map((r) => r.entryId)).size).toBe(1);
  expect(provider.calls).toHaveLength(1);
  expect(Number((await fleet[0]!.getWorkspace(workspaceId)).balance)).toBe(9);
});

define('concurrency - a failing provider charges nothing under load', async (ctx) => {
  const provider = new FakeProvider({ error: new Error('upstream down') });
  const fleet = meters(ctx, ctx.concurrency.meters, { providers: { bookbag: provider } });
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, 10);
  const { ok, errors } = await race(40, (i) =>
    fleet[i % fleet.length]!.reply({ workspaceId, agentId: 'agent_a', conversationId: `conv_${i}`, model: ONE_CREDIT_MODEL, input: i }),
  );
  expect(ok).toHaveLength(0);
  // Every hold was released: a reply refused while others held the balance is fine, a charge is not.
  expect(errors.every((code) => code === 'PROVIDER_ERROR' || code === 'INSUFFICIENT_CREDITS')).toBe(true);
  const summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.balance)).toBe(10);
  expect(Number(summary.held)).toBe(0);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(0);
});

define('concurrency - mixed reserve, settle and release traffic keeps the ledger exact', async (ctx) => {
  const { meters: count, requests, affordable } = ctx.concurrency;
  const fleet = meters(ctx, count);
  const workspaceId = await fundedWorkspace(ctx, fleet[0]!, affordable);
  const { result, lowest } = await watchBalance(
    ctx,
    workspaceId,
    race(requests, async (i) => {
      const meter = fleet[i % fleet.length]!;
      const hold = await meter.reserve({ workspaceId, agentId: 'agent_a', conversationId: `conv_${i}`, model: ONE_CREDIT_MODEL });
      const other = fleet[(i + 1) % fleet.length]!;
      if (i % 3 === 0) return { kind: 'settled', charge: await other.settle({ workspaceId, replyId: hold.replyId }) } as const;
      if (i % 3 === 1) return { kind: 'released', release: await other.release({ workspaceId, replyId: hold.replyId }) } as const;
      return { kind: 'held' } as const;
    }),
  );
  expect(result.errors.every((code) => code === 'INSUFFICIENT_CREDITS')).toBe(true);
  expect(lowest).toBeGreaterThanOrEqual(0);
  const settled = result.ok.filter((r) => r.kind === 'settled').length;
  const held = result.ok.filter((r) => r.kind === 'held').length;
  expect(settled + held).toBeLessThanOrEqual(affordable);
  const summary = await fleet[0]!.getWorkspace(workspaceId);
  expect(Number(summary.held)).toBe(held);
  expect(Number(summary.balance)).toBe(affordable - settled - held);
  expect(Number(summary.usedThisPeriod)).toBe(settled);
  expect((await allRows(ctx.storage, workspaceId)).filter((row) => row.kind === 'reply')).toHaveLength(settled);
});

/** Every case of the kit, in the order they run. Run one with {@link runConformanceCase}. */
export const conformanceCases: readonly ConformanceCase[] = Object.freeze([...cases]);

// ─── running ──────────────────────────────────────────────────────────────

function resolveConcurrency(options: StorageConformanceOptions): Required<ConformanceConcurrency> {
  const merged = { ...DEFAULT_CONCURRENCY, ...options.concurrency };
  for (const key of ['meters', 'requests', 'affordable'] as const) {
    if (!Number.isSafeInteger(merged[key]) || merged[key] < 1) throw new Error(`concurrency.${key} must be a positive whole number`);
  }
  if (merged.affordable >= merged.requests) throw new Error('concurrency.affordable must be below concurrency.requests, so some calls must be refused');
  return merged;
}

/** The kit's cases followed by the caller's, checked for names and duplicates. */
function allCases(options: StorageConformanceOptions): readonly ConformanceCase[] {
  const extra = options.cases ?? [];
  if (extra.length === 0) return conformanceCases;
  const names = new Set(conformanceCases.map((c) => c.name));
  for (const testCase of extra) {
    if (testCase.name.indexOf(' - ') <= 0) throw new Error(`conformance case "${testCase.name}" must be named "<operation> - <behaviour>"`);
    if (names.has(testCase.name)) throw new Error(`duplicate conformance case "${testCase.name}"`);
    names.add(testCase.name);
  }
  return [...conformanceCases, ...extra];
}

let runCounter = 0;

function createContext(storage: CreditStorage, concurrency: Required<ConformanceConcurrency>): ConformanceContext {
  const token = `${Date.now().toString(36)}${(runCounter++).toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  let now = CONFORMANCE_EPOCH;
  let counter = 0;
  const tracked = new Set<string>();
  return {
    storage,
    concurrency: Object.freeze({ ...concurrency }),
    clock: () => new Date(now),
    now: () => now,
    setNow: (at) => {
      now = at;
    },
    advance: (ms) => {
      now += ms;
    },
    id: (prefix) => `${prefix}_${token}_${++counter}`,
    track: (workspaceId) => {
      tracked.add(workspaceId);
    },
    tracked,
  };
}

/**
 * Checks what must hold after any sequence of operations: for each tracked workspace the
 * signed sum of its ledger equals available + held, nothing is negative, and the live
 * grants add up to `available`.
 */
async function checkInvariants(ctx: ConformanceContext): Promise<void> {
  for (const workspaceId of ctx.tracked) {
    const current = await ctx.storage.getWorkspace(workspaceId, ctx.now());
    if (!current) throw new Error(`invariants: workspace ${workspaceId} vanished`);
    const rows = await allRows(ctx.storage, workspaceId);
    expect(sum(rows.map((row) => row.amount)), `invariants: ledger sum of ${workspaceId} = available + held`).toBe(current.available + current.held);
    expect(current.available, `invariants: available of ${workspaceId} ≥ 0`).toBeGreaterThanOrEqual(0);
    expect(current.held, `invariants: held of ${workspaceId} ≥ 0`).toBeGreaterThanOrEqual(0);
    expect(sum(current.grants.map((grant) => grant.remaining)), `invariants: live grants of ${workspaceId} add up to available`).toBe(current.available);
    for (const grant of current.grants) expect(grant.remaining, `invariants: grant ${grant.grantId} of ${workspaceId}`).toBeGreaterThan(0);
  }
}

/**
 * Runs one case against a fresh store from `options.create`, then checks the invariants
 * (ledger sum = available + held, available ≥ 0) of every workspace it touched, then
 * disposes of the store. Rejects when the store does not conform. Use it to run a case
 * outside {@link runStorageConformance}, e.g. to prove a broken store fails it.
 *
 * @example
 * ```ts
 * await expect(
 *   runConformanceCase({ name: 'broken', create: () => new BrokenStorage() }, 'reserve - concurrent reserves never overspend'),
 * ).rejects.toThrow();
 * ```
 */
export async function runConformanceCase(options: StorageConformanceOptions, testCase: string | ConformanceCase): Promise<void> {
  const found = typeof testCase === 'string' ? allCases(options).find((c) => c.name === testCase) : testCase;
  if (!found) throw new Error(`no conformance case named "${String(testCase)}"`);
  const concurrency = resolveConcurrency(options);
  const storage = await options.create();
  try {
    await storage.migrate();
    const ctx = createContext(storage, concurrency);
    await found.run(ctx);
    await checkInvariants(ctx);
  } finally {
    if (options.cleanup) await options.cleanup(storage);
    else await storage.close();
  }
}

/**
 * Registers the storage conformance suite with vitest: one `describe` per store, one per
 * operation, one `it` per case, each on a fresh store from `create`. Call it at the top
 * level of a test file.
 *
 * @example
 * ```ts
 * // test/my-store.test.ts
 * import { runStorageConformance } from '@bookbag/credits/testing';
 * import { MyStorage } from '../src/my-storage.js';
 *
 * runStorageConformance({
 *   name: 'my-store',
 *   create: () => new MyStorage({ prefix: `t${crypto.randomUUID().slice(0, 8)}_` }),
 *   cleanup: (storage) => (storage as MyStorage).dropAndClose(),
 * });
 * ```
 */
export function runStorageConformance(options: StorageConformanceOptions): void {
  resolveConcurrency(options);
  const every = allCases(options);
  const skip = new Set(options.skip ?? []);
  for (const name of skip) {
    if (!every.some((c) => c.name === name)) throw new Error(`skip: no conformance case named "${name}"`);
  }
  const groups = new Map<string, ConformanceCase[]>();
  for (const testCase of every) {
    const group = groups.get(testCase.group) ?? [];
    group.push(testCase);
    groups.set(testCase.group, group);
  }
  describe(`storage conformance: ${options.name}`, () => {
    for (const [group, members] of groups) {
      describe(group, () => {
        for (const testCase of members) {
          const register = skip.has(testCase.name) ? it.skip : it;
          register(testCase.name, () => runConformanceCase(options, testCase), options.timeout);
        }
      });
    }
  });
}
