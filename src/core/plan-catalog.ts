import type { Decimal } from 'decimal.js';
import { z } from 'zod';
import { type CreditsInput, fromMicros, toMicros } from './credits.js';
import { InvalidInputError, UnknownPlanError } from './errors.js';
import { creditsInputSchema, idSchema, parseInput } from './validation.js';

/** One plan as a host declares it. */
export interface PlanInput {
  /** Plan id used in every call, e.g. `hobby`. */
  readonly id: string;
  /** Display name, e.g. `Hobby`. */
  readonly name: string;
  /**
   * Credits granted each monthly period, or `null` for a custom plan (Enterprise) whose
   * allotment is given per workspace.
   */
  readonly monthlyCredits: CreditsInput | null;
  /**
   * Unused plan credits carried into the next period, up to this many. Omitted: no
   * rollover, the unused allotment expires at renewal.
   */
  readonly rolloverCap?: CreditsInput;
}

/** One validated entry of a {@link PlanCatalog}. */
export interface Plan {
  readonly id: string;
  readonly name: string;
  /** Credits per period, or `null` when each workspace is given its own allotment. */
  readonly monthlyCredits: Decimal | null;
  /** Most unused credits carried into the next period; 0 means no rollover. */
  readonly rolloverCap: Decimal;
  /** `monthlyCredits` in micro-credits, or `null`. */
  readonly monthlyMicros: number | null;
  /** `rolloverCap` in micro-credits. */
  readonly rolloverCapMicros: number;
}

const planSchema = z.strictObject({
  id: idSchema,
  name: z.string().min(1).max(200),
  monthlyCredits: creditsInputSchema.nullable(),
  rolloverCap: creditsInputSchema.optional(),
});
const catalogSchema = z.array(planSchema).min(1, 'must list at least one plan').max(10_000);

/** A validated, immutable plan catalog. */
export class PlanCatalog {
  /** The validated plans, in the order given. */
  readonly plans: readonly Plan[];
  readonly #byId: ReadonlyMap<string, Plan>;

  /** @internal Use {@link definePlans}. */
  constructor(plans: readonly Plan[]) {
    this.plans = Object.freeze([...plans]);
    this.#byId = new Map(plans.map((plan) => [plan.id, plan]));
    Object.freeze(this);
  }

  /** The plan with this id, or `undefined`. */
  get(id: string): Plan | undefined {
    return this.#byId.get(id);
  }

  /** The plan with this id; throws `UNKNOWN_PLAN` when there is none. */
  require(id: string): Plan {
    const plan = this.#byId.get(id);
    if (!plan) throw new UnknownPlanError(id);
    return plan;
  }
}

/**
 * Validates a plan catalog: unique ids, allotments ≥ 0 with at most 6 decimal places.
 *
 * @example
 * ```ts
 * const plans = definePlans([
 *   { id: 'starter', name: 'Starter', monthlyCredits: 500 },
 *   { id: 'team', name: 'Team', monthlyCredits: 5_000, rolloverCap: 2_500 },
 *   { id: 'custom', name: 'Custom', monthlyCredits: null },
 * ]);
 * ```
 */
export function definePlans(entries: readonly PlanInput[]): PlanCatalog {
  const parsed = parseInput(catalogSchema, entries, 'plans');
  const seen = new Set<string>();
  const plans = parsed.map((entry, index): Plan => {
    if (seen.has(entry.id)) {
      throw new InvalidInputError([{ path: `plans.${index}.id`, message: `duplicate plan id "${entry.id}"` }]);
    }
    seen.add(entry.id);
    const monthlyMicros = entry.monthlyCredits === null ? null : toMicros(entry.monthlyCredits, `plans.${index}.monthlyCredits`);
    const rolloverCapMicros = entry.rolloverCap === undefined ? 0 : toMicros(entry.rolloverCap, `plans.${index}.rolloverCap`);
    return Object.freeze({
      id: entry.id,
      name: entry.name,
      monthlyCredits: monthlyMicros === null ? null : fromMicros(monthlyMicros),
      rolloverCap: fromMicros(rolloverCapMicros),
      monthlyMicros,
      rolloverCapMicros,
    });
  });
  return new PlanCatalog(plans);
}

/**
 * The default plans: Free 100, Hobby 2,000, Standard 12,000, Pro 40,000 credits a month;
 * Enterprise is custom (its allotment is given when the workspace is created).
 */
export const DEFAULT_PLANS: PlanCatalog = definePlans([
  { id: 'free', name: 'Free', monthlyCredits: 100 },
  { id: 'hobby', name: 'Hobby', monthlyCredits: 2_000 },
  { id: 'standard', name: 'Standard', monthlyCredits: 12_000 },
  { id: 'pro', name: 'Pro', monthlyCredits: 40_000 },
  { id: 'enterprise', name: 'Enterprise', monthlyCredits: null },
]);
