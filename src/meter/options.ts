/**
 * The meter's options, validated and frozen at construction (Kysely copies and freezes its
 * config the same way): a bad option fails `new CreditMeter(...)` with `INVALID_INPUT`
 * naming it, never a `TypeError` on the first reply.
 */
import { toMicros } from '../core/credits.js';
import { type InputIssue, InvalidInputError } from '../core/errors.js';
import { DEFAULT_PLANS, PlanCatalog } from '../core/plan-catalog.js';
import { DEFAULT_MODEL_PRICES, ModelPriceTable } from '../core/price-table.js';
import type { MeterMode } from '../core/route.js';
import { closestKey, describeBadId, isValidId, PROTOTYPE_KEYS } from '../core/validation.js';
import type { EventErrorHandler } from './events.js';
import { isReplyProvider } from './inputs.js';
import type { ByoKeyResolver, ReplyProvider } from './provider.js';
import type { CreditMeterOptions } from './types.js';

/** Hold lifetime when `holdTtlMs` is not given: 15 minutes. */
export const DEFAULT_HOLD_TTL_MS = 15 * 60 * 1000;
/** Shortest `holdTtlMs`: 50 ms (the meter extends a hold at half its TTL while a reply runs; shorter would be a write storm). */
export const MIN_HOLD_TTL_MS = 50;
/** Longest `holdTtlMs`: 7 days (a hold keeps credits from the workspace until it lapses). */
export const MAX_HOLD_TTL_MS = 7 * 24 * 60 * 60 * 1000;
/**
 * Smallest `maxCommitItems` a store may declare. A reserve takes two items (its record and
 * absent key), a settle two (its record and row), the state one: 8 is a commit of a few.
 */
const MIN_COMMIT_ITEMS = 8;

/** Longest `storageTimeoutMs`: 1 hour. */
export const MAX_STORAGE_TIMEOUT_MS = 60 * 60 * 1000;
/** `balance.low` thresholds when none are given: 80 % and 100 % of the allotment used. */
export const DEFAULT_THRESHOLDS: readonly number[] = Object.freeze([0.8, 1]);
/** Most `lowBalanceThresholds` accepted. */
export const MAX_THRESHOLDS = 100;

/** Every option, fully defaulted, validated and frozen. */
export interface MeterConfig {
  /** The store given; `undefined` when none was (the meter then makes its default store). */
  readonly storage: CreditMeterOptions['storage'];
  /** @default 'cloud' */
  readonly mode: MeterMode;
  /** @default DEFAULT_MODEL_PRICES */
  readonly models: ModelPriceTable;
  /** @default DEFAULT_PLANS */
  readonly plans: PlanCatalog;
  /** Providers by provider id: a frozen copy without a prototype. @default {} */
  readonly providers: Readonly<Record<string, ReplyProvider>>;
  /** @default undefined (no BYO keys) */
  readonly byoKeys: ByoKeyResolver | undefined;
  /** @default undefined (`Date.now()`) */
  readonly clock: (() => Date) | undefined;
  /** Whole milliseconds, 50 ms to 7 days. @default 900000 (15 minutes) */
  readonly holdTtlMs: number;
  /** Fractions in (0, 1], ascending, without duplicates. @default [0.8, 1] */
  readonly lowBalanceThresholds: readonly number[];
  /**
   * Absolute `balance.below` levels, in micro-credits (credits × 10⁶), descending, without
   * duplicates. @default []
   */
  readonly lowBalanceLevels: readonly number[];
  /** @default undefined (recharges are announced as events only) */
  readonly onRecharge: CreditMeterOptions['onRecharge'];
  /** @default 'refuse' */
  readonly onStorageFailure: 'refuse' | 'allow';
  /** Whole milliseconds, 1 ms to 1 hour. @default undefined (no limit) */
  readonly storageTimeoutMs: number | undefined;
  /** @default logs the error and the event type to `console.error` */
  readonly onEventError: EventErrorHandler;
  /**
   * Makes a reply id; its output is checked on every call (see {@link checkedReplyIdGenerator}).
   * @default 128 random bits per meter (base64url) followed by a counter: `<random>-<n>`
   */
  readonly generateReplyId: () => string;
}

