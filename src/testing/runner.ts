/**
 * Runs the kit: the list of every case, the context each case gets, the invariant check
 * after each case, and the vitest registration.
 */
import { describe, expect, it } from 'vitest';
import type { CreditStorage } from '../storage/storage.js';
import { analyticsCases } from './analytics.js';
import { billingCases } from './billing.js';
import { concurrencyCases } from './concurrency.js';
import { differentialCases } from './differential.js';
import {
  allRows,
  C,
  CONFORMANCE_EPOCH,
  type ConformanceCase,
  type ConformanceConcurrency,
  type ConformanceContext,
  DEFAULT_CONCURRENCY,
  newMeter,
  type StorageConformanceOptions,
  sum,
} from './fixtures.js';
import { grantCases } from './grants.js';
import { hardeningCases } from './hardening.js';
import { keptStateCases } from './kept-state.js';
import { lifecycleCases } from './lifecycle.js';
import { periodCases } from './periods.js';
import { seamCases } from './seam.js';

function freeze(all: readonly ConformanceCase[]): readonly ConformanceCase[] {
  const names = new Set<string>();
  for (const testCase of all) {
    if (names.has(testCase.name)) throw new Error(`duplicate conformance case "${testCase.name}"`);
    names.add(testCase.name);
  }
  return Object.freeze([...all]);
}

/** Every case of the kit, in the order they run. Run one with {@link runConformanceCase}. */
export const conformanceCases: readonly ConformanceCase[] = freeze([
  ...seamCases,
  ...lifecycleCases,
  ...periodCases,
  ...grantCases,
  ...analyticsCases,
  ...billingCases,
  ...hardeningCases,
  ...concurrencyCases,
  ...keptStateCases,
  ...differentialCases,
]);

/** The concurrency sizes with defaults filled in; throws on a bad size or seed. */
function resolveConcurrency(options: StorageConformanceOptions): Required<ConformanceConcurrency> {
  const merged = { ...DEFAULT_CONCURRENCY, ...options.concurrency };
  for (const key of ['meters', 'requests', 'affordable'] as const) {
    if (!Number.isSafeInteger(merged[key]) || merged[key] < 1) throw new Error(`concurrency.${key} must be a positive whole number`);
  }
  if (merged.affordable >= merged.requests)
    throw new Error('concurrency.affordable must be below concurrency.requests, so some calls must be refused');
  if (options.seed !== undefined && !Number.isSafeInteger(options.seed)) throw new Error('seed must be a whole number');
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

function createContext(storage: CreditStorage, concurrency: Required<ConformanceConcurrency>, seed: number): ConformanceContext {
  const token = `${Date.now().toString(36)}${(runCounter++).toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  let now = CONFORMANCE_EPOCH;
  let counter = 0;
  const tracked = new Set<string>();
  return {
    storage,
    concurrency: Object.freeze({ ...concurrency }),
    seed,
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
 * Checks what must hold after any sequence of operations, for each tracked workspace:
 * as stored, the rows are numbered 1…n with n = `ledgerSeq`, and their signed sum equals the
 * live grants' `remaining` plus `held`; and as a `CreditMeter` sees it at the case's final
 * clock time (after any renewal, expiry or lapse it applies), balance + held still equals
 * the signed ledger sum, and nothing is negative.
 */
async function checkInvariants(ctx: ConformanceContext): Promise<void> {
  for (const workspaceId of ctx.tracked) {
    const loaded = await ctx.storage.load({ workspaceId, keys: [], now: ctx.now() });
    let rows = await allRows(ctx.storage, workspaceId);
    if (!loaded.state) {
      expect(rows, `invariants: ${workspaceId} has no state, so no rows`).toEqual([]);
      continue;
    }
    expect(
      rows.map((row) => row.seq),
      `invariants: ledger rows of ${workspaceId} are numbered 1…ledgerSeq`,
    ).toEqual(Array.from({ length: loaded.state.ledgerSeq }, (_, i) => i + 1));
    for (const row of rows) expect(row.workspaceId, `invariants: row ${row.seq} of ${workspaceId}`).toBe(workspaceId);
    const account = loaded.state.account;
    if (!account) {
      expect(sum(rows.map((row) => row.amount)), `invariants: ledger sum of ${workspaceId} (no account) = 0`).toBe(0);
      continue;
    }
    const stored = sum(account.grants.map((grant) => grant.remaining)) + account.held;
    expect(sum(rows.map((row) => row.amount)), `invariants: ledger sum of ${workspaceId} = stored balance + held`).toBe(stored);
    expect(sum(account.grants.map((grant) => grant.held)), `invariants: held of ${workspaceId} = held of its grants`).toBe(account.held);
    const summary = await newMeter(ctx).getWorkspace(workspaceId);
    rows = await allRows(ctx.storage, workspaceId);
    const balance = summary.balance.times(C).toNumber();
    const held = summary.held.times(C).toNumber();
    expect(balance + held, `invariants: ledger sum of ${workspaceId} = balance + held`).toBe(sum(rows.map((row) => row.amount)));
    expect(balance, `invariants: balance of ${workspaceId} ≥ 0`).toBeGreaterThanOrEqual(0);
    expect(held, `invariants: held of ${workspaceId} ≥ 0`).toBeGreaterThanOrEqual(0);
  }
}

/**
 * Runs one case against a fresh store from `options.create`, then checks the invariants
 * (ledger sum = balance + held, nothing negative) of every workspace it touched, then
 * disposes of the store. Rejects when the store does not conform. Use it to run a case
 * outside {@link runStorageConformance}, e.g. to prove a broken store fails it.
 *
 * @example
 * ```ts
 * await expect(
 *   runConformanceCase({ name: 'broken', create: () => new BrokenStorage() }, 'concurrency - replies from several meters never overspend'),
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
    const ctx = createContext(storage, concurrency, options.seed ?? Math.floor(Math.random() * 2 ** 31));
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
