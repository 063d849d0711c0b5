import type { Decimal } from 'decimal.js';
import { z } from 'zod';
import { type CreditsInput, fromMicros, toMicros } from './credits.js';
import { InvalidInputError, UnknownModelError } from './errors.js';
import { creditsInputSchema, idSchema, parseInput } from './validation.js';

/** Well-known provider ids; any other string names a host-defined provider. */
export type ProviderId = 'bookbag' | 'openai' | 'anthropic' | (string & {});

/** One model as a host declares it. */
export interface ModelPriceInput {
  /** Model id used in every call, e.g. `gpt-4o-mini`. */
  readonly id: string;
  /** Display name, e.g. `GPT-4o mini`. */
  readonly name: string;
  /** The provider that serves it: the key of the `providers` option and of BYO keys. */
  readonly provider: ProviderId;
  /** Credits charged per reply, at most 6 decimal places. */
  readonly credits: CreditsInput;
  /**
   * True when the model runs on a third-party provider account, so a workspace's own key
   * for that provider can serve it (and the reply then costs no credits).
   */
  readonly providerBacked: boolean;
}

/** One validated entry of a {@link ModelPriceTable}. */
export interface ModelPrice {
  readonly id: string;
  readonly name: string;
  readonly provider: ProviderId;
  /** Credits per reply, exact. */
  readonly credits: Decimal;
  readonly providerBacked: boolean;
  /** Credits per reply in micro-credits (credits × 10⁶), as the stores keep it. */
  readonly micros: number;
}

const modelSchema = z.strictObject({
  id: idSchema,
  name: z.string().min(1).max(200),
  provider: idSchema,
  credits: creditsInputSchema,
  providerBacked: z.boolean(),
});

const tableSchema = z.array(modelSchema).min(1, 'must list at least one model').max(10_000);
const versionSchema = z.strictObject({ version: idSchema.optional() }).optional();

/**
 * A validated, versioned, immutable price table. Every charge records the table's
 * `version`, so old ledger rows stay explainable after prices change.
 */
export class ModelPriceTable {
  /** The validated entries, in the order given. */
  readonly models: readonly ModelPrice[];
  /** Recorded on every reply's ledger entry. */
  readonly version: string;
  readonly #byId: ReadonlyMap<string, ModelPrice>;

  /** @internal Use {@link defineModelPrices}. */
  constructor(models: readonly ModelPrice[], version: string) {
    this.models = Object.freeze([...models]);
    this.version = version;
    this.#byId = new Map(models.map((model) => [model.id, model]));
    Object.freeze(this);
  }

  /** The entry for `id`, or `undefined`. */
  get(id: string): ModelPrice | undefined {
    return this.#byId.get(id);
  }

  /** The entry for `id`; throws `UNKNOWN_MODEL` when there is none (never a free reply). */
  require(id: string): ModelPrice {
    const model = this.#byId.get(id);
    if (!model) throw new UnknownModelError(id);
    return model;
  }

  /**
   * A new table with `entries` added, replacing entries with the same id.
   *
   * @example
   * ```ts
   * const prices = DEFAULT_MODEL_PRICES.extend(
   *   [{ id: 'gpt-4o', name: 'GPT-4o', provider: 'openai', credits: 6, providerBacked: true }],
   *   { version: '2026-12' },
   * );
   * ```
   */
  extend(entries: readonly ModelPriceInput[], options?: { version?: string }): ModelPriceTable {
    // Back to inputs: a validated entry also carries `micros`, which an input may not.
    const input = (m: ModelPrice): ModelPriceInput => ({
      id: m.id,
      name: m.name,
      provider: m.provider,
      credits: m.credits,
      providerBacked: m.providerBacked,
    });
    const merged = new Map<string, ModelPriceInput>(this.models.map((m) => [m.id, input(m)]));
    for (const entry of parseModels(entries)) merged.set(entry.id, input(entry));
    return defineModelPrices([...merged.values()], { version: options?.version ?? `${this.version}+custom` });
  }
}

/**
 * Validates a price table: unique ids, credits ≥ 0 with at most 6 decimal places.
 * Throws `INVALID_INPUT` naming the offending entry's field.
 *
 * @example
 * ```ts
 * const prices = defineModelPrices(
 *   [
 *     { id: 'bookbag-local', name: 'Bookbag Local', provider: 'bookbag', credits: 0, providerBacked: false },
 *     { id: 'gpt-4o-mini', name: 'GPT-4o mini', provider: 'openai', credits: 1, providerBacked: true },
 *   ],
 *   { version: 'free-local-2026-11' },
 * );
 * ```
 */
export function defineModelPrices(entries: readonly ModelPriceInput[], options?: { version?: string }): ModelPriceTable {
  const { version } = parseInput(versionSchema, options, 'options') ?? {};
  const models = parseModels(entries);
  return new ModelPriceTable(models, version ?? fingerprint(models));
}

function parseModels(entries: readonly ModelPriceInput[]): ModelPrice[] {
  const parsed = parseInput(tableSchema, entries, 'models');
  const seen = new Set<string>();
  return parsed.map((entry, index) => {
    if (seen.has(entry.id)) {
      throw new InvalidInputError([{ path: `models.${index}.id`, message: `duplicate model id "${entry.id}"` }]);
    }
    seen.add(entry.id);
    const micros = toMicros(entry.credits, `models.${index}.credits`);
    return Object.freeze({
      id: entry.id,
      name: entry.name,
      provider: entry.provider,
      credits: fromMicros(micros),
      providerBacked: entry.providerBacked,
      micros,
    });
  });
}

// A version derived from the content: two tables with the same prices share it.
function fingerprint(models: readonly ModelPrice[]): string {
  let hash = 2166136261;
  const text = models.map((m) => `${m.id}=${m.micros}:${m.provider}:${m.providerBacked ? 1 : 0}`).join('|');
  for (let i = 0; i < text.length; i++) {
    hash ^= text.charCodeAt(i);
    hash = Math.imul(hash, 16777619);
  }
  return `prices-${(hash >>> 0).toString(16).padStart(8, '0')}`;
}

/**
 * The default price table: Bookbag Local 1, GPT-4o mini 1, Claude Haiku 4.5 2,
 * Claude Sonnet 4.6 4, GPT-4o 5 credits per reply. Bookbag Local is not provider-backed,
 * so a BYO key never makes it free (see docs/rules.md).
 */
export const DEFAULT_MODEL_PRICES: ModelPriceTable = defineModelPrices(
  [
    { id: 'bookbag-local', name: 'Bookbag Local', provider: 'bookbag', credits: 1, providerBacked: false },
    { id: 'gpt-4o-mini', name: 'GPT-4o mini', provider: 'openai', credits: 1, providerBacked: true },
    { id: 'claude-haiku-4-5', name: 'Claude Haiku 4.5', provider: 'anthropic', credits: 2, providerBacked: true },
    { id: 'claude-sonnet-4-6', name: 'Claude Sonnet 4.6', provider: 'anthropic', credits: 4, providerBacked: true },
    { id: 'gpt-4o', name: 'GPT-4o', provider: 'openai', credits: 5, providerBacked: true },
  ],
  { version: 'bookbag-2026-11' },
);