const OPTION_KEYS = [
  'storage',
  'mode',
  'models',
  'plans',
  'providers',
  'byoKeys',
  'clock',
  'holdTtlMs',
  'lowBalanceThresholds',
  'lowBalanceLevels',
  'onRecharge',
  'onStorageFailure',
  'storageTimeoutMs',
  'onEventError',
  'generateReplyId',
] as const satisfies readonly (keyof CreditMeterOptions)[];
// Fails to compile when CreditMeterOptions gains an option this file does not validate.
const everyOptionValidated: [Exclude<keyof CreditMeterOptions, (typeof OPTION_KEYS)[number]>] extends [never] ? true : false = true;
void everyOptionValidated;
const KNOWN_OPTIONS: ReadonlySet<string> = new Set(OPTION_KEYS);

/**
 * Validates the options of a `CreditMeter` and returns them fully defaulted and frozen.
 * Throws `INVALID_INPUT` listing every bad option (the first in `field`): unknown keys (with
 * a hint for near misses), a price table or catalog that is not one (`models` must come from
 * `defineModelPrices`), a store without the store methods, out-of-range durations, thresholds
 * outside (0, 1], providers without `generate`, and function options that are not functions.
 *
 * @example
 * ```ts
 * const config = parseMeterOptions(options); // in the CreditMeter constructor
 * this.storage = config.storage ?? new MemoryStorage();
 * ```
 */
export function parseMeterOptions(options: unknown): MeterConfig {
  if (options === undefined) options = {};
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidInputError([{ path: 'options', message: 'must be an object' }]);
  }
  const issues: InputIssue[] = [];
  const raw = readOptions(options as Record<string, unknown>, issues);

  const mode = raw.mode ?? 'cloud';
  if (mode !== 'cloud' && mode !== 'self-hosted') issues.push({ path: 'mode', message: "must be 'cloud' or 'self-hosted'" });

  const onStorageFailure = raw.onStorageFailure ?? 'refuse';
  if (onStorageFailure !== 'refuse' && onStorageFailure !== 'allow') {
    issues.push({ path: 'onStorageFailure', message: "must be 'refuse' or 'allow'" });
  }

  const models = raw.models ?? DEFAULT_MODEL_PRICES;
  if (!(models instanceof ModelPriceTable)) {
    issues.push({
      path: 'models',
      message: Array.isArray(models)
        ? 'must be a ModelPriceTable, not an array: wrap the entries in defineModelPrices([...])'
        : 'must be a ModelPriceTable made by defineModelPrices()',
    });
  }

  const plans = raw.plans ?? DEFAULT_PLANS;
  if (!(plans instanceof PlanCatalog)) {
    issues.push({
      path: 'plans',
      message: Array.isArray(plans)
        ? 'must be a PlanCatalog, not an array: wrap the entries in definePlans([...])'
        : 'must be a PlanCatalog made by definePlans()',
    });
  }

  checkStorage(raw.storage, issues);
  const holdTtlMs = wholeMs(raw.holdTtlMs, 'holdTtlMs', MIN_HOLD_TTL_MS, MAX_HOLD_TTL_MS, issues) ?? DEFAULT_HOLD_TTL_MS;
  const storageTimeoutMs = wholeMs(raw.storageTimeoutMs, 'storageTimeoutMs', 1, MAX_STORAGE_TIMEOUT_MS, issues);
  const lowBalanceThresholds = thresholdsOf(raw.lowBalanceThresholds, issues);
  const lowBalanceLevels = levelsOf(raw.lowBalanceLevels, issues);
  const providers = providersOf(raw.providers, issues);

  for (const key of ['byoKeys', 'clock', 'onEventError', 'generateReplyId', 'onRecharge'] as const) {
    if (raw[key] !== undefined && typeof raw[key] !== 'function') issues.push({ path: key, message: 'must be a function' });
  }

  if (issues.length > 0) throw new InvalidInputError(issues);
  return Object.freeze({
    storage: raw.storage as CreditMeterOptions['storage'],
    mode: mode as MeterMode,
    models: models as ModelPriceTable,
    plans: plans as PlanCatalog,
    providers,
    byoKeys: raw.byoKeys as ByoKeyResolver | undefined,
    clock: raw.clock as (() => Date) | undefined,
    holdTtlMs,
    lowBalanceThresholds,
    lowBalanceLevels,
    onRecharge: raw.onRecharge as CreditMeterOptions['onRecharge'],
    onStorageFailure: onStorageFailure as 'refuse' | 'allow',
    storageTimeoutMs,
    onEventError: (raw.onEventError as EventErrorHandler | undefined) ?? logEventError,
    generateReplyId: checkedReplyIdGenerator((raw.generateReplyId as (() => string) | undefined) ?? replyIdSequence()),
  });
}

/**
 * Wraps a reply id generator so that every id it makes is checked: a non-string, an empty
 * string or an invalid id (too long, control characters, a prototype key) throws
 * `INVALID_INPUT` naming `generateReplyId` before anything is held or charged.
 */
export function checkedReplyIdGenerator(generate: () => string): () => string {
  return () => {
    const id: unknown = generate();
    if (!isValidId(id)) {
      throw new InvalidInputError([{ path: 'generateReplyId', message: `returned an invalid reply id: it ${describeBadId(id)}` }]);
    }
    return id;
  };
}

/**
 * Reply ids for callers who give none: a random 128-bit prefix per meter, then a counter.
 * As unique as a random UUID, and cheaper to make and to hash than a new UUID per reply.
 */
export function replyIdSequence(): () => string {
  const bytes = new Uint8Array(16);
  globalThis.crypto.getRandomValues(bytes);
  const base64url = btoa(String.fromCharCode(...bytes))
    .replace(/\+/g, '-')
    .replace(/\//g, '_')
    .replace(/=+$/, '');
  const prefix = `${base64url}-`;
  let counter = 0;
  return () => prefix + (++counter).toString(36);
}

function logEventError(error: unknown, event: { type: string }): void {
  console.error(`[credits] a "${event.type}" handler failed:`, error);
}

// ─── checks ──────────────────────────────────────────────────────────────

type RawOptions = { [K in (typeof OPTION_KEYS)[number]]?: unknown };

/** Reads each known option once (a getter runs once) and reports unknown keys. */
function readOptions(options: Record<string, unknown>, issues: InputIssue[]): RawOptions {
  const raw: RawOptions = {};
  let keys: string[];
  try {
    keys = Object.keys(options);
  } catch {
    issues.push({ path: 'options', message: 'could not be read: a proxy trap threw' });
    return raw;
  }
  for (const key of keys) {
    if (!KNOWN_OPTIONS.has(key)) {
      const hint = PROTOTYPE_KEYS.has(key) ? undefined : closestKey(key, OPTION_KEYS);
      issues.push({
        path: key,
        message: PROTOTYPE_KEYS.has(key)
          ? 'is not allowed: a prototype key'
          : `is not a known option${hint === undefined ? '' : `; did you mean "${hint}"?`}`,
      });
    }
  }
  for (const key of OPTION_KEYS) {
    try {
      raw[key] = options[key];
    } catch {
      issues.push({ path: key, message: 'could not be read: its getter threw' });
    }
  }
  return raw;
}

function checkStorage(storage: unknown, issues: InputIssue[]): void {
  if (storage === undefined) return;
  const message = 'must be a store: an object with migrate(), close(), load(), commit() and ledger() methods';
  if (typeof storage !== 'object' || storage === null) {
    issues.push({ path: 'storage', message });
    return;
  }
  try {
    const store = storage as Record<string, unknown>;
    if (!['migrate', 'close', 'load', 'commit', 'ledger'].every((name) => typeof store[name] === 'function')) {
      issues.push({ path: 'storage', message });
    }
    const max = store.maxCommitItems;
    if (max !== undefined && !(Number.isSafeInteger(max) && (max as number) >= MIN_COMMIT_ITEMS)) {
      issues.push({ path: 'storage.maxCommitItems', message: `must be a whole number, at least ${MIN_COMMIT_ITEMS}` });
    }
  } catch {
    issues.push({ path: 'storage', message });
  }
}

function wholeMs(value: unknown, path: string, min: number, max: number, issues: InputIssue[]): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min || value > max) {
    issues.push({ path, message: `must be a whole number of milliseconds from ${min} to ${max}` });
    return undefined;
  }
  return value;
}

function thresholdsOf(value: unknown, issues: InputIssue[]): readonly number[] {
  if (value === undefined) return DEFAULT_THRESHOLDS;
  if (!Array.isArray(value)) {
    issues.push({ path: 'lowBalanceThresholds', message: 'must be an array of fractions in (0, 1], e.g. [0.8, 1]' });
    return DEFAULT_THRESHOLDS;
  }
  if (value.length > MAX_THRESHOLDS) {
    issues.push({ path: 'lowBalanceThresholds', message: `must list at most ${MAX_THRESHOLDS} thresholds` });
    return DEFAULT_THRESHOLDS;
  }
  const thresholds = new Set<number>();
  value.forEach((threshold: unknown, index) => {
    if (typeof threshold !== 'number' || !(threshold > 0 && threshold <= 1)) {
      issues.push({ path: `lowBalanceThresholds.${index}`, message: 'must be a fraction in (0, 1]' });
    } else {
      thresholds.add(threshold);
    }
  });
  return Object.freeze([...thresholds].sort((a, b) => a - b));
}

function levelsOf(value: unknown, issues: InputIssue[]): readonly number[] {
  if (value === undefined) return Object.freeze([]);
  if (!Array.isArray(value) || value.length > MAX_THRESHOLDS) {
    issues.push({ path: 'lowBalanceLevels', message: `must be an array of at most ${MAX_THRESHOLDS} credit amounts, e.g. [100, 10]` });
    return Object.freeze([]);
  }
  const levels = new Set<number>();
  value.forEach((level: unknown, index) => {
    try {
      levels.add(toMicros(level, `lowBalanceLevels.${index}`));
    } catch (error) {
      if (!(error instanceof InvalidInputError)) throw error;
      issues.push(...error.issues);
    }
  });
  return Object.freeze([...levels].sort((a, b) => b - a));
}

function providersOf(value: unknown, issues: InputIssue[]): Readonly<Record<string, ReplyProvider>> {
  const providers: Record<string, ReplyProvider> = Object.create(null) as Record<string, ReplyProvider>;
  if (value === undefined) return Object.freeze(providers);
  const proto = typeof value === 'object' && value !== null ? safeProto(value) : undefined;
  if (proto !== Object.prototype && proto !== null) {
    issues.push({
      path: 'providers',
      message:
        value instanceof Map
          ? 'must be a plain object keyed by provider id, not a Map: use Object.fromEntries(map)'
          : 'must be a plain object keyed by provider id, e.g. { openai: myOpenAiProvider }',
    });
    return Object.freeze(providers);
  }
  let entries: [string, unknown][];
  try {
    entries = Object.entries(value as Record<string, unknown>);
  } catch {
    issues.push({ path: 'providers', message: 'could not be read: a getter or proxy trap threw' });
    return Object.freeze(providers);
  }
  for (const [id, provider] of entries) {
    if (!isValidId(id)) {
      issues.push({ path: `providers.${id}`, message: `is not a valid provider id: it ${describeBadId(id)}` });
    } else if (!isReplyProvider(provider)) {
      issues.push({ path: `providers.${id}`, message: 'must have a generate() method (and stream(), if any, must be a function)' });
    } else {
      providers[id] = provider;
    }
  }
  return Object.freeze(providers);
}

function safeProto(value: object): object | null | undefined {
  try {
    return Object.getPrototypeOf(value) as object | null;
  } catch {
    return undefined;
  }
}
